"""Helpers for tests of the storage interface, through `Journal` only: a campaign's snapshot
in numbered batches, results for a batch body, and `SyncJournal`, any test's look at a
journal."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson

from scheduler.journal import (
    AwaitingMessage,
    BatchRecord,
    CampaignRecord,
    Counts,
    DeliveryCounts,
    DeliveryRow,
    Journal,
    JournalLocation,
    MessageRecord,
    RecipientRow,
    Result,
    StatusReport,
    open_journal,
)
from scheduler.records import Skip
from scheduler.vocabulary import DeliveryStatus, Outcome

SEND_AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
DEADLINE = SEND_AT + timedelta(hours=1)
T = TypeVar("T")


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


class SyncJournal:
    """The journal at ``where`` through the storage interface (`open_journal`), with
    synchronous calls: a test's look at what a daemon or the engine wrote, from a plain test
    or inside an async one (the journal's event loop runs on a thread of its own). A reader
    unless ``writer`` (then a running daemon refuses it: `JournalBusy`)."""

    def __init__(self, where: Path | JournalLocation, *, writer: bool = False) -> None:
        self.journal = open_journal(where if isinstance(where, JournalLocation)
                                    else JournalLocation(where))
        self._writer = writer
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-journal",
                                        daemon=True)

    def __enter__(self) -> SyncJournal:
        self._thread.start()
        try:
            self.run(self.journal.start(writer=self._writer))
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.run(self.journal.close())
        finally:
            self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def run(self, call: Coroutine[Any, Any, T]) -> T:
        """Await ``call`` on the journal's loop."""
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()

    def campaign(self, campaign_id: str) -> CampaignRecord | None:
        """`Journal.campaign`."""
        return self.run(self.journal.campaign(campaign_id))

    def campaigns(self) -> list[CampaignRecord]:
        """`Journal.campaigns`."""
        return self.run(self.journal.campaigns())

    def counts(self, campaign_id: str) -> Counts:
        """`Journal.counts`."""
        return self.run(self.journal.counts(campaign_id))

    def recipients(self, campaign_id: str, outcome: Outcome | None = None, *,
                   resent: bool = False) -> list[RecipientRow]:
        """`Journal.recipients`, every one."""
        return self.run(_every(self.journal.recipients(campaign_id, outcome, resent=resent)))

    def open_batches(self, campaign_id: str, after_seq: int = -1,
                     limit: int = 100_000) -> list[BatchRecord]:
        """`Journal.open_batches` (by default, all of them)."""
        return self.run(self.journal.open_batches(campaign_id, after_seq, limit))

    def index_messages(self, max_batches: int = 8) -> int:
        """`Journal.index_messages`."""
        return self.run(self.journal.index_messages(max_batches))

    def delivery_counts(self, campaign_id: str) -> DeliveryCounts:
        """`Journal.delivery_counts`."""
        return self.run(self.journal.delivery_counts(campaign_id))

    def delivery_recipients(self, campaign_id: str, status: DeliveryStatus) -> list[DeliveryRow]:
        """`Journal.delivery_recipients`, every one."""
        return self.run(_every(self.journal.delivery_recipients(campaign_id, status)))

    def messages_awaiting_status(self, due_before: datetime,
                                 limit: int) -> list[AwaitingMessage]:
        """`Journal.messages_awaiting_status`."""
        return self.run(self.journal.messages_awaiting_status(due_before, limit))


async def _every(stream: AsyncIterator[T]) -> list[T]:
    return [item async for item in stream]
