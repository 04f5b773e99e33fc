"""The error brake: stop a campaign early when too many of its recent messages are refused.

A broken template or a bad list sent to a million people is the costliest mistake in this
trade. The brake watches the last ``window`` decided messages of a running campaign (sent,
rejected or in doubt; an expiry is not the API's verdict) and trips once at least `MINIMUM` are
decided and more than ``rate`` of them were rejected. The campaign then stops in state
``braked``, journaled (so it survives restarts and failover), and goes on only once its file is
saved again after the brake (`released`).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from scheduler.journal import Result

MINIMUM = 100  # decided messages before the brake may judge
TOP_CODES = 3  # error codes named in campaign_braked
_DECIDED = frozenset({"sent", "rejected", "in_doubt"})


@dataclass(frozen=True)
class Reading:
    """Why the brake tripped: the figures and the most common error codes."""

    rejected: int
    decided: int
    rate: float
    limit: float
    codes: list[dict[str, Any]]  # [{"code", "count", "example"}], most common first

    @property
    def reason(self) -> str:
        """One sentence for the journal's error field and `status`."""
        top = ", ".join(f"{c['code']} x{c['count']}" for c in self.codes) or "no code"
        return (f"error brake: {self.rejected} of the last {self.decided} messages rejected "
                f"({self.rate:.1%} > {self.limit:.1%}; {top}): fix the campaign, then save its "
                "file again to resume")

    def fields(self) -> dict[str, Any]:
        """The figures as `campaign_braked` event fields."""
        return {"rejected": self.rejected, "decided": self.decided, "rate": round(self.rate, 4),
                "brake_rate": self.limit, "top_error_codes": self.codes}


class Brake:
    """Counts one campaign run's recent outcomes, batch by batch."""

    def __init__(self, rate: float, window: int) -> None:
        self.rate = rate
        self._recent: collections.deque[bool] = collections.deque(maxlen=window)
        self._codes: dict[str, list[Any]] = {}  # code -> [count, an example tracking id]

    def observe(self, results: Sequence[Result]) -> Reading | None:
        """Take a batch's final outcomes; a `Reading` when the brake trips now."""
        recent = self._recent
        recent.extend(r.outcome == "rejected" for r in results if r.outcome in _DECIDED)
        for result in results:
            if result.outcome == "rejected":
                seen = self._codes.setdefault(result.detail or "unknown", [0, result.tracking_id])
                seen[0] += 1
        decided = len(recent)
        if decided < MINIMUM:
            return None
        rejected = sum(recent)
        if rejected / decided <= self.rate:
            return None
        top = sorted(self._codes.items(), key=lambda item: -item[1][0])[:TOP_CODES]
        codes = [{"code": code, "count": n, "example": example} for code, (n, example) in top]
        return Reading(rejected, decided, rejected / decided, self.rate, codes)


def released(file: Path, braked_at: datetime | None) -> bool:
    """True when the campaign file was saved after the brake stopped the campaign."""
    if braked_at is None:
        return True
    try:
        return file.stat().st_mtime > braked_at.timestamp()
    except OSError:
        return False
