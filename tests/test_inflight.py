"""Requests in flight follow the measured round trip (SPEC §13.5): Little's law, bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from scheduler.inflight import (
    EVERY,
    MAX_IN_FLIGHT,
    PLANNED_ROUND_TRIP,
    SAMPLES,
    InFlight,
    needed,
)
from scheduler.service import open_engine
from tests.engine_helpers import KEY, make_setup
from tests.helpers import StartSandbox


def test_littles_law_plus_one() -> None:
    assert needed(100, 0.1) == 11  # the account limit, an API 100 ms away
    assert needed(20, 0.05) == 2
    assert needed(1000, 0.2) == 201


def test_the_limit_follows_the_round_trip_up_to_the_cap() -> None:
    in_flight = InFlight(rate=100)
    assert in_flight.limit == 21 and in_flight.p90() is None  # the planned 200 ms round trip
    for _ in range(EVERY):
        in_flight.timed(0.1)
    assert in_flight.limit == 11
    for _ in range(SAMPLES):
        in_flight.timed(2.0)  # a slow API: no more than the ceiling
    assert in_flight.limit == MAX_IN_FLIGHT
    for _ in range(SAMPLES):
        in_flight.timed(0.001)  # a near one: one in flight and the next
    assert in_flight.limit == 2


def test_the_p90_ignores_the_slowest_tenth() -> None:
    in_flight = InFlight(rate=100)
    for _ in range(SAMPLES - SAMPLES // 10):
        in_flight.timed(0.05)
    for _ in range(SAMPLES // 10):
        in_flight.timed(0.5)
    assert in_flight.p90() == 0.05 and in_flight.limit == 6
    in_flight.timed(0.5)  # one more slow answer: now more than a tenth
    assert in_flight.p90() == 0.5


def test_a_configured_concurrency_is_a_hard_cap_and_does_not_adapt() -> None:
    in_flight = InFlight(rate=100, cap=16)
    assert in_flight.limit == 16
    for _ in range(SAMPLES):
        in_flight.timed(0.001)
    assert in_flight.limit == 16
    adaptive = InFlight(rate=100, cap=None)
    for _ in range(SAMPLES):
        adaptive.timed(5.0)
    assert adaptive.limit == MAX_IN_FLIGHT


def test_before_the_first_answer_the_limit_is_what_the_planned_round_trip_needs() -> None:
    assert InFlight(rate=100).limit == needed(100, PLANNED_ROUND_TRIP) == 21
    assert InFlight(rate=5).limit == 2  # a slow account: one in flight and the next
    assert InFlight(rate=1000).limit == MAX_IN_FLIGHT  # never above the ceiling
    assert InFlight(rate=100, cap=8).limit == 8  # a configured cap holds from the start
    assert InFlight(rate=0.5, cap=None).limit == 2


@given(st.floats(0.1, 1000), st.none() | st.integers(1, 64),
       st.lists(st.floats(0.0, 60.0), max_size=300))
def test_the_limit_stays_within_one_and_the_cap(
    rate: float, cap: int | None, round_trips: list[float],
) -> None:
    in_flight = InFlight(rate, cap)
    for round_trip in round_trips:
        in_flight.timed(round_trip)
        assert 1 <= in_flight.limit <= (cap or MAX_IN_FLIGHT)


async def test_slots_wait_for_the_limit_in_order() -> None:
    in_flight = InFlight(rate=10, cap=2)
    release = [asyncio.Event() for _ in range(4)]
    started: list[int] = []

    async def request(number: int) -> None:
        async with in_flight.slot():
            started.append(number)
            await release[number].wait()
            in_flight.timed(0.1)

    tasks = [asyncio.create_task(request(n)) for n in range(4)]
    await settle()
    assert started == [0, 1] and in_flight.busy == 2
    release[1].set()
    await settle()
    assert started == [0, 1, 2]
    for event in release:
        event.set()
    await asyncio.gather(*tasks)
    assert in_flight.busy == 0 and len(in_flight._round_trips) == 4


async def settle() -> None:
    """Let every task that can run, run (a slot taken and released is a few loop turns)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_failed_request_frees_its_slot() -> None:
    in_flight = InFlight(rate=10, cap=1)
    try:
        async with in_flight.slot():
            raise ConnectionRefusedError
    except ConnectionRefusedError:
        pass
    assert in_flight.busy == 0
    async with in_flight.slot():
        assert in_flight.busy == 1


async def test_no_batch_is_marked_in_flight_before_it_can_go(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """With ``concurrency`` unset the pool has 64 workers, but a worker takes a batch only with
    an in-flight slot: at every moment the batches marked in flight and not yet answered are
    at most the limit (else an unposted batch would be resent, or in doubt, after a crash, and
    a transactional batch would queue behind them)."""
    sandbox = await start_sandbox(api_key=KEY, latency_ms=100)
    setup = make_setup(tmp_path, sandbox.base_url, 300, batch_size=10, requests_per_second=40)
    assert setup.config.sending.concurrency is None
    outstanding, seen = [0], []
    async with open_engine(setup.config) as engine:
        dispatcher = engine.dispatcher
        mark, post = dispatcher._journal.mark_in_flight, dispatcher._client.post

        async def marking(campaign_id: str, seqs: Sequence[int]) -> None:
            await mark(campaign_id, seqs)
            outstanding[0] += len(seqs)
            seen.append((outstanding[0], dispatcher.in_flight_limit))

        async def posting(*args: Any, **kwargs: Any) -> Any:
            try:
                return await post(*args, **kwargs)
            finally:
                outstanding[0] -= 1

        dispatcher._journal.mark_in_flight = marking  # type: ignore[method-assign]
        dispatcher._client.post = posting  # type: ignore[method-assign]
        record = await engine.prepare(setup.campaign)
        assert await engine.drive(engine.open_run(setup.campaign, record)) == "done"
    assert len(seen) == 30
    assert all(count <= limit for count, limit in seen), seen
    assert len(sandbox.accepted) == 300


async def test_the_limit_counts_the_whole_time_a_slot_is_held(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """A request holds its slot from the journal's in-flight mark to its answer: with the mark
    taking 300 ms (a writer busy with a streamed snapshot's appends) and the API 100 ms away,
    40 requests a second need ceil(40 x 0.4) + 1 = 17 in flight. Timed on the wire alone
    (0.1 s: 5 in flight) the rate fell to a third of the limit."""
    sandbox = await start_sandbox(api_key=KEY, latency_ms=100)
    setup = make_setup(tmp_path, sandbox.base_url, 600, batch_size=10, requests_per_second=40)
    async with open_engine(setup.config) as engine:
        dispatcher = engine.dispatcher
        mark = dispatcher._journal.mark_in_flight

        async def slow_mark(campaign_id: str, seqs: Sequence[int]) -> None:
            await asyncio.sleep(0.3)
            await mark(campaign_id, seqs)

        dispatcher._journal.mark_in_flight = slow_mark  # type: ignore[method-assign]
        record = await engine.prepare(setup.campaign)
        assert await engine.drive(engine.open_run(setup.campaign, record)) == "done"
        assert dispatcher.in_flight_limit >= needed(40, 0.4)
    assert len(sandbox.accepted) == 600
