"""The error brake: stop a campaign early when too many of its recent messages fail.

A broken template or a bad list sent to a million people is the costliest mistake in this
trade. The brake watches a running campaign two ways, each over its last ``window`` messages:

- the API's verdicts: of the decided messages (sent, rejected or in doubt; an expiry is not
  the API's verdict), how many were ``rejected``;
- with delivery reports on, the final delivery statuses that reached the campaign while it
  runs (polled or pushed; ``unknown`` is ours, not the network's): how many were
  ``undeliverable`` or ``permanenterror``.

Either trips it once at least `MINIMUM` are counted and more than ``rate`` of them failed. The
campaign then stops in state ``braked``, journaled (so it survives restarts and failover), and
goes on only once its file is saved again after the brake (`released`). Each run of the
campaign watches afresh: the journal keeps the state and `campaign_braked` the figures.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from scheduler.journal import FinalStatus, Results, Run

MINIMUM = 100  # decided messages before the brake may judge
TOP_CODES = 3  # error codes named in campaign_braked
_DECIDED = frozenset({"sent", "rejected", "in_doubt"})
_UNDELIVERED = frozenset({"undeliverable", "permanenterror"})
_FINAL = frozenset({"delivered"}) | _UNDELIVERED

#: what the brake judged: the API's answers, or the delivery statuses
Judged = Literal["sending", "delivery"]


@dataclass(frozen=True)
class Reading:
    """Why the brake tripped: the figures and the most common error codes."""

    failed: int
    decided: int
    rate: float
    limit: float
    codes: list[dict[str, Any]]  # [{"code", "count", "example"}], most common first
    judged: Judged = "sending"

    @property
    def reason(self) -> str:
        """One sentence for the journal's error field and `status`."""
        top = ", ".join(f"{c['code']} x{c['count']}" for c in self.codes) or "no code"
        what = ("messages rejected" if self.judged == "sending" else
                "delivery statuses undeliverable or permanenterror")
        return (f"error brake: {self.failed} of the last {self.decided} {what} "
                f"({self.rate:.1%} > {self.limit:.1%}; {top}): fix the campaign, then save its "
                "file again to resume")

    def fields(self) -> dict[str, Any]:
        """The figures as `campaign_braked` event fields."""
        failed = "rejected" if self.judged == "sending" else "undelivered"
        return {"judged": self.judged, failed: self.failed, "decided": self.decided,
                "rate": round(self.rate, 4), "brake_rate": self.limit,
                "top_error_codes": self.codes}


class _Window:
    """The last ``size`` verdicts (failed or not) and every failure's code with an example."""

    def __init__(self, size: int) -> None:
        self.recent: collections.deque[bool] = collections.deque(maxlen=size)
        self.codes: dict[str, list[Any]] = {}  # code -> [count, an example tracking id]

    def add(self, verdicts: Iterable[bool], failures: Iterable[tuple[str, str]]) -> None:
        self.recent.extend(verdicts)
        for code, tracking_id in failures:
            self.codes.setdefault(code, [0, tracking_id])[0] += 1

    def judge(self, limit: float, judged: Judged) -> Reading | None:
        decided = len(self.recent)
        if decided < MINIMUM:
            return None
        failed = sum(self.recent)
        if failed / decided <= limit:
            return None
        return self._reading(failed, decided, limit, judged)

    def judge_with(
        self, verdicts: list[bool], failures: Iterable[tuple[str, str]], limit: float,
        judged: Judged,
    ) -> Reading | None:
        """`judge` as if these verdicts were added (they are not)."""
        recent = [*self.recent, *verdicts][-(self.recent.maxlen or 0):]
        failed = sum(recent)
        if len(recent) < MINIMUM or failed / len(recent) <= limit:
            return None
        trial = _Window(len(recent))
        trial.codes = {code: list(entry) for code, entry in self.codes.items()}
        trial.add((), failures)
        return trial._reading(failed, len(recent), limit, judged)

    def _reading(self, failed: int, decided: int, limit: float, judged: Judged) -> Reading:
        top = sorted(self.codes.items(), key=lambda item: -item[1][0])[:TOP_CODES]
        codes = [{"code": code, "count": n, "example": example} for code, (n, example) in top]
        return Reading(failed, decided, failed / decided, limit, codes, judged)


class Brake:
    """Counts one campaign run's recent outcomes (batch by batch) and delivery statuses."""

    def __init__(self, rate: float, window: int) -> None:
        self.rate = rate
        self._sending = _Window(window)
        self._delivery = _Window(window)

    def observe(self, results: Results) -> Reading | None:
        """Take a batch's final outcomes; a `Reading` when the brake trips now."""
        for run in results.runs:
            if run.outcome in _DECIDED:
                rejected = run.outcome == "rejected"
                self._sending.add(
                    itertools.repeat(rejected, len(run.tracking_ids)),
                    _failures(run) if rejected else (),
                )
        return self._sending.judge(self.rate, "sending")

    def midway(self, results: Results) -> Reading | None:
        """A `Reading` when the brake would trip on a batch's outcomes decided so far (while
        400s are being split: isolating each bad message costs requests of the shared rate
        limit, so a bad list is judged as its rejections come, not at the batch's end). The
        outcomes are not taken: `observe` takes the batch once it is recorded."""
        verdicts = [run.outcome == "rejected" for run in results.runs
                    if run.outcome in _DECIDED for _ in run.tracking_ids]
        failures = [failure for run in results.runs if run.outcome == "rejected"
                    for failure in _failures(run)]
        return self._sending.judge_with(verdicts, failures, self.rate, "sending")

    def observe_deliveries(self, finals: Sequence[FinalStatus]) -> Reading | None:
        """Take first final delivery statuses of the campaign's messages; a `Reading` when
        the brake trips now. The code of a failure is its status and the last channel tried."""
        self._delivery.add(
            (final.status in _UNDELIVERED for final in finals if final.status in _FINAL),
            ((f"{final.status}/{final.channel}" if final.channel else final.status,
              final.tracking_id) for final in finals if final.status in _UNDELIVERED),
        )
        return self._delivery.judge(self.rate, "delivery")


def _failures(run: Run) -> Iterable[tuple[str, str]]:
    """(error code, tracking id) of each message of a rejected run."""
    return zip([code or "unknown" for code in run.details], run.tracking_ids, strict=True)


def released(file: Path, braked_at: datetime | None) -> bool:
    """True when the campaign file was saved after the brake stopped the campaign."""
    if braked_at is None:
        return True
    try:
        return file.stat().st_mtime > braked_at.timestamp()
    except OSError:
        return False
