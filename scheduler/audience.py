"""Audience CSVs: a streaming reader that yields one `Recipient` or `Skip` per data row.

The file is never held in memory: its bytes are checked once (UTF-8, no NUL), then it is read
twice, first for the duplicate-detection keys only (`scheduler.dedupe`), then for the real rows.
Memory stays flat whatever the row count.
"""

from __future__ import annotations

import collections
import csv
import difflib
import multiprocessing
import re
import string
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from scheduler.campaign import SURVEY_TEXT_MAX, TRACKING_ID_MAX, AudienceSpec, Campaign
from scheduler.csvfile import (
    CsvProblem,
    Table,
    cell,
    has_values,
    open_table,
    os_message,
    scan_bytes,
)
from scheduler.dedupe import ColumnScan, Dedupe, filter_bits, scan_columns
from scheduler.errors import CampaignError, Problem
from scheduler.phones import E164, EXAMPLE_PHONE, SEPARATORS
from scheduler.records import Recipient, Skip
from scheduler.suppression import Suppression
from scheduler.template import Template, TemplateError
from scheduler.vocabulary import SkipReason
from scheduler.window import zone_names
from scheduler.zones import ZoneFinder

if TYPE_CHECKING:
    from _csv import Reader as _CsvReader
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess


TRACKING_ID_VALUE = re.compile(r"[A-Za-z0-9._-]+")
FIRST_LINES = 5  # line numbers kept per skip reason, for `check`
#: a phone a spreadsheet turned into a number: ``3.80501E+11`` (digits lost) or ``380501234567.0``
_SCIENTIFIC = re.compile(r"[0-9](?:[.,][0-9]+)?[eE]\+?[0-9]+")
_DECIMAL = re.compile(r"\+?[0-9]{7,15}[.,]0+")
#: pass 1's Bloom filter size; None: sized from the file's line count (`filter_bits`). A module
#: constant so tests can force false positives.
DEDUPE_BITS: int | None = None

_Key = TypeVar("_Key", bound=str)


# -- the audience ------------------------------------------------------------------------------


def _campaign_error(campaign_file: Path, field: str, message: str) -> CampaignError:
    return CampaignError([Problem(campaign_file, None, field, message)])


def _header_error(spec: AudienceSpec, campaign_file: Path, exc: Exception) -> CampaignError:
    """A problem met before any row, reported on the campaign file's ``audience.csv``."""
    if isinstance(exc, OSError):
        message = os_message(spec.csv, exc)
    elif isinstance(exc, CsvProblem) and exc.line is not None:
        message = f"{spec.csv} line {exc.line}: {exc.message}"
    else:
        message = f"{spec.csv} {exc}"
    return _campaign_error(campaign_file, "audience.csv", message)


def read_header(spec: AudienceSpec, campaign_file: Path) -> list[str]:
    """The audience CSV's column names (stripped), so a campaign can be checked against them."""
    try:
        with open_table(spec.csv, spec.delimiter) as table:
            return table.header
    except (OSError, CsvProblem) as exc:
        raise _header_error(spec, campaign_file, exc) from None


@dataclass(frozen=True, slots=True)
class _Columns:
    """Where the reader finds what it needs in each row."""

    phone: int
    id: int | None
    fields: tuple[tuple[str, int], ...]  # template placeholder -> column
    tz: int | None = None

    @classmethod
    def find(cls, campaign: Campaign, table: Table, template: Template | None) -> _Columns:
        """Resolve the columns by name; a missing one is a `CampaignError`."""
        spec = campaign.audience
        names = [spec.phone_column] + ([spec.id_column] if spec.id_column else [])
        names += [spec.tz_column] if spec.tz_column else []
        names += sorted(template.fields) if template else []
        missing = [name for name in names if table.column(name) is None]
        if missing:
            listed = ", ".join(f'"{name}"' for name in table.header)
            raise _campaign_error(
                campaign.file,
                "audience.csv",
                f"{spec.csv} has no column " + ", ".join(f'"{n}"' for n in missing)
                + f" (its columns: {listed})",
            )
        index = {name: table.header.index(name) for name in names}
        return cls(
            phone=index[spec.phone_column],
            id=index[spec.id_column] if spec.id_column else None,
            fields=tuple((name, index[name]) for name in sorted(template.fields))
            if template else (),
            tz=index[spec.tz_column] if spec.tz_column else None,
        )

    def keys(self) -> tuple[int, ...]:
        """The columns duplicates are found in: the phone's, and the id's if there is one."""
        return (self.phone,) if self.id is None else (self.phone, self.id)


