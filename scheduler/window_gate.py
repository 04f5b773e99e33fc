"""The send windows' gate: may a batch go now, and until when (SPEC §11.3).

Asked by the driver for each open batch of a windowed campaign (or a trigger's day run); it
keeps the stretch each zone group may be sent in, and what it held back for the
``campaign_held`` event. `held_back` asks it the same for `status`. The window rules themselves
are `scheduler.window`'s.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from scheduler.campaign import Campaign
from scheduler.journal import BatchRecord
from scheduler.outcomes import open_size
from scheduler.window import Stretch, Window, zones_of_group

#: a batch whose window opens later ("held"), or not before the deadline ("never"), or a
#: trigger's batch whose zone group's own ``ttl`` passed ("late": expired, SPEC §13.2)
Closed = Literal["held", "never", "late"]
#: a trigger's day run: when a zone group is released, and how long its messages live
Release = tuple[Callable[[str], datetime], timedelta]


class WindowGate:
    """One campaign's send windows: per zone group, the next stretch it may go in."""

    def __init__(
        self, window: Window | None, deadline: datetime, clock: Callable[[], datetime],
        release: Release | None = None,
    ) -> None:
        self._window, self._deadline, self._clock = window, deadline, clock
        self._release = release
        self._releases: dict[str, tuple[datetime, datetime]] = {}  # group -> (release, end)
        #: the stretch each zone group may be sent in (None: not before the deadline)
        self._stretches: dict[str, Stretch | None] = {}
        self._held_until: datetime | None = None  # the earliest opening of a held batch
        self._held = 0  # messages held by their send window since `look_again`
        self._announced: datetime | None = None  # the opening last said in campaign_held

    def look_again(self) -> None:
        """A new pass over the open batches: forget what the last one held."""
        self._held_until, self._held = None, 0

    def until(self, batch: BatchRecord, open_messages: int) -> datetime | Closed:
        """When the batch must have gone by: the deadline, or its send window's close;
        "held" when its window (or, for a trigger, its zone group's ``at``) comes later
        (`held_until` learns when), "never" when its window does not open before the deadline
        (its messages end ``expired``, outside_window), "late" when a trigger's zone group
        was released more than ``ttl`` ago (``expired``, send_at + ttl passed)."""
        if batch.zones is None or (self._window is None and self._release is None):
            return self._deadline
        now = self._clock()
        deadline = self._deadline
        if self._release is not None:  # a trigger: each zone group at its own ``at``
            released, deadline = self._released(batch.zones)
            if now >= deadline:
                return "late"
            if released > now:
                self._hold(released, open_messages)
                return "held"
        if self._window is None:
            return deadline
        known = batch.zones in self._stretches
        stretch = self._stretches.get(batch.zones)
        if not known or (stretch is not None and now >= stretch[1]):
            stretch = self._window.next_stretch(zones_of_group(batch.zones), now, deadline)
            self._stretches[batch.zones] = stretch
        if stretch is None:
            return "never"
        opens, closes = stretch
        if opens > now:
            self._hold(opens, open_messages)
            return "held"
        return min(closes, deadline)

    def _released(self, group: str) -> tuple[datetime, datetime]:
        """A trigger's zone group: when it is released, and when its messages' life ends (its
        release + ttl, at most the run's deadline)."""
        known = self._releases.get(group)
        if known is None:
            assert self._release is not None
            release, life = self._release
            moment = release(group)
            known = self._releases[group] = (moment, min(moment + life, self._deadline))
        return known

    def _hold(self, opens: datetime, open_messages: int) -> None:
        self._held_until = opens if self._held_until is None else min(self._held_until, opens)
        self._held += open_messages

    @property
    def held_until(self) -> datetime | None:
        """The earliest opening of a batch held at the last pass (None: none held)."""
        return self._held_until

    def news(self) -> tuple[int, datetime] | None:
        """(messages held, next opening) when it is worth a ``campaign_held`` event: once per
        opening, not per pass."""
        if self._held_until is None or self._announced == self._held_until:
            return None
        self._announced = self._held_until
        return self._held, self._held_until


def releases(campaign: Campaign) -> Release | None:
    """A trigger's day run (SPEC §13.2): each zone group released at ``at`` on its own wall
    clock, its messages living ``ttl`` from then; None for any other campaign."""
    day, trigger = campaign.trigger_day, campaign.trigger
    if day is None or trigger is None:
        return None
    return functools.partial(trigger.release, day), timedelta(seconds=campaign.ttl)


@dataclass(frozen=True)
class Held:
    """A started campaign's open messages by when they may go, as the gate sees them now:
    ``ready`` now, ``waiting`` for their window or their zone group's release, the last of
    which comes at ``last`` (None: none waits). Those that will expire are in neither."""

    ready: int
    waiting: int
    last: datetime | None


def gated(campaign: Campaign) -> bool:
    """True when the gate may hold some of the campaign's batches back: it has a window, or
    it is a trigger's day run."""
    return campaign.window is not None or releases(campaign) is not None


def held_back(campaign: Campaign, batches: Iterable[BatchRecord], now: datetime) -> Held | None:
    """What the gate would do at ``now`` with each of ``batches`` (the campaign's open ones);
    None for a campaign it never holds (not `gated`)."""
    if not gated(campaign):
        return None
    gate = WindowGate(campaign.window, campaign.deadline, lambda: now, release=releases(campaign))
    ready = waiting = 0
    last: datetime | None = None
    for batch in batches:
        size = open_size(batch)
        gate.look_again()  # so that `held_until` is this batch's opening
        verdict = gate.until(batch, size)
        if isinstance(verdict, datetime):
            ready += size
        elif verdict == "held" and (opens := gate.held_until) is not None:
            waiting += size
            last = opens if last is None else max(last, opens)
    return Held(ready, waiting, last)
