"""Triggers (SPEC §13.2): a campaign file with ``[trigger]``, sent to each recipient on their own
date (a birthday, a renewal, a signup + 7 days) at ``at`` in their own time zone.

Each calendar day D has a run of its own, ``{id}@YYYY-MM-DD`` (``{id}.YYYY-MM-DD`` on the
wire), whose recipients are the rows whose date + ``offset_days`` is D. Which day a row is due
does not depend on its zone; *when* it goes does: at ``at`` on D on its own wall clock. So a day's
run starts when ``at`` comes in the earliest zone on Earth (UTC+14) and holds each zone group
until its own ``at`` (the send windows' gate does the holding, `scheduler.window_gate`); the
last group (UTC−12) goes 26 hours later. Each group's messages live ``ttl`` from its own release.

This module is the pure part: the ``[trigger]`` model and its reader (errors as the loader
reports them, FILE:LINE), the date formats, "is this row due on D", and the release moments.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from scheduler.window import local_moment, zones_of_group

TRIGGER_KEYS = ("column", "yearly", "offset_days", "at", "until")
OFFSET_MAX = 366  # days either way
#: the earliest and the latest wall clocks on Earth: UTC+14 (Kiribati) and UTC−12
EARLIEST = timedelta(hours=14)
LATEST = timedelta(hours=12)
SPREAD = EARLIEST + LATEST  # how long after its first release a day's run makes its last
DAY_TEXT = "%Y-%m-%d"
TRIGGER_DAY_SHAPE = "YYYY-MM-DD"  # a day run's day, as `check` writes it
_AT = re.compile(r"^(\d{2}):(\d{2})$")
_ISO = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_MONTH_DAY = re.compile(r"^(\d{2})-(\d{2})$")
_UNKNOWN = object()  # a cache miss (False and None are verdicts)
#: a date occurrence: (month, day) for yearly dates, else the date itself
Occasion = date | tuple[int, int]


class Trigger(BaseModel):
    """``[trigger]``: which column holds each recipient's date, and when around it to send."""

    model_config = ConfigDict(frozen=True)

    column: str
    yearly: bool = False  # match month and day every year
    offset_days: int = 0  # -3: three days before the date; 7: a week after
    at: timedelta  # the recipient's local time of day (since midnight)
    until: datetime | None = None  # UTC; no day whose first release is at or after it

    @property
    def at_text(self) -> str:
        """``10:00``."""
        minutes = int(self.at.total_seconds()) // 60
        return f"{minutes // 60:02d}:{minutes % 60:02d}"

    def first_release(self, day: date) -> datetime:
        """When day ``day``'s run starts: ``at`` on ``day`` in UTC+14."""
        return datetime.combine(day, datetime.min.time(), UTC) + self.at - EARLIEST

    def last_release(self, day: date) -> datetime:
        """When ``day``'s last zone (UTC−12) reaches ``at``."""
        return self.first_release(day) + SPREAD

    def release(self, day: date, group: str) -> datetime:
        """When recipients of a zone group (`scheduler.window.zone_group`) due on ``day`` get
        their message: ``at`` on ``day`` on their wall clock (a group of several zones: once
        it is ``at`` in every one of them)."""
        return max(local_moment(day, self.at, zone) for zone in zones_of_group(group))

    def days_from(self, moment: datetime) -> Iterator[date]:
        """The days whose run starts at or after ``moment``, before ``until``."""
        day = (moment.astimezone(UTC) + EARLIEST - self.at).date()
        if self.first_release(day) < moment:
            day += timedelta(days=1)
        while self.until is None or self.first_release(day) < self.until:
            yield day
            day += timedelta(days=1)

    def due_checker(self, day: date | None) -> Callable[[str], bool | None]:
        """A function telling, for a cell of the date column, whether its row is due on
        ``day`` (True/False; ``day`` None: any day, True for every date), or None when the
        cell is not a date in the accepted format. Cached by value: an audience repeats its
        dates."""
        target = None if day is None else day - timedelta(days=self.offset_days)
        cache: dict[str, bool | None] = {}
        yearly, unknown = self.yearly, _UNKNOWN

        def due(text: str) -> bool | None:
            verdict = cache.get(text, unknown)
            if verdict is not unknown:
                return verdict  # type: ignore[return-value]
            occasion = parse_date(text, yearly)
            if occasion is None:
                verdict = None
            elif target is None:
                verdict = True
            elif yearly:
                assert isinstance(occasion, tuple)
                verdict = in_year(occasion, target.year) == target
            else:
                verdict = occasion == target
            if len(cache) < 100_000:
                cache[text] = verdict
            return verdict

        return due


# -- dates ---------------------------------------------------------------------------------


def in_year(month_day: tuple[int, int], year: int) -> date:
    """``month_day`` in ``year``: 29 February falls on 28 February in other years."""
    month, day = month_day
    if month == 2 and day == 29 and not is_leap(year):
        day = 28
    return date(year, month, day)


def is_leap(year: int) -> bool:
    """The Gregorian rule."""
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def parse_date(text: str, yearly: bool) -> Occasion | None:
    """A cell of the date column: ``YYYY-MM-DD`` (a date; with ``yearly``, its month and day),
    or ``MM-DD`` with ``yearly``; None for anything else (empty, malformed, not a real day)."""
    text = text.strip()
    match = _ISO.match(text)
    if match is not None:
        year, month, day = (int(part) for part in match.groups())
        try:
            found = date(year, month, day)
        except ValueError:
            return None
        return (month, day) if yearly else found
    if yearly and (match := _MONTH_DAY.match(text)) is not None:
        month, day = int(match[1]), int(match[2])
        try:
            date(2000, month, day)  # a leap year: 02-29 is a date
        except ValueError:
            return None
        return month, day
    return None


