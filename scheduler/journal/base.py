"""The storage interface: what the engine, the daemon and the reading commands ask of a journal.

A journal is the record of truth: every campaign's frozen snapshot (its request bodies, cut in
batches), each batch's state, and every recipient's final outcome. `Journal` is the one typed
interface; SQLite (`scheduler.journal.sqlite`) implements it today, and a new backend passes
the shared contract suite (`tests/test_journal_contract.py`) unchanged. Nothing outside a
backend names its driver or catches its errors: a backend raises the `JournalError` family.

The unit of storage is the batch, not the recipient (SPEC §12: a row per recipient on the send
path costs more than the whole budget). Per-message rows, for look-ups by the API's messageId
(delivery status) and by phone (frequency caps), are written off the hot path by
`index_messages`.
"""

from __future__ import annotations

import itertools
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol, overload

from scheduler.records import Skip
from scheduler.vocabulary import CampaignState, DeliveryStatus, Outcome

BatchState = str  # "pending" | "in_flight" | "done"


# --------------------------------------------------------------------------------------------
# errors


class JournalError(RuntimeError):
    """Something the journal could not do; the subclasses say whether waiting can help."""

    def __init__(self, campaign_id: str | None, problem: str) -> None:
        self.campaign_id = campaign_id
        self.problem = problem
        where = f"campaign {campaign_id!r}: " if campaign_id is not None else "journal: "
        super().__init__(where + problem)


class JournalConflict(JournalError):
    """The journal's state does not allow this (re-planning a started campaign, closing a batch
    that is not open, an illegal state change): a bug or a second writer, never retried."""


class JournalUnavailable(JournalError):
    """The journal cannot be read or written right now (I/O error, full disk, lost connection):
    nothing of the failed call was kept; it may work later."""


class JournalCorrupt(JournalError):
    """The stored data is damaged, or was written by a newer release: an operator must act."""


class JournalFenced(JournalConflict):
    """This process no longer holds the leadership lease: it must not mark or record anything
    more (another daemon may be sending the same batches now)."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        super().__init__(None, f"{holder} no longer holds the leadership lease")


class JournalNotEmpty(JournalConflict):
    """`Journal.load` was asked to fill a journal that already holds something: a copy goes
    into an empty database only, so it can never mix with (or overwrite) another history."""

    def __init__(self, location: str, campaigns: int, table: str = "campaigns") -> None:
        self.location = location
        self.campaigns = campaigns
        held = (f"{campaigns} campaign{'s' if campaigns != 1 else ''}" if campaigns
                else f"rows in its {table} table")
        super().__init__(None, f"{location} already holds {held}: copy into an empty database")


class JournalBusy(JournalUnavailable):
    """Another process is writing this journal (a second daemon or `send`)."""

    def __init__(self, location: str, holder: str) -> None:
        self.location = location
        self.holder = holder
        super().__init__(
            None, f"{location} is in use by {holder}; stop it first, or give this one its own "
            "[paths].state",
        )


# --------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True, slots=True)
class CampaignRecord:
    """A campaign as the journal knows it: identity, state, snapshot size and timestamps."""

    id: str
    type: str
    file: str
    fingerprint: str
    state: CampaignState
    send_at: datetime
    deadline: datetime
    recipients: int  # valid (to be sent) rows in the snapshot
    skipped: int
    batches: int
    prepared_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    stage: int = 0  # roll-out: the stage in progress (0: the first)
    stage_at: datetime | None = None  # roll-out: when that stage may start (after the hold)
    #: a streamed snapshot still being read: batches are appended while the campaign sends
    streaming: bool = False
    #: what the campaign is, kept when it was planned: its file's keys and its audience's
    #: bytes as two digests, ``KEYS/AUDIENCE`` (`scheduler.identity.content_fingerprint`);
    #: None: planned by a release that did not keep it
    content: str | None = None
    #: the ``[[accounts]]`` entry it sends through, kept when it was planned (SPEC §13.3);
    #: "default" for a campaign planned by a release that did not keep it
    account: str = "default"


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One batch of the snapshot: its request body (orjson bytes) and its current state."""

    seq: int
    body: bytes
    size: int
    state: BatchState
    attempts: int
    decided: frozenset[str] = frozenset()  # ids already final (a partly recorded batch)
    zones: str | None = None  # its recipients' zones (`scheduler.window.zone_group`) if windowed
    keys: bytes | None = None  # its tracking ids and phones (`EncodedBatch.keys`), if stored
    #: an earlier post of its open messages may have reached the API (SPEC §6: left in flight
    #: by a process that stopped, or given back after an ambiguous answer): posting them again
    #: is a resend, and under at-most-once they are in doubt instead
    doubtful: bool = False


