"""`status`: what the journal says is happening now — the daemons, the leader, every series
(SPEC §13.1: its next occurrence, the running one, paused) and every campaign that has not
ended (or still awaits delivery statuses), with its progress, rate and ETA.

It reads the journal only (either backend), so it answers from any machine that can reach it
and does not need a daemon's cooperation; a daemon's presence is the heartbeat it writes every
few seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from scheduler.campaign import Campaign, Rollout, utc_text
from scheduler.config import Config
from scheduler.journal import CampaignRecord, JournalReader, holder_parts
from scheduler.loader import load_campaign
from scheduler.report import AccountOf, awaiting_status
from scheduler.series import local_text, names, parse_run_id, run_id
from scheduler.trigger import EARLIEST, Trigger, day_run_id, parse_day_run
from scheduler.vocabulary import ENDED
from scheduler.window_gate import Held, gated, held_back

#: the campaign an unfinished record was planned from, as its file says now (a series'
#: occurrence, a trigger's day run), or None: its roll-out's stages and hold, its window and
#: its zones' release times live in its file, not in the journal
CampaignOf = Callable[[CampaignRecord], Campaign | None]
#: the series file an occurrence's record was planned from (its cron, zone and ``paused`` live
#: there), or None when this machine does not have it (or it is no longer that series)
SeriesOf = Callable[[CampaignRecord], Campaign | None]

DAEMON_COLUMNS = ("role", "host", "pid", "since")
SERIES_COLUMNS = ("series", "state", "next_at", "next_local", "running")
CAMPAIGN_COLUMNS = (
    "campaign", "type", "state", "sent", "recipients", "pending", "resent", "rate_per_s", "eta",
    "stage", "stage_starts", "awaiting_status", "error",
)


@dataclass(frozen=True)
class Status:
    """The journal's view, ready to print: daemons, the leader, campaigns not ended."""

    leader: str | None
    daemons: list[dict[str, Any]]
    campaigns: list[dict[str, Any]]
    #: a row per series the journal has occurrences of, while it goes on (SPEC §13.1)
    series: list[dict[str, Any]]

    @property
    def has_leader(self) -> bool:
        """True when some daemon (or a foreground `send`) holds the lease: campaigns move."""
        return self.leader is not None

    def as_json(self) -> dict[str, Any]:
        """The whole status as one JSON object."""
        return asdict(self)


def _no_campaign(record: CampaignRecord) -> Campaign | None:
    return None


def _no_series(record: CampaignRecord) -> Campaign | None:
    return None


class CampaignFiles:
    """The campaign files the journal names, each read once (when this machine has them): a
    staged campaign's stage and ETA need its stages and hold, a series its cron and zone."""

    def __init__(self, config: Config, now: datetime) -> None:
        self.config = config
        self.now = now
        self._read: dict[str, Campaign | None] = {}

    def campaign(self, record: CampaignRecord) -> Campaign | None:
        """The campaign (or series) ``record`` was planned from, as its file says now."""
        if not record.file:
            return None
        if record.file not in self._read:
            self._read[record.file] = load_campaign(Path(record.file), self.config,
                                                    self.now).campaign
        campaign = self._read[record.file]
        if campaign is None or not names(campaign.id, record.id):  # (series: its occurrences)
            return None
        return campaign

    def run(self, record: CampaignRecord) -> Campaign | None:
        """`CampaignOf`: the campaign an unfinished record is, from its file: the file's own
        campaign, a series' occurrence or a trigger's day run."""
        if record.state in ENDED or (campaign := self.campaign(record)) is None:
            return None
        if campaign.trigger is not None:
            day_run = parse_day_run(record.id)
            return None if day_run is None else campaign.day_run(day_run.day)
        if campaign.repeat is not None:
            return campaign.occurrence(record.send_at)
        return campaign

    def series(self, record: CampaignRecord) -> Campaign | None:
        """`SeriesOf`: the series an occurrence belongs to."""
        campaign = self.campaign(record)
        return campaign if campaign is not None and (
            campaign.repeat is not None or campaign.trigger is not None) else None


