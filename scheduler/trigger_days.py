"""Which day runs of a trigger the daemon runs now (SPEC §13.2), from the trigger file and the
journal's campaign records, never from APScheduler's memory (as `scheduler.recurrence` does for
series).

A day's run lives from its first release (``at`` in UTC+14) to its deadline (``at`` in UTC−12
plus ``ttl``); the runs of neighbouring days overlap, and that is fine: a recipient is due on one
day only. The rules:

- every day whose run is live now runs (or carries on); its zone groups whose own ``ttl``
  passed while no daemon ran end ``expired`` (the TTL rule, applied per group by the gate);
- a day whose whole run passed while no daemon ran is ``missed`` (announced, never sent late);
- the next day's run is planned ahead (snapshot, timer); a planned run the edited file no
  longer has (``until``, ``at`` moved) is cancelled.

At most one message per recipient per date occurrence comes from the journal: a day's run is
one campaign (its id ``{id}@YYYY-MM-DD``), snapshotted once and frozen when it starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta

from scheduler.campaign import Campaign
from scheduler.journal import CampaignRecord
from scheduler.recurrence import MISSED, NO_LONGER, Decision
from scheduler.trigger import parse_day_run
from scheduler.vocabulary import ENDED

_STEP = timedelta(seconds=1)


def day_runs_of(trigger_id: str, records: Iterable[CampaignRecord]) -> dict[date, CampaignRecord]:
    """The journal's day runs of ``trigger_id``, by day."""
    found = {}
    for record in records:
        parsed = parse_day_run(record.id)
        if parsed is not None and parsed.trigger == trigger_id:
            found[parsed.day] = record
    return found


def live_days(campaign: Campaign, now: datetime) -> list[date]:
    """The days whose run has started and not reached its deadline at ``now``."""
    trigger = campaign.trigger
    assert trigger is not None
    life = timedelta(seconds=campaign.ttl)
    first = (now - life - timedelta(days=3)).date()
    days = []
    for offset in range(6 + life.days):
        day = first + timedelta(days=offset)
        starts = trigger.first_release(day)
        if starts > now:
            break
        if trigger.until is not None and starts >= trigger.until:
            break
        if now < trigger.last_release(day) + life:
            days.append(day)
    return days


def decide_days(
    campaign: Campaign, records: Iterable[CampaignRecord], now: datetime,
) -> Decision:
    """The day runs of ``campaign`` (a trigger file) to run or keep, cancel, or call missed."""
    trigger = campaign.trigger
    assert trigger is not None
    runs = day_runs_of(campaign.id, records)
    decision = Decision()
    live = live_days(campaign, now)
    for day, record in sorted(runs.items()):
        if record.started_at is not None and record.state not in ENDED and day not in live:
            decision.run.append(campaign.day_run(day))  # started, still open: carries on
    for day in live:
        known = runs.get(day)
        if known is None or known.state not in ENDED:
            decision.run.append(campaign.day_run(day))
    upcoming = next(trigger.days_from(now + _STEP), None)
    if upcoming is not None:
        decision.next_at = trigger.first_release(upcoming)
        decision.run.append(campaign.day_run(upcoming))
    kept = set(live) | ({upcoming} if upcoming is not None else set())
    for day, record in runs.items():
        if day in kept or record.started_at is not None or record.state in ENDED:
            continue
        decision.cancel[record.id] = MISSED if trigger.first_release(day) <= now else NO_LONGER
    if runs:  # days since the last one the journal knows that passed whole: missed
        day = max(runs) + timedelta(days=1)
        while trigger.first_release(day) <= now and (
                trigger.until is None or trigger.first_release(day) < trigger.until):
            if day not in live:
                decision.missed.append(campaign.day_run(day).id)
            day += timedelta(days=1)
    return decision
