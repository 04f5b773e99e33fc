"""Series (SPEC §13.1): a campaign file with ``[repeat]``, its occurrences and their names.

A series is read like any campaign file, plus a ``[repeat]`` table: a 5-field cron read in the
series' own time zone (APScheduler's `CronTrigger.from_crontab` does the arithmetic). Each
occurrence is a run of its own, named ``{id}@YYYYMMDDTHHMMZ`` by people and
``{id}.YYYYMMDDTHHMMZ`` on the wire (the API's id takes ``[A-Za-z0-9._-]`` only), and is sent as
an ordinary campaign of that id whose ``send_at`` is the occurrence's fire time
(`Campaign.occurrence`).

Two rules differ from APScheduler's own answers, both about daylight saving time: a wall-clock
time that does not exist on the change day fires at the moment of the jump (APScheduler would
fire half an hour after it), and one that exists twice fires once (APScheduler fires twice).
And weekday numbers are cron's (0 or 7 = Sunday), not APScheduler 3's (0 = Monday, its issue
#286): the weekday field is handed over as names.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import islice
from typing import Any, Literal
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger
from pydantic import BaseModel, ConfigDict

from scheduler.trigger import parse_day_run
from scheduler.window import zone, zone_names

SeriesAudience = Literal["all", "new"]
AUDIENCES: tuple[SeriesAudience, ...] = ("all", "new")
REPEAT_KEYS = ("cron", "timezone", "start", "until", "audience")
#: two occurrences closer than this are an error (a series is not a message queue)
MIN_GAP = timedelta(hours=1)
#: the time in a run id: minutes, UTC (cron has no seconds)
RUN_TIME = "%Y%m%dT%H%MZ"
_RUN_ID = re.compile(r"^(?P<series>[A-Za-z0-9][A-Za-z0-9._-]{0,63})@(?P<at>\d{8}T\d{4}Z)$")
#: how far `check` looks for two occurrences under `MIN_GAP` apart
_GAP_SCAN = 400
SHOWN = 3  # occurrences shown in `check`'s line and in error messages


class Repeat(BaseModel):
    """``[repeat]``: when a series' occurrences are, and who each one goes to."""

    model_config = ConfigDict(frozen=True)

    cron: str  # as written: cron's weekday numbers (0/7 = Sunday)
    timezone: str  # IANA name; the cron's times are read on this wall clock
    start: datetime | None = None  # UTC; no occurrence before it
    until: datetime | None = None  # UTC; no occurrence at or after it
    audience: SeriesAudience = "all"  # "new": only recipients no earlier occurrence messaged

    @property
    def zone(self) -> ZoneInfo:
        """The series' time zone."""
        return zone(self.timezone)

    def occurrences(self, after: datetime) -> Iterator[datetime]:
        """The fire times (aware, UTC) at or after ``after`` (and ``start``), before ``until``."""
        begin = after if self.start is None else max(after, self.start)
        for fire_at in fire_times(self.cron, self.timezone, begin):
            if self.until is not None and fire_at >= self.until:
                return
            yield fire_at

    def within(self, after: datetime, span: timedelta) -> list[datetime]:
        """The fire times from ``after`` to ``after + span``."""
        end = after + span
        found = []
        for fire_at in self.occurrences(after):
            if fire_at > end:
                break
            found.append(fire_at)
        return found


# -- names -------------------------------------------------------------------------------


def run_id(series_id: str, fire_at: datetime) -> str:
    """``weekly-deals@20261214T0800Z``: the occurrence of ``series_id`` firing at ``fire_at``."""
    return f"{series_id}@{fire_at.astimezone(UTC).strftime(RUN_TIME)}"


def wire_id(campaign_id: str) -> str:
    """The id as the API may see it (its tracking ids' prefix): ``@`` written ``.``."""
    return campaign_id.replace("@", ".")


@dataclass(frozen=True)
class RunId:
    """A run id taken apart: the series and the fire time."""

    series: str
    fire_at: datetime


def parse_run_id(text: str) -> RunId | None:
    """``weekly-deals@20261214T0800Z`` as a `RunId`; None when ``text`` is not a run id."""
    match = _RUN_ID.match(text)
    if match is None:
        return None
    try:
        at = datetime.strptime(match["at"], RUN_TIME).replace(tzinfo=UTC)
    except ValueError:
        return None
    return RunId(match["series"], at)