class EncodedBatch(NamedTuple):
    """A batch as a snapshot stores it: its ``seq``, its request ``body`` (orjson, without
    ``ttl``), its ``size`` and its ``keys``: the tracking ids and phones in body order
    (`codec.batch_keys`), so the send path need not decode the body (None: decode it)."""

    seq: int
    body: bytes
    size: int
    keys: bytes | None


class Result(NamedTuple):
    """The final outcome of one message of a batch (skipped rows are kept separately).

    A NamedTuple: the engine makes one per message, and a tuple is ~4x cheaper to build than a
    frozen dataclass. ``phone`` rides along for the delivery log; the journal does not store
    it (the body has it).
    """

    tracking_id: str
    outcome: Outcome  # sent | rejected | expired | in_doubt
    detail: str | None  # message_id for sent, error code for rejected, why for in_doubt
    attempts: int
    phone: str = ""
    resent: bool = False  # posted again after an ambiguous outcome: it may have gone twice


class Run(NamedTuple):
    """Messages of one batch decided together (one answer, one split half, one expiry): the
    same outcome at the same attempt, the rest as columns, one entry per message."""

    outcome: Outcome
    attempts: int
    tracking_ids: Sequence[str]
    details: Sequence[str | None]  # as `Result.detail`: the API's messageId for sent
    phones: Sequence[str]
    resent: bool = False  # as `Result.resent`


class Results(Sequence[Result]):
    """A batch's final outcomes as `Run`s: an accepted answer of a thousand messages is a few
    C-level list operations, not a thousand `Result` tuples (SPEC §12), and the journal counts
    outcomes per run. Read as a sequence it gives one `Result` per message, in order."""

    __slots__ = ("_size", "counts", "resent", "runs")

    def __init__(self, runs: Iterable[Run] = ()) -> None:
        self.runs: list[Run] = []
        self.counts: dict[Outcome, int] = {}  # messages per outcome
        self.resent = 0  # messages posted again after an ambiguous outcome (`Result.resent`)
        self._size = 0
        for run in runs:
            self.add(run)

    @classmethod
    def of(cls, results: Sequence[Result]) -> Results:
        """``results`` as `Results` (itself when it already is one)."""
        if isinstance(results, Results):
            return results
        runs = []
        for (outcome, attempts, resent), group in itertools.groupby(
            results, key=lambda r: (r.outcome, r.attempts, r.resent),
        ):
            rows = list(group)
            runs.append(Run(outcome, attempts, [r.tracking_id for r in rows],
                            [r.detail for r in rows], [r.phone for r in rows], resent))
        return cls(runs)

    def add(self, run: Run) -> None:
        """Append a run (an empty one is dropped); its columns must be of one length."""
        size = len(run.tracking_ids)
        if not size == len(run.details) == len(run.phones):
            raise ValueError(f"a run of {size} tracking ids has {len(run.details)} details "
                             f"and {len(run.phones)} phones")
        if size:
            self.runs.append(run)
            self.counts[run.outcome] = self.counts.get(run.outcome, 0) + size
            if run.resent:
                self.resent += size
            self._size += size

    def tracking_ids(self) -> Iterator[str]:
        """Every message's tracking id, in order."""
        return itertools.chain.from_iterable(run.tracking_ids for run in self.runs)

    def stored(self) -> list[tuple[Any, ...]]:
        """The rows a journal keeps: ``(tracking_id, outcome, detail, attempts)``, and a fifth
        value, True, for a message posted again after an ambiguous outcome (`Result.resent`)."""
        return list(itertools.chain.from_iterable(
            zip(run.tracking_ids, itertools.repeat(run.outcome), run.details,
                itertools.repeat(run.attempts),
                *((itertools.repeat(True),) if run.resent else ()))
            for run in self.runs
        ))

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[Result]:
        for run in self.runs:
            yield from map(Result, run.tracking_ids, itertools.repeat(run.outcome), run.details,
                           itertools.repeat(run.attempts), run.phones,
                           itertools.repeat(run.resent))

    @overload
    def __getitem__(self, index: int) -> Result: ...

    @overload
    def __getitem__(self, index: slice) -> list[Result]: ...

    def __getitem__(self, index: int | slice) -> Result | list[Result]:
        return list(self)[index]  # rows are for tests and odd paths: the engine reads runs

    def __repr__(self) -> str:
        return f"Results({self.runs!r})"


