"""Helpers for tests of the storage interface: a campaign's snapshot in numbered batches, and
results for a batch body, through `Journal` only."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from scheduler.journal import Journal, MessageRecord, Result, StatusReport
from scheduler.records import Skip
from scheduler.vocabulary import DeliveryStatus, Outcome

SEND_AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
DEADLINE = SEND_AT + timedelta(hours=1)


def message(campaign: str, n: int) -> dict[str, Any]:
    """One API body element, as the engine builds it."""
    return {"id": f"{campaign}-{n}", "fromName": "Brand", "toPhone": f"+38050{n:07d}",
            "messageType": "promo", "text": f"Hello {n}"}


def batches(campaign: str, count: int, size: int) -> Iterator[list[dict[str, Any]]]:
    """``count`` batches of ``size`` messages, numbered 0, 1, 2... across batches."""
    for b in range(count):
        yield [message(campaign, n) for n in range(b * size, (b + 1) * size)]


async def prepare(journal: Journal, campaign: str, count: int = 4, size: int = 5,
                  skips: Sequence[Skip] = (), **override: Any) -> None:
    """Snapshot ``campaign`` with ``count`` batches of ``size`` (keywords override the rest)."""
    arguments: dict[str, Any] = {
        "campaign_id": campaign, "type": "promo", "file": f"/c/{campaign}.toml",
        "fingerprint": "f1", "send_at": SEND_AT, "deadline": DEADLINE,
        "batches": batches(campaign, count, size), "skips": skips,
    }
    await journal.prepare(**(arguments | override))


def results(body: bytes, outcome: Outcome = "sent", only: int | None = None) -> list[Result]:
    """A result for each message of a batch body (the first ``only`` of them, if given)."""
    messages = orjson.loads(body)[:only]
    return [Result(m["id"], outcome, f"mid-{m['id']}" if outcome == "sent" else "E1", 1,
                   m["toPhone"]) for m in messages]


async def record_status(journal: Journal, message_id: str, status: DeliveryStatus,
                        *details: Any) -> bool:
    """`Journal.record_statuses` for one report (``details``: channel, parts, cost, currency,
    at); True when it was the message's first final status."""
    report = StatusReport(message_id, status, *details)
    return (await journal.record_statuses([report]))[0].result == "final"


async def indexed_message(journal: Journal, message_id: str) -> MessageRecord | None:
    """The indexed message with the API's ``message_id``, or None (read from `Journal.dump`:
    the journal has no look-up by message id, nothing but tests asks for one)."""
    found = None
    async for table, rows in journal.dump():
        if table == "messages":
            found = next((MessageRecord(*row[:6]) for row in rows if row[0] == message_id),
                         found)
    return found