def run_of(campaign_id: str) -> str | None:
    """The series (or trigger, SPEC §13.2) whose run ``campaign_id`` is; None for a one-off."""
    parsed = parse_run_id(campaign_id)
    if parsed is not None:
        return parsed.series
    day_run = parse_day_run(campaign_id)
    return None if day_run is None else day_run.trigger


def is_run_of(campaign_id: str, series_id: str) -> bool:
    """True when ``campaign_id`` is an occurrence of the series ``series_id`` (or a day run
    of the trigger ``series_id``)."""
    return run_of(campaign_id) == series_id


def names(wanted: str | None, campaign_id: str) -> bool:
    """True when ``--campaign wanted`` takes ``campaign_id``: no filter, the campaign itself,
    or (``wanted`` a series' id) one of its occurrences."""
    return wanted is None or campaign_id == wanted or is_run_of(campaign_id, wanted)


def local_text(fire_at: datetime, zone_name: str) -> str:
    """``2026-12-14 10:00 Mon Europe/Kyiv``: a fire time on the series' wall clock."""
    return fire_at.astimezone(zone(zone_name)).strftime(f"%Y-%m-%d %H:%M %a {zone_name}")


def utc_minute(fire_at: datetime) -> str:
    """``2026-12-14T08:00Z``."""
    return fire_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def describe(fire_at: datetime, zone_name: str) -> str:
    """``2026-12-14T08:00Z (2026-12-14 10:00 Mon Europe/Kyiv)``."""
    return f"{utc_minute(fire_at)} ({local_text(fire_at, zone_name)})"


# -- occurrences -------------------------------------------------------------------------


_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def crontab(expression: str) -> str:
    """``expression`` with its weekday field written as names (cron's 1 is Monday, APScheduler
    3's is Tuesday); a field this cannot read is handed over unchanged for APScheduler to judge."""
    fields = expression.split()
    if len(fields) != 5 or fields[4] in ("*", "?"):
        return " ".join(fields)
    days = _weekday_set(fields[4].lower())
    if days is None:
        return " ".join(fields)
    fields[4] = ",".join(_WEEKDAYS[d] for d in sorted(days))
    return " ".join(fields)


def _weekday_set(field: str) -> set[int] | None:
    """Cron's weekdays (0 = Sunday) of a weekday field, or None when it is not plain cron."""
    days: set[int] = set()
    for part in field.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            return None
        if base == "*":
            low, high = 0, 6
        else:
            ends = [_weekday(e) for e in base.split("-")]
            if len(ends) > 2 or None in ends:
                return None
            low = ends[0] or 0
            high = (ends[-1] or 0) if len(ends) == 2 else (6 if step else low)
            if len(ends) == 2 and ends[-1] == 7:
                high = 7
            if high < low:
                return None
        days.update(d % 7 for d in range(low, high + 1, step or 1))
    return days


def _weekday(text: str) -> int | None:
    if text.isdigit():
        number = int(text)
        return number if 0 <= number <= 7 else None
    return _WEEKDAYS.index(text) if text in _WEEKDAYS else None


@lru_cache(maxsize=256)
def trigger(expression: str, zone_name: str) -> CronTrigger:
    """APScheduler's trigger for a cron read in ``zone_name``; `ValueError` when invalid."""
    return CronTrigger.from_crontab(crontab(expression), timezone=zone(zone_name))


def fire_times(expression: str, zone_name: str, after: datetime) -> Iterator[datetime]:
    """Every fire time (aware, UTC) at or after ``after``, with SPEC §13.1's DST rules: a wall
    time skipped by the change fires at the jump, one that happens twice fires once."""
    cron, tz = trigger(expression, zone_name), zone(zone_name)
    previous: datetime | None = None
    last_wall: datetime | None = None
    last: datetime | None = None
    now = after
    while (fired := cron.get_next_fire_time(previous, now)) is not None:
        previous = now = fired
        wall = fired.replace(tzinfo=None)
        if wall == last_wall:
            continue  # the second pass of a wall time that happens twice
        last_wall = wall
        moment = fired.astimezone(UTC)
        if moment.astimezone(tz).replace(tzinfo=None) != wall:
            moment = _jump(wall, tz)  # a wall time the change skips
        if moment >= after and (last is None or moment > last):  # the jump may meet the next
            last = moment
            yield moment