class RecipientRow(NamedTuple):
    """One recipient and its final outcome, for ``report --status`` (re-targeting).

    A NamedTuple, like `Result`: a listing builds one per recipient (a million for a large
    campaign), and a tuple is several times cheaper to build than a frozen dataclass.
    """

    tracking_id: str  # "" for a skipped row whose tracking id could not be built
    phone: str
    outcome: Outcome
    detail: str | None
    attempts: int
    line: int | None = None  # the CSV line of a skipped row (None for the others)
    at: datetime | None = None  # when its batch was done: the outcome's time (not skips)
    resent: bool = False  # posted again after an ambiguous outcome (`Result.resent`)


@dataclass(frozen=True, slots=True)
class UnloggedBatch:
    """Outcomes of one batch journaled but not yet in the delivery log (a crash came between)."""

    seq: int
    held: int  # results the batch holds now: pass to `mark_logged` once the rows are written
    rows: list[RecipientRow]


@dataclass(frozen=True, slots=True)
class DaemonRecord:
    """A daemon present on the journal: its holder name ("host:pid:tag") and since when it
    holds its present role (took the lease, or started as a standby)."""

    holder: str
    since: datetime

    @property
    def host(self) -> str:
        """The machine it runs on."""
        return holder_parts(self.holder)[0]

    @property
    def pid(self) -> int | None:
        """Its process id on that machine."""
        return holder_parts(self.holder)[1]


def holder_parts(holder: str) -> tuple[str, int | None]:
    """(host, pid) of a lease holder named "host:pid:tag" (the whole name and None if not)."""
    parts = holder.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return parts[0], int(parts[1])
    return holder, None


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One sent message, by the API's messageId (from `index_messages`)."""

    message_id: str
    campaign: str
    tracking_id: str
    phone: str
    type: str
    sent_at: datetime


@dataclass(frozen=True, slots=True)
class StatusReport:
    """What a status source (a poll of the status API, a webhook) says about one message."""

    message_id: str
    status: DeliveryStatus
    channel: str | None = None  # the channel that delivered it (or the last one tried)
    parts: int | None = None
    cost: float | None = None
    currency: str | None = None
    at: datetime | None = None  # when it got there, if the source says; else: when recorded


#: what `Journal.record_statuses` did with one report: "final" (the message's first final
#: status: log it), "moved" (forward, not final), "unchanged" (a duplicate, an older status or
#: a second final one) or "unknown" (no indexed message has this id)
StatusResult = Literal["final", "moved", "unchanged", "unknown"]


@dataclass(frozen=True, slots=True)
class StatusChange:
    """The result of one report, and the message it names (None when "unknown")."""

    result: StatusResult
    message: MessageRecord | None = None


@dataclass(frozen=True, slots=True)
class AwaitingMessage:
    """A sent message whose delivery status is not final yet and whose next poll is due."""

    message: MessageRecord
    deadline: datetime  # its campaign's send_at + ttl (polling gives up an hour after it)
    polls: int  # status polls made so far


@dataclass(frozen=True, slots=True)
class UnloggedStatus:
    """A message's first final status, journaled but not yet marked as written to the
    delivery log (the process may have died between the two)."""

    message: MessageRecord
    report: StatusReport  # ``at``: the status time the journal keeps
    recorded_at: datetime  # when the journal took it
    key: str  # the ``log_key`` of the `record_statuses` call that took it


class FinalStatus(NamedTuple):
    """A message's first final status, as the error brake of its campaign takes it
    (`Journal.take_final_statuses`), whichever daemon journaled it."""

    campaign: str
    tracking_id: str
    status: DeliveryStatus
    channel: str | None  # the channel that delivered it (or the last one tried)


@dataclass(frozen=True, slots=True)
class DeliveryCounts:
    """A campaign's delivery statuses, over its indexed messages (see `index_messages`)."""

    statuses: dict[str, int]  # per status; "awaiting": no final status yet (none heard, too)
    delivered_by_channel: dict[str, int]
    cost: dict[str, float]  # total per currency, of every message with a cost
    delivery_seconds: float | None  # median seconds from sending to "delivered"


