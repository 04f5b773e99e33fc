"""The records an audience row becomes: a `Recipient` to send or a `Skip` with its reason.

They sit below both the CSV reader that makes them and the journal that stores them, so storage
never imports the reader.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.vocabulary import SkipReason

__all__ = ["Recipient", "Skip"]


@dataclass(frozen=True, slots=True)
class Recipient:
    """A row that will be sent: its CSV line, stable tracking id, E.164 phone, personalised text."""

    line: int
    tracking_id: str
    phone: str
    text: str | None
    zone: str | None = None  # the zone group (`scheduler.window.zone_group`) with a window


@dataclass(frozen=True, slots=True)
class Skip:
    """A row that will not be sent, and why (tracking_id is None when it could not be built)."""

    line: int
    tracking_id: str | None
    phone: str
    reason: SkipReason
    detail: str = ""
