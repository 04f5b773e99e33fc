"""The journal's asynchronous front: the `Journal` interface written once, over a backend's
executor.

A backend supplies an `Executor`: the thing that runs one named operation of its connection
class (`SqliteConnection`, `PostgresStore`: the SQL) where its writes are grouped and made
durable (SQLite: one writer thread; PostgreSQL: one writer task and connection). `Front` turns
each interface call into one such operation, and decides in ONE place which of them are fenced
by the leadership lease (`FENCED`) and which work on any release's schema (`LEASE`). What is
the same algorithm on every backend lives here too: a snapshot staged in chunks and swapped in
(`Front.prepare`), and the paged listings.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from scheduler.journal.base import (
    AwaitingMessage,
    BatchRecord,
    CampaignRecord,
    Counts,
    DaemonRecord,
    DeliveryCounts,
    DeliveryRow,
    DumpChunk,
    EncodedBatch,
    FinalStatus,
    JournalError,
    Message,
    RecipientRow,
    Result,
    StatusChange,
    StatusReport,
    UnloggedBatch,
    UnloggedStatus,
)
from scheduler.journal.codec import START, Cursor, chunks, encode_batches
from scheduler.records import Skip
from scheduler.vocabulary import CampaignState, DeliveryStatus, Outcome

#: the lease a fenced write must still hold: (holder, epoch)
Fence = tuple[str, int]

#: the send path's writes: each checks, in its own transaction, that this process still holds
#: the lease `Journal.fence` named (in-flight marks, outcomes, releases, state and stage
#: changes, a streamed snapshot's growth, the brakes' take of final statuses)
FENCED = frozenset({
    "extend", "close_stream", "set_state", "set_stage", "mark_in_flight", "release",
    "record_results", "record_partial", "take_final_statuses",
})
#: the lease and presence calls: the same in every release, so they work on a schema an older
#: release's leader still uses (every other call waits for the upgrade)
LEASE = frozenset({
    "acquire_lease", "renew_lease", "release_lease", "leader", "heartbeat", "leave", "daemons",
})

_BATCH_CHUNK = 64  # batches written per operation while preparing
_SKIP_CHUNK = 10_000  # skipped rows written per operation while preparing


class Executor(Protocol):
    """What a backend supplies: its life, one way to run a named operation of its connection
    class, and the bulk copy (which each backend does its own way)."""

    location: str

    async def start(self, *, writer: bool) -> None:
        """`Journal.start`."""

    async def close(self) -> None:
        """`Journal.close`."""

    async def call(
        self, op: str, fence: Fence | None, args: tuple[Any, ...], kwargs: dict[str, Any],
    ) -> Any:
        """Run the connection class's method ``op`` with ``args`` and ``kwargs`` as one
        operation (durable on return), first checking in its transaction that ``fence`` still
        holds the lease (None: no check; raises `JournalFenced` otherwise)."""

    def dump(self) -> AsyncIterator[DumpChunk]:
        """`Journal.dump`."""

    async def load(self, chunks: AsyncIterable[DumpChunk]) -> Counts:
        """`Journal.load`."""


E = TypeVar("E", bound=Executor)


class Front(Generic[E]):
    """The `Journal` interface over ``executor``: each call is one operation of the backend's
    connection class, fenced when it is one of `FENCED` and `fence` is set."""

    def __init__(self, executor: E) -> None:
        self.executor = executor
        self.location = executor.location
        self._fence: Fence | None = None

    async def _run(self, op: str, *args: Any, **kwargs: Any) -> Any:
        return await self.executor.call(op, self._fence if op in FENCED else None, args, kwargs)

    # --- life -------------------------------------------------------------------------------

    async def start(self, *, writer: bool) -> None:
        """`Journal.start`."""
        await self.executor.start(writer=writer)

    async def close(self) -> None:
        """`Journal.close`."""
        await self.executor.close()

    def fence(self, holder: str, epoch: int | None) -> None:
        """`Journal.fence`."""
        self._fence = None if epoch is None else (holder, epoch)

    # --- snapshot ---------------------------------------------------------------------------

    async def prepare(
        self, *, campaign_id: str, type: str, file: str, fingerprint: str,
        send_at: datetime, deadline: datetime, content: str | None = None,
        account: str = "default",
        batches: Iterable[Sequence[Message]], skips: Iterable[Skip],
        zones: Sequence[str | None] = (),
    ) -> None:
        """`Journal.prepare`: staged under a fresh snapshot id, swapped in at the end.

        The iterables are consumed in a worker thread (it encodes the next chunk of batches
        while the journal writes this one), written a chunk per operation: other operations
        run between chunks, so a million-row snapshot never stalls sending.
        """
        snapshot: int = await self._run("begin_snapshot", campaign_id)
        swapped = False
        encoded = chunks(encode_batches(batches), _BATCH_CHUNK)
        ahead = asyncio.ensure_future(asyncio.to_thread(next, encoded, None))
        try:
            while rows := await ahead:
                ahead = asyncio.ensure_future(asyncio.to_thread(next, encoded, None))
                await self._run("add_batches", campaign_id, snapshot, rows)
            skip_chunks = chunks(skips, _SKIP_CHUNK)
            while chunk := await asyncio.to_thread(next, skip_chunks, None):
                await self._run("add_skips", campaign_id, snapshot, chunk)
            await self._run(
                "commit_snapshot", snapshot, campaign_id=campaign_id, type=type, file=file,
                fingerprint=fingerprint, send_at=send_at, deadline=deadline, content=content,
                account=account, zones=zones,
            )
            swapped = True
        finally:
            # a write failed while the worker encoded ahead: its chunk is not wanted (and an
            # error in it is not news)
            ahead.add_done_callback(lambda done: done.cancelled() or done.exception())
            if not swapped:  # best effort: the next prepare drops it too
                with contextlib.suppress(JournalError):
                    await self._run("drop_snapshot", campaign_id, snapshot)

    async def open_stream(
        self, *, campaign_id: str, type: str, file: str, fingerprint: str,
        send_at: datetime, deadline: datetime, content: str | None = None,
        account: str = "default",
    ) -> None:
        """`Journal.open_stream`."""
        await self._run(
            "open_stream", campaign_id=campaign_id, type=type, file=file,
            fingerprint=fingerprint, send_at=send_at, deadline=deadline, content=content,
            account=account,
        )

    async def extend(
        self, campaign_id: str, batches: Sequence[EncodedBatch], skips: Sequence[Skip],
    ) -> None:
        """`Journal.extend`."""
        await self._run("extend", campaign_id, batches, skips)

    async def close_stream(self, campaign_id: str) -> None:
        """`Journal.close_stream`."""
        await self._run("close_stream", campaign_id)

    # --- campaigns --------------------------------------------------------------------------

    async def campaign(self, campaign_id: str) -> CampaignRecord | None:
        """`Journal.campaign`."""
        record: CampaignRecord | None = await self._run("campaign", campaign_id)
        return record

    async def campaigns(self) -> list[CampaignRecord]:
        """`Journal.campaigns`."""
        records: list[CampaignRecord] = await self._run("campaigns")
        return records

    async def set_state(
        self, campaign_id: str, state: CampaignState, error: str | None = None,
    ) -> CampaignRecord:
        """`Journal.set_state`."""
        record: CampaignRecord = await self._run("set_state", campaign_id, state, error)
        return record

    async def set_stage(self, campaign_id: str, stage: int, stage_at: datetime) -> None:
        """`Journal.set_stage`."""
        await self._run("set_stage", campaign_id, stage, stage_at)

    # --- batches: the send path -------------------------------------------------------------

    async def open_batches(
        self, campaign_id: str, after_seq: int = -1, limit: int = 64,
    ) -> list[BatchRecord]:
        """`Journal.open_batches`."""
        found: list[BatchRecord] = await self._run("open_batches", campaign_id, after_seq, limit)
        return found

    async def mark_in_flight(self, campaign_id: str, seqs: Sequence[int]) -> None:
        """`Journal.mark_in_flight`."""
        await self._run("mark_in_flight", campaign_id, seqs)

    async def release(
        self, campaign_id: str, seqs: Sequence[int], *, doubtful: bool = False,
    ) -> None:
        """`Journal.release`."""
        await self._run("release", campaign_id, seqs, doubtful=doubtful)

    async def record_results(
        self, campaign_id: str, seq: int, results: Sequence[Result],
    ) -> int:
        """`Journal.record_results`."""
        held: int = await self._run("record_results", campaign_id, seq, results)
        return held

    async def record_partial(
        self, campaign_id: str, seq: int, results: Sequence[Result], *, doubtful: bool = False,
    ) -> int:
        """`Journal.record_partial`."""
        held: int = await self._run("record_partial", campaign_id, seq, results,
                                    doubtful=doubtful)
        return held

    # --- what reached the delivery log ------------------------------------------------------

    async def mark_logged(self, campaign_id: str, marks: Sequence[tuple[int, int]]) -> None:
        """`Journal.mark_logged`."""
        await self._run("mark_logged", campaign_id, marks)

    async def unlogged(self, campaign_id: str) -> list[UnloggedBatch]:
        """`Journal.unlogged`."""
        found: list[UnloggedBatch] = await self._run("unlogged", campaign_id)
        return found

    async def skips_logged(self, campaign_id: str) -> bool:
        """`Journal.skips_logged`."""
        logged: bool = await self._run("skips_logged", campaign_id)
        return logged

    async def mark_skips_logged(self, campaign_id: str) -> None:
        """`Journal.mark_skips_logged`."""
        await self._run("mark_skips_logged", campaign_id)

    # --- reading ----------------------------------------------------------------------------

    async def counts(self, campaign_id: str) -> Counts:
        """`Journal.counts`."""
        counted: Counts = await self._run("counts", campaign_id)
        return counted

    async def recipients(
        self, campaign_id: str, outcome: Outcome | None = None, *, resent: bool = False,
    ) -> AsyncIterator[RecipientRow]:
        """`Journal.recipients`: one page per operation."""
        cursor: Cursor | None = START
        while cursor is not None:
            rows, cursor = await self._run(
                "recipient_page", campaign_id, outcome, cursor, resent=resent,
            )
            for row in rows:
                yield row

    # --- per-message rows, off the hot path -------------------------------------------------

    async def index_messages(self, max_batches: int = 8, first_poll: float = 30.0) -> int:
        """`Journal.index_messages`."""
        indexed: int = await self._run("index_messages", max_batches, first_poll)
        return indexed

    async def capped_phones(
        self, types: Sequence[str], since: datetime, at_least: int, after: str = "",
        limit: int = 50_000, *, accounts: Sequence[str] | None = None,
    ) -> list[str]:
        """`Journal.capped_phones`."""
        phones: list[str] = await self._run(
            "capped_phones", types, since, at_least, after, limit, accounts=accounts)
        return phones

    async def unindexed_phones(
        self, types: Sequence[str], since: datetime, *, accounts: Sequence[str] | None = None,
    ) -> AsyncIterator[str]:
        """`Journal.unindexed_phones`: one page per operation."""
        after: tuple[int, int] | None = (0, -1)
        while after is not None:
            phones, after = await self._run("unindexed_page", types, since, after,
                                            accounts=accounts)
            for phone in phones:
                yield phone

    # --- delivery status --------------------------------------------------------------------

    async def record_statuses(
        self, reports: Sequence[StatusReport], log_key: str | None = None,
    ) -> list[StatusChange]:
        """`Journal.record_statuses`."""
        changes: list[StatusChange] = await self._run("record_statuses", reports, log_key)
        return changes

    async def messages_awaiting_status(
        self, due_before: datetime, limit: int,
    ) -> list[AwaitingMessage]:
        """`Journal.messages_awaiting_status`."""
        due: list[AwaitingMessage] = await self._run(
            "messages_awaiting_status", due_before, limit)
        return due

    async def schedule_polls(self, polls: Sequence[tuple[str, datetime]]) -> None:
        """`Journal.schedule_polls`."""
        await self._run("schedule_polls", polls)

    async def unlogged_statuses(self, before: datetime, limit: int) -> list[UnloggedStatus]:
        """`Journal.unlogged_statuses`."""
        found: list[UnloggedStatus] = await self._run("unlogged_statuses", before, limit)
        return found

    async def mark_statuses_logged(self, log_keys: Sequence[str]) -> None:
        """`Journal.mark_statuses_logged`."""
        await self._run("mark_statuses_logged", log_keys)

    async def take_final_statuses(self, limit: int) -> list[FinalStatus]:
        """`Journal.take_final_statuses`."""
        taken: list[FinalStatus] = await self._run("take_final_statuses", limit)
        return taken

    async def delivery_counts(self, campaign_id: str) -> DeliveryCounts:
        """`Journal.delivery_counts`."""
        counted: DeliveryCounts = await self._run("delivery_counts", campaign_id)
        return counted

    async def delivery_recipients(
        self, campaign_id: str, status: DeliveryStatus,
    ) -> AsyncIterator[DeliveryRow]:
        """`Journal.delivery_recipients`: one page per operation."""
        after = ""
        page: list[DeliveryRow]
        while page := await self._run("delivery_page", campaign_id, status, after):
            for row in page:
                yield row
            after = page[-1].message_id

    # --- leadership and presence ------------------------------------------------------------

    async def acquire_lease(self, holder: str, seconds: float) -> int | None:
        """`Journal.acquire_lease`."""
        epoch: int | None = await self._run("acquire_lease", holder, seconds)
        return epoch

    async def renew_lease(self, holder: str, epoch: int, seconds: float) -> bool:
        """`Journal.renew_lease`."""
        renewed: bool = await self._run("renew_lease", holder, epoch, seconds)
        return renewed

    async def release_lease(self, holder: str, epoch: int) -> None:
        """`Journal.release_lease`."""
        await self._run("release_lease", holder, epoch)

    async def leader(self) -> str | None:
        """`Journal.leader`."""
        holder: str | None = await self._run("leader")
        return holder

    async def heartbeat(self, holder: str, since: datetime, seconds: float) -> None:
        """`Journal.heartbeat`."""
        await self._run("heartbeat", holder, since, seconds)

    async def leave(self, holder: str) -> None:
        """`Journal.leave`."""
        await self._run("leave", holder)

    async def daemons(self) -> list[DaemonRecord]:
        """`Journal.daemons`."""
        present: list[DaemonRecord] = await self._run("daemons")
        return present

    # --- copying a whole journal ------------------------------------------------------------

    def dump(self) -> AsyncIterator[DumpChunk]:
        """`Journal.dump`."""
        return self.executor.dump()

    async def load(self, chunks: AsyncIterable[DumpChunk]) -> Counts:
        """`Journal.load`."""
        return await self.executor.load(chunks)
