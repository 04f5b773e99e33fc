"""Frequency caps (SPEC §11.4): at most ``max`` sent promo/survey messages to one phone in any
``days``, across every campaign in the journal. Transactional and flashcall are never capped.
A cap that names ``accounts`` (SPEC §13.3) caps only those accounts' campaigns and counts only
their messages (by the account the journal kept for each campaign).

The journal names the phones that reached a cap (`Journal.capped_phones`, one walk of its
per-phone index); a `CapSummary` keeps them as a sorted array of integers, 8 bytes a phone, so
the check of each message about to go is a binary search, not a query. The cap gate rebuilds it
every `REFRESH` seconds while a capped campaign sends (the index itself follows the sends within
a second or so); `check` and `plan` build one to forecast.
"""

from __future__ import annotations

import itertools
from array import array
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta

from scheduler.campaign import Campaign
from scheduler.config import CapConfig

#: the outcome detail (and delivery-log reason) of a message a cap skipped
CAP_REASON = "frequency_cap"
#: seconds between rebuilds of a sending campaign's summary (sends elsewhere meanwhile count
#: from the next one). A rebuild reads every capped phone: ~3 s of CPU for a million of them
REFRESH = 300.0
PAGE = 50_000  # phones per look-up while building a summary
SET_LIMIT = 200_000  # capped phones kept as a set of text (faster) up to this many

#: one page of `Journal.capped_phones`: (cap, after) -> phones
Pages = Callable[[CapConfig, str], list[str]]
AsyncPages = Callable[[CapConfig, str], Awaitable[list[str]]]


def caps_for(campaign: Campaign, caps: Iterable[CapConfig]) -> tuple[CapConfig, ...]:
    """The caps a campaign's messages are checked against (none for transactional ones): of
    its type, and naming its account or none (SPEC §13.3)."""
    if campaign.is_transactional:
        return ()
    return tuple(cap for cap in caps
                 if campaign.type in cap.types and cap.covers(campaign.account))


def since(cap: CapConfig, now: datetime) -> datetime:
    """The start of the cap's rolling window."""
    return now - timedelta(days=cap.days)


class CapSummary:
    """The phones that reached a cap: up to `SET_LIMIT` of them a set of their text (~0.05 µs
    a look-up, ~100 bytes a phone); beyond, one sorted array of `phone_key` per cap (8 bytes a
    phone: a million capped phones cost 8 MB; ~1 µs a look-up)."""

    __slots__ = ("_few", "_runs")

    def __init__(self, runs: list[array[int]], set_limit: int = SET_LIMIT) -> None:
        self._runs = runs
        self._few: frozenset[str] | None = None
        if sum(len(run) for run in runs) <= set_limit:
            self._few = frozenset(phone_text(key) for run in runs for key in run)
            self._runs = []

    def __len__(self) -> int:
        return len(self._few) if self._few is not None else sum(len(r) for r in self._runs)

    def __contains__(self, phone: object) -> bool:
        return isinstance(phone, str) and phone[1:].isdigit() and self._has(phone)

    def _has(self, phone: str) -> bool:
        if self._few is not None:
            return phone in self._few
        key = phone_key(phone)
        for run in self._runs:
            at = bisect_left(run, key)
            if at < len(run) and run[at] == key:
                return True
        return False

    def over(self, phones: Sequence[str]) -> list[bool] | None:
        """For each E.164 phone, whether it reached a cap; None when none did (the usual
        batch: a set's disjointness test, or one pass of binary searches, nothing built)."""
        if self._few is not None and self._few.isdisjoint(phones):
            return None
        flags = [self._has(phone) for phone in phones]
        return flags if any(flags) else None

    @classmethod
    def of(cls, caps: Sequence[CapConfig], page: Pages, set_limit: int = SET_LIMIT) -> CapSummary:
        """Every phone over any of ``caps``, read page by page."""
        runs = []
        for cap in caps:
            run: array[int] = array("q")
            after: str | None = ""
            while after is not None:
                after = _add(run, page(cap, after))
            runs.append(run)
        return cls(runs, set_limit)

    @classmethod
    async def gather(cls, caps: Sequence[CapConfig], page: AsyncPages) -> CapSummary:
        """`of`, with an asynchronous journal (the engine's)."""
        runs = []
        for cap in caps:
            run: array[int] = array("q")
            after: str | None = ""
            while after is not None:
                after = _add(run, await page(cap, after))
            runs.append(run)
        return cls(runs)


def phone_text(key: int) -> str:
    """The phone of a `phone_key` (E.164 digits never start with 0)."""
    return "+" + str(key // 16)[:key % 16]


def phone_key(phone: str) -> int:
    """An E.164 phone as an integer in the phones' text order (the journal's order): its
    digits padded to 15, times 16, plus their count (a prefix comes first: +12 < +120)."""
    digits = phone[1:]
    return int(digits.ljust(15, "0")) * 16 + len(digits)


def _add(run: array[int], phones: list[str]) -> str | None:
    """Append a page's phones to ``run``, keeping it sorted; where the next page starts (None:
    that was the last). The journal gives them in order (SQLite, PostgreSQL "C"), so sorting
    only happens if it ever does not."""
    keys = [phone_key(phone) for phone in phones]
    in_order = all(a <= b for a, b in itertools.pairwise([run[-1] if run else -1, *keys]))
    run.extend(keys)
    if not in_order:
        run[:] = array("q", sorted(run))
    return phones[-1] if len(phones) == PAGE else None
