"""`status`: what the journal says is happening now — the daemons, the leader, and every
campaign that has not ended (or still awaits delivery statuses), with its progress, rate and
ETA.

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

from scheduler.campaign import Rollout, utc_text
from scheduler.config import Config
from scheduler.journal import CampaignRecord, JournalReader, holder_parts
from scheduler.loader import load_campaign
from scheduler.report import awaiting_status
from scheduler.series import names
from scheduler.vocabulary import ENDED

#: a campaign's roll-out (its stages and hold live in its file, not in the journal), or None
RolloutOf = Callable[[CampaignRecord], Rollout | None]

DAEMON_COLUMNS = ("role", "host", "pid", "since")
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

    @property
    def has_leader(self) -> bool:
        """True when some daemon (or a foreground `send`) holds the lease: campaigns move."""
        return self.leader is not None

    def as_json(self) -> dict[str, Any]:
        """The whole status as one JSON object."""
        return asdict(self)


def _no_rollout(record: CampaignRecord) -> Rollout | None:
    return None


def file_rollout(config: Config, now: datetime) -> RolloutOf:
    """Roll-outs read from the campaign files the journal names (when this machine has them):
    a staged campaign's stage and ETA need its stages and hold."""

    def rollout_of(record: CampaignRecord) -> Rollout | None:
        if record.state in ENDED or not record.file:
            return None
        check = load_campaign(Path(record.file), config, now)
        campaign = check.campaign
        if campaign is None or not names(campaign.id, record.id):  # (series: its occurrences)
            return None
        return campaign.rollout

    return rollout_of


def read_status(
    journal: JournalReader, now: datetime, rollout_of: RolloutOf = _no_rollout, *,
    reports: bool = False,
) -> Status:
    """Gather the status from a started journal reader (``rollout_of``: each campaign's
    roll-out, for its stage and an ETA that counts the holds; ``reports``: delivery reports
    are on, so sent messages await their delivery status)."""
    leader = journal.leader()
    daemons = [
        {"role": "leader" if d.holder == leader else "standby", "host": d.host, "pid": d.pid,
         "since": utc_text(d.since), "holder": d.holder}
        for d in journal.daemons()
    ]
    if leader is not None and all(d["holder"] != leader for d in daemons):
        daemons.insert(0, _lease_only(leader))  # a foreground `send` holds it
    campaigns = [row for row in (_campaign(journal, record, now, rollout_of(record), reports)
                                 for record in journal.campaigns())
                 if row["state"] not in ENDED or row["awaiting_status"]]
    return Status(leader, daemons, campaigns)


def _lease_only(holder: str) -> dict[str, Any]:
    host, pid = holder_parts(holder)
    return {"role": "leader", "host": host, "pid": pid, "since": "", "holder": holder}


def _campaign(
    journal: JournalReader, record: CampaignRecord, now: datetime, rollout: Rollout | None,
    reports: bool,
) -> dict[str, Any]:
    counts = journal.counts(record.id)
    sent, pending = counts.get("sent", 0), counts.get("pending", 0)
    held, ahead = _holds(record, rollout, now)
    rate = _rate(record, counts, now, held)
    eta = None
    if rate and pending:
        eta = utc_text(now + timedelta(seconds=pending / rate + ahead))
    staged = rollout is not None or record.stage or record.stage_at
    return {
        "campaign": record.id, "type": record.type, "state": record.state, "sent": sent,
        "recipients": record.recipients, "pending": pending,
        # posted again after an ambiguous outcome: possible duplicates (`report --resent`)
        "resent": counts.get("resent", 0),
        "rate_per_s": round(rate, 1) if rate else None, "eta": eta,
        "stage": record.stage + 1 if staged else None,
        "stages": len(rollout.stages) if rollout is not None else None,
        "stage_starts": utc_text(record.stage_at) if record.stage_at else None,
        # sent messages whose delivery status is not final yet (None: reports are off)
        "awaiting_status": awaiting_status(journal, record.id, sent, reports),
        "error": record.error or "",
    }


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
