"""What send windows and frequency caps will do to a campaign, for `check` and `plan`
(SPEC §11.4): recipients by zone, how many go at once, how many are held and when their window
opens (by UTC hour, with the local time of the largest zone of that hour), how many cannot be
reached before ``send_at + ttl``, and how many the caps would skip now.
"""

from __future__ import annotations

import itertools
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from scheduler.audience import iter_rows
from scheduler.campaign import Campaign, utc_text
from scheduler.caps import PAGE, CapSummary, caps_for, phone_key, since
from scheduler.config import CapConfig
from scheduler.records import Skip
from scheduler.suppression import Suppression
from scheduler.window import zones_of_group

#: the window that lets every hour through (a file's own window replaces [policy]'s)
ANY_HOUR = "00:00-24:00"
ZONES_SHOWN = 5  # zone groups listed by name; the rest are counted together
HOURS_SHOWN = 6  # hours of the held histogram listed; the rest are counted together


class CappedPhones(Protocol):
    """What the cap forecast needs of a journal (`JournalReader`): the phones over a cap by
    the per-message index, and the sends the index has not reached yet."""

    def capped_phones(
        self, types: Sequence[str], since: datetime, at_least: int, after: str = "",
        limit: int = 50_000, *, accounts: Sequence[str] | None = None,
    ) -> list[str]: ...

    def unindexed_phones(
        self, types: Sequence[str], since: datetime, *, accounts: Sequence[str] | None = None,
    ) -> Iterator[str]: ...


@dataclass
class Forecast:
    """A windowed campaign's recipients by when their window lets them go."""

    window: str
    #: where the window comes from: ``[policy] window``, or the campaign file's own
    source: Literal["policy", "file"] = "file"
    by_zone: Counter[str] = field(default_factory=Counter)
    at_once: int = 0
    held: Counter[datetime] = field(default_factory=Counter)  # UTC hour -> recipients
    largest: dict[datetime, tuple[str, int]] = field(default_factory=dict)  # hour -> zone
    unreachable: int = 0

    @property
    def held_total(self) -> int:
        """Recipients who wait for their window."""
        return sum(self.held.values())


def forecast(campaign: Campaign, zones: Mapping[str, int], now: datetime) -> Forecast | None:
    """When each zone group of ``zones`` (recipients per group) may go, from the later of now
    and send_at until the deadline; None for a campaign without a window."""
    window = campaign.window
    if window is None:
        return None
    start, deadline = max(now, campaign.send_at), campaign.deadline
    seen = Forecast(window.text(), "policy" if campaign.policy_window else "file")
    for group, count in zones.items():
        seen.by_zone[group] += count
        stretch = window.next_stretch(zones_of_group(group), start, deadline)
        if stretch is None:
            seen.unreachable += count
        elif stretch[0] <= start:
            seen.at_once += count
        else:
            hour = stretch[0].replace(minute=0, second=0, microsecond=0)
            seen.held[hour] += count
            if count > seen.largest.get(hour, ("", 0))[1]:
                seen.largest[hour] = (group, count)
    return seen


def describe(seen: Forecast) -> list[str]:
    """The forecast as a few lines of text for people."""
    lines = [
        f"window {seen.window} local ({source_text(seen)}): {seen.at_once:,} may go at once, "
        f"{seen.held_total:,} held for their window, "
        f"{seen.unreachable:,} cannot be reached before send_at + ttl (expired, outside_window)",
        "by zone: " + _zones_text(seen.by_zone),
    ]
    if seen.source == "policy" and (seen.held or seen.unreachable):
        lines.append(f'to send outside it (a test now, say), write window = "{ANY_HOUR}" in '
                     "the campaign file: its own window replaces [policy]'s")
    if seen.held:
        hours = sorted(seen.held)
        shown = [f"{hour_text(hour)}{_local(hour, seen.largest[hour][0])} "
                 f"{seen.held[hour]:,}" for hour in hours[:HOURS_SHOWN]]
        rest = sum(seen.held[hour] for hour in hours[HOURS_SHOWN:])
        more = f", {rest:,} later" if rest else ""
        lines.append("held, by the hour their window opens: " + ", ".join(shown) + more)
    return lines