def _jump(wall: datetime, tz: ZoneInfo) -> datetime:
    """The moment (UTC) the clocks jump over ``wall``, a wall time that does not exist."""
    low = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)  # read with the offset after
    high = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)  # ... and before
    low, high = min(low, high), max(low, high)
    before = low.astimezone(tz).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).utcoffset() == before:
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0)


def nominal_gap(expression: str, zone_name: str, after: datetime) -> list[datetime] | None:
    """The first fire times up to a pair under `MIN_GAP` apart (DST moves aside), or None."""
    minute, hour = [*expression.split(), "", ""][:2]
    if minute.isdigit() and hour.isdigit():
        # one wall time a day: two fire times are whole days apart on the wall clock, and no
        # zone's offset ever changed by 23 hours, so none are under an hour apart (the scan
        # below would say so after `_GAP_SCAN` fire times: a quarter of `plan`'s time)
        return None
    return scanned_gap(expression, zone_name, after)


def scanned_gap(expression: str, zone_name: str, after: datetime) -> list[datetime] | None:
    """`nominal_gap` by walking the first `_GAP_SCAN` fire times."""
    cron, tz = trigger(expression, zone_name), zone(zone_name)
    times: list[datetime] = []
    previous: datetime | None = None
    now = after
    for _ in range(_GAP_SCAN):
        fired = cron.get_next_fire_time(previous, now)
        if fired is None:
            return None
        previous = now = fired
        if fired.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != fired.replace(tzinfo=None):
            continue  # skipped by a DST change: where it fires is the jump's business
        if times and times[-1].replace(tzinfo=None) == fired.replace(tzinfo=None):
            continue  # the second pass of a repeated wall time: not fired
        times.append(fired.astimezone(UTC))
        if len(times) > 1 and times[-1] - times[-2] < MIN_GAP:
            return times
    return None


# -- validation --------------------------------------------------------------------------

Report = Callable[[str, str], None]  # (dotted key, message)


