"""Send windows: the hours of the day (and days of the week) in the recipient's local time when a
campaign may reach them (SPEC §11.4).

A `Window` is a rule on top of ``send_at`` (which stays UTC): it answers "from when, and until
when, may a message go to someone in these zones?". A recipient whose phone prefix spans several
zones is reachable only when the moment is inside the window in every one of them (fail closed).
Daylight-saving changes are `zoneinfo`'s business: each day's opening and closing are local
wall-clock times turned into UTC for that date.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

DAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EVERY_DAY: frozenset[int] = frozenset(range(7))
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_NUMBERS = {name: n for names in (DAYS, _FULL_DAYS) for n, name in enumerate(names)}
_HOURS = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
WINDOW_EXAMPLE = '"09:00-20:00"'

Stretch = tuple[datetime, datetime]  # [opens, closes) in UTC
_SECOND = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Window:
    """Daily opening hours ``[opens, closes)`` in local time, on ``days`` (0 = Monday)."""

    opens: timedelta  # since local midnight
    closes: timedelta  # since local midnight; at most 24 h, after ``opens``
    days: frozenset[int] = EVERY_DAY

    @classmethod
    def parse(cls, text: str, days: Sequence[str] | None = None) -> Window:
        """``"09:00-20:00"`` and optional ``["mon", …]``; `ValueError` says what to write."""
        match = _HOURS.match(text)
        if match is None:
            raise ValueError(f'"{text}" is not a window: write HH:MM-HH:MM, e.g. {WINDOW_EXAMPLE}')
        h1, m1, h2, m2 = (int(part) for part in match.groups())
        if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2):
            raise ValueError(f'"{text}" has an hour past 24:00 or a minute past 59: '
                             f"write e.g. {WINDOW_EXAMPLE}")
        opens, closes = timedelta(hours=h1, minutes=m1), timedelta(hours=h2, minutes=m2)
        if closes <= opens:
            raise ValueError(
                f'"{text}" closes before it opens: a window lies within one local day, '
                f'e.g. {WINDOW_EXAMPLE} (for "until midnight" write "09:00-24:00")'
            )
        return cls(opens, closes, parse_days(days) if days is not None else EVERY_DAY)

    def text(self) -> str:
        """The window as written in campaign files (``09:00-20:00``, days when not every day)."""
        def hhmm(span: timedelta) -> str:
            minutes = int(span.total_seconds()) // 60
            return f"{minutes // 60:02d}:{minutes % 60:02d}"
        hours = f"{hhmm(self.opens)}-{hhmm(self.closes)}"
        if self.days == EVERY_DAY:
            return hours
        return hours + " " + ",".join(DAYS[d] for d in sorted(self.days))

    def stretches(self, zone: ZoneInfo, start: datetime, end: datetime) -> list[Stretch]:
        """The window's open stretches in ``zone`` that overlap ``[start, end)``, in UTC."""
        first = start.astimezone(zone).date() - timedelta(days=1)
        last = end.astimezone(zone).date() + timedelta(days=1)
        found: list[Stretch] = []
        day = first
        while day <= last:
            if day.weekday() in self.days:
                opens, closes = _local(day, self.opens, zone), _local(day, self.closes, zone)
                if closes > start and opens < end and closes > opens:
                    found.append((opens, closes))
            day += timedelta(days=1)
        return found

    def next_stretch(
        self, zones: Sequence[ZoneInfo], moment: datetime, until: datetime,
    ) -> Stretch | None:
        """The first stretch ``[go, close)`` with ``moment <= go < until`` during which the
        window is open in every zone of ``zones`` (``go`` is ``moment`` when it is open now);
        None when it does not open before ``until``."""
        if until <= moment:
            return None
        common = self.stretches(zones[0], moment, until)
        for zone in zones[1:]:
            common = _intersect(common, self.stretches(zone, moment, until))
        for opens, closes in common:
            if closes > moment and opens < until:
                return max(opens, moment), closes
        return None


def parse_days(days: Iterable[str]) -> frozenset[int]:
    """``["mon", "sat"]`` as weekday numbers; `ValueError` names a bad one."""
    chosen: set[int] = set()
    for day in days:
        number = _DAY_NUMBERS.get(str(day).strip().lower())
        if number is None:
            raise ValueError(f'"{day}" is not a day: write {", ".join(DAYS)}')
        chosen.add(number)
    if not chosen:
        raise ValueError('no day is listed: write e.g. ["mon", "tue", "wed", "thu", "fri"]')
    return frozenset(chosen)


def local_moment(day: date, since_midnight: timedelta, zone: ZoneInfo) -> datetime:
    """The moment (UTC) ``zone``'s wall clock first reads ``day`` + ``since_midnight`` (a time
    a clock change skips: the jump)."""
    return _local(day, since_midnight, zone)


def _local(day: date, since_midnight: timedelta, zone: ZoneInfo) -> datetime:
    """The first moment at which the wall clock of ``zone`` reads ``day`` + ``since_midnight``
    or later, in UTC (24:00 is the next day's midnight). For a time a clock change skips (02:30
    when 02:00 jumps to 03:00) that is the moment of the jump; for a time it repeats, the
    first of the two."""
    wall = datetime.combine(day, time()) + since_midnight
    moment = wall.replace(tzinfo=zone).astimezone(UTC)
    if _wall(moment, zone) == wall:
        return moment
    # skipped: the jump lies between the two readings of the offset; find it to the second
    early = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    early, late = min(early, moment), max(early, moment)
    while late - early > _SECOND:
        middle = early + (late - early) / 2
        if _wall(middle, zone) >= wall:
            late = middle
        else:
            early = middle
    return late.replace(microsecond=0) + (_SECOND if late.microsecond else timedelta())


def _wall(moment: datetime, zone: ZoneInfo) -> datetime:
    """What the wall clock of ``zone`` reads at ``moment`` (naive)."""
    return moment.astimezone(zone).replace(tzinfo=None)


def _intersect(left: list[Stretch], right: list[Stretch]) -> list[Stretch]:
    """The overlaps of two sorted lists of disjoint stretches."""
    out: list[Stretch] = []
    i = j = 0
    while i < len(left) and j < len(right):
        opens, closes = max(left[i][0], right[j][0]), min(left[i][1], right[j][1])
        if opens < closes:
            out.append((opens, closes))
        if left[i][1] < right[j][1]:
            i += 1
        else:
            j += 1
    return out


@lru_cache(maxsize=1)
def zone_names() -> frozenset[str]:
    """Every IANA zone name this machine's time-zone data knows."""
    return frozenset(available_timezones())


@lru_cache(maxsize=4096)
def zone(name: str) -> ZoneInfo:
    """The `ZoneInfo` of an IANA name (cached); `ValueError` when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f'"{name}" is not an IANA time zone: write e.g. "Europe/Kyiv"') from None


def zone_group(names: Iterable[str]) -> str:
    """Several zones as one key (sorted, space-separated): how batches record their zones."""
    return " ".join(sorted(set(names)))


@lru_cache(maxsize=4096)
def zones_of_group(group: str) -> tuple[ZoneInfo, ...]:
    """The zones of a `zone_group` key."""
    return tuple(zone(name) for name in group.split())
