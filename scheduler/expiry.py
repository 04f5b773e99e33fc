"""A cancelled campaign's unsent rows end at its deadline: ``expired``, reason ``cancelled``.

Removing a campaign's file cancels it, and restoring the file resumes it (SPEC §7), but only
until ``send_at + ttl``: after that nothing of it may ever go. Its rows still unsent then end
``expired`` with reason ``cancelled``, so every row has one final outcome (SPEC §6): in the
journal first, then one ``message`` line each in the delivery log. The campaign stays
"cancelled", which is what happened to it. The leading daemon asks `expire_cancelled` now and
then (`Upkeep._expire_cancelled`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import orjson

from scheduler.delivery_log import DeliveryLog, MessageOutcome
from scheduler.journal import BatchRecord, CampaignRecord, Results, Run, SendJournal
from scheduler.metrics import Metrics
from scheduler.recorder import TAIL_BYTES_PER_LINE
from scheduler.vocabulary import CANCELLED_REASON

PAGE = 16  # open batches read at a time


async def expire_cancelled(
    journal: SendJournal, log: DeliveryLog, metrics: Metrics, *, route: str, now: datetime,
    busy: Collection[str] = (), replay: bool = False, account: str = "default",
) -> datetime | None:
    """End the unsent rows of every cancelled campaign whose deadline has passed (except the
    ``busy`` ones, which a run is ending right now); ``replay`` (once after a start): first
    write the lines a crash kept from the delivery log; ``account``: the metrics' label of
    the messages ended (the journal does not keep a campaign's account). Returns the next
    deadline of a cancelled campaign still ahead (when to look again), or None."""
    ahead: datetime | None = None
    for record in await journal.campaigns():
        if record.state != "cancelled" or record.id in busy:
            continue
        if record.deadline > now:
            ahead = record.deadline if ahead is None else min(ahead, record.deadline)
            continue
        if replay:
            await _write_unlogged(journal, log, record, route)
        expired = await _expire(journal, log, record, route)
        if expired:
            metrics.messages.labels(account, record.type, "expired").inc(expired)
    return ahead


async def _expire(
    journal: SendJournal, log: DeliveryLog, record: CampaignRecord, route: str,
) -> int:
    """Record and log every open message of the campaign as expired; how many there were."""
    expired = 0
    while page := await journal.open_batches(record.id, -1, PAGE):
        for batch in page:
            ids, phones = _open(batch)
            results = Results([Run("expired", batch.attempts, ids, [CANCELLED_REASON] * len(ids),
                                   phones)])
            held = await journal.record_results(record.id, batch.seq, results)
            log.messages(record.id, route, [
                MessageOutcome(tracking_id, "expired", phone, batch.attempts, None, None,
                               CANCELLED_REASON)
                for tracking_id, phone in zip(ids, phones, strict=True)
            ])
            await journal.mark_logged(record.id, [(batch.seq, held)])
            expired += len(ids)
    return expired


def _open(batch: BatchRecord) -> tuple[list[str], list[str]]:
    """The tracking ids and phones of the batch's messages without a final outcome."""
    messages: Sequence[dict[str, Any]] = orjson.loads(batch.body)
    kept = [m for m in messages if m["id"] not in batch.decided]
    return [m["id"] for m in kept], [m["toPhone"] for m in kept]


async def _write_unlogged(
    journal: SendJournal, log: DeliveryLog, record: CampaignRecord, route: str,
) -> None:
    """Outcomes journaled just before a crash whose lines never reached the delivery log."""
    pending = await journal.unlogged(record.id)
    if not pending:
        return
    count = sum(len(batch.rows) for batch in pending)
    seen = log.recent_message_ids(record.id, TAIL_BYTES_PER_LINE * count)
    log.messages(record.id, route, [
        MessageOutcome(row.tracking_id, row.outcome, row.phone, row.attempts,
                       row.detail if row.outcome == "sent" else None,
                       row.detail if row.outcome == "rejected" else None,
                       None if row.outcome in ("sent", "rejected") else row.detail)
        for batch in pending for row in batch.rows if row.tracking_id not in seen
    ])
    await journal.mark_logged(record.id, [(batch.seq, batch.held) for batch in pending])
