"""Which occurrences of a series the daemon runs now (SPEC §13.1), from the series file and the
journal's campaign records, never from APScheduler's memory.

Each occurrence the daemon plans becomes a campaign of its own in the journal (id: its run id),
as soon as it is the series' next one; so after a restart or a change of leader the records
say what ran, what waits, and since when nothing did. The rules:

- no catch-up bursts: of the occurrences due since the last one the journal knows, only the
  latest may still go (under the TTL rule of SPEC §7: the engine expires what is too late);
  the older ones are ``missed``;
- an occurrence that started carries on (or stays paused, braked…) like any campaign;
- the next occurrence is planned ahead (snapshot, timer); an occurrence planned earlier that
  the edited file no longer has is cancelled: edits apply to future occurrences.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from scheduler.campaign import Campaign
from scheduler.journal import CampaignRecord
from scheduler.series import parse_run_id
from scheduler.vocabulary import ENDED

#: the reason a missed occurrence is recorded with, and a skipped one's (SPEC §13.1)
MISSED = "missed"
PREVIOUS_RUNNING = "previous_running"
NO_LONGER = "no longer an occurrence: the series file changed"
_STEP = timedelta(seconds=1)


@dataclass
class Decision:
    """What to do with a series now: occurrences to run or keep, unstarted ones to cancel (with
    why), missed ones never planned, and when to look again."""

    run: list[Campaign] = field(default_factory=list)
    cancel: dict[str, str] = field(default_factory=dict)  # run id -> reason
    missed: list[str] = field(default_factory=list)  # run ids never planned, now past
    next_at: datetime | None = None  # the next occurrence's fire time


def runs_of(series_id: str, records: Iterable[CampaignRecord]) -> dict[datetime, CampaignRecord]:
    """The journal's occurrences of ``series_id``, by fire time."""
    found = {}
    for record in records:
        parsed = parse_run_id(record.id)
        if parsed is not None and parsed.series == series_id:
            found[parsed.fire_at] = record
    return found


def decide(series: Campaign, records: Iterable[CampaignRecord], now: datetime) -> Decision:
    """The occurrences of ``series`` to run (or keep running) now, by the rules above."""
    repeat = series.repeat
    assert repeat is not None
    runs = runs_of(series.id, records)
    decision = Decision()
    # first what carries on (a due occurrence must see it sending: it never overlaps it)
    for fire_at, record in sorted(runs.items()):
        if record.started_at is not None and record.state not in ENDED:
            decision.run.append(series.occurrence(fire_at))
    due = _due(series, runs, now)
    if due:
        *older, latest = due
        decision.run.append(series.occurrence(latest))
        for fire_at in older:
            planned = runs.get(fire_at)
            if planned is None:
                decision.missed.append(series.occurrence(fire_at).id)
            else:
                decision.cancel[planned.id] = MISSED
    upcoming = next(repeat.occurrences(now + _STEP), None)
    if upcoming is not None:
        decision.next_at = upcoming
        decision.run.append(series.occurrence(upcoming))
    for fire_at, record in runs.items():
        if fire_at > now and fire_at != upcoming and record.started_at is None and (
                record.state not in ENDED):
            decision.cancel[record.id] = NO_LONGER
    return decision


def _due(series: Campaign, runs: dict[datetime, CampaignRecord], now: datetime) -> list[datetime]:
    """Fire times at or before ``now`` still to decide: the series' occurrences since the last
    one the journal knows (none before the first: a new series starts from now), and the
    planned ones that never started."""
    assert series.repeat is not None
    due = {t for t, r in runs.items() if t <= now and r.started_at is None and
           r.state not in ENDED}
    if runs:
        for fire_at in series.repeat.occurrences(max(runs) + _STEP):
            if fire_at > now:
                break
            due.add(fire_at)
    return sorted(due)
