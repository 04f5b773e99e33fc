"""The row rules of SPEC §5: what makes an audience row a valid recipient or a `Skip`.

`RowChecker` applies them in order (phone, id, duplicate, suppression, text length, time zone)
to rows read by `scheduler.csvfile`, with each skip's reason and a detail saying how to fix the
row; `AudienceSummary` is what `check` and `plan` count of them.
"""

from __future__ import annotations

import csv
import difflib
import functools
import re
import string
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import Any, Protocol, TypeVar

from scheduler.campaign import SURVEY_TEXT_MAX, TRACKING_ID_MAX, Campaign
from scheduler.csvfile import CsvProblem, Table, cell, has_values
from scheduler.dedupe import Dedupe
from scheduler.errors import CampaignError, Problem
from scheduler.phones import E164, EXAMPLE_PHONE, SEPARATORS
from scheduler.records import Recipient, Skip
from scheduler.suppression import Suppression
from scheduler.template import Template, TemplateError
from scheduler.trigger import TRIGGER_DAY_SHAPE, date_detail
from scheduler.vocabulary import SkipReason
from scheduler.window import zone_names
from scheduler.zones import ZoneFinder

TRACKING_ID_VALUE = re.compile(r"[A-Za-z0-9._-]+")
FIRST_LINES = 5  # line numbers kept per skip reason, for `check`
#: a phone a spreadsheet turned into a number: ``3.80501E+11`` (digits lost) or ``380501234567.0``
_SCIENTIFIC = re.compile(r"[0-9](?:[.,][0-9]+)?[eE]\+?[0-9]+")
_DECIMAL = re.compile(r"\+?[0-9]{7,15}[.,]0+")

_Key = TypeVar("_Key", bound=str)


class RowSource(Protocol):
    """Where `RowChecker` reads rows: a csv reader positioned after the header, or rows read
    elsewhere replayed (`scheduler.passes`). ``line_num`` is the line before the next row's."""

    @property
    def line_num(self) -> int:
        """The last physical line read."""
        ...

    def __iter__(self) -> Iterator[list[str]]:
        """The rows' cells."""
        ...


def campaign_error(campaign_file: Path, field: str, message: str) -> CampaignError:
    """A problem with the campaign file's ``field`` (no line: the whole value)."""
    return CampaignError([Problem(campaign_file, None, field, message)])


@dataclass(frozen=True, slots=True)
class Columns:
    """Where the reader finds what it needs in each row."""

    phone: int
    id: int | None
    fields: tuple[tuple[str, int], ...]  # template placeholder -> column
    tz: int | None = None
    date: int | None = None  # a trigger's date column (SPEC §13.2)

    @classmethod
    def find(cls, campaign: Campaign, table: Table, template: Template | None) -> Columns:
        """Resolve the columns by name; a missing one is a `CampaignError`."""
        spec = campaign.audience
        names = [spec.phone_column] + ([spec.id_column] if spec.id_column else [])
        names += [spec.tz_column] if spec.tz_column else []
        names += [campaign.trigger.column] if campaign.trigger else []
        names += sorted(template.fields) if template else []
        missing = [name for name in names if table.column(name) is None]
        if missing:
            listed = ", ".join(f'"{name}"' for name in table.header)
            raise campaign_error(
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
            date=index[campaign.trigger.column] if campaign.trigger else None,
        )

    def keys(self) -> tuple[int, ...]:
        """The columns duplicates are found in: the phone's, and the id's if there is one."""
        return (self.phone,) if self.id is None else (self.phone, self.id)


def template_of(campaign: Campaign) -> Template | None:
    """The compiled text, None when nothing is sent (flashcall, or no text)."""
    if campaign.type == "flashcall" or campaign.text is None:
        return None
    try:
        return Template(campaign.text)
    except TemplateError as exc:
        raise campaign_error(campaign.file, "text", str(exc)) from None


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