class DeliveryRow(NamedTuple):
    """One recipient with a final delivery status, for ``report --status delivered`` etc."""

    tracking_id: str
    phone: str
    status: DeliveryStatus
    channel: str | None
    parts: int | None
    cost: float | None
    currency: str | None
    sent_at: datetime
    status_at: datetime | None
    message_id: str


@dataclass(frozen=True, slots=True)
class SchemaNews:
    """What a journal did, or waits to do, with its schema: for the operational log.

    ``event``: "journal_upgraded" (``found`` became ``release``), "journal_upgrade_waiting"
    (a live ``leader`` of an older release uses schema ``found``: this process upgrades it
    once it takes the lead) or "journal_newer" (a newer release upgraded it to ``found``:
    this one never leads on it)."""

    event: Literal["journal_upgraded", "journal_upgrade_waiting", "journal_newer"]
    location: str
    found: int  # the schema version the journal had
    release: int  # this release's schema version
    leader: str | None = None


#: told what a journal does with its schema (`open_journal`'s ``on_schema``)
SchemaListener = Callable[[SchemaNews], None]

Counts = dict[str, int]
Message = Mapping[str, Any]

#: What `Journal.dump` yields and `Journal.load` takes: every table of a journal, in this order
#: (a campaign and its snapshot before the rows that refer to them), each row a tuple of these
#: columns. The values are neutral, the same whatever the backend: str, int, float, bool, bytes
#: (bodies, result blobs), None, and timezone-aware datetimes for times. ``skips.id`` keeps the
#: skipped rows in CSV order. The leadership lease is left out: a copy starts with no leader.
DUMP_TABLES: dict[str, tuple[str, ...]] = {
    "campaigns": (
        "id", "type", "file", "fingerprint", "state", "send_at", "deadline", "recipients",
        "skipped", "batches", "prepared_at", "started_at", "finished_at", "error", "snapshot",
        "skips_logged", "stage", "stage_at", "streaming", "content", "account",
    ),
    "snapshots": ("id", "campaign", "created_at"),
    "bodies": ("snapshot", "seq", "body", "keys"),
    "batch_state": (
        "snapshot", "seq", "size", "state", "attempts", "sent", "rejected", "expired",
        "in_doubt", "logged", "not_before", "done_at", "indexed", "zones", "skipped",
        "resent", "doubtful",
    ),
    "results": ("snapshot", "seq", "blob"),
    "skips": ("id", "snapshot", "line", "tracking_id", "phone", "reason", "detail"),
    "messages": (
        "message_id", "campaign", "tracking_id", "phone", "type", "sent_at", "status",
        "status_at", "channel", "parts", "cost", "currency", "next_poll_at", "polls",
    ),
    "unlogged_statuses": ("log_key", "recorded_at", "message_ids"),
}
#: one chunk of `Journal.dump`: a table's name and some of its rows
DumpChunk = tuple[str, list[tuple[Any, ...]]]


# --------------------------------------------------------------------------------------------
# the interface


class JournalLife(Protocol):
    """Where a journal is, and its life: what every role below begins with.

    Every method of a journal is a coroutine. A write returns once it is durable (so "mark in
    flight, then post" holds across a power cut); a failed write leaves nothing of itself
    behind.
    """

    location: str  # where it is, for people (a path, or a URL without its password)

    async def start(self, *, writer: bool) -> None:
        """Open the journal, creating its schema on an empty one. ``writer``: this process
        will send; a second writer is refused with `JournalBusy`, and a writer upgrades an
        older release's schema (a reader never does: it raises `JournalUnavailable`). Where
        several daemons share the journal, a writer never upgrades a schema that a live leader
        of the older release uses: it waits, and upgrades it when `acquire_lease` makes it
        the leader; until then only the lease and presence calls work."""

    async def close(self) -> None:
        """Finish every queued write, then let go of the journal."""