def _template(campaign: Campaign) -> Template | None:
    """The compiled text, None when nothing is sent (flashcall, or no text)."""
    if campaign.type == "flashcall" or campaign.text is None:
        return None
    try:
        return Template(campaign.text)
    except TemplateError as exc:
        raise _campaign_error(campaign.file, "text", str(exc)) from None


def _phone_detail(phone: str) -> str:
    """Why ``phone`` is not E.164, and the fix: the shapes spreadsheets and people produce
    (a missing +, a local number, spaces and dashes, a number turned into 3.8E+11)."""
    if not phone:
        return "no phone number"
    shown = phone if len(phone) <= 40 else phone[:40] + "…"
    if _SCIENTIFIC.fullmatch(phone):
        return (f'"{shown}" was turned into a number by a spreadsheet (its last digits are '
                "lost): format the phone column as text and export the phones again, "
                f"like {EXAMPLE_PHONE}")
    if _DECIMAL.fullmatch(phone):
        digits = re.split(r"[.,]", phone.lstrip("+"))[0]
        return (f'"{shown}" was turned into a number by a spreadsheet: format the phone '
                f"column as text; this one is +{digits}")
    compact = SEPARATORS.sub("", phone)
    spaced = compact != phone
    digits = compact[1:] if compact.startswith("+") else compact
    if not compact.startswith("+") and compact.startswith("00"):
        digits = compact[2:]
    if not (digits.isascii() and digits.isdigit()):
        return f'"{shown}" is not a phone number: write it in E.164, e.g. {EXAMPLE_PHONE}'
    if digits.startswith("0"):
        return (f'"{shown}" has no country code: write the international number with +, '
                f"e.g. {EXAMPLE_PHONE} for 0501234567 in Ukraine")
    if not 7 <= len(digits) <= 15:
        size = "short" if len(digits) < 7 else "long"
        return f'"{shown}" is too {size}: E.164 numbers have 7 to 15 digits after the +'
    if spaced:
        return f'"{shown}" has spaces or other signs between the digits: write +{digits}'
    if compact.startswith("00"):
        return f'"{shown}" starts with 00 instead of +: write +{digits}'
    return f'"{shown}" is missing the + in front: write +{digits}'


#: told ``(placeholder, line)`` for each valid row whose value for the placeholder is empty
EmptyField = Callable[[str, int], None]

#: a valid row as a plain tuple of `Recipient`'s fields: (line, tracking_id, phone, text, zone).
#: It is ~10x cheaper to build than the frozen dataclass: `summarize` only counts them and the
#: snapshot turns them straight into API messages.
ValidRow = tuple[int, str, str, str | None, str | None]


def _ignore_empty(name: str, line: int) -> None:
    """The `EmptyField` of callers that do not ask (never called: they check no field)."""


