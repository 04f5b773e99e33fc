"""The audience's two passes, and the forked helpers that run parts of them on a second core.

Pass 1 feeds every row's phone and id to Bloom filters (`scheduler.dedupe`) and keeps the
suspects; pass 2 checks every row (`scheduler.rows.RowChecker`) and remembers only suspects, so
duplicates are found exactly in flat memory. For a file of `HELPER_LINES` or more, and only when
the caller says it may fork (``may_fork``), helper processes share the work: a snapshot's pass 2
starts at the first row while a helper runs pass 1 (`read_ahead`); `check` has a helper scan the
ids while it scans the phones, then a helper count the last rows while it counts the first
(`count_halves`).
Every helper's part is done here after all if the helper fails: same result, more time.

Whether to fork is the caller's to say, never guessed from the process: forking a process that
runs threads (the daemon, `send`: the journal's writer, asyncio's) may leave the child stuck on
a lock another thread held. A command with no thread yet (`check`, `plan`, `new`,
`send --dry-run`) and the streamed snapshot's reader child may fork.
"""

from __future__ import annotations

import csv
import multiprocessing
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from scheduler.campaign import AudienceSpec
from scheduler.csvfile import CsvProblem, open_table, rows_after
from scheduler.dedupe import ColumnScan, Dedupe, filter_bits, scan_columns
from scheduler.records import Skip
from scheduler.rows import AudienceSummary, Columns, RowChecker, RowSource, ValidRow

if TYPE_CHECKING:
    from _csv import Reader as CsvReader
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

#: pass 1's Bloom filter size; None: sized from the file's line count (`filter_bits`). A module
#: constant so tests can force false positives.
DEDUPE_BITS: int | None = None
#: below this many lines a helper process costs more than it saves
HELPER_LINES = 200_000
#: the share of the rows the process counts itself when a helper counts the rest (the helper
#: starts at the first line of its part, `rows_after`; it also forks, and sends back its counts
#: and the rows that met a suspect key, which this process then replays). 0.50, 0.52 and 0.58
#: measured alike on 1M rows (2026-12-08)
OWN_SHARE = 0.58
#: the most rows a snapshot reads before pass 1's suspects are known (`read_ahead`): every
#: key of those rows is remembered meanwhile (measured: 26 MB at the cap, phone and id)
AHEAD_ROWS = 150_000
_AHEAD_STEP = 2_000
#: what pass 1 stops at (pass 2 reaches the same row and reports it with its line)
_STOP = (csv.Error,)


# -- running a function in a forked helper -----------------------------------------------------


class Forked:
    """A function run in a forked process, its bytes sent back through a pipe, so reading a
    big audience uses the second core. Started only for a caller that may fork."""

    def __init__(self, process: BaseProcess, pipe: Connection) -> None:
        self._process, self._pipe = process, pipe

    @classmethod
    def start(cls, function: Callable[..., bytes], *args: object) -> Forked:
        """Fork ``function(*args)``."""
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
    """`Forked`'s process: run, send, or exit 1 in silence (the parent then does the work
    itself and reports any problem with the file)."""
    try:
        data = function(*args)
    except (OSError, ValueError, TypeError, csv.Error):  # a file changed or gone, a bad row
        pipe.close()
        sys.exit(1)
    pipe.send_bytes(data)
    pipe.close()


# -- pass 1 ------------------------------------------------------------------------------------


def _scan_file(path: Path, delimiter: str | None, columns: tuple[int, ...],
               bits: int) -> tuple[set[str], ...]:
    """Pass 1 of some columns over the whole file, opened anew: each column's suspects."""
    with open_table(path, delimiter) as table:
        return scan_columns(table.reader, columns, bits, _STOP)


def _scan_keys(path: Path, delimiter: str | None, columns: tuple[int, ...], bits: int) -> bytes:
    """`KeyScan`'s process: `_scan_file`, as a JSON array of arrays."""
    return orjson.dumps([list(keys) for keys in _scan_file(path, delimiter, columns, bits)])


class KeyScan:
    """Pass 1 of some columns in a forked process (`Forked`) while this one reads on; done
    here after all if the helper fails (same suspects, more time)."""

    def __init__(self, forked: Forked, spec: AudienceSpec, columns: tuple[int, ...],
                 bits: int) -> None:
        self._forked, self._spec, self._columns, self._bits = forked, spec, columns, bits

    @classmethod
    def start(cls, spec: AudienceSpec, columns: tuple[int, ...], bits: int) -> KeyScan:
        """Fork the scan."""
        return cls(Forked.start(_scan_keys, spec.csv, spec.delimiter, columns, bits),
                   spec, columns, bits)

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
        return _scan_file(self._spec.csv, self._spec.delimiter, self._columns, self._bits)


@dataclass
class PassOne:
    """What pass 1 leaves for pass 2: the duplicate detector, and how helpers share pass 2.

    ``ahead``: pass 1 still runs in a helper; ``dedupe`` remembers every key meanwhile.
    ``split``: counting may be shared, this process counting its ``own`` rows, up to that line.
    """

    dedupe: Dedupe
    ahead: KeyScan | None = None
    own: int = 0
    split: int | None = None

    def cancel(self) -> None:
        """Pass 2 will not run after all: a helper still scanning is stopped."""
        if self.ahead is not None:
            self.ahead.cancel()