class ReadingJournal(JournalLife, Protocol):
    """What `report`, `plan` and `status` read: campaigns, their outcomes and deliveries."""

    async def campaign(self, campaign_id: str) -> CampaignRecord | None:
        """The campaign's record, or None if the journal has never prepared it."""

    async def campaigns(self) -> list[CampaignRecord]:
        """Every campaign in the journal, by send time then id."""

    async def counts(self, campaign_id: str) -> Counts:
        """Messages per outcome (sent, rejected, expired, in_doubt, skipped) plus ``pending``
        (no final outcome yet) and ``resent``: those of the final ones that were posted again
        after an ambiguous outcome (`Result.resent`; counted in their outcome too)."""

    def recipients(
        self, campaign_id: str, outcome: Outcome | None = None, *, resent: bool = False,
    ) -> AsyncIterator[RecipientRow]:
        """Stream recipients with a final outcome (all, or one outcome): batches in order,
        then skipped rows in CSV order. Memory stays flat whatever the audience size.
        ``resent``: only those posted again after an ambiguous outcome (`Result.resent`)."""

    async def delivery_counts(self, campaign_id: str) -> DeliveryCounts:
        """The campaign's indexed messages per delivery status, delivered ones per channel,
        and the cost per currency."""

    def delivery_recipients(
        self, campaign_id: str, status: DeliveryStatus,
    ) -> AsyncIterator[DeliveryRow]:
        """Stream the campaign's messages in one delivery status (for re-targeting), in pages:
        memory stays flat whatever their number."""