class _RowChecker:
    """Turns data rows into valid rows or `Skip`s, applying SPEC §5's rules in order."""

    def __init__(
        self, campaign: Campaign, columns: _Columns, template: Template | None,
        suppression: Suppression | None, dedupe: Dedupe, on_empty: EmptyField | None = None,
    ) -> None:
        self.campaign = campaign
        self.columns = columns
        self.template = template
        self.suppression = suppression if suppression and not campaign.is_transactional else None
        self.survey = campaign.type == "viber_survey"
        self.dedupe = dedupe
        self.on_empty = on_empty
        self.valid = 0  # valid rows that `rows(emit=False)` counted instead of yielding
        self.numbered = 0  # non-blank rows read so far: the next row's number follows on
        self.zones: dict[str, int] = {}  # and per zone group, with a send window

    def rows(
        self, reader: _CsvReader | _Replay, emit: bool = True, limit: int | None = None,
        defer: list[tuple[int, list[str]]] | None = None,
    ) -> Iterator[ValidRow | Skip]:
        """One result per non-blank row of ``reader`` (positioned after the header), or of
        its next ``limit`` rows.

        ``defer`` (counting half of the file elsewhere): a row that reaches the duplicate check
        with a suspect key is appended there with its line instead, for the process that knows
        the earlier rows to replay in order (`_Replay`).

        ``emit=False`` (for counting): valid rows are only counted in ``self.valid``, not
        yielded, their text is rendered only when its length is checked (surveys), and only
        the first invalid_phone and invalid_id skips carry a detail (the costly ones; a summary
        keeps the first detail of each reason).
        """
        # The hot loop of `check` and of the snapshot: one function with local names on purpose,
        # the rare paths in helpers (1M rows must check in well under 3 s).
        phone_at, id_at = self.columns.phone, self.columns.id
        prefix = self.campaign.id + "-"
        max_value = TRACKING_ID_MAX - len(prefix)
        e164, id_ok = E164.fullmatch, TRACKING_ID_VALUE.fullmatch
        phone_suspects = self.dedupe.suspects(0)
        id_suspects = self.dedupe.suspects(1) if id_at is not None else frozenset[str]()
        opted_out = self.suppression.e164_lookup() if self.suppression else frozenset[str]()
        text_of = self._renderer() if emit or self.survey else None
        text_max = SURVEY_TEXT_MAX if self.survey else sys.maxsize
        empty_fields, on_empty = self._empty_fields(), self.on_empty or _ignore_empty
        empty_name, empty_at = "", -1  # the common single placeholder, checked inline
        if len(empty_fields) == 1:
            ((empty_name, empty_at),), empty_fields = empty_fields, ()
        zone_of, zones = self._zone_finder(), self.zones
        start, number, valid, text, zone = reader.line_num + 1, self.numbered, 0, None, None
        explain_phone = explain_id = True  # counting keeps the first detail only: skip the rest
        try:
            for row in reader if limit is None else islice(reader, limit):
                line, start = start, reader.line_num + 1
                size = len(row)
                phone = row[phone_at].strip() if phone_at < size else ""
                if not phone and not has_values(row):
                    continue  # a blank line is not a row
                number += 1
                if not e164(phone):
                    detail = _phone_detail(phone) if explain_phone else ""
                    explain_phone = emit
                    yield Skip(line, None, phone, "invalid_phone", detail)
                    continue
                value = (
                    str(number) if id_at is None else row[id_at].strip() if id_at < size else ""
                )
                # isalnum() alone would take any Unicode letter; ASCII ones need no regex
                if not (value.isalnum() and value.isascii() and len(value) <= max_value) and (
                    len(value) > max_value or not id_ok(value)
                ):
                    detail = self._id_detail(value, prefix + value) if explain_id else ""
                    explain_id = emit
                    yield Skip(line, None, phone, "invalid_id", detail)
                    continue
                if phone in phone_suspects or value in id_suspects:
                    if defer is not None:
                        defer.append((line, row))
                        continue
                    if duplicate := self._duplicate(line, phone, value):
                        yield Skip(line, None, phone, "duplicate", duplicate)
                        continue
                if phone in opted_out:
                    yield Skip(line, prefix + value, phone, "suppressed", "on the suppression list")
                    continue
                if text_of is not None:
                    text = text_of(row, size)
                    if text is not None and len(text) > text_max:
                        yield Skip(line, prefix + value, phone, "text_too_long",
                                   _survey_detail(text))
                        continue
                if zone_of is not None:
                    zone = zone_of(row, size, phone)
                    if zone is None:
                        yield Skip(line, prefix + value, phone, "invalid_timezone",
                                   self._zone_detail(row, size))
                        continue
                    if not emit:
                        zones[zone] = zones.get(zone, 0) + 1
                if empty_at >= 0 and (empty_at >= size or not row[empty_at].strip()):
                    on_empty(empty_name, line)
                for name, index in empty_fields:
                    if index >= size or not row[index].strip():
                        on_empty(name, line)
                if emit:
                    yield (line, prefix + value, phone, text, zone)
                else:
                    valid += 1
        except csv.Error as exc:
            raise CsvProblem.unreadable(start, exc) from None
        finally:
            self.valid += valid
            self.numbered = number

    def _zone_finder(self) -> Callable[[list[str], int, str], str | None] | None:
        """With a send window: a function giving each row's zone group (its ``tz_column``
        value, else its phone's zones, else the policy's), None for a bad ``tz_column``."""
        if self.campaign.window is None:
            return None
        finder = ZoneFinder(self.campaign.timezone)
        by_phone, at = finder.of_phone, self.columns.tz
        if at is None:
            return lambda row, size, phone: by_phone(phone)
        known = zone_names()

        def zone_of(row: list[str], size: int, phone: str) -> str | None:
            name = row[at].strip() if at < size else ""
            if not name:
                return by_phone(phone)
            return name if name in known else None

        return zone_of

    def _zone_detail(self, row: list[str], size: int) -> str:
        assert self.columns.tz is not None  # only a tz column can hold a bad zone
        name = cell(row, self.columns.tz)
        hint = _did_you_mean_zone(name)
        return (f'"{name}" in column "{self.campaign.audience.tz_column}" is not an IANA time '
                f'zone: write e.g. "{hint}" (or leave it empty to use the phone\'s zone)')

    def _empty_fields(self) -> tuple[tuple[str, int], ...]:
        """The (placeholder, column) pairs whose empty cells are reported to ``on_empty`` (for
        `check`): none when nobody asked or nothing is personalised."""
        if self.on_empty is None or self.template is None:
            return ()
        return self.columns.fields

    def _renderer(self) -> Callable[[list[str], int], str | None]:
        """A function that personalises the text for one row (given the row and its length)."""
        template = self.template
        if template is None:
            return lambda row, size: None
        if not template.fields:
            constant = template.render({})
            return lambda row, size: constant
        return _positional_renderer(template, dict(self.columns.fields))

    def _duplicate(self, line: int, phone: str, value: str) -> str | None:
        """Register both keys; describe the earlier use of either, None when both are new."""
        first_phone = self.dedupe.first_line(phone, line, 0)
        first_id = None
        if self.columns.id is not None:
            first_id = self.dedupe.first_line(value, line, 1)
        if first_phone is not None:
            return f"same phone as line {first_phone}"
        if first_id is not None:
            return f"same {self.campaign.audience.id_column} as line {first_id}"
        return None

    def _id_detail(self, value: str, tracking_id: str) -> str:
        """Why the tracking id built from ``value`` is not acceptable."""
        column = self.campaign.audience.id_column or "row number"
        if not value:
            return f"empty {column}: every row needs an id"
        if len(tracking_id) > TRACKING_ID_MAX:
            return (
                f"the tracking id would be {len(tracking_id)} characters; the API takes at most "
                f"{TRACKING_ID_MAX}: shorten {column}"
            )
        shown = value if len(value) <= 40 else value[:40] + "…"
        return f'{column} "{shown}" may only contain letters, digits, ".", "_" and "-"'


