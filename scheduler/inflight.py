"""How many send requests may be in flight at once (SPEC §13.5).

The rate limit says how often a request may start; how many are out at once follows from how
long each holds its slot (Little's law: in flight = rate x time held). A fixed number, too
small for an API 100 ms away, caps the rate below the account's limit (4 in flight at 100 ms is
40 requests a second, whatever the limit says); too big, and a slow API is sent ever more at
once. So the limit follows the measured time: ``ceil(rate x p90) + 1`` over the last `SAMPLES`
requests, at least 1, at most ``[sending] concurrency`` when the operator set it (then it is a
hard cap) and never above `MAX_IN_FLIGHT`. Until answers come it is what `plan` assumes
(`PLANNED_ROUND_TRIP`): the rate limit spaces the first requests anyway, so starting there
costs a slow API nothing and spares a far one a slow first second (starting at 4, an API
100 ms away got 40 requests a second until the first answers were timed).

The time a request holds its slot (`Busy`) is more than its round trip: the batch is marked in
flight in the journal first (a commit, queued behind the writer's other work: 45 ms median,
145 ms p90 measured beside a streamed 1M snapshot) and its answer is read after. Only the wait
for the rate limit is left out: counted, it would raise the limit whenever the limit binds.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Final

#: the most requests in flight at once, whatever the round trip
MAX_IN_FLIGHT: Final = 64
#: round trips the p90 is taken over
SAMPLES: Final = 200
#: the limit is worked out again after this many answers
EVERY: Final = 10
#: the round trip `plan` assumes for its ETAs, and the limit assumes before any answer was
#: timed: the slow end of a real API's 50-200 ms
PLANNED_ROUND_TRIP: Final = 0.2


def needed(rate: float, round_trip: float) -> int:
    """Requests in flight that reach ``rate`` a second when each takes ``round_trip`` seconds
    (Little's law, plus one for the one being answered)."""
    return math.ceil(rate * round_trip) + 1


def reachable(rate: float, most: int, round_trip: float = PLANNED_ROUND_TRIP) -> float:
    """Requests a second the sender keeps up when at most ``most`` are in flight, each takes
    ``round_trip`` seconds, and the rate limit is ``rate`` (Little's law the other way round:
    ``most / round_trip``, never above the limit). `plan`'s ETAs use it, so a hard
    ``concurrency`` too small for the round trip shows as a later ETA."""
    return min(rate, most / round_trip)


class Busy:
    """One request's time in its slot, the wait for the rate limit left out; `clean` until a
    post of it is refused or fails (then its time says nothing of the API's pace)."""

    __slots__ = ("_started", "clean", "posted", "waited")

    def __init__(self) -> None:
        self._started = time.monotonic()
        self.waited = 0.0
        self.posted = False
        self.clean = True

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Around the wait for the rate limit."""
        began = time.monotonic()
        try:
            yield
        finally:
            self.waited += time.monotonic() - began

    def answered(self, accepted: bool) -> None:
        """A post of it came back, accepted or not."""
        self.posted = True
        self.clean = self.clean and accepted

    @property
    def seconds(self) -> float:
        """Held so far, less the waits for the rate limit."""
        return time.monotonic() - self._started - self.waited


class InFlight:
    """Slots for requests in flight: ``async with in_flight.slot():`` around a request, whose
    round trip is timed; waiters are served in the order they came."""

    def __init__(self, rate: float, cap: int | None = None) -> None:
        """``rate``: requests a second; ``cap``: the configured ``concurrency`` (None: adapt
        up to `MAX_IN_FLIGHT`)."""
        self.rate = rate
        self.cap = min(cap, MAX_IN_FLIGHT) if cap is not None else MAX_IN_FLIGHT
        self.adaptive = cap is None
        # before any answer was timed: what the planned round trip needs
        self.limit = min(needed(rate, PLANNED_ROUND_TRIP), self.cap) if self.adaptive else self.cap
        self._round_trips: deque[float] = deque(maxlen=SAMPLES)
        self._since = 0  # answers since the limit was last worked out
        self._busy = 0
        self._freed = asyncio.Condition()

    @property
    def busy(self) -> int:
        """Requests in flight now."""
        return self._busy

    def p90(self) -> float | None:
        """The 90th percentile of the recent times held (None before the first)."""
        if not self._round_trips:
            return None
        ordered = sorted(self._round_trips)
        return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for one request (the caller reports how long it held it, less the wait
        for the rate limit, to `timed`: see `Busy`)."""
        async with self._freed:
            await self._freed.wait_for(lambda: self._busy < self.limit)
            self._busy += 1
        try:
            yield
        finally:
            async with self._freed:
                self._busy -= 1
                self._freed.notify_all()

    def timed(self, held: float) -> None:
        """Take one request's time in its slot into account (a larger limit lets waiters in
        at the next release)."""
        self._round_trips.append(held)
        self._since += 1
        if self.adaptive and (self._since >= EVERY or len(self._round_trips) < EVERY):
            self._since = 0
            p90 = self.p90()
            assert p90 is not None
            self.limit = max(1, min(self.cap, needed(self.rate, p90)))
