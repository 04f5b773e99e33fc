"""Audience CSVs: a streaming reader that yields one `Recipient` or `Skip` per data row.

The file is never held in memory: its bytes are checked once (UTF-8, no NUL), then it is read
twice, first for the duplicate-detection keys only (`scheduler.dedupe`), then for the real rows.
Memory stays flat whatever the row count.
"""

from __future__ import annotations

import collections
import csv
import multiprocessing
import sys
import threading
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from scheduler.campaign import AudienceSpec, Campaign
from scheduler.csvfile import (
    CsvProblem,
    open_table,
    os_message,
    scan_bytes,
)
from scheduler.dedupe import ColumnScan, Dedupe, filter_bits, scan_columns
from scheduler.errors import CampaignError, Problem
from scheduler.records import Recipient, Skip
from scheduler.rows import (
    AudienceSummary,
    Columns,
    RowChecker,
    ValidRow,
    campaign_error,
    template_of,
)
from scheduler.suppression import Suppression

if TYPE_CHECKING:
    from _csv import Reader as _CsvReader
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess


#: pass 1's Bloom filter size; None: sized from the file's line count (`filter_bits`). A module
#: constant so tests can force false positives.
DEDUPE_BITS: int | None = None




# -- the audience ------------------------------------------------------------------------------


def _header_error(spec: AudienceSpec, campaign_file: Path, exc: Exception) -> CampaignError:
    """A problem met before any row, reported on the campaign file's ``audience.csv``."""
    if isinstance(exc, OSError):
        message = os_message(spec.csv, exc)
    elif isinstance(exc, CsvProblem) and exc.line is not None:
        message = f"{spec.csv} line {exc.line}: {exc.message}"
    else:
        message = f"{spec.csv} {exc}"
    return campaign_error(campaign_file, "audience.csv", message)


def read_header(spec: AudienceSpec, campaign_file: Path) -> list[str]:
    """The audience CSV's column names (stripped), so a campaign can be checked against them."""
    try:
        with open_table(spec.csv, spec.delimiter) as table:
            return table.header
    except (OSError, CsvProblem) as exc:
        raise _header_error(spec, campaign_file, exc) from None


def _pass_one(
    spec: AudienceSpec, reader: _CsvReader, columns: Columns, bits: int, helper: int | None,
) -> tuple[Dedupe, int | None]:
    """Pass 1: every row's phone and id through the Bloom filters.

    Rows too short to hold both leave no key, which keeps it exact: pass 2 reads their missing
    cell as empty, so they are invalid and register nothing. At a malformed row pass 1 just
    stops; pass 2 reaches the same row and reports it with its line, having only met rows that
    pass 1 did scan.

    With ``helper`` (a row count), a forked process scans the id column while this one scans the
    phones (`_KeyScan`), noting the line that ends row ``helper``: where pass 2 can be split
    (returned, else None).
    """
    stop = (csv.Error,)
    if columns.id is None:
        return Dedupe(*scan_columns(reader, columns.keys(), bits, stop)), None
    scan = _KeyScan.start(spec, (columns.id,), bits) if helper is not None else None
    if scan is None or helper is None:
        return Dedupe(*scan_columns(reader, columns.keys(), bits, stop)), None
    phones, split = ColumnScan((columns.phone,), bits), None
    if phones.feed(islice(reader, helper), stop):
        split = reader.line_num
        if not phones.feed(reader, stop):
            split = None  # a malformed row: pass 2 goes the plain way and reports it
    (ids,) = scan.result()
    return Dedupe(phones.found[0], ids), split