def _positional_renderer(
    template: Template, columns: dict[str, int]
) -> Callable[[list[str], int], str]:
    """``Template.render`` for CSV rows, at a fifth of the cost: ``str.format`` with {0}, {1}…,
    or, for a text with one placeholder used once (the common case), the text around it joined.

    The template accepts no format specs or conversions, so its literal parts (braces escaped
    again) and numbered fields give the same text; a test checks it.
    """
    names = sorted(template.fields)
    segments = list(string.Formatter().parse(template.source))
    used = [i for i, (_, name, _, _) in enumerate(segments) if name is not None]
    if len(used) == 1:  # no format call a row: ~3x cheaper
        head = "".join(literal for literal, _, _, _ in segments[:used[0] + 1])
        tail = "".join(literal for literal, _, _, _ in segments[used[0] + 1:])
        only = columns[names[0]]

        def render_one(row: list[str], size: int) -> str:
            return head + (row[only].strip() if only < size else "") + tail

        return render_one
    parts: list[str] = []
    for literal, name, _, _ in segments:
        parts.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is not None:
            parts.append(f"{{{names.index(name)}}}")
    text = "".join(parts).format
    indexes = tuple(columns[name] for name in names)
    if len(indexes) == 1:  # one placeholder, used more than once
        (first,) = indexes

        def render_first(row: list[str], size: int) -> str:
            return text(row[first].strip() if first < size else "")

        return render_first
    last = max(indexes)
    getter = itemgetter(*indexes)
    strip = str.strip

    def render(row: list[str], size: int) -> str:
        if size <= last:  # a short row: missing columns read as ""
            return text(*(row[i].strip() if i < size else "" for i in indexes))
        return text(*map(strip, getter(row)))

    return render


def _did_you_mean_zone(name: str) -> str:
    """The IANA name closest to ``name`` (``Kyiv`` -> ``Europe/Kyiv``), else an example."""
    known = zone_names()
    by_city = {zone.rsplit("/", 1)[-1].lower(): zone for zone in known}
    close = difflib.get_close_matches(name.lower().replace(" ", "_"), list(by_city), 1)
    return by_city[close[0]] if close else "Europe/Kyiv"