class RepeatReader:
    """Validates a ``[repeat]`` table, reporting through ``error(key, message)`` like the
    loader does; `read` gives the `Repeat`, or None when anything is wrong."""

    def __init__(
        self, table: dict[str, Any], error: Report, moment: Callable[[str, object],
                                                                    datetime | None],
        now: datetime, horizon: timedelta,
    ) -> None:
        self.table = table
        self.error = error
        self.moment = moment  # the loader's reading of a UTC date-time (errors on the key)
        self.now = now
        self.horizon = horizon
        self.failed = False

    def fail(self, key: str, message: str) -> None:
        """Record an error on ``repeat.{key}``."""
        self.failed = True
        self.error(f"repeat.{key}", message)

    def read(self) -> Repeat | None:
        """The validated `Repeat`, or None after reporting every problem."""
        zone_name = self.zone()
        cron = self.cron(zone_name)
        start, until = self.bound("start"), self.bound("until")
        audience = self.audience()
        if self.failed or cron is None or zone_name is None:
            return None
        repeat = Repeat(cron=cron, timezone=zone_name, start=start, until=until,
                        audience=audience)
        return repeat if self.timing(repeat) else None

    def cron(self, zone_name: str | None) -> str | None:
        """``cron``: 5 fields APScheduler can read."""
        value = self.table.get("cron")
        if value is None:
            self.fail("cron", 'required key is missing: write cron = "0 10 * * MON" '
                      "(minute hour day month weekday)")
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail("cron", 'must be text like "0 10 * * MON" (minute hour day month weekday)')
            return None
        try:
            trigger(value, zone_name or "UTC")
        except ValueError as exc:
            self.fail("cron", f'"{value}" is not a cron expression: {exc} (write minute hour '
                      'day month weekday, like "0 10 * * MON")')
            return None
        return value

    def zone(self) -> str | None:
        """``timezone``: required, an IANA name."""
        value = self.table.get("timezone")
        if value is None:
            self.fail("timezone", 'required key is missing: the zone the cron is read in, '
                      'like timezone = "Europe/Kyiv"')
            return None
        if not isinstance(value, str) or value not in zone_names():
            shown = f'"{value}"' if isinstance(value, str) else repr(value)
            self.fail("timezone", f"{shown} is not an IANA time zone{_zone_hint(value)}")
            return None
        return value

    def bound(self, key: str) -> datetime | None:
        """``start`` / ``until``: UTC date-times; ``start`` at most 30 days ahead."""
        value = self.table.get(key)
        if value is None:
            return None
        moment = self.moment(f"repeat.{key}", value)
        if moment is None:
            self.failed = True
            return None
        latest = self.now + self.horizon
        if key == "start" and moment > latest:
            self.fail(key, f"{utc_minute(moment)} is more than 30 days ahead: the latest "
                      f"allowed now is {utc_minute(latest)}")
            return None
        return moment

    def audience(self) -> SeriesAudience:
        """``audience``: "all" (default) or "new" (evergreen)."""
        value = self.table.get("audience", "all")
        for known in AUDIENCES:
            if value == known:
                return known
        self.fail("audience", f'{value!r} is not a series audience: write "all" (the whole '
                  'CSV each time) or "new" (only those the series never messaged)')
        return "all"

    def timing(self, repeat: Repeat) -> bool:
        """Occurrences exist before ``until`` and are at least an hour apart."""
        begin = self.now if repeat.start is None else max(self.now, repeat.start)
        if repeat.until is not None and repeat.start is not None and repeat.until <= repeat.start:
            self.fail("until", f"{utc_minute(repeat.until)} is not after start "
                      f"({utc_minute(repeat.start)})")
            return False
        close = nominal_gap(repeat.cron, repeat.timezone, begin)
        if close is not None:
            shown = ", ".join(describe(t, repeat.timezone) for t in close[:SHOWN + 1])
            self.fail("cron", f'"{repeat.cron}" repeats less than an hour apart ({shown}): a '
                      "series may go at most once an hour")
            return False
        if next(repeat.occurrences(self.now), None) is None:
            ending = (f"before until ({utc_minute(repeat.until)})" if repeat.until is not None
                      else "ever")
            self.fail("cron", f'"{repeat.cron}" in {repeat.timezone} has no occurrence from '
                      f"{utc_minute(begin)} {ending}{_first_after(repeat, begin)}")
            return False
        return True


def _first_after(repeat: Repeat, begin: datetime) -> str:
    """``: its first ones are …`` (ignoring ``until``), or nothing when there are none."""
    first = list(islice(fire_times(repeat.cron, repeat.timezone, begin), SHOWN))
    if not first:
        return ""
    return ": its first ones would be " + ", ".join(describe(t, repeat.timezone) for t in first)


def _zone_hint(value: object) -> str:
    """``: did you mean "Europe/Kyiv"?`` for a near miss, else an example."""
    if isinstance(value, str):
        names = {name.lower(): name for name in zone_names()}
        if value.lower() in names:
            return f': did you mean "{names[value.lower()]}"?'
        close = difflib.get_close_matches(value.lower(), list(names), n=1, cutoff=0.6)
        if close:
            return f': did you mean "{names[close[0]]}"?'
    return ': write a name like "Europe/Kyiv" or "America/New_York"'


def next_occurrences(repeat: Repeat, now: datetime, count: int = SHOWN) -> list[datetime]:
    """The next ``count`` fire times from ``now``."""
    return list(islice(repeat.occurrences(now), count))


def series_line(repeat: Repeat, first: datetime) -> str:
    """`check`'s line: ``next occurrences: 2026-12-14T08:00Z (2026-12-14 10:00 Mon
    Europe/Kyiv), …`` from ``first`` (the series' next occurrence), audience said."""
    shown = ", ".join(describe(t, repeat.timezone) for t in next_occurrences(repeat, first))
    who = ("evergreen: only recipients no earlier occurrence messaged" if repeat.audience == "new"
           else "the whole CSV each time")
    return f"next occurrences: {shown}; {who}"