def _own_rows(lines: int, may_fork: bool) -> int | None:
    """The rows this process reads itself when helpers share the work; None when there are
    no helpers: the caller may not fork, fork() is not there, or the file is too small for
    helpers to pay."""
    if not may_fork or lines < HELPER_LINES:
        return None
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    return int(lines * OWN_SHARE)


def pass_one(
    spec: AudienceSpec, reader: CsvReader, columns: Columns, lines: int, *, may_fork: bool,
    counting: bool,
) -> PassOne:
    """Pass 1 over ``reader`` (positioned after the header of a file of about ``lines``
    lines): every row's phone and id through the Bloom filters, or, for a snapshot of a big
    file when the caller ``may_fork``, in a helper while pass 2 starts (`read_ahead`).

    Rows too short to hold both leave no key, which keeps it exact: pass 2 reads their missing
    cell as empty, so they are invalid and register nothing. At a malformed row pass 1 just
    stops; pass 2 reaches the same row and reports it with its line, having only met rows that
    pass 1 did scan.
    """
    bits = DEDUPE_BITS or filter_bits(lines)
    keys, own = columns.keys(), _own_rows(lines, may_fork)
    if own is not None and not counting:
        return PassOne(Dedupe.remember_all(len(keys)), ahead=KeyScan.start(spec, keys, bits))
    if own is None or columns.id is None:
        return PassOne(Dedupe(*scan_columns(reader, keys, bits, _STOP)))
    return _split_pass_one(spec, reader, columns, columns.id, bits, own)


def _split_pass_one(
    spec: AudienceSpec, reader: CsvReader, columns: Columns, id_at: int, bits: int, own: int,
) -> PassOne:
    """Pass 1 with a forked process scanning the id column (at ``id_at``) while this one scans
    the phones (`KeyScan`), noting the line that ends row ``own``: where counting can be
    split."""
    scan = KeyScan.start(spec, (id_at,), bits)
    phones, split = ColumnScan((columns.phone,), bits), None
    if phones.feed(islice(reader, own), _STOP):
        split = reader.line_num
        if not phones.feed(reader, _STOP):
            split = None  # a malformed row: pass 2 goes the plain way and reports it
    (ids,) = scan.result()
    return PassOne(Dedupe(phones.found[0], ids), own=own, split=split)


# -- pass 2 ------------------------------------------------------------------------------------


def pass_two(
    checker: RowChecker, spec: AudienceSpec, reader: CsvReader, first: PassOne,
    counted: AudienceSummary | None,
) -> Iterator[ValidRow | Skip]:
    """Pass 2 over ``reader`` (positioned after the header), the way pass 1 left for it.

    With ``counted`` (`check`, `plan`), valid rows are only counted in ``checker`` and rows
    that helpers counted are merged into ``counted``: only the skips come out.
    """
    if first.ahead is not None:
        yield from read_ahead(checker, reader, first.ahead)
    elif counted is not None and first.split is not None:
        yield from count_halves(checker, spec, reader, first.own, first.split, counted)
    else:
        yield from checker.rows(reader, emit=counted is None)


def read_ahead(
    checker: RowChecker, reader: CsvReader, scan: KeyScan,
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


def _counted(rows: Iterator[ValidRow | Skip]) -> Iterator[Skip]:
    """The skips of a counting pass 2 (`RowChecker.rows` with ``emit=False``)."""
    for item in rows:
        assert isinstance(item, Skip)  # counting yields only skips
        yield item


def count_halves(
    checker: RowChecker, spec: AudienceSpec, reader: RowSource, own: int, split: int,
    counted: AudienceSummary,
) -> Iterator[Skip]:
    """Count the first ``own`` rows (ending at line ``split``) here while a forked helper
    counts the rest, then replay, in order, the helper's rows that met a suspect key.

    Exact: rows without a suspect key depend on no other row, and the replayed ones register
    and look up their keys after every earlier row did, as in one pass.
    """
    helper = Forked.start(_count_rest, checker, spec, split)
    yield from _counted(checker.rows(reader, emit=False, limit=own))
    if reader.line_num != split:
        raise CsvProblem.changed()
    data = helper.result()
    if data is None:  # the helper failed: count the rest here
        yield from _counted(checker.rows(reader, emit=False))
        return
    rest = AudienceSummary.from_json(data["summary"])
    if data["problem"] is not None:
        raise CsvProblem(*data["problem"])
    replayed = AudienceSummary()
    deferred = _Replay([(line, row) for line, row in data["deferred"]])
    for item in _counted(checker.rows(deferred, emit=False)):
        replayed.add(item)
    counted.merge(rest)
    counted.merge(replayed)


def _count_rest(checker: RowChecker, spec: AudienceSpec, split: int) -> bytes:
    """The helper's part of `count_halves`: the rows after line ``split``, counted, and those
    that met a suspect key, set aside. It starts reading at that line (`rows_after`), the
    lines before it left unread."""
    summary, deferred = AudienceSummary(), list[tuple[int, list[str]]]()
    checker.on_empty, checker.valid, checker.zones, problem = summary.add_empty, 0, {}, None
    with open_table(spec.csv, spec.delimiter) as table:
        delimiter = table.delimiter
    with rows_after(spec.csv, delimiter, split) as rows:
        try:
            for item in _counted(checker.rows(rows, emit=False, defer=deferred)):
                summary.add(item)
        except CsvProblem as exc:
            problem = (exc.line, exc.message)
    summary.valid, summary.zones = checker.valid, checker.zones
    return orjson.dumps({"summary": summary.to_json(), "deferred": deferred, "problem": problem})