class _Forked:
    """A function run in a forked process, its bytes sent back through a pipe, so counting a big
    audience uses the second core (`check`, `plan`, `new`).

    Only where forking is safe: a single-threaded process (`check`, `plan`, `new`, the reader
    of a streamed snapshot). The daemon and `send` run threads: `start` declines there.
    """

    def __init__(self, process: BaseProcess, pipe: Connection) -> None:
        self._process, self._pipe = process, pipe

    @classmethod
    def start(cls, function: Callable[..., bytes], *args: object) -> _Forked | None:
        """Fork ``function(*args)``, or None when this process should not fork."""
        if "fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1:
            return None
        context = multiprocessing.get_context("fork")
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_run_forked, args=(function, args, send), daemon=True)
        process.start()
        send.close()
        return cls(process, receive)

    def ready(self) -> bool:
        """The result can be taken without waiting (or the process has failed)."""
        return self._pipe.poll()

    def cancel(self) -> None:
        """The result is not wanted after all: the process is killed and reaped."""
        self._process.kill()
        self._process.join()
        self._pipe.close()

    def result(self) -> Any:
        """The function's result, parsed from JSON; None if the process failed."""
        try:
            data = self._pipe.recv_bytes()
        except (EOFError, OSError):
            data = None
        finally:
            self._pipe.close()
            self._process.join()
        if data is None or self._process.exitcode != 0:
            return None
        return orjson.loads(data)


def _run_forked(function: Callable[..., bytes], args: tuple[object, ...], pipe: Connection) -> None:
    """`_Forked`'s process: run, send, or exit 1 in silence (the parent then does the work
    itself and reports any problem with the file)."""
    try:
        data = function(*args)
    except (OSError, ValueError, TypeError, csv.Error):  # a file changed or gone, a bad row
        pipe.close()
        sys.exit(1)
    pipe.send_bytes(data)
    pipe.close()


class _KeyScan:
    """Pass 1 of some columns in a forked process (`_Forked`) while this one reads on; done
    here after all if the helper fails (same suspects, more time)."""

    def __init__(self, forked: _Forked, spec: AudienceSpec, columns: tuple[int, ...],
                 bits: int) -> None:
        self._forked, self._spec, self._columns, self._bits = forked, spec, columns, bits

    @classmethod
    def start(cls, spec: AudienceSpec, columns: tuple[int, ...], bits: int) -> _KeyScan | None:
        """Fork the scan, or None when this process should not fork (then scan here)."""
        forked = _Forked.start(_scan_keys, spec.csv, spec.delimiter, columns, bits)
        return None if forked is None else cls(forked, spec, columns, bits)

    def ready(self) -> bool:
        """`result` would not wait."""
        return self._forked.ready()

    def cancel(self) -> None:
        """Not wanted after all (a problem in the file, a reader that stops early)."""
        self._forked.cancel()

    def result(self) -> tuple[set[str], ...]:
        """Each column's suspects (the helper is gone afterwards)."""
        keys = self._forked.result()
        if keys is not None:
            return tuple(set(column) for column in keys)
        with open_table(self._spec.csv, self._spec.delimiter) as table:
            return scan_columns(table.reader, self._columns, self._bits, (csv.Error,))


def _scan_keys(path: Path, delimiter: str | None, columns: tuple[int, ...], bits: int) -> bytes:
    """`_KeyScan`'s process: each column's suspects, as a JSON array of arrays."""
    with open_table(path, delimiter) as table:
        found = scan_columns(table.reader, columns, bits, (csv.Error,))
    return orjson.dumps([list(keys) for keys in found])


#: below this many lines a helper process costs more than it saves
HELPER_LINES = 200_000
#: the share of the rows the process counts itself when a helper counts the rest: the helper
#: first reads its way past them (~a third of the cost of counting them)
OWN_SHARE = 0.58


class _Replay:
    """Rows read elsewhere (their first line, their cells), read by `RowChecker.rows` as if
    from the csv reader: ``line_num`` is always the line before the next row's."""

    def __init__(self, rows: list[tuple[int, list[str]]]) -> None:
        self._rows = rows
        self._next = 0
        self.line_num = rows[0][0] - 1 if rows else 0

    def __iter__(self) -> _Replay:
        return self

    def __next__(self) -> list[str]:
        if self._next >= len(self._rows):
            raise StopIteration
        _, row = self._rows[self._next]
        self._next += 1
        if self._next < len(self._rows):
            self.line_num = self._rows[self._next][0] - 1
        return row


