"""The leadership lease as a daemon holds it: the gate, renewal, loss and handover.

Run on a real SQLite journal (which grants the lease to whoever asks: its writer lock is the
real judge), with an injected monotonic clock so the safety margin is tested without waiting.
The PostgreSQL-only rule, that a standby waits while the lease runs, is in
test_journal_postgres.py; whole daemons failing over are in test_failover.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scheduler.journal import Journal, JournalFenced, JournalLocation, open_journal
from scheduler.leadership import SAFETY, Leadership


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    """A started SQLite journal."""
    started = open_journal(JournalLocation(tmp_path / "journal.sqlite3"))
    await started.start(writer=True)
    yield started
    await started.close()


async def test_a_leader_stops_acting_before_its_lease_could_expire(journal: Journal) -> None:
    """may_send turns False a safety margin before the lease's end, counted from the ask."""
    clock = Clock()
    leader = Leadership(journal, 15, holder="a", clock=clock)
    assert not leader.may_send() and leader.role == "standby"
    assert await leader.acquire()
    assert leader.may_send() and leader.role == "leader"
    clock.now += 15 * (1 - SAFETY) - 0.01
    assert leader.may_send()
    clock.now += 0.02
    assert not leader.may_send()
    assert await leader.renew()  # the journal still has it (its own clock): renewing restores
    assert leader.may_send()


async def test_losing_the_lease_calls_back_once_and_fences(journal: Journal) -> None:
    """When another holder took the lease, the next renewal reports the loss; writes of the
    old epoch are refused by the journal itself."""
    old = Leadership(journal, 3, holder="old")
    assert await old.acquire()
    new = Leadership(journal, 3, holder="new")
    lost: list[str] = []
    stop = asyncio.Event()

    async def on_lost(reason: str) -> None:
        lost.append(reason)

    holding = asyncio.create_task(old.hold(stop, on_lost))
    assert await new.acquire()
    await asyncio.wait_for(holding, 5)  # renews every lease/3 = 1 s
    assert lost == ["another daemon holds the lease"]
    assert not old.may_send() and old.epoch is None
    journal.fence(old.holder, 1)
    with pytest.raises(JournalFenced):
        await journal.release("any", [0])


async def test_release_hands_over_and_stop_ends_holding_quietly(journal: Journal) -> None:
    """SIGTERM's path: hold returns without a loss; release makes the next epoch available."""
    leader = Leadership(journal, 15, holder="a")
    assert await leader.acquire()
    stop = asyncio.Event()
    lost: list[str] = []

    async def on_lost(reason: str) -> None:
        lost.append(reason)

    holding = asyncio.create_task(leader.hold(stop, on_lost))
    stop.set()
    await asyncio.wait_for(holding, 2)
    first = leader.epoch
    await leader.release()
    assert lost == [] and not leader.may_send() and leader.epoch is None
    assert not await journal.renew_lease("a", first or 0, 15)
    successor = Leadership(journal, 15, holder="b")
    assert await successor.acquire() and (successor.epoch or 0) > (first or 0)
