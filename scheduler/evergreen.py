"""Evergreen series (SPEC §13.1, ``audience = "new"``): each occurrence goes only to the rows
no earlier occurrence of its series sent, rejected or left in doubt; the others are skipped,
reason ``already_messaged``.

A recipient is known by the audience's ``id_column`` when it has one (the tracking id minus its
run's prefix), else by the phone. The keys are read from the journal once, when the occurrence
starts (earlier occurrences have ended by then: occurrences never overlap), and the engine asks
`unmessaged` about each batch as it goes, like the frequency caps.
"""

from __future__ import annotations

from collections.abc import Sequence

from scheduler.batching import Message
from scheduler.campaign import Campaign
from scheduler.journal import Journal
from scheduler.series import parse_run_id, wire_id
from scheduler.vocabulary import Outcome, SkipReason

ALREADY_MESSAGED: SkipReason = "already_messaged"
#: the outcomes that count as "messaged": sent, refused by the API, or maybe sent
MESSAGED: tuple[Outcome, ...] = ("sent", "rejected", "in_doubt")




def is_evergreen(campaign: Campaign) -> bool:
    """True for an occurrence of a series with ``audience = "new"``."""
    return (campaign.repeat is not None and campaign.repeat.audience == "new"
            and parse_run_id(campaign.id) is not None)


async def messaged_before(journal: Journal, campaign: Campaign) -> frozenset[str]:
    """The keys (ids, else phones) the occurrences of ``campaign``'s series before it messaged."""
    this = parse_run_id(campaign.id)
    assert this is not None
    by_id = campaign.audience.id_column is not None
    keys: set[str] = set()
    for record in await journal.campaigns():
        earlier = parse_run_id(record.id)
        if earlier is None or earlier.series != this.series or earlier.fire_at >= this.fire_at:
            continue
        prefix = wire_id(record.id) + "-"
        for outcome in MESSAGED:
            async for row in journal.recipients(record.id, outcome):
                keys.add(row.tracking_id.removeprefix(prefix) if by_id else row.phone)
    return frozenset(keys)


def unmessaged(
    already: frozenset[str], campaign: Campaign, messages: Sequence[Message],
) -> tuple[list[Message], list[Message]]:
    """``messages`` split into those still to send and those an earlier occurrence messaged."""
    prefix = campaign.wire_id + "-"
    by_id = campaign.audience.id_column is not None
    kept: list[Message] = []
    known: list[Message] = []
    for message in messages:
        key = message["id"].removeprefix(prefix) if by_id else message["toPhone"]
        (known if key in already else kept).append(message)
    return kept, known