def source_text(seen: Forecast) -> str:
    """Where the window comes from, in a few words."""
    return "[policy] window" if seen.source == "policy" else "the file's own window"


def hour_text(hour: datetime) -> str:
    """``2026-12-07T14:00Z``: a whole hour in UTC, as the forecast shows it."""
    return utc_text(hour)[:-4] + "Z"


def _zones_text(by_zone: Counter[str]) -> str:
    ranked = by_zone.most_common()
    shown = [f"{_group_name(group)} {count:,}" for group, count in ranked[:ZONES_SHOWN]]
    rest = sum(count for _, count in ranked[ZONES_SHOWN:])
    return ", ".join(shown) + (f", {rest:,} in {len(ranked) - ZONES_SHOWN} more" if rest else "")


def _group_name(group: str) -> str:
    """``Europe/Kyiv``, or ``Europe/Moscow +15 zones`` for a prefix of several."""
    names = group.split()
    return names[0] if len(names) == 1 else f"{names[0]} +{len(names) - 1} zones"


def _local(hour: datetime, group: str) -> str:
    """`` (Europe/Kyiv 09:00)``: the hour's local time in the first zone of ``group``."""
    zone = zones_of_group(group)[0]
    return f" ({zone.key} {hour.astimezone(zone):%H:%M})"


def zones_of_batches(batches: Iterable[tuple[str | None, int]]) -> dict[str, int]:
    """Open messages per zone group of a started campaign's open batches (zones, open)."""
    found: Counter[str] = Counter()
    for group, count in batches:
        if group is not None:
            found[group] += count
    return dict(found)


def capped_now(
    campaign: Campaign, caps: Sequence[CapConfig], journal: CappedPhones,
    suppression: Suppression | None, now: datetime,
) -> int:
    """How many of the campaign's valid recipients a frequency cap would skip if it sent now
    (transactional and flashcall: none): by the index, and by what was sent and not indexed
    yet (a campaign that just ended, or a `send` with no daemon to index it)."""
    mine = caps_for(campaign, caps)
    if not mine:
        return 0
    # the sends the index lacks are read first: one it takes meanwhile is counted twice at
    # worst (a forecast a message high), never missed
    pending = CapSummary([_over_with_pending(cap, journal, now) for cap in mine])
    summary = CapSummary.of(
        mine, lambda cap, after: journal.capped_phones(
            cap.types, since(cap, now), cap.max, after, PAGE, accounts=cap.accounts))
    if not summary and not pending:
        return 0
    # the journal is open: it may run threads (SQLite's writer), so no forking
    return sum(1 for row in iter_rows(campaign, suppression, may_fork=False)
               if not isinstance(row, Skip) and (row[2] in summary or row[2] in pending))


def _over_with_pending(cap: CapConfig, journal: CappedPhones, now: datetime) -> array[int]:
    """The phones (as sorted `phone_key` integers) that the sends not indexed yet take to the
    cap: with ``k`` of them, a phone is over it when it has ``max - k`` indexed sends. Kept
    as arrays: 12 bytes a phone, whatever their number."""
    start = since(cap, now)
    keys, counts = array("q"), array("i")  # each phone once, in order; its pending sends
    for key, run in itertools.groupby(sorted(
            phone_key(p) for p in journal.unindexed_phones(cap.types, start,
                                                            accounts=cap.accounts))):
        keys.append(key)
        counts.append(sum(1 for _ in run))
    over = array("q", (key for key, k in zip(keys, counts, strict=True) if k >= cap.max))
    for k in sorted({k for k in counts if k < cap.max}):
        after: str | None = ""
        while after is not None:  # the phones with max - k indexed sends, or more
            page = journal.capped_phones(cap.types, start, cap.max - k, after, PAGE,
                                         accounts=cap.accounts)
            for key in map(phone_key, page):
                at = bisect_left(keys, key)
                if at < len(keys) and keys[at] == key and counts[at] == k:
                    over.append(key)
            after = page[-1] if len(page) == PAGE else None
    return array("q", sorted(over))
