"""One campaign being sent: its frozen deadline, its stop switch and why it stopped.

The driver opens a run, the dispatcher posts its batches, the daemon and `send` halt it from
outside. Every field is private: the others ask (``halted``, ``deadline``) or tell (``halt``,
``storage_failed``, ``observe``), so what stopped a campaign is decided in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from scheduler.brake import Brake, Reading
from scheduler.campaign import Campaign
from scheduler.cap_gate import CapGate
from scheduler.config import Route
from scheduler.journal import FinalStatus, JournalError, Results
from scheduler.vocabulary import CampaignState
from scheduler.window_gate import WindowGate

Clock = Callable[[], datetime]
ProgressCallback = Callable[[int], None]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class CampaignRun:
    """A handle on one campaign's sending: `Driver.drive` it, `halt` it from elsewhere."""

    # slots: a write from outside to a field that is not there fails loudly, never silently
    __slots__ = (
        "_backoff", "_brake", "_broken", "_campaign", "_deadline", "_details", "_first_post",
        "_freed", "_later", "_on_progress", "_outstanding", "_reason", "_route", "_slots",
        "_stage", "_stop", "_stop_state", "_taken", "already", "caps", "windows",
    )

    def __init__(
        self, campaign: Campaign, route: Route, deadline: datetime, *, slots: Callable[[], int],
        windows: WindowGate, caps: CapGate | None = None, brake: Brake | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self._campaign, self._route, self._deadline = campaign, route, deadline
        # in flight + being recorded + queued ahead (see `Driver.open_run`): asked at each
        # batch, since the requests in flight follow the API's round trip
        self._slots, self._taken, self._freed = slots, 0, asyncio.Event()
        self._stop = asyncio.Event()
        self._backoff = asyncio.Event()
        self._outstanding: set[asyncio.Future[None]] = set()
        self._on_progress = on_progress
        self._stop_state: CampaignState | None = None
        self._reason: str | None = None  # why it stopped in stop_state, for journal and logs
        self._broken: JournalError | OSError | None = None  # storage failed: drive raises it
        self._first_post = False  # the very first request is still to come (lag metric)
        self._brake = brake  # None: brake_window = 0
        self._details: dict[str, Any] = {}  # fields for the stop's event
        self._stage = 0  # roll-out: the stage in progress
        self._later: int | None = None  # roll-out: messages of later stages (left pending)
        self.windows = windows  # the send windows' gate (asked by the driver only)
        self.caps = caps  # the frequency caps' gate, if any cap applies
        #: an evergreen series' occurrence: who earlier occurrences messaged (set by the
        #: driver when it starts, from `scheduler.evergreen`)
        self.already: frozenset[str] | None = None

    # ----------------------------------------------------------------- what it is

    @property
    def campaign(self) -> Campaign:
        """The campaign being sent."""
        return self._campaign

    @property
    def route(self) -> Route:
        """The route its requests go by."""
        return self._route

    @property
    def deadline(self) -> datetime:
        """send_at + ttl, frozen when the snapshot was taken."""
        return self._deadline

    @property
    def priority(self) -> int:
        """0 for transactional traffic (goes first), 1 for promo and surveys."""
        return 0 if self._campaign.is_transactional else 1

    # ----------------------------------------------------------------- stopping

    def halt(self, state: CampaignState | None = None, reason: str | None = None) -> None:
        """Take no new batches; in-flight ones finish. ``state``: what to record (None: none)."""
        self._stop_state, self._reason = state, reason
        self._stop.set()

    def storage_failed(self, error: JournalError | OSError) -> None:
        """The journal or the delivery log failed: stop; `Driver.drive` raises the first error."""
        if self._broken is None:
            self._broken = error
        self.halt(None)

    def back_off(self) -> None:
        """A batch ran out of retries: the whole campaign waits (`Driver` decides how long)."""
        self._backoff.set()

    def resume(self) -> None:
        """The campaign's back-off is over: batches may go again."""
        self._backoff.clear()

    @property
    def stopped(self) -> bool:
        """True once halted (by anyone, for any reason)."""
        return self._stop.is_set()

    @property
    def backing_off(self) -> bool:
        """True while the campaign waits out an outage."""
        return self._backoff.is_set()

    @property
    def halted(self) -> bool:
        """True once the campaign should take no new batches."""
        return self._stop.is_set() or self._backoff.is_set()

    @property
    def stop_state(self) -> CampaignState | None:
        """The state a halt asked for (None: leave it running, resumable)."""
        return self._stop_state

    @property
    def reason(self) -> str | None:
        """Why it was halted, for the journal and the logs."""
        return self._reason

    @property
    def details(self) -> dict[str, Any]:
        """Extra fields for the stop's event (a brake's figures)."""
        return dict(self._details)

    @property
    def broken(self) -> JournalError | OSError | None:
        """The first storage failure, if any."""
        return self._broken

    async def wait_stop(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the run is halted meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(0.0, seconds))

    def until_stopped(self) -> asyncio.Future[bool]:
        """A future done once the run is halted (cancel it when no longer waiting)."""
        return asyncio.ensure_future(self._stop.wait())

    # ----------------------------------------------------------------- batches in hand

    async def take_slot(self) -> None:
        """Wait for room in the campaign's queue window (one batch)."""
        while self._taken >= self._slots():
            self._freed.clear()
            await self._freed.wait()
        self._taken += 1

    def free_slot(self) -> None:
        """A batch left the window (its job ended)."""
        self._taken -= 1
        self._freed.set()

    def track(self, done: asyncio.Future[None]) -> None:
        """A queued batch, awaited by `settled`."""
        self._outstanding.add(done)
        done.add_done_callback(self._outstanding.discard)

    async def settled(self) -> None:
        """Wait for every queued batch; raise the first storage failure, if any."""
        await asyncio.gather(*list(self._outstanding))
        if self._broken is not None:
            raise self._broken

    def started(self, first_time: bool) -> None:
        """The campaign is running; ``first_time``: never before (its first request then
        measures the schedule lag)."""
        self._first_post = first_time

    def first_request(self) -> bool:
        """True exactly once: for the campaign's very first request (the schedule lag)."""
        first, self._first_post = self._first_post, False
        return first

    def progressed(self, count: int) -> None:
        """``count`` more recipients reached a final outcome."""
        if self._on_progress is not None:
            self._on_progress(count)

    # ----------------------------------------------------------------- brake

    def observe(self, results: Results) -> None:
        """Durable outcomes to the brake; a brake that trips halts the run."""
        if self._brake is not None and not self._stop.is_set():
            self._trip(self._brake.observe(results))

    def observe_midway(self, results: Results) -> bool:
        """Outcomes decided so far inside a batch being split (`Brake.midway`); True if the
        brake tripped (the rest of the batch stays pending)."""
        if self._brake is None or self._stop.is_set():
            return False
        return self._trip(self._brake.midway(results))

    def observe_deliveries(self, finals: Sequence[FinalStatus]) -> None:
        """Final delivery statuses to the brake; a brake that trips halts the run."""
        if self._brake is not None and not self._stop.is_set():
            self._trip(self._brake.observe_deliveries(finals))

    def _trip(self, reading: Reading | None) -> bool:
        if reading is None:
            return False
        self._details = reading.fields()
        self.halt("braked", reading.reason)
        return True

    # ----------------------------------------------------------------- roll-out

    @property
    def stage(self) -> int:
        """Roll-out: the stage in progress (0 without a roll-out)."""
        return self._stage

    @property
    def later(self) -> int | None:
        """Roll-out: how many messages belong to later stages (None: no roll-out)."""
        return self._later

    def enter_stage(self, stage: int, later: int) -> None:
        """Roll-out: ``stage`` is in progress; ``later`` messages wait for the next ones."""
        self._stage, self._later = stage, later
