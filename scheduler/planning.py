"""`plan`: every campaign with its state, send time, audience, progress and ETA at the set rate.

Reads the campaign files and the journal; a campaign the daemon has not snapshotted yet is counted
by streaming its audience, exactly as the daemon would.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from typing import Any

from scheduler.audience import Suppression, summarize
from scheduler.campaign import Campaign, utc_text
from scheduler.config import Config
from scheduler.errors import UserError
from scheduler.journal import JournalReader, journal_exists, open_journal
from scheduler.loader import CampaignCheck, broken_link, campaign_files, load_campaigns
from scheduler.vocabulary import ENDED

PLAN_COLUMNS = ("campaign", "type", "state", "send_at", "valid", "skipped", "sent", "eta")


def eta(config: Config, start: datetime, pending: int) -> datetime:
    """When ``pending`` messages will be through at the configured rate, starting at ``start``."""
    per_second = config.sending.requests_per_second * config.sending.batch_size
    return start + timedelta(seconds=pending / per_second)


def plan_rows(config: Config, now: datetime) -> list[dict[str, Any]]:
    """One row per campaign file (and per journal-only campaign), in send order."""
    suppression = Suppression.load(config.paths.suppression)
    with contextlib.ExitStack() as stack:
        journal = None
        if journal_exists(config):
            journal = stack.enter_context(JournalReader(open_journal(config)))
        rows = []
        seen: set[str] = set()
        files = campaign_files(config.paths.campaigns) if config.paths.campaigns.is_dir() else []
        for check in load_campaigns(files, config, now):
            if check.campaign is None:
                rows.append(_invalid_row(check.file.stem, _why_invalid(check)))
                continue
            seen.add(check.campaign.id)
            rows.append(_row(config, check.campaign, journal, suppression, now))
        if journal is not None:
            for record in journal.campaigns():
                if record.id not in seen:
                    counts = journal.counts(record.id)
                    rows.append({
                        "campaign": record.id, "type": record.type, "state": record.state,
                        "send_at": utc_text(record.send_at), "valid": record.recipients,
                        "skipped": record.skipped, "sent": counts.get("sent", 0), "eta": "",
                    })
    return sorted(rows, key=lambda r: (r["send_at"] or "~", r["campaign"]))


def _invalid_row(name: str, why: str = "run `check` for the errors") -> dict[str, Any]:
    return {"campaign": name, "type": "", "state": "invalid", "send_at": "", "valid": 0,
            "skipped": 0, "sent": 0, "eta": why}


def _why_invalid(check: CampaignCheck) -> str:
    """What the plan says about an invalid file: the problem itself when it is a symbolic link
    that loops or points nowhere (`check` skips those in a folder), else where to look."""
    link = broken_link(check.file)
    return f"{check.file.name}: cannot read: {link}" if link else "run `check` for the errors"


def _row(
    config: Config, campaign: Campaign, journal: JournalReader | None,
    suppression: Suppression, now: datetime,
) -> dict[str, Any]:
    record = journal.campaign(campaign.id) if journal is not None else None
    if record is not None and record.started_at is not None:
        counts = journal.counts(campaign.id) if journal is not None else {}
        state, valid, skipped = record.state, record.recipients, record.skipped
        sent, pending = counts.get("sent", 0), counts.get("pending", 0)
    else:
        try:
            summary = summarize(campaign, suppression)
        except UserError:
            return _invalid_row(campaign.id)
        valid, skipped = summary.valid, sum(summary.skipped.values())
        sent, pending = 0, summary.valid
        state = "paused" if campaign.paused else "scheduled"
        if campaign.deadline <= now:
            state = "expired"
    finish = ""
    if state not in ENDED and pending:
        finish = utc_text(eta(config, max(now, campaign.send_at), pending))
    return {
        "campaign": campaign.id, "type": campaign.type, "state": state,
        "send_at": utc_text(campaign.send_at), "valid": valid, "skipped": skipped,
        "sent": sent, "eta": finish,
    }