def _count_halves(
    checker: RowChecker, spec: AudienceSpec, reader: _CsvReader, own: int, split: int,
    counted: AudienceSummary,
) -> Iterator[Skip]:
    """Count the first ``own`` rows (ending at line ``split``) here while a forked helper
    counts the rest, then replay, in order, the helper's rows that met a suspect key.

    Exact: rows without a suspect key depend on no other row, and the replayed ones register
    and look up their keys after every earlier row did, as in one pass.
    """
    helper = _Forked.start(_count_rest, checker, spec, own)
    for item in checker.rows(reader, emit=False, limit=own):
        assert isinstance(item, Skip)  # counting yields only skips
        yield item
    if reader.line_num != split:
        raise CsvProblem.changed()
    data = helper.result() if helper is not None else None
    if data is None:  # no helper, or it failed: count the rest here
        for item in checker.rows(reader, emit=False):
            assert isinstance(item, Skip)
            yield item
        return
    rest = AudienceSummary.from_json(data["summary"])
    if data["problem"] is not None:
        raise CsvProblem(*data["problem"])
    replayed = AudienceSummary()
    for item in checker.rows(_Replay([(line, row) for line, row in data["deferred"]]),
                             emit=False):
        assert isinstance(item, Skip)
        replayed.add(item)
    counted.merge(rest)
    counted.merge(replayed)


def _count_rest(checker: RowChecker, spec: AudienceSpec, own: int) -> bytes:
    """The helper's part of `_count_halves`: the rows after the first ``own``, counted, and
    those that met a suspect key, set aside."""
    summary, deferred = AudienceSummary(), list[tuple[int, list[str]]]()
    checker.on_empty, checker.valid, checker.zones, problem = summary.add_empty, 0, {}, None
    with open_table(spec.csv, spec.delimiter) as table:
        collections.deque(islice(table.reader, own), maxlen=0)  # read past them (in C)
        try:
            for item in checker.rows(table.reader, emit=False, defer=deferred):
                assert isinstance(item, Skip)
                summary.add(item)
        except CsvProblem as exc:
            problem = (exc.line, exc.message)
    summary.valid, summary.zones = checker.valid, checker.zones
    return orjson.dumps({"summary": summary.to_json(), "deferred": deferred, "problem": problem})


#: the most rows a snapshot reads before pass 1's suspects are known (`_read_ahead`): every
#: key of those rows is remembered meanwhile (measured: 26 MB at the cap, phone and id)
AHEAD_ROWS = 150_000
_AHEAD_STEP = 2_000


def _read_ahead(
    checker: RowChecker, reader: _CsvReader, scan: _KeyScan,
) -> Iterator[ValidRow | Skip]:
    """Pass 2 from the first row while pass 1 runs in a forked helper, so the first batches do
    not wait for it (~1 s a million rows). Until the helper is done (at most `AHEAD_ROWS`
    rows), every key pass 2 registers is remembered (`Dedupe.remember_all`); then pass 1's
    suspects narrow that memory and pass 2 reads on as usual: the same rows, skips and details
    as after a whole pass 1."""
    try:
        read = 0
        while read < AHEAD_ROWS and not scan.ready():
            before = reader.line_num
            yield from checker.rows(reader, limit=_AHEAD_STEP)
            if reader.line_num == before:
                break  # the end of the file
            read += _AHEAD_STEP
    except BaseException:  # a problem in the file, or a consumer that stopped early
        scan.cancel()
        raise
    checker.dedupe.narrow(*scan.result())
    yield from checker.rows(reader)


