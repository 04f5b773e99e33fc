"""The rate limit of requests to an API: never more than the configured number in any
one-second window, as the API counts them, and evenly spaced rather than in bursts.

A leaky bucket (aiolimiter's, which this replaces) lets a full bucket go at once and keeps
leaking meanwhile: at 20/s it let 40 requests through in the first second, which a real API
answers with 429s. Here two rules hold together. Requests are spaced ``1 / rate`` apart on a
schedule that may catch up what it fell behind, up to an interval or `CATCH_UP` (100 ms),
whichever is more: an event loop busy for a few milliseconds (a delivery-log write, an answer
parsed) then costs no throughput. And a request waits until the one ``n`` requests before it
is ``WINDOW`` seconds old (``n``: the rate, rounded down): that is the guarantee, whatever the
timers do. ``WINDOW`` is a second plus a margin, because the API stamps our requests with its
own clock, a little later and not always by the same amount.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType

#: the window a rate is counted over, plus the margin for the way to the API and back
WINDOW = 1.02
#: at least this much time behind the even schedule may be caught up at once. 10 ms lost ~4%
#: of the account's limit at 100 requests/s against an API 100 ms away (the loop is busy for
#: more than that now and then while a big audience streams in); 100 ms lets at most a tenth
#: of a second's requests go together, and the window rule holds either way
CATCH_UP = 0.1


class RateLimit:
    """At most ``rate`` acquisitions in any one-second window, spaced ``1 / rate`` apart;
    waiters are served in the order they came. Use ``async with limit:`` or `acquire`."""

    def __init__(
        self, rate: float, *, clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """``clock`` and ``sleep``: the event loop's (tests pass a simulated pair)."""
        if not rate > 0:
            raise ValueError(f"a rate limit must be above 0, not {rate}")
        self.rate = rate
        self._interval = 1.0 / rate
        # how far behind the schedule a grant may catch up: one interval, and at high rates
        # `CATCH_UP` (a loop busy a while, or a timer late: each would cost requests)
        self._slack = max(self._interval, CATCH_UP)
        # below 1/s: one request per 1/rate seconds; above: floor(rate) per window, so a
        # fractional rate (20.5) rounds down to what a one-second window can hold (20)
        self._count = max(1, math.floor(rate))
        self._span = max(WINDOW, self._count / rate)
        self._recent: deque[float] = deque(maxlen=self._count)  # the last grants' times
        self._due = -math.inf  # when the next grant is due on the even schedule
        self._turn = asyncio.Lock()  # first come, first served, and no herd of sleepers
        self._clock, self._sleep = clock, sleep

    async def acquire(self) -> None:
        """Wait for this request's turn."""
        async with self._turn:
            earliest = self._earliest()  # nothing moves it while this one holds the turn
            if (wait := earliest - self._clock()) > 0:
                await self._sleep(wait)
            now = max(self._clock(), earliest)
            self._due = max(self._due, now) + self._interval
            self._recent.append(now)

    def _earliest(self) -> float:
        """When the next grant may be: on the schedule (what fell behind it caught up), and
        not before the grant ``n`` back has left the window."""
        earliest = self._due - self._slack
        if len(self._recent) == self._count:
            earliest = max(earliest, self._recent[0] + self._span)
        return earliest

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        return None