def read_status(
    journal: JournalReader, now: datetime, campaign_of: CampaignOf = _no_campaign, *,
    reports: bool = False, series_of: SeriesOf = _no_series, account_of: AccountOf = None,
) -> Status:
    """Gather the status from a started journal reader (``campaign_of``: each unfinished
    campaign as its file says, for its roll-out's stage and an ETA that counts the holds of
    its stages, its window and its zones' releases; ``reports``: delivery reports
    are on, so sent messages await their delivery status; ``series_of``: an occurrence's
    series file, for its next occurrence in local time and ``paused``; ``account_of``: with
    several accounts, each campaign's)."""
    leader = journal.leader()
    daemons = [
        {"role": "leader" if d.holder == leader else "standby", "host": d.host, "pid": d.pid,
         "since": utc_text(d.since), "holder": d.holder}
        for d in journal.daemons()
    ]
    if leader is not None and all(d["holder"] != leader for d in daemons):
        daemons.insert(0, _lease_only(leader))  # a foreground `send` holds it
    records = journal.campaigns()
    campaigns = [row for row in (_campaign(journal, record, now, campaign_of(record), reports,
                                           account_of)
                                 for record in records)
                 if row["state"] not in ENDED or row["awaiting_status"]]
    return Status(leader, daemons, campaigns, series_rows(records, now, series_of))


def series_rows(
    records: list[CampaignRecord], now: datetime, series_of: SeriesOf = _no_series,
) -> list[dict[str, Any]]:
    """A row per series the journal has occurrences of, while it goes on: its next occurrence
    (run id, UTC, and on the series' wall clock when its file is here), the occurrence running
    (started, not ended) if any, and its state: ``paused`` (its file says so, or without the
    file its planned occurrence is paused) or ``active``. A series whose occurrences all ended
    and whose file is gone (or has no occurrence left) has ended: no row."""
    by_series: dict[str, list[tuple[datetime, CampaignRecord]]] = {}
    for record in records:
        parsed = parse_run_id(record.id)
        if parsed is not None:
            by_series.setdefault(parsed.series, []).append((parsed.fire_at, record))
        elif (day_run := parse_day_run(record.id)) is not None:  # a trigger's (SPEC §13.2)
            by_series.setdefault(day_run.trigger, []).append((record.send_at, record))
    rows = []
    for series_id, runs in sorted(by_series.items()):
        runs.sort(key=lambda run: run[0])
        live = [(at, r) for at, r in runs if r.state not in ENDED]
        running = [(at, r) for at, r in live if r.started_at is not None]
        planned = [(at, r) for at, r in live if r.started_at is None and at > now]
        series = series_of(runs[-1][1])
        next_at = planned[0][0] if planned else None
        if series is not None and series.repeat is not None:
            started = {at for at, r in runs if r.started_at is not None}
            next_at = next((at for at in series.repeat.occurrences(now) if at not in started),
                           None)
        trigger = series.trigger if series is not None else None
        if trigger is not None:
            started = {at for at, r in runs if r.started_at is not None}
            next_at = next((at for at in map(trigger.first_release, trigger.days_from(now))
                            if at not in started), None)
        if next_at is None and not running:
            continue  # ended
        paused = (series.paused if series is not None
                  else any(r.state == "paused" for _, r in live))
        zone = series.repeat.timezone if series is not None and series.repeat else None
        current = running[-1][1] if running else None
        rows.append({
            "series": series_id, "state": "paused" if paused else "active",
            "cron": series.repeat.cron if series is not None and series.repeat else None,
            "timezone": zone,
            "next": _run_name(series_id, next_at, trigger),
            "next_at": utc_text(next_at) if next_at is not None else None,
            # on the series' wall clock (None: its file is not on this machine)
            "next_local": local_text(next_at, zone) if next_at and zone else (
                f"{trigger.at_text} in each recipient's zone" if trigger and next_at else None),
            "running": current.id if current is not None else None,
            "running_state": current.state if current is not None else None,
        })
    return rows


