"""How many rows of a trigger's audience are due on each of the coming days (SPEC §13.2), for
`check`: one streamed pass over the date column (the file is never held in memory).

Each day D's run takes the rows whose date + ``offset_days`` is D; so a day is found by the
row's date alone: a table from the date (or, yearly, the month and day) to the day it is due
makes it one look-up a row. Rows with no date in the accepted format are counted apart
(``invalid_date``); the other row rules (phone, duplicates…) are `check`'s usual summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

from scheduler.campaign import Campaign
from scheduler.csvfile import has_values, open_table
from scheduler.trigger import Occasion, in_year, is_leap, parse_date

DAYS_SHOWN = 7  # `check` looks this many day runs ahead


@dataclass
class DueCounts:
    """Rows due per day (in the days asked about), and rows without a valid date."""

    days: dict[date, int] = field(default_factory=dict)
    invalid: int = 0


def due_table(campaign: Campaign, days: Sequence[date]) -> dict[Occasion, date]:
    """The date (yearly: the month and day) of the rows due on each of ``days``."""
    trigger = campaign.trigger
    assert trigger is not None
    table: dict[Occasion, date] = {}
    for day in days:
        target = day - timedelta(days=trigger.offset_days)
        if not trigger.yearly:
            table[target] = day
            continue
        table[(target.month, target.day)] = day
        if target.month == 2 and target.day == 28 and not is_leap(target.year):
            table[(2, 29)] = day  # 29 February falls on 28 February in other years
        assert in_year((target.month, target.day), target.year) == target
    return table


def due_counts(campaign: Campaign, days: Sequence[date]) -> DueCounts:
    """Stream the audience's date column: how many rows are due on each of ``days``.
    Raises OSError or `scheduler.csvfile.CsvProblem` as reading the audience does."""
    trigger = campaign.trigger
    assert trigger is not None
    table = due_table(campaign, days)
    counts = DueCounts(days=dict.fromkeys(days, 0))
    yearly, found = trigger.yearly, counts.days
    seen: dict[str, Occasion | None] = {}
    with open_table(campaign.audience.csv, campaign.audience.delimiter) as csv_table:
        at = csv_table.column(trigger.column)
        if at is None:
            return counts  # the loader says so, with the file's line
        for row in csv_table.reader:
            text = row[at] if at < len(row) else ""
            if not text and not has_values(row):
                continue  # a blank line is not a row
            occasion = seen.get(text, 0)
            if occasion == 0:
                occasion = parse_date(text, yearly)
                if len(seen) < 100_000:
                    seen[text] = occasion
            if occasion is None:
                counts.invalid += 1
                continue
            day = table.get(occasion)  # type: ignore[arg-type]
            if day is not None:
                found[day] += 1
    return counts


def next_days(
    campaign: Campaign, count: int = DAYS_SHOWN, today: date | None = None,
) -> list[date]:
    """The days of the trigger's next ``count`` runs: from its next one (``send_at``), or
    from ``today`` (`check`: the UTC date now, whose run may have started in the zones east of
    UTC already), up to ``until``."""
    trigger = campaign.trigger
    assert trigger is not None
    first = next(trigger.days_from(campaign.send_at), None)
    if first is None:
        return []
    day = first if today is None else min(today, first)
    days: list[date] = []
    while len(days) < count and (trigger.until is None
                                 or trigger.first_release(day) < trigger.until):
        days.append(day)
        day += timedelta(days=1)
    return days


def due_line(campaign: Campaign, counts: DueCounts) -> str:
    """`check`'s line: ``due in the next 7 days: 2026-12-08 3, 2026-12-09 0, …``."""
    trigger = campaign.trigger
    assert trigger is not None
    shown = ", ".join(f"{day.isoformat()} {n:,}" for day, n in counts.days.items())
    total = sum(counts.days.values())
    return (f"trigger on {trigger.column} at {trigger.at_text} local: due in the "
            f"{len(counts.days)} days from {min(counts.days).isoformat()}: {total:,} "
            f"({shown})")
