"""The journal for synchronous callers: `report`, `plan` and the demo's summary read through it.

It starts a journal as a reader (no writer lock: it works beside a running daemon) on a private
event loop, and turns the interface's coroutines into plain calls. Streams come in pages, so a
million-row listing costs a few hundred loop turns, not a million.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from scheduler.journal.base import (
    BatchRecord,
    CampaignRecord,
    Counts,
    DaemonRecord,
    DeliveryCounts,
    DeliveryRow,
    Journal,
    RecipientRow,
)
from scheduler.vocabulary import DeliveryStatus, Outcome

T = TypeVar("T")
PAGE = 2_000  # recipients handed over per loop turn
BATCHES = 16  # open batches handed over per loop turn (up to 1,000 messages each)


class JournalReader:
    """A started `Journal` with synchronous methods; use as a context manager."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._runner = asyncio.Runner()
        self._ahead: set[asyncio.Task[Any]] = set()  # pages asked for and not handed over yet

    def __enter__(self) -> JournalReader:
        """Open the journal as a reader."""
        try:
            self._runner.run(self.journal.start(writer=False))
        except BaseException:
            self._runner.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the journal and the private loop (pages read ahead are not wanted any more:
        the caller stopped reading, e.g. its pipe closed)."""
        for task in self._ahead:
            task.cancel()
        try:
            self._runner.run(self.journal.close())
        finally:
            self._runner.close()

    def campaigns(self) -> list[CampaignRecord]:
        """`Journal.campaigns`."""
        return self._runner.run(self.journal.campaigns())

    def campaign(self, campaign_id: str) -> CampaignRecord | None:
        """`Journal.campaign`."""
        return self._runner.run(self.journal.campaign(campaign_id))

    def counts(self, campaign_id: str) -> Counts:
        """`Journal.counts`."""
        return self._runner.run(self.journal.counts(campaign_id))

    def daemons(self) -> list[DaemonRecord]:
        """`Journal.daemons`."""
        return self._runner.run(self.journal.daemons())

    def leader(self) -> str | None:
        """`Journal.leader`."""
        return self._runner.run(self.journal.leader())

    def recipients(
        self, campaign_id: str, outcome: Outcome | None = None, *, resent: bool = False,
    ) -> Iterator[RecipientRow]:
        """`Journal.recipients`, streamed in pages. The next page is asked for before this one
        is handed over, so the journal reads it while the caller writes this one out."""
        stream = self.journal.recipients(campaign_id, outcome, resent=resent)
        ahead = self._read_ahead(_take(stream, PAGE))
        while page := self._runner.run(_done(ahead)):
            ahead = self._read_ahead(_take(stream, PAGE))
            self._runner.run(asyncio.sleep(0))  # one step: it queues its read, if it needs one
            yield from page

    def delivery_counts(self, campaign_id: str) -> DeliveryCounts:
        """`Journal.delivery_counts`."""
        return self._runner.run(self.journal.delivery_counts(campaign_id))

    def delivery_recipients(
        self, campaign_id: str, status: DeliveryStatus,
    ) -> Iterator[DeliveryRow]:
        """`Journal.delivery_recipients`, streamed in pages (read ahead, as `recipients`)."""
        stream = self.journal.delivery_recipients(campaign_id, status)
        ahead = self._read_ahead(_take(stream, PAGE))
        while page := self._runner.run(_done(ahead)):
            ahead = self._read_ahead(_take(stream, PAGE))
            self._runner.run(asyncio.sleep(0))
            yield from page

    def _read_ahead(self, page: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = self._runner.get_loop().create_task(page)
        self._ahead.add(task)
        task.add_done_callback(self._ahead.discard)
        return task

    def capped_phones(
        self, types: Sequence[str], since: datetime, at_least: int, after: str = "",
        limit: int = 50_000, *, accounts: Sequence[str] | None = None,
    ) -> list[str]:
        """`Journal.capped_phones`."""
        return self._runner.run(self.journal.capped_phones(
            types, since, at_least, after, limit, accounts=accounts))

    def unindexed_phones(
        self, types: Sequence[str], since: datetime, *, accounts: Sequence[str] | None = None,
    ) -> Iterator[str]:
        """`Journal.unindexed_phones`, streamed in pages (read ahead, as `recipients`)."""
        stream = self.journal.unindexed_phones(types, since, accounts=accounts)
        ahead = self._read_ahead(_take(stream, PAGE))
        while page := self._runner.run(_done(ahead)):
            ahead = self._read_ahead(_take(stream, PAGE))
            self._runner.run(asyncio.sleep(0))
            yield from page

    def open_batches(self, campaign_id: str) -> Iterator[BatchRecord]:
        """Every batch not closed yet (`Journal.open_batches`), streamed in pages."""
        after = -1
        while page := self._runner.run(self.journal.open_batches(campaign_id, after, BATCHES)):
            yield from page
            after = page[-1].seq


async def _done(task: asyncio.Task[T]) -> T:
    return await task


async def _take(stream: AsyncIterator[T], count: int) -> list[T]:
    page: list[T] = []
    async for item in stream:
        page.append(item)
        if len(page) >= count:
            break
    return page