def _run_name(series_id: str, next_at: datetime | None, trigger: Trigger | None) -> str | None:
    """The next run's id: a series' occurrence, or a trigger's day run (the day in UTC+14 at
    its first release, when it is ``at`` there)."""
    if next_at is None:
        return None
    if trigger is None:
        return run_id(series_id, next_at)
    return day_run_id(series_id, (next_at + EARLIEST - trigger.at).date())


def _lease_only(holder: str) -> dict[str, Any]:
    host, pid = holder_parts(holder)
    return {"role": "leader", "host": host, "pid": pid, "since": "", "holder": holder}


def _campaign(
    journal: JournalReader, record: CampaignRecord, now: datetime, campaign: Campaign | None,
    reports: bool, account_of: AccountOf = None,
) -> dict[str, Any]:
    counts = journal.counts(record.id)
    sent, pending = counts.get("sent", 0), counts.get("pending", 0)
    rollout = campaign.rollout if campaign is not None else None
    held, ahead = _holds(record, rollout, now)
    rate = _rate(record, counts, now, held)
    eta = None
    if rate and pending:
        eta = utc_text(now + timedelta(seconds=pending / rate + ahead))
    waiting = _waiting(journal, record, campaign, now)
    if waiting is not None and waiting.last is not None:
        # some wait for their window or their zone's release: the rate so far counts the wait,
        # so only what may go now is timed by it, and the last opening bounds the end
        ready = now + timedelta(seconds=waiting.ready / rate) if rate else now
        eta = utc_text(max(ready, waiting.last))
    staged = rollout is not None or record.stage or record.stage_at
    account = {} if account_of is None else {"account": account_of(record)}
    return {
        "campaign": record.id, **account, "type": record.type, "state": record.state,
        "sent": sent,
        "recipients": record.recipients, "pending": pending,
        # posted again after an ambiguous outcome: possible duplicates (`report --resent`)
        "resent": counts.get("resent", 0),
        "rate_per_s": round(rate, 1) if rate else None, "eta": eta,
        # open messages waiting for their window or their zone's release, and until when
        "waiting": waiting.waiting if waiting is not None else None,
        "waiting_until": utc_text(waiting.last) if waiting and waiting.last else None,
        "stage": record.stage + 1 if staged else None,
        "stages": len(rollout.stages) if rollout is not None else None,
        "stage_starts": utc_text(record.stage_at) if record.stage_at else None,
        # sent messages whose delivery status is not final yet (None: reports are off)
        "awaiting_status": awaiting_status(journal, record.id, sent, reports),
        "error": record.error or "",
    }


def _waiting(
    journal: JournalReader, record: CampaignRecord, campaign: Campaign | None, now: datetime,
) -> Held | None:
    """When the open messages of a started campaign with a window, or of a started trigger's
    day run, may go (None: not started, nothing open, nothing holds it back, or its file is
    not here)."""
    if record.started_at is None or record.state in ENDED or campaign is None:
        return None
    if not gated(campaign):  # spare the journal read
        return None
    return held_back(campaign, journal.open_batches(record.id), now)


def _holds(record: CampaignRecord, rollout: Rollout | None, now: datetime) -> tuple[float, float]:
    """A staged campaign's holds between stages: the seconds spent in them so far (not
    sending), and the seconds of them still ahead (the rest of the one under way, then one
    per stage left). A hold lasts ``hold`` seconds, from a stage's end to ``stage_at``."""
    if rollout is None:
        return 0.0, 0.0
    stage, hold = min(record.stage, len(rollout.stages) - 1), float(rollout.hold)
    waiting = 0.0
    if record.stage_at is not None and record.stage_at > now:
        waiting = (record.stage_at - now).total_seconds()
    return max(0.0, stage * hold - waiting), waiting + (len(rollout.stages) - 1 - stage) * hold


def _rate(
    record: CampaignRecord, counts: dict[str, int], now: datetime, held: float = 0.0,
) -> float | None:
    """Recipients decided per second of sending since the campaign started, the ``held``
    seconds of roll-out holds left out (None before any)."""
    if record.started_at is None or record.state not in ("running", "backing_off"):
        return None
    decided = record.recipients - counts.get("pending", 0)
    seconds = (now - record.started_at).total_seconds() - held
    return decided / seconds if decided and seconds > 0 else None
