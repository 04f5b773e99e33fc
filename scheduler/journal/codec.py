"""What every journal backend stores the same way: batch bodies and result blobs, as bytes.

A batch's request body (orjson, without ``ttl``) is the snapshot; its final outcomes are one
blob ``[[tracking_id, outcome, detail, attempts], ...]``, appended by partial records; a row of
a message posted again after an ambiguous outcome has a fifth value, ``true`` (schema 8). These
helpers encode and decode both, whatever database holds the bytes, so the backends list the
same recipients in the same order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import orjson

from scheduler.journal.base import (
    DeliveryCounts,
    EncodedBatch,
    FinalStatus,
    JournalConflict,
    MessageRecord,
    RecipientRow,
    Results,
    StatusChange,
    StatusReport,
)
from scheduler.vocabulary import (
    DELIVERY_FINAL,
    NO_CHANNEL,
    NO_CURRENCY,
    DeliveryStatus,
    Outcome,
    may_advance,
)

T = TypeVar("T")

#: where a backend's ``recipient_page`` goes on: (0, last batch seq) then (1, last skip id)
Cursor = tuple[int, int]
START: Cursor = (0, -1)

#: a message of a done batch whose result names another id: it may or may not have gone out
_UNRECORDED: list[Any] = ["", "in_doubt", "no outcome recorded", 0]


def _resent(row: Sequence[Any]) -> bool:
    """Whether a stored result row is of a message posted again after an ambiguous outcome."""
    return len(row) > 4 and bool(row[4])


def _encode_default(value: object) -> object:
    """orjson fallback: any Mapping is a dict, any other Sequence a list."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in a batch body")


def encode_batches(
    batches: Iterable[Sequence[Mapping[str, Any]]],
) -> Iterator[EncodedBatch]:
    """Number and encode batches, lazily; empty ones are dropped."""
    seq = 0
    for batch in batches:
        if len(batch) == 0:
            continue
        yield encode_batch(seq, batch)
        seq += 1


def encode_batch(seq: int, batch: Sequence[Mapping[str, Any]]) -> EncodedBatch:
    """One batch as a snapshot stores it: its body and its keys."""
    return EncodedBatch(seq, orjson.dumps(batch, default=_encode_default), len(batch),
                        batch_keys(batch))


#: between the ids and the phones of a batch's keys; neither a tracking id ([A-Za-z0-9._-])
#: nor an E.164 phone can hold it, nor the newline between two ids or two phones
_KEYS_SPLIT = "\x1f"


def batch_keys(batch: Sequence[Mapping[str, Any]]) -> bytes | None:
    """The tracking ids and phones of a batch's messages, in order, as one small text: the
    send path splits it at C speed (~0.15 µs a message) instead of decoding the body (~0.75).
    None when a message lacks either or holds a separator (then the body is decoded)."""
    try:
        ids = "\n".join([m["id"] for m in batch])
        phones = "\n".join([m["toPhone"] for m in batch])
    except (KeyError, TypeError):
        return None
    joined = f"{ids}{_KEYS_SPLIT}{phones}"
    if joined.count("\n") != 2 * (len(batch) - 1) or joined.count(_KEYS_SPLIT) != 1:
        return None
    return joined.encode()


def split_keys(keys: bytes) -> tuple[list[str], list[str]]:
    """(tracking ids, phones) from `batch_keys`."""
    ids, phones = keys.decode().split(_KEYS_SPLIT)
    return ids.split("\n"), phones.split("\n")


def streaming_snapshot(campaign_id: str, row: Sequence[Any] | None) -> tuple[int, int]:
    """(snapshot, batches stored) from a campaign's ``(snapshot, streaming, batches)`` row, or
    `JournalConflict` unless its snapshot is being streamed."""
    if row is None or not row[1]:
        raise JournalConflict(campaign_id, "its snapshot is not being streamed")
    return int(row[0]), int(row[2])


def check_follows(campaign_id: str, rows: Sequence[EncodedBatch], stored: int) -> None:
    """Streamed batches must carry the seqs after the ``stored`` ones, in order (a resumed
    stream that lost its place would otherwise store a batch twice)."""
    for expected, (seq, *_) in enumerate(rows, start=stored):
        if seq != expected:
            raise JournalConflict(
                campaign_id, f"streamed batch {seq} does not follow on (batch {expected} is next)",
            )


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter), lazily."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def repeats(previous: Sequence[Any], results: Results) -> bool:
    """Whether ``results`` are exactly the last ones the batch's blob holds: a write that
    landed, done again because its caller never heard so (a connection lost before the
    commit's answer came). Ids are unique in a batch, so no new write can look like this."""
    rows = results.stored()
    return 0 < len(rows) <= len(previous) and previous[len(previous) - len(rows):] == [
        list(row) for row in rows]


def check_record(
    campaign_id: str, seq: int, row: Sequence[Any] | None, results: Results, close: bool,
) -> tuple[list[Any], bool]:
    """The batch's results so far, from its ``row`` (state, size, results blob; None: no such
    batch), once ``results`` are found to add one per message of an open batch (ids unique;
    matching them is the engine's): `JournalConflict` otherwise. True with them when
    ``results`` repeat the write that put them there (`repeats`): change nothing then."""
    previous: list[Any] = [] if row is None or row[2] is None else orjson.loads(row[2])
    if repeats(previous, results):
        return previous, True
    if row is None or row[0] == "done":
        raise JournalConflict(campaign_id, f"batch {seq} is not open")
    # Decoding the body to compare ids would cost ~0.4 ms a batch on the writer thread;
    # the count and uniqueness catch a lost or doubled result at a tenth of that.
    size = row[1]
    total = len(previous) + len(results)
    distinct = len(set(results.tracking_ids()))
    if (total != size if close else total >= size) or distinct != len(results):
        raise JournalConflict(
            campaign_id, f"batch {seq} has {size} messages but the results name "
            f"{distinct} distinct ids",
        )
    return previous, False


