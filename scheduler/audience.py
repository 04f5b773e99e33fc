"""Audience CSVs: a streaming reader that yields one `Recipient` or `Skip` per data row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SkipReason = Literal["invalid_phone", "duplicate", "suppressed", "invalid_id", "text_too_long"]
SKIP_REASONS: tuple[SkipReason, ...] = (
    "invalid_phone", "duplicate", "suppressed", "invalid_id", "text_too_long",
)


@dataclass(frozen=True, slots=True)
class Recipient:
    """A row that will be sent: its CSV line, stable tracking id, E.164 phone, personalised text."""

    line: int
    tracking_id: str
    phone: str
    text: str | None


@dataclass(frozen=True, slots=True)
class Skip:
    """A row that will not be sent, and why (tracking_id is None when it could not be built)."""

    line: int
    tracking_id: str | None
    phone: str
    reason: SkipReason
    detail: str = ""