class SendJournal(ReadingJournal, Protocol):
    """The send path: a campaign's snapshot, its batches' states and outcomes, what reached
    the delivery log, and the per-message rows frequency caps count. Campaign state changes
    go through `scheduler.lifecycle`, never straight to `set_state`."""

    # --- snapshot -----------------------------------------------------------------------------

    async def prepare(
        self, *, campaign_id: str, type: str, file: str, fingerprint: str,
        send_at: datetime, deadline: datetime, content: str | None = None,
        account: str = "default",
        batches: Iterable[Sequence[Message]], skips: Iterable[Skip],
        zones: Sequence[str | None] = (),
    ) -> None:
        """Snapshot a campaign: its batches (consumed first, written in chunks while other
        writes go on), then its skipped rows, swapped in at the end in one small transaction,
        so readers see the old snapshot or the new one, never a mix. Replaces an unstarted
        earlier snapshot; a started campaign raises `JournalConflict`. Lands in "scheduled".
        ``content``: what the campaign is (`CampaignRecord.content`).

        ``zones[seq]``, read after the batches are consumed (a streaming snapshot fills it as
        it goes), is batch ``seq``'s `BatchRecord.zones` (send windows; absent: None)."""

    async def open_stream(
        self, *, campaign_id: str, type: str, file: str, fingerprint: str,
        send_at: datetime, deadline: datetime, content: str | None = None,
        account: str = "default",
    ) -> None:
        """Swap in an empty snapshot that `extend` fills while the campaign may already send
        (`send --now`): ``streaming`` is True until `close_stream`. Replaces an unstarted
        earlier snapshot; a started campaign raises `JournalConflict`. Lands in "scheduled"."""

    async def extend(
        self, campaign_id: str, batches: Sequence[EncodedBatch], skips: Sequence[Skip],
    ) -> None:
        """Append encoded batches (their seqs follow the stored ones) and
        skipped rows to a streaming snapshot, with its counts, in one transaction. Raises
        `JournalConflict` when the snapshot is not streaming or a seq does not follow on."""

    async def close_stream(self, campaign_id: str) -> None:
        """The streamed snapshot is whole: ``streaming`` becomes False (`JournalConflict` when
        it was not streaming)."""

    # --- batches ------------------------------------------------------------------------------

    async def set_state(
        self, campaign_id: str, state: CampaignState, error: str | None = None,
    ) -> CampaignRecord:
        """Move a campaign to ``state`` (``error``: why, or None) and return the new record.
        "running" stamps ``started_at`` once (the snapshot is frozen from then on); finished
        states stamp ``finished_at``. A move `vocabulary.may_move` forbids raises
        `JournalConflict`; an unknown campaign too. Only `lifecycle` calls this."""

    async def set_stage(self, campaign_id: str, stage: int, stage_at: datetime) -> None:
        """Roll-out: the campaign moves on to ``stage``, which may start at ``stage_at``
        (durable, fenced like the send path: a restart or a new leader continues it)."""

    async def open_batches(
        self, campaign_id: str, after_seq: int = -1, limit: int = 64,
    ) -> list[BatchRecord]:
        """Pending or in-flight batches after ``after_seq``, by seq, at most ``limit``."""

    async def mark_in_flight(self, campaign_id: str, seqs: Sequence[int]) -> None:
        """Mark open batches in flight (attempts + 1); durable on return: post only after it.
        A batch that is not open raises `JournalConflict` and nothing is marked."""

    async def release(
        self, campaign_id: str, seqs: Sequence[int], *, doubtful: bool = False,
    ) -> None:
        """Return in-flight batches to pending, to be posted later. ``doubtful``: an earlier
        post may have reached the API (an ambiguous answer), so `BatchRecord.doubtful` stays
        True from now on (posting them again is a resend); else they were certainly not
        delivered."""

    async def record_results(
        self, campaign_id: str, seq: int, results: Sequence[Result],
    ) -> int:
        """Close a batch with one final outcome per message not decided before; returns how
        many results the batch holds. The wrong number of results, a doubled id or a batch
        that is not open raises `JournalConflict` and nothing is kept. The very write that
        closed it, done again (its caller never heard it landed: a connection lost before
        the commit's answer), changes nothing and returns the same count."""

    async def record_partial(
        self, campaign_id: str, seq: int, results: Sequence[Result], *, doubtful: bool = False,
    ) -> int:
        """Keep the outcomes decided so far (they are never sent again); the batch's other
        messages go back to pending (``doubtful`` as for `release`). Returns how many results
        the batch holds; done again after it landed, it changes nothing (as `record_results`)."""

    # --- what reached the delivery log --------------------------------------------------------

    async def mark_logged(self, campaign_id: str, marks: Sequence[tuple[int, int]]) -> None:
        """Record, per ``(seq, held)``, that the batch's first ``held`` results are logged."""

    async def unlogged(self, campaign_id: str) -> list[UnloggedBatch]:
        """Outcomes journaled but not yet marked logged, by batch."""

    async def skips_logged(self, campaign_id: str) -> bool:
        """True once the campaign's skipped rows are in the delivery log."""

    async def mark_skips_logged(self, campaign_id: str) -> None:
        """Record that the campaign's skipped rows are in the delivery log."""

    # --- per-message rows, off the hot path ---------------------------------------------------

    async def index_messages(self, max_batches: int = 8, first_poll: float = 30.0) -> int:
        """Copy the sent messages of up to ``max_batches`` closed batches into per-message rows
        (messageId, phone, type, time), each due for its first status poll ``first_poll``
        seconds after it was sent; returns how many batches it indexed (0: caught up)."""

    async def capped_phones(
        self, types: Sequence[str], since: datetime, at_least: int, after: str = "",
        limit: int = 50_000, *, accounts: Sequence[str] | None = None,
    ) -> list[str]:
        """Phones with at least ``at_least`` indexed messages of ``types`` sent at or after
        ``since``, across all campaigns (a frequency cap's summary): in ascending order, those
        after ``after``, at most ``limit`` (the next page starts after the last one).
        ``accounts``: count only the messages of campaigns kept with one of these accounts
        (`CampaignRecord.account`; None: every campaign's)."""

    def unindexed_phones(
        self, types: Sequence[str], since: datetime, *, accounts: Sequence[str] | None = None,
    ) -> AsyncIterator[str]:
        """The phone of each message of ``types`` sent at or after ``since`` in a closed batch
        `index_messages` has not copied yet (once a message, however many): what
        `capped_phones` does not count yet. A daemon indexes within seconds; after a `send`
        with no daemon, nothing does until one runs. ``accounts``: as `capped_phones`."""