def _survey_detail(text: str) -> str:
    return f"the survey text is {len(text)} characters; the limit is {SURVEY_TEXT_MAX}"


def _pass_one(
    spec: AudienceSpec, reader: _CsvReader, columns: _Columns, bits: int, helper: int | None,
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
    """Rows read elsewhere (their first line, their cells), read by `_RowChecker.rows` as if
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
    checker: _RowChecker, spec: AudienceSpec, reader: _CsvReader, own: int, split: int,
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


def _count_rest(checker: _RowChecker, spec: AudienceSpec, own: int) -> bytes:
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
    checker: _RowChecker, reader: _CsvReader, scan: _KeyScan,
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
    template = _template(campaign)
    signature, lines = scan_bytes(spec.csv)
    with open_table(spec.csv, spec.delimiter) as table:
        if table.signature() != signature:
            raise CsvProblem.changed()
        columns = _Columns.find(campaign, table, template)
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
        checker = _RowChecker(campaign, columns, template, suppression, dedupe, on_empty)
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


@dataclass
class AudienceSummary:
    """Counts for `check` and `plan`: valid rows, skips per reason with their first lines (and
    the first one's detail), and placeholders that valid rows leave empty, with their lines."""

    valid: int = 0
    zones: dict[str, int] = field(default_factory=dict)  # valid rows per zone group (windows)
    skipped: dict[SkipReason, int] = field(default_factory=dict)
    first_lines: dict[SkipReason, list[int]] = field(default_factory=dict)
    first_details: dict[SkipReason, str] = field(default_factory=dict)
    empty: dict[str, int] = field(default_factory=dict)
    empty_lines: dict[str, list[int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Every data row, valid or skipped."""
        return self.valid + sum(self.skipped.values())

    def add(self, item: Recipient | Skip) -> None:
        """Count one row."""
        if isinstance(item, Recipient):
            self.valid += 1
            return
        reason = item.reason
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.first_details.setdefault(reason, item.detail)
        lines = self.first_lines.setdefault(reason, [])
        if len(lines) < FIRST_LINES:
            lines.append(item.line)

    def add_empty(self, name: str, line: int) -> None:
        """Count a valid row whose ``{name}`` is empty."""
        self.empty[name] = self.empty.get(name, 0) + 1
        lines = self.empty_lines.setdefault(name, [])
        if len(lines) < FIRST_LINES:
            lines.append(line)

    def merge(self, other: AudienceSummary) -> None:
        """Add the counts of other rows of the same audience, wherever they are in the file:
        first lines and details stay those of the earliest rows, reasons and placeholders in the
        order they first occur."""
        self.valid += other.valid
        for group, count in other.zones.items():
            self.zones[group] = self.zones.get(group, 0) + count
        for reason, count in other.skipped.items():
            mine, theirs = self.first_lines.get(reason), other.first_lines[reason]
            if not mine or theirs[0] < mine[0]:
                self.first_details[reason] = other.first_details[reason]
            self.skipped[reason] = self.skipped.get(reason, 0) + count
            self.first_lines[reason] = sorted((mine or []) + theirs)[:FIRST_LINES]
        for name, count in other.empty.items():
            self.empty[name] = self.empty.get(name, 0) + count
            self.empty_lines[name] = sorted(
                self.empty_lines.get(name, []) + other.empty_lines[name]
            )[:FIRST_LINES]
        self.skipped = _by_first(self.skipped, self.first_lines)
        self.empty = _by_first(self.empty, self.empty_lines)

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON-ready data (`from_json` reads it back)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AudienceSummary:
        """A summary from `to_json`'s data."""
        return cls(**data)


def _by_first(counts: dict[_Key, int], lines: dict[_Key, list[int]]) -> dict[_Key, int]:
    """``counts`` reordered by the first line of each key."""
    return dict(sorted(counts.items(), key=lambda item: lines[item[0]][0]))


def summarize(campaign: Campaign, suppression: Suppression | None = None) -> AudienceSummary:
    """Stream the whole audience once and count it; raises `CampaignError` like `iter_audience`."""
    summary = AudienceSummary()
    for item in _checked(campaign, suppression, summary):
        assert isinstance(item, Skip)  # valid rows are counted into the summary, not yielded
        summary.add(item)
    return summary
