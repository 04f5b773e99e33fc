"""Frequency caps (SPEC §11.4): at most ``max`` sent promo/survey messages to one phone in any
``days``, across every campaign in the journal. Transactional and flashcall are never capped.

The journal counts (`Journal.sent_counts`, an index by phone and time); this module holds the
rule, shared by the engine (when a message is about to go) and the forecast of `check`/`plan`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from scheduler.campaign import Campaign
from scheduler.config import CapConfig

#: the outcome detail (and delivery-log reason) of a message a cap skipped
CAP_REASON = "frequency_cap"


def caps_for(campaign: Campaign, caps: Iterable[CapConfig]) -> tuple[CapConfig, ...]:
    """The caps a campaign's messages are checked against (none for transactional ones)."""
    if campaign.is_transactional:
        return ()
    return tuple(cap for cap in caps if campaign.type in cap.types)


def since(cap: CapConfig, now: datetime) -> datetime:
    """The start of the cap's rolling window."""
    return now - timedelta(days=cap.days)


def over(cap: CapConfig, counts: Mapping[str, int]) -> set[str]:
    """The phones of ``counts`` (sent messages in the cap's window) that reached the cap."""
    return {phone for phone, count in counts.items() if count >= cap.max}
