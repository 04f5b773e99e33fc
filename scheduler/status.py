"""`status`: what the journal says is happening now — the daemons, the leader, and every
campaign that has not ended (or still awaits delivery statuses), with its progress, rate and
ETA.

It reads the journal only (either backend), so it answers from any machine that can reach it
and does not need a daemon's cooperation; a daemon's presence is the heartbeat it writes every
few seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from scheduler.campaign import utc_text
from scheduler.journal import CampaignRecord, JournalReader, holder_parts
from scheduler.vocabulary import ENDED

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


def read_status(journal: JournalReader, now: datetime) -> Status:
    """Gather the status from a started journal reader."""
    leader = journal.leader()
    daemons = [
        {"role": "leader" if d.holder == leader else "standby", "host": d.host, "pid": d.pid,
         "since": utc_text(d.since), "holder": d.holder}
        for d in journal.daemons()
    ]
    if leader is not None and all(d["holder"] != leader for d in daemons):
        daemons.insert(0, _lease_only(leader))  # a foreground `send` holds it
    campaigns = [row for row in (_campaign(journal, record, now)
                                 for record in journal.campaigns())
                 if row["state"] not in ENDED or row["awaiting_status"]]
    return Status(leader, daemons, campaigns)


def _lease_only(holder: str) -> dict[str, Any]:
    host, pid = holder_parts(holder)
    return {"role": "leader", "host": host, "pid": pid, "since": "", "holder": holder}


def _campaign(journal: JournalReader, record: CampaignRecord, now: datetime) -> dict[str, Any]:
    counts = journal.counts(record.id)
    sent, pending = counts.get("sent", 0), counts.get("pending", 0)
    rate = _rate(record, counts, now)
    eta = utc_text(now + timedelta(seconds=pending / rate)) if rate and pending else None
    return {
        "campaign": record.id, "type": record.type, "state": record.state, "sent": sent,
        "recipients": record.recipients, "pending": pending,
        # posted again after an ambiguous outcome: possible duplicates (`report --resent`)
        "resent": counts.get("resent", 0),
        "rate_per_s": round(rate, 1) if rate else None, "eta": eta,
        "stage": record.stage + 1 if record.stage or record.stage_at else None,
        "stage_starts": utc_text(record.stage_at) if record.stage_at else None,
        # sent messages whose delivery status is not final yet (delivery reports)
        "awaiting_status": journal.delivery_counts(record.id).statuses.get("awaiting", 0),
        "error": record.error or "",
    }


def _rate(record: CampaignRecord, counts: dict[str, int], now: datetime) -> float | None:
    """Recipients decided per second since the campaign started (None before any)."""
    if record.started_at is None or record.state not in ("running", "backing_off"):
        return None
    decided = record.recipients - counts.get("pending", 0)
    seconds = (now - record.started_at).total_seconds()
    return decided / seconds if decided and seconds > 0 else None