def date_detail(text: str, column: str, yearly: bool) -> str:
    """Why a cell is not a date, and what to write (the ``invalid_date`` skip's detail)."""
    shown = text.strip() if len(text.strip()) <= 40 else text.strip()[:40] + "…"
    formats = "YYYY-MM-DD or MM-DD" if yearly else "YYYY-MM-DD"
    example = "1990-05-17 or 05-17" if yearly else "2027-05-17"
    if not shown:
        return f'empty "{column}": write a date as {formats}, e.g. {example}'
    if not yearly and _MONTH_DAY.match(shown):
        return (f'"{shown}" in "{column}" has no year: write YYYY-MM-DD, or set yearly = '
                "true in [trigger] to match month and day every year")
    return f'"{shown}" in "{column}" is not a date: write {formats}, e.g. {example}'


# -- names ---------------------------------------------------------------------------------


def day_run_id(campaign_id: str, day: date) -> str:
    """``birthday@2026-12-14``: the run of trigger ``campaign_id`` for day ``day``."""
    return f"{campaign_id}@{day.strftime(DAY_TEXT)}"


_DAY_RUN = re.compile(r"^(?P<trigger>[A-Za-z0-9][A-Za-z0-9._-]{0,63})@(?P<day>\d{4}-\d{2}-\d{2})$")


@dataclass(frozen=True)
class DayRun:
    """A day run id taken apart."""

    trigger: str
    day: date


def parse_day_run(text: str) -> DayRun | None:
    """``birthday@2026-12-14`` as a `DayRun`; None when ``text`` is not one."""
    match = _DAY_RUN.match(text)
    if match is None:
        return None
    try:
        day = datetime.strptime(match["day"], DAY_TEXT).date()
    except ValueError:
        return None
    return DayRun(match["trigger"], day)


# -- validation ----------------------------------------------------------------------------

Report = Callable[[str, str], None]  # (dotted key, message)


class TriggerReader:
    """Validates a ``[trigger]`` table through ``error(key, message)``, as the loader does;
    `read` gives the `Trigger`, or None when anything is wrong. The column's presence in the
    CSV is checked with the other columns (`scheduler.loader`)."""

    def __init__(
        self, table: dict[str, Any], error: Report,
        moment: Callable[[str, object], datetime | None],
    ) -> None:
        self.table = table
        self.error = error
        self.moment = moment  # the loader's reading of a UTC date-time (errors on the key)
        self.failed = False

    def fail(self, key: str, message: str) -> None:
        """Record an error on ``trigger.{key}``."""
        self.failed = True
        self.error(f"trigger.{key}", message)

    def read(self) -> Trigger | None:
        """The validated `Trigger`, or None after reporting every problem."""
        column = self.column()
        yearly = self.yearly()
        offset = self.offset()
        at = self.at()
        until = self.until()
        if self.failed or column is None or at is None:
            return None
        return Trigger(column=column, yearly=yearly, offset_days=offset, at=at, until=until)

    def column(self) -> str | None:
        """``column``: required, the name of the audience's date column."""
        value = self.table.get("column")
        if value is None:
            self.fail("column", 'required key is missing: write column = "birthday" (the '
                      "audience column holding each recipient's date)")
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail("column", f'must be a column name like "birthday", not {value!r}')
            return None
        return value

    def yearly(self) -> bool:
        """``yearly``: true or false (default)."""
        value = self.table.get("yearly", False)
        if not isinstance(value, bool):
            self.fail("yearly", f"must be true or false, not {value!r}")
            return False
        return value

    def offset(self) -> int:
        """``offset_days``: whole days within ±366."""
        value = self.table.get("offset_days", 0)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail("offset_days", f"must be a whole number of days like -3 or 7, not "
                      f"{value!r}")
            return 0
        if abs(value) > OFFSET_MAX:
            self.fail("offset_days", f"{value} is beyond ±{OFFSET_MAX} days: write a number "
                      f"from -{OFFSET_MAX} to {OFFSET_MAX} (-3 = three days before the date)")
            return 0
        return value

    def at(self) -> timedelta | None:
        """``at``: "HH:MM", the recipient's local time of day."""
        value = self.table.get("at")
        if value is None:
            self.fail("at", 'required key is missing: write at = "10:00" (the recipient\'s '
                      "local time)")
            return None
        match = _AT.match(value) if isinstance(value, str) else None
        if match is None or int(match[1]) > 23 or int(match[2]) > 59:
            shown = f'"{value}"' if isinstance(value, str) else repr(value)
            self.fail("at", f'{shown} is not a time of day HH:MM: write e.g. at = "10:00" '
                      "(24-hour clock, the recipient's local time)")
            return None
        return timedelta(hours=int(match[1]), minutes=int(match[2]))

    def until(self) -> datetime | None:
        """``until``: an optional UTC date-time."""
        value = self.table.get("until")
        if value is None:
            return None
        moment = self.moment("trigger.until", value)
        if moment is None:
            self.failed = True
        return moment