class StatusJournal(JournalLife, Protocol):
    """Delivery status (SPEC §11.3): per indexed message, only ever forward."""

    async def record_statuses(
        self, reports: Sequence[StatusReport], log_key: str | None = None,
    ) -> list[StatusChange]:
        """Apply status reports in order, in one transaction: a report moves its message only
        forward (`vocabulary.may_advance`: scheduled -> processing -> a final status, with its
        channel, parts, cost and currency); duplicates, older statuses and a second final one
        change nothing. A final status ends polling. One `StatusChange` per report: "final"
        exactly once per message, whoever reports it (several daemons, polls and webhooks).
        With ``log_key`` (unique per call), the messages told "final" are kept, in the same
        transaction, as unlogged under that key until `mark_statuses_logged`. Every first
        final status is also kept, in the same transaction, for `take_final_statuses`."""

    async def messages_awaiting_status(
        self, due_before: datetime, limit: int,
    ) -> list[AwaitingMessage]:
        """Messages without a final status whose next poll is due at or before
        ``due_before``, the most overdue first, at most ``limit``. The due times live in the
        journal, so polling resumes where it was after a restart."""

    async def schedule_polls(self, polls: Sequence[tuple[str, datetime]]) -> None:
        """Per ``(message_id, when)``: one poll more was made, the next is due ``when``
        (a message that became final meanwhile stays final and unpolled)."""

    async def unlogged_statuses(self, before: datetime, limit: int) -> list[UnloggedStatus]:
        """The first final statuses kept unlogged (`record_statuses` with a ``log_key``) by
        calls before ``before`` whose key is not marked yet: every status of the oldest
        ``limit`` such calls, oldest first."""

    async def mark_statuses_logged(self, log_keys: Sequence[str]) -> None:
        """The ``delivery`` lines of the statuses kept under these keys are in the log."""

    async def take_final_statuses(self, limit: int) -> list[FinalStatus]:
        """The first final statuses `record_statuses` kept, whichever daemon journaled them,
        oldest call first, from at most ``limit`` calls; each is taken once: taken means gone
        (the leader's error brakes read them here, so a webhook that reaches a standby counts
        too). Fenced like the send path's writes: a deposed leader takes nothing."""


class LeaseJournal(JournalLife, Protocol):
    """Leadership (one sender among the daemons sharing a journal) and presence (which
    daemons share it, for `status`). Each daemon's presence is a lease of its own, named
    "daemon:<holder>", that it renews with every heartbeat: no schema of its own, and a dead
    daemon simply expires."""

    # --- leadership ---------------------------------------------------------------------------

    async def acquire_lease(self, holder: str, seconds: float) -> int | None:
        """Take the leadership lease for ``seconds`` if nobody else holds an unexpired one, as
        judged by the journal's own clock. Returns the new epoch (it grows every time the lease
        changes hands), or None while another holder's lease runs, or while the schema is a
        newer release's. Upgrades a schema `start` left waiting, with the lease taken."""

    async def renew_lease(self, holder: str, epoch: int, seconds: float) -> bool:
        """Extend the lease to ``seconds`` from now; False when it is no longer ours (it
        expired, or was released or taken)."""

    async def release_lease(self, holder: str, epoch: int) -> None:
        """Give the lease up at once (a graceful stop): a standby may take it immediately."""

    async def leader(self) -> str | None:
        """The holder of an unexpired lease (a daemon or `send` acting on this journal now),
        or None: then a "running" campaign is waiting for the next start to resume."""

    def fence(self, holder: str, epoch: int | None) -> None:
        """From now on, every write of the send path (in-flight marks, outcomes, releases and
        state changes) checks in its own transaction that ``holder`` still holds an unexpired
        lease of ``epoch``, and raises `JournalFenced` (writing nothing) otherwise. None turns
        the check off."""

    # --- presence -----------------------------------------------------------------------------

    async def heartbeat(self, holder: str, since: datetime, seconds: float) -> None:
        """Say that ``holder`` (in its present role, leader or standby, since ``since``) is
        alive for ``seconds`` more."""

    async def leave(self, holder: str) -> None:
        """``holder`` stops (a clean shutdown): drop its presence at once."""

    async def daemons(self) -> list[DaemonRecord]:
        """The daemons whose presence has not expired, oldest first."""


class CopyJournal(ReadingJournal, Protocol):
    """Copying a whole journal into another (`scheduler.journal.copy`), checked by reading
    both."""

    def dump(self) -> AsyncIterator[DumpChunk]:
        """Stream every row of every table of `DUMP_TABLES`, table by table in that order, as
        ``(table, rows)`` chunks of neutral values. Memory stays bounded at any size. The
        result is consistent only if nobody writes meanwhile: dump a journal started as the
        writer."""

    async def load(self, chunks: AsyncIterable[DumpChunk]) -> Counts:
        """Insert another journal's `dump`, verbatim (ids, states, times and blobs as they
        are), into this one in ONE transaction, and return the rows loaded per table. This
        journal must be empty: one that holds anything raises `JournalNotEmpty` and is left
        as it was; any other failure leaves it empty too. Later snapshots and skipped rows get
        ids past the loaded ones."""


class Journal(SendJournal, StatusJournal, LeaseJournal, CopyJournal, Protocol):
    """Everything the engine, the daemon, `report`, `plan` and `status` ask of a journal: the
    union of the roles above, which callers that need only one type against."""