def _stream(
    campaign: Campaign, suppression: Suppression | None, counted: AudienceSummary | None = None,
) -> Iterator[ValidRow | Skip]:
    """Both passes; raises OSError or `CsvProblem` for file-level problems.

    With ``counted``, valid rows are counted into it (with the placeholders they leave empty)
    instead of being yielded: only the skips come out.
    """
    spec = campaign.audience
    template = template_of(campaign)
    signature, lines = scan_bytes(spec.csv)
    with open_table(spec.csv, spec.delimiter) as table:
        if table.signature() != signature:
            raise CsvProblem.changed()
        columns = Columns.find(campaign, table, template)
        bits = DEDUPE_BITS or filter_bits(lines)
        # where forking is safe (`check`, `plan`, the reader of a streamed snapshot) and the
        # file is big enough, helpers use the second core: a snapshot's rows need not wait for
        # pass 1 at all, it runs in a helper while pass 2 starts (`_read_ahead`); `check`'s
        # counts have a helper scan the ids, then count the last rows (`_count_halves`)
        own = int(lines * OWN_SHARE) if lines >= HELPER_LINES else None
        keys = columns.keys()
        ahead = _KeyScan.start(spec, keys, bits) if own is not None and counted is None else None
        if ahead is None:
            dedupe, split = _pass_one(spec, table.reader, columns, bits, own)
        else:
            dedupe, split = Dedupe.remember_all(len(keys)), None
    with open_table(spec.csv, spec.delimiter) as table:
        if table.signature() != signature:
            if ahead is not None:
                ahead.cancel()
            raise CsvProblem.changed()
        on_empty = counted.add_empty if counted is not None else None
        checker = RowChecker(campaign, columns, template, suppression, dedupe, on_empty)
        if ahead is not None:
            yield from _read_ahead(checker, table.reader, ahead)
        elif counted is not None and own is not None and split is not None:
            yield from _count_halves(checker, spec, table.reader, own, split, counted)
        else:
            yield from checker.rows(table.reader, emit=counted is None)
        if counted is not None:
            counted.merge(AudienceSummary(valid=checker.valid, zones=checker.zones))
        if table.signature() != signature:
            raise CsvProblem.changed()


def _checked(
    campaign: Campaign, suppression: Suppression | None, counted: AudienceSummary | None = None,
) -> Iterator[ValidRow | Skip]:
    """`_stream` with its file-level problems turned into `CampaignError`."""
    spec = campaign.audience
    try:
        yield from _stream(campaign, suppression, counted)
    except OSError as exc:
        raise _header_error(spec, campaign.file, exc) from None
    except CsvProblem as exc:
        if exc.line is None:
            raise _header_error(spec, campaign.file, exc) from None
        raise CampaignError([Problem(spec.csv, exc.line, None, exc.message)]) from None


def iter_audience(
    campaign: Campaign, suppression: Suppression | None = None
) -> Iterator[Recipient | Skip]:
    """Each data row of the campaign's audience as a `Recipient` or a `Skip`, in file order.

    Every non-None tracking id in the output is unique, so skips whose id may repeat an earlier
    row's (invalid_phone, invalid_id, duplicate) carry None. File-level problems raise
    `CampaignError`; no row content raises anything else.
    """
    for item in _checked(campaign, suppression):
        yield item if isinstance(item, Skip) else Recipient(*item)


def iter_rows(
    campaign: Campaign, suppression: Suppression | None = None
) -> Iterator[ValidRow | Skip]:
    """`iter_audience` with each valid row as a `ValidRow` tuple instead of a `Recipient`,
    for hot loops that only take it apart again (the snapshot)."""
    return _checked(campaign, suppression)


def summarize(campaign: Campaign, suppression: Suppression | None = None) -> AudienceSummary:
    """Stream the whole audience once and count it; raises `CampaignError` like `iter_audience`."""
    summary = AudienceSummary()
    for item in _checked(campaign, suppression, summary):
        assert isinstance(item, Skip)  # valid rows are counted into the summary, not yielded
        summary.add(item)
    return summary
