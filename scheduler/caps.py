"""Frequency caps (SPEC §11.4): at most ``max`` sent promo/survey messages to one phone in any
``days``, across every campaign in the journal. Transactional and flashcall are never capped.

The journal names the phones that reached a cap (`Journal.capped_phones`, one walk of its
per-phone index); a `CapSummary` keeps them as a sorted array of integers, 8 bytes a phone, so
the check of each message about to go is a binary search, not a query. The engine rebuilds it
every `REFRESH` seconds while a capped campaign sends (the index itself follows the sends within
a second or so); `check` and `plan` build one to forecast.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta

from scheduler.campaign import Campaign
from scheduler.config import CapConfig

#: the outcome detail (and delivery-log reason) of a message a cap skipped
CAP_REASON = "frequency_cap"
#: seconds between rebuilds of a sending campaign's summary (sends elsewhere meanwhile count
#: from the next one)
REFRESH = 60.0
PAGE = 50_000  # phones per look-up while building a summary

#: one page of `Journal.capped_phones`: (cap, after) -> phones
Pages = Callable[[CapConfig, str], list[str]]
AsyncPages = Callable[[CapConfig, str], Awaitable[list[str]]]


def caps_for(campaign: Campaign, caps: Iterable[CapConfig]) -> tuple[CapConfig, ...]:
    """The caps a campaign's messages are checked against (none for transactional ones)."""
    if campaign.is_transactional:
        return ()
    return tuple(cap for cap in caps if campaign.type in cap.types)


def since(cap: CapConfig, now: datetime) -> datetime:
    """The start of the cap's rolling window."""
    return now - timedelta(days=cap.days)


class CapSummary:
    """The phones that reached any of some caps, as a sorted array of their digits."""

    __slots__ = ("_numbers", "built_at")

    def __init__(self, numbers: array[int], built_at: datetime) -> None:
        self.built_at = built_at
        self._numbers = array("q", sorted(numbers))  # sorting costs a list for a moment

    def __len__(self) -> int:
        return len(self._numbers)

    def __contains__(self, phone: object) -> bool:
        if not isinstance(phone, str) or not phone[1:].isdigit():
            return False
        number = int(phone[1:])
        at = bisect_left(self._numbers, number)
        return at < len(self._numbers) and self._numbers[at] == number

    @classmethod
    def of(cls, caps: Sequence[CapConfig], page: Pages, now: datetime) -> CapSummary:
        """Every phone over any of ``caps`` now, read page by page."""
        numbers: array[int] = array("q")
        for cap in caps:
            after: str | None = ""
            while after is not None:
                after = _add(numbers, page(cap, after))
        return cls(numbers, now)

    @classmethod
    async def gather(
        cls, caps: Sequence[CapConfig], page: AsyncPages, now: datetime,
    ) -> CapSummary:
        """`of`, with an asynchronous journal."""
        numbers: array[int] = array("q")
        for cap in caps:
            after: str | None = ""
            while after is not None:
                after = _add(numbers, await page(cap, after))
        return cls(numbers, now)


def _add(numbers: array[int], phones: list[str]) -> str | None:
    """Append a page's phones; where the next page starts (None: that was the last)."""
    numbers.extend(int(phone[1:]) for phone in phones)
    return phones[-1] if len(phones) == PAGE else None
