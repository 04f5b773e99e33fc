"""`report --phone`: every row of one phone across the journal's campaigns, and what became of it.

The delivery log masks phones, so a person asking "did +380501234567 get it?" looks here: each
campaign's rows for that number (sent, rejected, expired, in doubt, skipped, or not sent yet),
with the time of the outcome and, for a sent message, its delivery status and channel.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from scheduler.campaign import utc_text
from scheduler.journal import CampaignRecord, JournalReader, RecipientRow
from scheduler.report import DELIVERY_LISTINGS
from scheduler.series import names

PHONE_COLUMNS = ("campaign", "tracking_id", "phone", "status", "at", "delivery", "channel",
                 "detail")


def phone_rows(
    journal: JournalReader, phone: str, campaign_id: str | None = None, *,
    reports: bool = False,
) -> Iterator[dict[str, Any]]:
    """Every row of ``phone`` (E.164, as stored) in every campaign, or in ``campaign_id``.
    ``reports``: delivery reports are on (a sent message without a final status is then
    "awaiting" one)."""
    for record in journal.campaigns():
        if names(campaign_id, record.id):  # a series names its occurrences
            yield from _campaign_rows(journal, record, phone, reports)


def _campaign_rows(
    journal: JournalReader, record: CampaignRecord, phone: str, reports: bool,
) -> Iterator[dict[str, Any]]:
    rows = [{"campaign": record.id, "tracking_id": row.tracking_id, "phone": row.phone,
             "status": row.outcome, "at": "" if row.at is None else utc_text(row.at),
             "delivery": "", "channel": "", "detail": _detail(row)}
            for row in journal.recipients(record.id) if row.phone == phone]
    rows.extend(_pending(journal, record, phone))
    sent = {row["tracking_id"]: row for row in rows if row["status"] == "sent"}
    if sent:
        for row in sent.values():
            row["delivery"] = "awaiting" if reports else ""
        for status in DELIVERY_LISTINGS:
            for final in journal.delivery_recipients(record.id, status):
                if final.tracking_id in sent and final.phone == phone:
                    sent[final.tracking_id].update(delivery=status, channel=final.channel or "")
    yield from rows


def _detail(row: RecipientRow) -> str:
    """The row's detail (a messageId, an error code, a skip reason), with its CSV line for
    a skipped row (it has no tracking id to find it by)."""
    detail = row.detail or ""
    return detail if row.line is None else f"{detail} (CSV line {row.line})".strip()


def _pending(
    journal: JournalReader, record: CampaignRecord, phone: str,
) -> Iterator[dict[str, Any]]:
    """The phone's rows with no final outcome yet (in batches not closed)."""
    for batch in journal.open_batches(record.id):
        for message in orjson.loads(batch.body):
            if message["toPhone"] == phone and message["id"] not in batch.decided:
                yield {"campaign": record.id, "tracking_id": message["id"], "phone": phone,
                       "status": "pending", "at": "", "delivery": "", "channel": "",
                       "detail": f"not sent yet: the campaign is {record.state}"}
