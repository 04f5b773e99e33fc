"""The frequency caps' gate: which messages about to go are over a cap (SPEC §11.4).

Asked by the dispatcher for each batch of a capped campaign; it keeps a `CapSummary` of the
phones over the campaign's caps, rebuilt every `caps.REFRESH` seconds after the message index
is brought up to date (the caps count indexed sends). The cap rules are `scheduler.caps`'s.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from scheduler.batching import Message
from scheduler.caps import CAP_REASON, CapSummary, since
from scheduler.caps import PAGE as CAP_PAGE
from scheduler.config import CapConfig
from scheduler.journal import Journal
from scheduler.outcomes import Outcomes, phones_of


class CapGate:
    """One campaign's caps: a summary kept fresh while it sends, and the check of each batch."""

    def __init__(
        self, caps: Sequence[CapConfig], journal: Journal, *,
        catch_up: Callable[[], Awaitable[None]], clock: Callable[[], datetime], refresh: float,
    ) -> None:
        self._caps, self._journal = tuple(caps), journal
        self._catch_up, self._clock, self._refresh = catch_up, clock, refresh
        self._summary: CapSummary | None = None
        self._ready = asyncio.Event()  # the first summary is built
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Build the first summary (and keep rebuilding it until `stop`)."""
        self._task = asyncio.create_task(self._keep_fresh())
        await self._ready.wait()

    def stop(self) -> None:
        """No more rebuilds."""
        if self._task is not None:
            self._task.cancel()

    async def _keep_fresh(self) -> None:
        while True:
            await self._catch_up()
            now = self._clock()
            self._summary = await CapSummary.gather(
                self._caps, functools.partial(self._page, now=now))
            self._ready.set()
            await asyncio.sleep(self._refresh)

    async def _page(self, cap: CapConfig, after: str, *, now: datetime) -> list[str]:
        return await self._journal.capped_phones(
            cap.types, since(cap, now), cap.max, after, CAP_PAGE, accounts=cap.accounts)

    def admit(self, messages: Sequence[Message], out: Outcomes) -> Sequence[Message]:
        """Record as skipped (frequency_cap) the messages whose phone reached a cap; return
        the others."""
        summary = self._summary
        assert summary is not None  # `start` waits for the first one
        if not summary:
            return messages
        over = summary.over(phones_of(messages))
        if not over:
            return messages
        out.add([m for m, o in zip(messages, over, strict=True) if o], "skipped", CAP_REASON, 0)
        return [m for m, o in zip(messages, over, strict=True) if not o]