class RowChecker:
    """Turns data rows into valid rows or `Skip`s, applying SPEC §5's rules in order."""

    def __init__(
        self, campaign: Campaign, columns: Columns, template: Template | None,
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
        self, reader: RowSource, emit: bool = True, limit: int | None = None,
        defer: list[tuple[int, list[str]]] | None = None,
    ) -> Iterator[ValidRow | Skip]:
        """One result per non-blank row of ``reader`` (positioned after the header), or of
        its next ``limit`` rows.

        ``defer`` (counting half of the file elsewhere): a row that reaches the duplicate check
        with a suspect key is appended there with its line instead, for the process that knows
        the earlier rows to replay in order (`scheduler.passes`).

        ``emit=False`` (for counting): valid rows are only counted in ``self.valid``, not
        yielded, their text is rendered only when its length is checked (surveys), and only
        the first invalid_phone and invalid_id skips carry a detail (the costly ones; a summary
        keeps the first detail of each reason).
        """
        # The hot loop of `check` and of the snapshot: one function with local names on purpose,
        # the rare paths in helpers (1M rows must check in well under 3 s).
        phone_at, id_at = self.columns.phone, self.columns.id
        prefix = _id_prefix(self.campaign)  # series: run id with "."
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
        date_at, due = self.columns.date, self._due()
        verdict: bool | None = True
        when = ""
        start, number, valid, text, zone = reader.line_num + 1, self.numbered, 0, None, None
        explain_phone = explain_id = True  # counting keeps the first detail only: skip the rest
        try:
            for row in reader if limit is None else islice(reader, limit):
                line, start = start, reader.line_num + 1
                size = len(row)
                if due is not None:  # a trigger: its date column decides (SPEC §13.2)
                    when = row[date_at] if date_at is not None and date_at < size else ""
                    verdict = due(when)
                    if verdict is False:  # a date (so not a blank line), another day's
                        number += 1
                        continue
                phone = row[phone_at].strip() if phone_at < size else ""
                if not phone and not has_values(row):
                    continue  # a blank line is not a row
                number += 1
                if due is not None and verdict is None:
                    yield Skip(line, None, phone, "invalid_date", self._date_detail(when))
                    continue
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
                    if not emit and zone:
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

    def _due(self) -> Callable[[str], bool | None] | None:
        """A trigger's verdict on a date cell: due in this run (True), another day (False),
        not a date (None). A day's run takes its day's rows; the trigger file itself (`check`)
        takes every row with a date. None: not a trigger."""
        trigger = self.campaign.trigger
        if trigger is None:
            return None
        return trigger.due_checker(self.campaign.trigger_day)

    def _date_detail(self, text: str) -> str:
        trigger = self.campaign.trigger
        assert trigger is not None
        return date_detail(text, trigger.column, trigger.yearly)

    def _zone_finder(self) -> Callable[[list[str], int, str], str | None] | None:
        """A function giving each row's zone group: with a send window (or in a trigger's day
        run, SPEC §13.2), its ``tz_column`` value, else its phone's zones, else the policy's;
        without one, "" (no group is needed). None for a bad ``tz_column`` value, window or
        not: a zone the file names must be a zone. No function when there is neither a window
        (nor a day run) nor a ``tz_column``."""
        at = self.columns.tz
        if self.campaign.window is None and self.campaign.trigger_day is None:
            return None if at is None else _zone_checker(at)
        finder = ZoneFinder(self.campaign.timezone)
        by_phone = finder.of_phone
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


def _id_prefix(campaign: Campaign) -> str:
    """What the campaign's tracking ids start with: its wire id and "-". A trigger file read
    as a whole (`check`) is given the length of its day runs' (``birthday.YYYY-MM-DD-``): an
    id too long for them is then found by `check`, not skipped day after day."""
    if campaign.trigger is not None and campaign.trigger_day is None:
        return f"{campaign.wire_id}.{TRIGGER_DAY_SHAPE}-"
    return campaign.wire_id + "-"


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


_OFFSET = re.compile(r"(utc|gmt)?_?[+-]\d")


def _zone_checker(at: int) -> Callable[[list[str], int, str], str | None]:
    """Without a send window: "" for a row whose ``tz_column`` (at ``at``) is empty or an
    IANA zone, None for any other value."""
    known = zone_names()

    def check(row: list[str], size: int, phone: str) -> str | None:
        name = row[at].strip() if at < size else ""
        return "" if not name or name in known else None

    return check


@functools.lru_cache(maxsize=256)  # an audience repeats its few bad values on many rows
def _did_you_mean_zone(name: str) -> str:
    """The IANA name closest to ``name``, else an example: the same name in other case
    (``europe/kyiv``), a city (``Kyiv``, ``new york``), or a near spelling (``Europe/Kyev``)."""
    known = zone_names()
    wanted = name.strip().replace(" ", "_").lower()
    by_name = {zone.lower(): zone for zone in known}
    if wanted in by_name:
        return by_name[wanted]
    if _OFFSET.match(wanted):  # "UTC+3": an offset misses summer time, a place name does not
        return "Europe/Kyiv"
    by_city = {zone.rsplit("/", 1)[-1].lower(): zone for zone in sorted(known)
               if "/" in zone and not zone.startswith(("Etc/", "SystemV/", "posix/", "right/"))}
    city = wanted.rsplit("/", 1)[-1]
    close = difflib.get_close_matches(city, list(by_city), 1, 0.7)
    if close:
        return by_city[close[0]]
    close = difflib.get_close_matches(wanted, list(by_name), 1)
    return by_name[close[0]] if close else "Europe/Kyiv"


def _survey_detail(text: str) -> str:
    return f"the survey text is {len(text)} characters; the limit is {SURVEY_TEXT_MAX}"


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