def outcome_counts(results: Results) -> dict[str, int]:
    """Messages per outcome, and the resent ones: every counting column of batch_state named
    (0 where none)."""
    counts = results.counts
    return {**{outcome: counts.get(outcome, 0)
               for outcome in ("sent", "rejected", "expired", "in_doubt", "skipped")},
            "resent": results.resent}


def decided(blob: bytes | None) -> frozenset[str]:
    """The tracking ids a partly recorded batch already has final outcomes for."""
    return frozenset() if blob is None else frozenset(r[0] for r in orjson.loads(blob))


def batch_rows(
    body: bytes, blob: bytes | None, attempts: int, outcome: Outcome | None,
    at: datetime | None = None,
    resent: bool = False,
) -> Iterator[RecipientRow]:
    """The recipients of one done batch (done ``at``): the body gives phones, the results
    blob outcomes (``resent``: only the messages posted again after an ambiguous outcome)."""
    messages = orjson.loads(body)
    results: dict[str, list[Any]] = (
        {} if blob is None else {r[0]: r for r in orjson.loads(blob)}
    )
    for message in messages:
        row = results.get(message["id"], _UNRECORDED)
        again = _resent(row)
        if (outcome is None or row[1] == outcome) and (again or not resent):
            yield RecipientRow(message["id"], message["toPhone"], row[1], row[2], row[3], None,
                               at, resent=again)


def unlogged_rows(body: bytes, blob: bytes, logged: int) -> tuple[int, list[RecipientRow]]:
    """How many results a batch holds, and those after its first ``logged`` ones."""
    phones = {m["id"]: m["toPhone"] for m in orjson.loads(body)}
    results = orjson.loads(blob)
    rows = [
        RecipientRow(row[0], phones.get(row[0], ""), row[1], row[2], row[3], resent=_resent(row))
        for row in results[logged:]
    ]
    return len(results), rows


def sent_messages(body: bytes, blob: bytes | None) -> Iterator[tuple[str, str, str]]:
    """``(message_id, tracking_id, phone)`` of each message of a batch the API accepted."""
    if blob is None:
        return
    phones = {m["id"]: m["toPhone"] for m in orjson.loads(body)}
    for tid, outcome, detail, *_ in orjson.loads(blob):
        if outcome == "sent" and detail:
            yield detail, tid, phones.get(tid, "")


def decide_statuses(
    reports: Sequence[StatusReport],
    current: dict[str, tuple[DeliveryStatus | None, MessageRecord]],
) -> tuple[list[StatusChange], dict[str, StatusReport]]:
    """Weigh each report against its message's status so far (``current``: message id ->
    (status, record), as locked by the caller; the reports before it in the same call count
    too). Returns one change per report, and per message the report to write (the furthest)."""
    changes: list[StatusChange] = []
    writes: dict[str, StatusReport] = {}
    for report in reports:
        found = current.get(report.message_id)
        if found is None:
            changes.append(StatusChange("unknown"))
            continue
        status, record = found
        if not may_advance(status, report.status):
            changes.append(StatusChange("unchanged", record))
            continue
        current[report.message_id] = (report.status, record)
        writes[report.message_id] = report
        final = report.status in DELIVERY_FINAL
        changes.append(StatusChange("final" if final else "moved", record))
    return changes, writes


def final_statuses_blob(
    finals: Iterable[StatusReport],
    current: Mapping[str, tuple[DeliveryStatus | None, MessageRecord]],
) -> bytes:
    """What one `record_statuses` call keeps for `take_final_statuses`: its first final
    statuses (``current`` as `decide_statuses` left it) as ``[[campaign, tracking id, status,
    channel], ...]``."""
    rows = []
    for report in finals:
        record = current[report.message_id][1]
        rows.append((record.campaign, record.tracking_id, report.status, report.channel))
    return orjson.dumps(rows)


def read_final_statuses(blobs: Iterable[bytes]) -> list[FinalStatus]:
    """The statuses of `final_statuses_blob` blobs, in order."""
    return [FinalStatus(*row) for blob in blobs for row in orjson.loads(blob)]


def count_deliveries(
    groups: Iterable[Sequence[Any]], median: float | None,
) -> DeliveryCounts:
    """`DeliveryCounts` from ``(status, channel, currency, count, cost)`` groups of messages
    (status None: nothing heard yet) and the median seconds to delivery."""
    statuses: dict[str, int] = {}
    channels: dict[str, int] = {}
    cost: dict[str, float] = {}
    for status, channel, currency, count, total in groups:
        final = status in DELIVERY_FINAL
        key = status if final else "awaiting"
        statuses[key] = statuses.get(key, 0) + int(count)
        if status == "delivered":
            name = channel or NO_CHANNEL
            channels[name] = channels.get(name, 0) + int(count)
        if total:  # a cost without its currency is shown as such, never dropped
            named = currency or NO_CURRENCY
            cost[named] = round(cost.get(named, 0.0) + float(total), 6)
    # a status time is the API's clock, our sent time ours: a skew must not look negative
    return DeliveryCounts(
        statuses, channels, cost, None if median is None else max(0.0, float(median)),
    )
