"""Requests in flight follow the measured round trip (SPEC §13.5): Little's law, bounded."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from scheduler.inflight import EVERY, MAX_IN_FLIGHT, SAMPLES, START, InFlight, needed


def test_littles_law_plus_one() -> None:
    assert needed(100, 0.1) == 11  # the account limit, an API 100 ms away
    assert needed(20, 0.05) == 2
    assert needed(1000, 0.2) == 201


def test_the_limit_follows_the_round_trip_up_to_the_cap() -> None:
    in_flight = InFlight(rate=100)
    assert in_flight.limit == START and in_flight.p90() is None
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
