"""The send windows' gate: may a batch go now, and until when (SPEC §11.3).

Asked by the driver for each open batch of a windowed campaign; it keeps the stretch each
zone group may be sent in, and what it held back for the ``campaign_held`` event. The window
rules themselves are `scheduler.window`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Literal

from scheduler.journal import BatchRecord
from scheduler.window import Stretch, Window, zones_of_group

#: a batch whose window opens later ("held"), or not before the deadline ("never")
Closed = Literal["held", "never"]


class WindowGate:
    """One campaign's send windows: per zone group, the next stretch it may go in."""

    def __init__(
        self, window: Window | None, deadline: datetime, clock: Callable[[], datetime],
    ) -> None:
        self._window, self._deadline, self._clock = window, deadline, clock
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
        "held" when its window opens later (`held_until` learns when), "never" when not
        before the deadline (its messages end ``expired``, outside_window)."""
        if self._window is None or batch.zones is None:
            return self._deadline
        now = self._clock()
        known = batch.zones in self._stretches
        stretch = self._stretches.get(batch.zones)
        if not known or (stretch is not None and now >= stretch[1]):
            stretch = self._window.next_stretch(zones_of_group(batch.zones), now,
                                                self._deadline)
            self._stretches[batch.zones] = stretch
        if stretch is None:
            return "never"
        opens, closes = stretch
        if opens > now:
            self._held_until = opens if self._held_until is None else min(self._held_until,
                                                                          opens)
            self._held += open_messages
            return "held"
        return min(closes, self._deadline)

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
