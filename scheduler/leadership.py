"""Leadership: which of the daemons sharing a journal sends, judged by a lease in the journal.

The leader renews its lease every ``lease / 3`` seconds. It stops acting on its own a safety
margin *before* the lease could expire on the journal's clock (it counts from when it asked,
on its own monotonic clock, which keeps running through SIGSTOP and suspends), so a frozen or
cut-off leader has stopped posting before a standby can take over. Every write of the send path
is also fenced by the epoch in the journal itself (`Journal.fence`): a deposed leader that wakes
up cannot mark or record anything. Standbys try to take the lease every second.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from structlog.typing import FilteringBoundLogger

from scheduler.journal import JournalError, LeaseJournal
from scheduler.oplog import get_logger

TRY_EVERY = 1.0  # seconds between a standby's attempts to take the lease
SAFETY = 0.2  # share of the lease the leader gives up early (3 s of 15)

Clock = Callable[[], float]


def holder_name() -> str:
    """This process as a lease holder: host, pid and a random tag (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Leadership:
    """This process's claim on the journal's lease; `may_send` is the engine's gate."""

    def __init__(
        self, journal: LeaseJournal, lease: float, *, holder: str | None = None,
        clock: Clock = time.monotonic, on_renew_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self.journal = journal
        self._on_renew_failure = on_renew_failure
        self.lease = lease
        self.holder = holder or holder_name()
        self.epoch: int | None = None
        self._clock = clock
        self._valid_until = 0.0
        #: when this process took its present role: started (as a standby), or took the lease
        self.since = datetime.now(UTC)
        self._log: FilteringBoundLogger = get_logger("leadership")

    @property
    def leading(self) -> bool:
        """True while this process holds the lease with time to spare."""
        return self.epoch is not None and self._clock() < self._valid_until

    def may_send(self) -> bool:
        """The engine asks before every request: only a leader within its lease posts."""
        return self.leading

    @property
    def role(self) -> str:
        """"leader" or "standby", for status lines."""
        return "leader" if self.leading else "standby"

    async def acquire(self) -> bool:
        """One attempt to take the lease; True when this process now leads."""
        asked = self._clock()
        epoch = await self.journal.acquire_lease(self.holder, self.lease)
        if epoch is None:
            return False
        self.epoch, self.since = epoch, datetime.now(UTC)
        self._valid_until = asked + self.lease * (1 - SAFETY)
        self.journal.fence(self.holder, epoch)
        return True

    async def renew(self) -> bool | None:
        """Extend the lease: True kept, False lost (taken or expired), None: the journal did
        not answer (the lease may still be ours; keep acting only within the margin)."""
        if self.epoch is None:
            return False
        asked = self._clock()
        try:
            kept = await asyncio.wait_for(
                self.journal.renew_lease(self.holder, self.epoch, self.lease), self.lease / 3,
            )
        except (JournalError, TimeoutError) as exc:
            self._log.warning("lease_renew_failed", error=str(exc) or "no answer in time")
            self._on_renew_failure()
            return None
        if kept:
            self._valid_until = asked + self.lease * (1 - SAFETY)
            return True
        self._valid_until = 0.0
        return False

    async def release(self) -> None:
        """Give the lease up (graceful stop): a standby takes over at once."""
        if self.epoch is None:
            return
        epoch, self.epoch, self._valid_until = self.epoch, None, 0.0
        try:
            await self.journal.release_lease(self.holder, epoch)
        except JournalError as exc:  # it will simply expire
            self._log.warning("lease_release_failed", error=str(exc))

    async def hold(
        self, stop: asyncio.Event, on_lost: Callable[[str], Awaitable[None]],
    ) -> None:
        """While leading: renew every ``lease / 3`` s, every second while the journal does not
        answer; when the lease is lost, or the margin ran out unrenewed, call
        ``on_lost(reason)`` once and return. Returns quietly when ``stop`` is set."""
        wait = self.lease / 3
        while not await _stopped(stop, wait):
            kept = await self.renew()
            if kept is None and self.leading:
                wait = min(TRY_EVERY, self.lease / 3)
                continue
            if not kept:
                self.epoch, self.since = None, datetime.now(UTC)
                reason = ("another daemon holds the lease" if kept is False
                          else "the journal did not answer before the lease ran out")
                await on_lost(reason)
                return
            wait = self.lease / 3

    async def wait_for_lease(self, stop: asyncio.Event) -> bool:
        """As a standby: try every second until the lease is ours (True) or ``stop`` (False)."""
        while not stop.is_set():
            try:
                if await self.acquire():
                    return True
            except JournalError as exc:
                self._log.warning("lease_acquire_failed", error=str(exc))
            if await _stopped(stop, TRY_EVERY):
                return False
        return False


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop``; True when stopped."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
