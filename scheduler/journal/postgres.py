"""The PostgreSQL journal: the same per-batch record as SQLite, shared by several daemons.

The layout is SQLite's (see `scheduler.journal.sqlite`): a batch's request body, stored once as
orjson bytes, *is* the snapshot; a small table holds each batch's changing state and counts;
final outcomes are one blob per batch. Times are ``TIMESTAMPTZ`` stamped by the database's
clock, never this machine's, so daemons on several machines agree on them.

`PostgresStore` is the SQL, one coroutine per operation on one connection; `PostgresWriter` runs
those operations through ONE connection owned by one asyncio writer task, and `PostgresJournal`
is the shared `Front` (`scheduler.journal.front`) over it. Group commit: every waiting operation
runs in one transaction, committed once (if one fails, the group runs again with a savepoint
each, so the failure stays its caller's). A lost connection fails the group that met it, and the
next group connects again, so the daemon recovers when the database comes back.

The send path's writes (in-flight marks, releases, outcomes, logged marks) are cheap on the
wire: a group made only of them is ONE round trip, BEGIN, the lease check, every write and
COMMIT in one pipeline, with checks that fail the transaction rather than wait for a result
(see `PostgresWriter._commit_pipelined`); a batch's outcomes are one statement when it holds
none yet. The writer shares the event loop with the HTTP client, so every round trip saved is
also a wait for the loop saved.

Leadership among daemons is a lease row (holder, epoch, expires_at) judged by the database's
clock; once `fence` is set, every send-path write checks it in the transaction that writes it
(once per group and lease, the row locked FOR SHARE until the commit). This module is the
only one that names ``psycopg``: its errors leave it as the `JournalError` family, with any
password scrubbed from their text.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import select
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, LiteralString, ParamSpec, TypeVar

import orjson
import psycopg
from psycopg import errors as pg_errors
from psycopg import pq, sql
from psycopg.abc import Params
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from scheduler.journal.base import (
    DUMP_TABLES,
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
    JournalConflict,
    JournalCorrupt,
    JournalError,
    JournalFenced,
    JournalNotEmpty,
    JournalUnavailable,
    MessageRecord,
    RecipientRow,
    Result,
    Results,
    SchemaListener,
    SchemaNews,
    StatusChange,
    StatusReport,
    UnloggedBatch,
    UnloggedStatus,
)
from scheduler.journal.codec import (
    START,
    Cursor,
    batch_rows,
    check_follows,
    check_record,
    count_deliveries,
    decide_statuses,
    decided,
    final_statuses_blob,
    outcome_counts,
    read_final_statuses,
    sent_messages,
    streaming_snapshot,
    unlogged_rows,
)
from scheduler.journal.front import LEASE, Fence, Front
from scheduler.journal.schema import POSTGRES, SCHEMA_VERSION, STEPS
from scheduler.records import Skip
from scheduler.vocabulary import (
    CAMPAIGN_STATES,
    DEFAULT_ACCOUNT,
    DELIVERY_FINAL,
    STAMPED,
    STARTED,
    CampaignState,
    DeliveryStatus,
    Outcome,
    may_move,
)

# the schema version (`schema.SCHEMA_VERSION`) is kept in the table ``schema_version``

#: a new database gets `_SCHEMA` at once, at version 2 (there never was a version 1 on
#: PostgreSQL: the same tables and columns as SQLite's versions 1 and 2 together), then every
#: step of _MIGRATIONS after it, in the same transaction
_SCHEMA_BASE = 2
_SCHEMA = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE campaigns (
        id TEXT PRIMARY KEY, type TEXT NOT NULL, file TEXT NOT NULL, fingerprint TEXT NOT NULL,
        state TEXT NOT NULL, send_at TIMESTAMPTZ NOT NULL, deadline TIMESTAMPTZ NOT NULL,
        recipients BIGINT NOT NULL, skipped BIGINT NOT NULL, batches BIGINT NOT NULL,
        prepared_at TIMESTAMPTZ, started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, error TEXT,
        snapshot BIGINT NOT NULL, skips_logged BOOLEAN NOT NULL DEFAULT false,
        stage INTEGER NOT NULL DEFAULT 0, stage_at TIMESTAMPTZ)""",
    """CREATE TABLE snapshots (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        campaign TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())""",
    "CREATE INDEX snapshots_by_campaign ON snapshots (campaign)",
    """CREATE TABLE bodies (snapshot BIGINT NOT NULL, seq INTEGER NOT NULL,
        body BYTEA NOT NULL, PRIMARY KEY (snapshot, seq))""",
    """CREATE TABLE batch_state (snapshot BIGINT NOT NULL, seq INTEGER NOT NULL,
        size INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        sent INTEGER NOT NULL DEFAULT 0, rejected INTEGER NOT NULL DEFAULT 0,
        expired INTEGER NOT NULL DEFAULT 0, in_doubt INTEGER NOT NULL DEFAULT 0,
        logged INTEGER NOT NULL DEFAULT 0, not_before TIMESTAMPTZ, done_at TIMESTAMPTZ,
        indexed BOOLEAN NOT NULL DEFAULT false, PRIMARY KEY (snapshot, seq))""",
    "CREATE INDEX batch_open ON batch_state (snapshot, seq) WHERE state <> 'done'",
    "CREATE INDEX batch_unindexed ON batch_state (snapshot, seq)"
    " WHERE state = 'done' AND NOT indexed",
    """CREATE TABLE results (snapshot BIGINT NOT NULL, seq INTEGER NOT NULL,
        blob BYTEA NOT NULL, PRIMARY KEY (snapshot, seq))""",
    # rewritten by every (partial) record on the send path: not compressed, ~15% faster
    "ALTER TABLE results ALTER COLUMN blob SET STORAGE EXTERNAL",
    # skipped rows keep their insertion (CSV) order by id, as SQLite's rowid does
    """CREATE TABLE skips (id BIGSERIAL PRIMARY KEY, snapshot BIGINT NOT NULL,
        line INTEGER NOT NULL, tracking_id TEXT, phone TEXT NOT NULL, reason TEXT NOT NULL,
        detail TEXT NOT NULL)""",
    "CREATE INDEX skips_by_snapshot ON skips (snapshot, id)",
    """CREATE TABLE messages (message_id TEXT PRIMARY KEY, campaign TEXT NOT NULL,
        tracking_id TEXT NOT NULL, phone TEXT NOT NULL, type TEXT NOT NULL,
        sent_at TIMESTAMPTZ NOT NULL, status TEXT, status_at TIMESTAMPTZ, channel TEXT,
        parts INTEGER, cost DOUBLE PRECISION, currency TEXT)""",
    "CREATE INDEX messages_by_phone ON messages (phone, sent_at)",
    """CREATE TABLE lease (name TEXT PRIMARY KEY, holder TEXT NOT NULL,
        epoch BIGINT NOT NULL, expires_at TIMESTAMPTZ NOT NULL)""",
)
#: _MIGRATIONS[n] takes a database from version n to n + 1 (n >= 2): the steps every backend
#: shares (`scheduler.journal.schema`)
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    version: POSTGRES.steps(version) for version in STEPS
}
#: pg_advisory_xact_lock keys: schema creation, and one campaign's snapshot (with its hash)
_SCHEMA_LOCK = 0x63_61_73_63_61_64_65  # "cascade"
_SNAPSHOT_LOCK = 0x636173  # "cas"
#: outcome counted in its own batch_state column (a fixed map: never user input in SQL)
_COUNT_COLUMNS: dict[str, str] = {
    "sent": "sent", "rejected": "rejected", "expired": "expired", "in_doubt": "in_doubt",
    "skipped": "skipped",
}
_MARK: LiteralString = (
    "UPDATE batch_state SET state = 'in_flight', attempts = attempts + 1"
    " WHERE snapshot = %s AND seq = ANY(%s::int[]) AND state <> 'done'"
)
#: a group sent ahead with its COMMIT cannot look at a result before committing: these fail
#: the transaction instead (division by zero), so a check that does not pass rolls it back
_MARK_GUARDED: LiteralString = (
    f"WITH marked AS ({_MARK} RETURNING 1) SELECT 1 / (count(*) = %s)::int FROM marked"
)
_FENCE: LiteralString = (
    "SELECT 1 FROM lease WHERE name = 'leader' AND holder = %s AND epoch = %s"
    " AND expires_at > clock_timestamp() FOR SHARE"
)
_FENCE_GUARDED: LiteralString = f"SELECT 1 / count(*) FROM ({_FENCE}) AS held"
#: `PostgresStore.stage_record` for a batch with no outcomes yet (its counts sum to 0, as its
#: blob is empty), checking what `record` checks, in one statement: no row means "not that
#: case", and nothing was written
_RECORD_FIRST: LiteralString = (
    "WITH s AS (UPDATE batch_state SET state = %(state)s, sent = sent + %(sent)s,"
    " rejected = rejected + %(rejected)s, expired = expired + %(expired)s,"
    " in_doubt = in_doubt + %(in_doubt)s, skipped = skipped + %(skipped)s,"
    " resent = resent + %(resent)s, doubtful = doubtful OR %(doubtful)s,"
    " done_at = CASE WHEN %(close)s THEN clock_timestamp() END"
    " WHERE snapshot = %(snapshot)s AND seq = %(seq)s AND state <> 'done'"
    " AND sent + rejected + expired + in_doubt + skipped = 0"
    " AND CASE WHEN %(close)s THEN size = %(n)s ELSE size > %(n)s END"
    " RETURNING snapshot, seq)"
    " INSERT INTO results (snapshot, seq, blob) SELECT snapshot, seq, %(blob)s FROM s"
    " ON CONFLICT (snapshot, seq) DO UPDATE SET blob = EXCLUDED.blob"
)
_SNAPSHOT_DELETES = (
    "DELETE FROM bodies WHERE snapshot = %s",
    "DELETE FROM batch_state WHERE snapshot = %s",
    "DELETE FROM results WHERE snapshot = %s",
    "DELETE FROM skips WHERE snapshot = %s",
    "DELETE FROM snapshots WHERE id = %s",
)
_CAMPAIGN_COLUMNS = (
    "id, type, file, fingerprint, state, send_at, deadline, recipients, skipped, batches,"
    " prepared_at, started_at, finished_at, error, stage, stage_at, streaming, content, account"
)
_SKIP_CHUNK = 10_000
_PAGE = 16  # batches decoded per query while streaming recipients
_DELIVERY_PAGE = 2_000  # messages per page of a delivery-status listing
#: session settings: UTC times; a frozen or cut-off peer must not hold a lock for long
_SESSION = (
    "SET TIME ZONE 'UTC'; SET lock_timeout = '5s';"
    " SET idle_in_transaction_session_timeout = '10s'"
)
#: libpq settings, unless the URL gives its own: notice a dead server or network in seconds
_CONNECT_DEFAULTS = {
    "connect_timeout": "10", "application_name": "cascade-scheduler", "keepalives": "1",
    "keepalives_idle": "10", "keepalives_interval": "5", "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}

#: a bulk copy runs at the other journal's pace: its transaction may wait on it a while
_BULK_SESSION = "SET idle_in_transaction_session_timeout = '1min'"
#: rows per chunk of a dump; tables of blobs (a batch body can be ~200 kB) in smaller chunks
_DUMP_ROWS = 5_000
_DUMP_BLOBS = 64
#: each table's primary key: a dump goes in its order (for skips, their CSV order)
_DUMP_ORDER: dict[str, LiteralString] = {
    "campaigns": "id", "snapshots": "id", "bodies": "snapshot, seq",
    "batch_state": "snapshot, seq", "results": "snapshot, seq", "skips": "id",
    "messages": "message_id", "unlogged_statuses": "log_key",
}
#: ids a load brings along, whose sequences must then go on past them
_LOADED_IDS = (("snapshots", "id"), ("skips", "id"))

P = ParamSpec("P")
T = TypeVar("T")
Connection = psycopg.AsyncConnection[TupleRow]
Query = LiteralString | sql.SQL | sql.Composed
#: the second step of a staged write: read its results once they are in (see `PostgresStore`)
Finish = Callable[[], Awaitable[Any]]


async def _nothing() -> None:
    """The `Finish` of a write with nothing to check."""


# --------------------------------------------------------------------------------------------
# errors: nothing of psycopg leaves this module, and no password in any message


def _scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` on one line, with every secret (a password, a URL holding one) cut out."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return " ".join(text.split())


def _translate(exc: psycopg.Error, location: str, secrets: Iterable[str]) -> JournalError:
    """A driver error as the interface's: damaged data apart from everything else."""
    text = _scrub(str(exc), secrets)
    if isinstance(exc, pg_errors.DataCorrupted | pg_errors.IndexCorrupted):
        return JournalCorrupt(None, f"{location} is damaged ({text}): restore it from a backup")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return JournalUnavailable(
            None, f"cannot use {location}: {text}: check [journal] url in the config, that "
            "the server runs and that it accepts this user",
        )
    return JournalUnavailable(None, f"{location} refused a journal call: {text}")


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"journal times must be timezone-aware (UTC), got {value!r}")
    return value


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL characters (SQLite's can): a CSV's stray NUL is shown."""
    return value.replace("\x00", "\N{REPLACEMENT CHARACTER}")


def _accounts_in(
    column: str, accounts: Sequence[str] | None,
) -> tuple[tuple[list[str], ...], str]:
    """The parameters and condition "``column`` is one of ``accounts``" (NULL: the default
    account, as `CampaignRecord.account` reads it); no condition for None (every account)."""
    if accounts is None:
        return (), ""
    return (list(accounts),), f"COALESCE({column}, '{DEFAULT_ACCOUNT}') = ANY(%s::text[])"


def _record(row: TupleRow) -> CampaignRecord:
    (id_, type_, file, fingerprint, state, send_at, deadline, recipients, skipped, batches,
     prepared_at, started_at, finished_at, error, stage, stage_at, streaming, content,
     account) = row
    return CampaignRecord(
        id=id_, type=type_, file=file, fingerprint=fingerprint, state=state,
        send_at=send_at.astimezone(UTC), deadline=deadline.astimezone(UTC),
        recipients=recipients, skipped=skipped, batches=batches,
        prepared_at=_utc(prepared_at), started_at=_utc(started_at),
        finished_at=_utc(finished_at), error=error, stage=stage, stage_at=_utc(stage_at),
        streaming=streaming, content=content, account=account or DEFAULT_ACCOUNT,
    )


def _message_record(row: TupleRow) -> MessageRecord:
    """A `MessageRecord` from a row that starts (message_id, campaign, tracking_id, phone,
    type, sent_at)."""
    message_id, campaign, tracking_id, phone, kind, sent_at = row[:6]
    return MessageRecord(message_id, campaign, tracking_id, phone, kind, sent_at.astimezone(UTC))


# --------------------------------------------------------------------------------------------
# the schema


async def _version(db: Connection) -> int:
    """The schema version of the database (0: nothing created yet)."""
    # pg_class, read under the statement's snapshot (to_regclass's catalog cache may not yet
    # see a table another daemon has just created)
    row = await (await db.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname = 'schema_version'"
        " AND relkind = 'r' AND pg_table_is_visible(oid))",
    )).fetchone()
    if row is None or not row[0]:
        return 0
    version = await (await db.execute("SELECT max(version) FROM schema_version")).fetchone()
    return 0 if version is None or version[0] is None else int(version[0])


async def migrate(
    db: Connection, location: str, *, writer: bool = True,
) -> tuple[int, str | None]:
    """Create the schema on an empty database; as a ``writer``, upgrade an older release's
    unless a live leader uses it (a reader never upgrades); refuse a newer one. Returns the
    version found and the live leader that keeps it from being upgraded now (or None).

    Two daemons starting on an empty database at once are serialized by a transaction-level
    advisory lock: the second waits, then finds the schema made. An upgrade holds the lease
    row locked until it commits, so no daemon of the older release takes the lead meanwhile.
    """
    version = await _version(db)
    if version == SCHEMA_VERSION:
        return version, None  # the common case takes no lock
    if version > SCHEMA_VERSION:
        raise _newer(location, version)
    if version and not writer:
        raise JournalUnavailable(
            None, f"{location} has the schema of an earlier release (version {version}, this "
            f"one's is {SCHEMA_VERSION}): a daemon of this release upgrades it when it takes "
            "the lead; until then, use this command of the release that leads",
        )
    async with db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        version = await _version(db)
        if version > SCHEMA_VERSION:
            raise _newer(location, version)
        if 0 < version < SCHEMA_VERSION and (leader := await _live_leader(db)) is not None:
            return version, leader
        if version < SCHEMA_VERSION:
            await _upgrade(db, version)
    return version, None


async def _live_leader(db: Connection) -> str | None:
    """The holder of an unexpired lease, or None; the lease row stays locked until the
    transaction ends (a holder busy with it right now counts as live)."""
    try:
        async with db.transaction():  # a savepoint: NOWAIT fails only it (its lock stays)
            row = await (await db.execute(
                "SELECT holder, expires_at > clock_timestamp() FROM lease"
                " WHERE name = 'leader' FOR UPDATE NOWAIT",
            )).fetchone()
    except pg_errors.LockNotAvailable:
        return "a daemon taking or using the lease right now"
    return str(row[0]) if row is not None and row[1] else None


async def _upgrade(db: Connection, version: int) -> None:
    """Every step from ``version`` (0: nothing yet) to `SCHEMA_VERSION`, in the caller's
    transaction, under the schema lock."""
    if version == 0:
        for statement in _SCHEMA:
            await db.execute(statement)
        await db.execute("INSERT INTO schema_version VALUES (%s)", (_SCHEMA_BASE,))
        version = _SCHEMA_BASE
    for step in range(version, SCHEMA_VERSION):
        for statement in _MIGRATIONS[step]:
            await db.execute(statement)
    await db.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))


def _newer(location: str, version: int) -> JournalCorrupt:
    return JournalCorrupt(
        None, f"{location} has schema version {version}, newer than this program "
        f"({SCHEMA_VERSION}): upgrade cascade-scheduler",
    )


async def _acquire_upgrading(
    store: PostgresStore, holder: str, seconds: float,
) -> tuple[int | None, int]:
    """Take the lease if it is free (`PostgresStore.acquire_lease`) and, with it taken,
    upgrade an older schema in the same transaction; never on a newer one (a newer release
    leads there). Returns the epoch (or None) and the version found."""
    version = await _version(store.db)
    if version > SCHEMA_VERSION:
        return None, version
    epoch = await store.acquire_lease(holder, seconds)
    if epoch is not None and version < SCHEMA_VERSION:
        await store.db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        version = await _version(store.db)
        if version < SCHEMA_VERSION:
            await _upgrade(store.db, version)
    return epoch, version


# --------------------------------------------------------------------------------------------
# the SQL: one coroutine per operation, run inside the writer's transaction


class PostgresStore:
    """The journal's operations on one connection (the caller owns the transaction).

    Each method is one operation: the writer runs it inside the group's transaction (alone,
    or in a savepoint of its own), so raising undoes exactly what it wrote. Methods raise
    ``psycopg.Error`` as they meet it; `PostgresWriter` translates at its boundary.
    """

    def __init__(self, db: Connection, frozen: dict[str, int] | None = None) -> None:
        self.db = db
        #: campaign -> snapshot of the campaigns that started: it can never change again
        self.frozen = {} if frozen is None else frozen
        #: what this transaction saw started, kept in `frozen` only once it commits
        self.learned: dict[str, int] = {}
        #: set while a group is sent ahead with its COMMIT (see `PostgresWriter`): a staged
        #: write must then fail its statement (a guard) rather than be checked afterwards
        self.ahead = False

    def committed(self) -> None:
        """The transaction committed: what it saw is settled."""
        self.frozen.update(self.learned)
        self.learned.clear()

    async def _one(self, query: Query, params: Params | None = None) -> TupleRow | None:
        return await (await self.db.execute(query, params)).fetchone()

    async def _all(
        self, query: Query, params: Params | None = None, *, binary: bool = False,
    ) -> list[TupleRow]:
        """Every row; ``binary`` for rows with batch bodies (~200 kB each): the text format
        would send each as hex, twice its size, and cost a decoding at both ends (reading
        them takes a third of the time in binary)."""
        return await (await self.db.execute(query, params, binary=binary)).fetchall()

    # --- snapshot -----------------------------------------------------------------------

    async def _lock_campaign(self, campaign_id: str) -> None:
        """Serialize every snapshot change of one campaign across daemons (until commit)."""
        await self.db.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_SNAPSHOT_LOCK, campaign_id),
        )

    async def _refuse_if_started(self, campaign_id: str) -> TupleRow | None:
        """The campaign's (state, started_at, snapshot), locked; `JournalConflict` if started."""
        row = await self._one(
            "SELECT state, started_at, snapshot FROM campaigns WHERE id = %s FOR UPDATE",
            (campaign_id,),
        )
        # "paused" alone is not "started": a campaign paused before its send time has sent
        # nothing, and editing it (even just to unpause) re-plans it
        if row is not None and (row[1] is not None or row[0] in STARTED):
            raise JournalConflict(
                campaign_id, f"it has started (state {row[0]}); its snapshot is frozen",
            )
        return row

    async def begin_snapshot(self, campaign_id: str) -> int:
        """Allocate a staging snapshot, dropping this campaign's unfinished earlier ones."""
        await self._lock_campaign(campaign_id)
        await self._refuse_if_started(campaign_id)
        await self._drop_orphans(campaign_id)
        row = await self._one(
            "INSERT INTO snapshots (campaign) VALUES (%s) RETURNING id", (campaign_id,),
        )
        assert row is not None
        snapshot: int = row[0]
        return snapshot

    async def _check_staging(self, campaign_id: str, snapshot: int) -> None:
        await self._lock_campaign(campaign_id)
        if await self._one("SELECT 1 FROM snapshots WHERE id = %s", (snapshot,)) is None:
            raise JournalConflict(campaign_id, "this snapshot was superseded by a newer prepare")

    async def add_batches(
        self, campaign_id: str, snapshot: int, rows: Sequence[EncodedBatch],
    ) -> None:
        """Write a chunk of encoded batches ``(seq, body, size)`` under a staging snapshot."""
        await self._check_staging(campaign_id, snapshot)
        await self._insert_batches(snapshot, rows)

    async def _insert_batches(self, snapshot: int, rows: Sequence[EncodedBatch]) -> None:
        async with self.db.cursor() as cursor:
            async with cursor.copy(
                "COPY bodies (snapshot, seq, body, keys) FROM STDIN (FORMAT BINARY)",
            ) as copy:
                copy.set_types(["int8", "int4", "bytea", "bytea"])
                for seq, body, _, keys in rows:
                    await copy.write_row((snapshot, seq, body, keys))
            async with cursor.copy(
                "COPY batch_state (snapshot, seq, size, state) FROM STDIN (FORMAT BINARY)",
            ) as copy:
                copy.set_types(["int8", "int4", "int4", "text"])
                for seq, _, size, _ in rows:
                    await copy.write_row((snapshot, seq, size, "pending"))

    async def add_skips(self, campaign_id: str, snapshot: int, skips: Sequence[Skip]) -> None:
        """Write a chunk of skipped rows under a staging snapshot, in their order."""
        await self._check_staging(campaign_id, snapshot)
        await self._insert_skips(snapshot, skips)

    async def _insert_skips(self, snapshot: int, skips: Sequence[Skip]) -> None:
        if not skips:
            return
        async with self.db.cursor() as cursor, cursor.copy(
            "COPY skips (snapshot, line, tracking_id, phone, reason, detail)"
            " FROM STDIN (FORMAT BINARY)",
        ) as copy:
            copy.set_types(["int8", "int4", "text", "text", "text", "text"])
            for s in skips:
                tracking_id = None if s.tracking_id is None else _text(s.tracking_id)
                await copy.write_row(
                    (snapshot, s.line, tracking_id, _text(s.phone), s.reason, _text(s.detail)),
                )

    async def commit_snapshot(
        self, snapshot: int, *, campaign_id: str, type: str, file: str,
        fingerprint: str, send_at: datetime, deadline: datetime,
        zones: Sequence[str | None] = (), streaming: bool = False, content: str | None = None,
        account: str = "default",
    ) -> None:
        """Swap the staged snapshot in: one small transaction, so readers see old or new."""
        await self._check_staging(campaign_id, snapshot)
        zoned = [(group, snapshot, seq) for seq, group in enumerate(zones) if group]
        if zoned:
            async with self.db.cursor() as cursor:
                await cursor.executemany(
                    "UPDATE batch_state SET zones = %s WHERE snapshot = %s AND seq = %s", zoned,
                )
        previous = await self._refuse_if_started(campaign_id)
        if previous is not None:
            await self._delete_snapshot(previous[2])
        sizes = await self._one(
            "SELECT COUNT(*), COALESCE(SUM(size), 0),"
            " (SELECT COUNT(*) FROM skips WHERE snapshot = %(s)s)"
            " FROM batch_state WHERE snapshot = %(s)s", {"s": snapshot},
        )
        assert sizes is not None
        batches, recipients, skipped = sizes
        await self.db.execute("DELETE FROM campaigns WHERE id = %s", (campaign_id,))
        await self.db.execute(
            "INSERT INTO campaigns (id, type, file, fingerprint, state, send_at, deadline,"
            " recipients, skipped, batches, prepared_at, snapshot, streaming, content, account)"
            " VALUES (%s, %s, %s, %s, 'scheduled', %s, %s, %s, %s, %s, clock_timestamp(), %s,"
            " %s, %s, %s)",
            (campaign_id, type, file, fingerprint, _aware(send_at), _aware(deadline),
             recipients, skipped, batches, snapshot, streaming, content, _text(account)),
        )

    # --- a streamed snapshot: appended to while the campaign sends ------------------------

    async def open_stream(
        self, *, campaign_id: str, type: str, file: str, fingerprint: str,
        send_at: datetime, deadline: datetime, content: str | None = None,
        account: str = "default",
    ) -> None:
        """Swap in an empty snapshot that `extend` fills (`Journal.open_stream`)."""
        snapshot = await self.begin_snapshot(campaign_id)
        await self.commit_snapshot(
            snapshot, campaign_id=campaign_id, type=type, file=file, fingerprint=fingerprint,
            send_at=send_at, deadline=deadline, streaming=True, content=content,
            account=account,
        )

    async def extend(
        self, campaign_id: str, rows: Sequence[EncodedBatch], skips: Sequence[Skip],
    ) -> None:
        """Append batches and skipped rows to the streaming snapshot (`Journal.extend`)."""
        row = await self._one(
            "SELECT snapshot, streaming, batches FROM campaigns WHERE id = %s FOR UPDATE",
            (campaign_id,),
        )
        snapshot, stored = streaming_snapshot(campaign_id, row)
        check_follows(campaign_id, rows, stored)
        await self._insert_batches(snapshot, rows)
        await self._insert_skips(snapshot, skips)
        await self.db.execute(
            "UPDATE campaigns SET batches = batches + %s, recipients = recipients + %s,"
            " skipped = skipped + %s WHERE id = %s",
            (len(rows), sum(row.size for row in rows), len(skips), campaign_id),
        )

    async def close_stream(self, campaign_id: str) -> None:
        """The streamed snapshot is whole (`Journal.close_stream`)."""
        cursor = await self.db.execute(
            "UPDATE campaigns SET streaming = false WHERE id = %s AND streaming", (campaign_id,),
        )
        if cursor.rowcount != 1:
            raise JournalConflict(campaign_id, "its snapshot is not being streamed")

    async def drop_snapshot(self, campaign_id: str, snapshot: int) -> None:
        """Remove a staging snapshot that will not be swapped in (failed or superseded)."""
        await self._lock_campaign(campaign_id)
        if await self._one("SELECT 1 FROM campaigns WHERE snapshot = %s", (snapshot,)) is None:
            await self._delete_snapshot(snapshot)

    async def _drop_orphans(self, campaign_id: str) -> None:
        orphans = await self._all(
            "SELECT id FROM snapshots WHERE campaign = %s AND id NOT IN"
            " (SELECT snapshot FROM campaigns WHERE id = %s)", (campaign_id, campaign_id),
        )
        for (orphan,) in orphans:
            await self._delete_snapshot(orphan)

    async def _delete_snapshot(self, snapshot: int) -> None:
        async with self.db.pipeline():
            for statement in _SNAPSHOT_DELETES:
                await self.db.execute(statement, (snapshot,))

    async def _snapshot(self, campaign_id: str) -> int:
        """The campaign's current snapshot id; a started one's is remembered, saving the send
        path a round trip per call (a started snapshot is frozen, and never forgotten)."""
        if (known := self.frozen.get(campaign_id) or self.learned.get(campaign_id)) is not None:
            return known
        row = await self._one(
            "SELECT snapshot, started_at IS NOT NULL FROM campaigns WHERE id = %s",
            (campaign_id,),
        )
        if row is None:
            raise JournalConflict(campaign_id, "no such campaign in the journal")
        snapshot: int = row[0]
        if row[1]:
            self.learned[campaign_id] = snapshot
        return snapshot

    # --- campaigns ----------------------------------------------------------------------

    async def campaign(self, campaign_id: str) -> CampaignRecord | None:
        """The campaign's record, or None if the journal has never prepared it."""
        row = await self._one(
            f"SELECT {_CAMPAIGN_COLUMNS} FROM campaigns WHERE id = %s",
            (campaign_id,),
        )
        return None if row is None else _record(row)

    async def campaigns(self) -> list[CampaignRecord]:
        """Every campaign in the journal, by send time, then id."""
        rows = await self._all(
            f"SELECT {_CAMPAIGN_COLUMNS} FROM campaigns"
            " ORDER BY send_at, id COLLATE \"C\"",
        )
        return [_record(row) for row in rows]

    async def set_state(
        self, campaign_id: str, state: CampaignState, error: str | None = None,
    ) -> CampaignRecord:
        """Move a campaign to ``state`` (with an error text or None), keeping its timestamps."""
        if state not in CAMPAIGN_STATES:
            raise ValueError(f"unknown campaign state {state!r}")
        row = await self._one(
            "SELECT state FROM campaigns WHERE id = %s FOR UPDATE", (campaign_id,),
        )
        if row is None:
            raise JournalConflict(campaign_id, "no such campaign in the journal")
        if not may_move(row[0], state):
            raise JournalConflict(campaign_id, f"a {row[0]} campaign cannot become {state}")
        fresh = await self._one(
            "UPDATE campaigns SET state = %(state)s, error = %(error)s,"
            " started_at = CASE WHEN %(running)s THEN COALESCE(started_at, clock_timestamp())"
            "   ELSE started_at END,"
            " finished_at = CASE WHEN %(ended)s THEN clock_timestamp() ELSE NULL END"
            f" WHERE id = %(id)s RETURNING {_CAMPAIGN_COLUMNS}",
            {"state": state, "error": error, "running": state == "running",
             "ended": state in STAMPED, "id": campaign_id},
        )
        assert fresh is not None  # locked just above, in the same transaction
        return _record(fresh)

    # --- batches ------------------------------------------------------------------------

    async def open_batches(
        self, campaign_id: str, after_seq: int = -1, limit: int = 64,
    ) -> list[BatchRecord]:
        """Pending or in-flight batches after ``after_seq``, by seq, at most ``limit``."""
        rows = await self._all(
            "SELECT s.seq, b.body, s.size, s.state, s.attempts, r.blob, s.zones, b.keys,"
            " s.doubtful"
            " FROM batch_state s JOIN bodies b ON b.snapshot = s.snapshot AND b.seq = s.seq"
            " LEFT JOIN results r ON r.snapshot = s.snapshot AND r.seq = s.seq"
            " WHERE s.snapshot = %s AND s.seq > %s AND s.state <> 'done'"
            " ORDER BY s.seq LIMIT %s",
            (await self._snapshot(campaign_id), after_seq, limit), binary=True,
        )
        return [
            BatchRecord(seq, body, size, state, attempts, decided(blob), zones, keys,
                        state == "in_flight" or bool(doubtful))
            for seq, body, size, state, attempts, blob, zones, keys, doubtful in rows
        ]

    # The send path's writes come in two steps: ``stage_*`` sends the statements without
    # reading their results, and the `Finish` it returns reads them (and raises) once the
    # group's pipeline has synced; the plain method runs both steps at once.

    async def stage_mark_in_flight(self, campaign_id: str, seqs: Sequence[int]) -> Finish:
        """Mark open batches in flight (attempts + 1) before they are posted."""
        if not seqs:
            return _nothing
        wanted = len(set(seqs))
        params = (await self._snapshot(campaign_id), list(seqs))
        if self.ahead:
            await self.db.execute(_MARK_GUARDED, (*params, wanted))
            return _nothing
        cursor = await self.db.execute(_MARK, params)

        async def finish() -> None:
            if cursor.rowcount != wanted:
                raise JournalConflict(campaign_id, f"not every batch of {list(seqs)} is open")

        return finish

    async def mark_in_flight(self, campaign_id: str, seqs: Sequence[int]) -> None:
        """`stage_mark_in_flight`, at once."""
        await (await self.stage_mark_in_flight(campaign_id, seqs))()

    async def stage_release(
        self, campaign_id: str, seqs: Sequence[int], *, doubtful: bool = False,
    ) -> Finish:
        """Return in-flight batches to pending, to be posted later (``doubtful``: an earlier
        post may have reached the API; the mark stays once made)."""
        await self.db.execute(
            "UPDATE batch_state SET state = 'pending', doubtful = doubtful OR %s"
            " WHERE snapshot = %s AND seq = ANY(%s::int[]) AND state = 'in_flight'",
            (doubtful, await self._snapshot(campaign_id), list(seqs)),
        )
        return _nothing

    async def release(
        self, campaign_id: str, seqs: Sequence[int], *, doubtful: bool = False,
    ) -> None:
        """`stage_release`, at once."""
        await (await self.stage_release(campaign_id, seqs, doubtful=doubtful))()

    async def stage_record(
        self, campaign_id: str, seq: int, results: Sequence[Result], *, close: bool,
        doubtful: bool = False,
    ) -> Finish:
        """`record` in one statement for a batch that holds no outcomes yet (the common case:
        nothing to read first); any other batch takes `record`'s way once this one has found
        nothing to change."""
        batch = Results.of(results)
        ahead = self.ahead

        async def whole_way() -> int:
            if ahead:  # committed untouched: the whole way, in a transaction of its own
                raise _Again(lambda store: store.record(campaign_id, seq, batch, close=close,
                                                        doubtful=doubtful))
            return await self.record(campaign_id, seq, batch, close=close, doubtful=doubtful)

        if len(set(batch.tracking_ids())) != len(batch):
            return whole_way  # where it is refused
        cursor = await self.db.execute(_RECORD_FIRST, {
            **outcome_counts(batch), "state": "done" if close else "pending", "close": close,
            "doubtful": doubtful, "n": len(batch),
            "snapshot": await self._snapshot(campaign_id), "seq": seq,
            "blob": orjson.dumps(batch.stored()),
        })

        async def finish() -> int:
            return len(results) if cursor.rowcount == 1 else await whole_way()

        return finish

    async def record(
        self, campaign_id: str, seq: int, results: Sequence[Result], *, close: bool,
        doubtful: bool = False,
    ) -> int:
        """Append ``results`` to the batch's outcomes (closing it, or back to pending when
        ``close`` is False); returns how many it holds now."""
        batch = Results.of(results)
        snapshot = await self._snapshot(campaign_id)
        previous, repeat = check_record(campaign_id, seq, await self._one(
            "SELECT s.state, s.size, r.blob FROM batch_state s"
            " LEFT JOIN results r ON r.snapshot = s.snapshot AND r.seq = s.seq"
            " WHERE s.snapshot = %s AND s.seq = %s FOR UPDATE OF s", (snapshot, seq),
        ), batch, close)
        if repeat:
            return len(previous)  # it landed before, its commit's answer was lost
        blob = orjson.dumps(previous + batch.stored())
        async with self.db.pipeline():  # two writes, one round trip
            await self.db.execute(
                "UPDATE batch_state SET state = %(state)s, sent = sent + %(sent)s,"
                " rejected = rejected + %(rejected)s, expired = expired + %(expired)s,"
                " in_doubt = in_doubt + %(in_doubt)s, skipped = skipped + %(skipped)s,"
                " resent = resent + %(resent)s, doubtful = doubtful OR %(doubtful)s,"
                " done_at = CASE WHEN %(close)s THEN clock_timestamp() END"
                " WHERE snapshot = %(snapshot)s AND seq = %(seq)s",
                {**outcome_counts(batch), "state": "done" if close else "pending",
                 "close": close, "doubtful": doubtful, "snapshot": snapshot, "seq": seq},
            )
            await self.db.execute(
                "INSERT INTO results (snapshot, seq, blob) VALUES (%s, %s, %s)"
                " ON CONFLICT (snapshot, seq) DO UPDATE SET blob = EXCLUDED.blob",
                (snapshot, seq, blob),
            )
        return len(previous) + len(results)

    # --- what reached the delivery log ----------------------------------------------------

    async def stage_mark_logged(
        self, campaign_id: str, marks: Sequence[tuple[int, int]],
    ) -> Finish:
        """Record that the first ``count`` results of batch ``seq`` are in the delivery log."""
        highest: dict[int, int] = {}
        for seq, count in marks:
            highest[seq] = max(count, highest.get(seq, count))
        await self.db.execute(
            "UPDATE batch_state s SET logged = GREATEST(s.logged, u.count)"
            " FROM unnest(%s::int[], %s::int[]) AS u (seq, count)"
            " WHERE s.snapshot = %s AND s.seq = u.seq",
            (list(highest), list(highest.values()), await self._snapshot(campaign_id)),
        )
        return _nothing

    async def mark_logged(self, campaign_id: str, marks: Sequence[tuple[int, int]]) -> None:
        """`stage_mark_logged`, at once."""
        await (await self.stage_mark_logged(campaign_id, marks))()

    async def unlogged(self, campaign_id: str) -> list[UnloggedBatch]:
        """Outcomes not yet in the delivery log, by batch."""
        rows = await self._all(
            "SELECT s.seq, b.body, r.blob, s.logged FROM batch_state s"
            " JOIN bodies b ON b.snapshot = s.snapshot AND b.seq = s.seq"
            " JOIN results r ON r.snapshot = s.snapshot AND r.seq = s.seq"
            " WHERE s.snapshot = %s AND s.logged < s.sent + s.rejected + s.expired + s.in_doubt"
            " + s.skipped"
            " ORDER BY s.seq", (await self._snapshot(campaign_id),), binary=True,
        )
        found = []
        for seq, body, blob, logged in rows:
            held, listed = unlogged_rows(body, blob, logged)
            found.append(UnloggedBatch(seq, held, listed))
        return found

    async def skips_logged(self, campaign_id: str) -> bool:
        """True once the campaign's skipped rows are in the delivery log."""
        row = await self._one("SELECT skips_logged FROM campaigns WHERE id = %s", (campaign_id,))
        return row is not None and bool(row[0])

    async def mark_skips_logged(self, campaign_id: str) -> None:
        """Record that the campaign's skipped rows are in the delivery log."""
        await self.db.execute(
            "UPDATE campaigns SET skips_logged = true WHERE id = %s", (campaign_id,),
        )

    # --- outcomes -----------------------------------------------------------------------

    async def counts(self, campaign_id: str) -> Counts:
        """Messages per outcome, plus ``pending`` (not final yet) and ``skipped``."""
        row = await self._one(
            "SELECT c.skipped, COALESCE(SUM(s.sent), 0), COALESCE(SUM(s.rejected), 0),"
            " COALESCE(SUM(s.expired), 0), COALESCE(SUM(s.in_doubt), 0),"
            " COALESCE(SUM(s.skipped), 0),"
            " COALESCE(SUM(s.size - s.sent - s.rejected - s.expired - s.in_doubt - s.skipped)"
            "   FILTER (WHERE s.state <> 'done'), 0),"
            " COALESCE(SUM(s.resent), 0)"
            " FROM campaigns c LEFT JOIN batch_state s ON s.snapshot = c.snapshot"
            " WHERE c.id = %s GROUP BY c.skipped", (campaign_id,),
        )
        if row is None:
            raise JournalConflict(campaign_id, "no such campaign in the journal")
        skipped, sent, rejected, expired, in_doubt, capped, pending, resent = (
            int(n) for n in row)
        return {
            "sent": sent, "rejected": rejected, "expired": expired, "in_doubt": in_doubt,
            "skipped": skipped + capped, "pending": pending, "resent": resent,
        }

    async def recipient_page(
        self, campaign_id: str, outcome: Outcome | None, cursor: Cursor = START, *,
        resent: bool = False,
    ) -> tuple[list[RecipientRow], Cursor | None]:
        """One page of recipients and the cursor of the next (None: that was the last):
        done batches in order, then skipped rows in CSV order (``resent``: only the messages
        posted again after an ambiguous outcome)."""
        snapshot = await self._snapshot(campaign_id)
        phase, last = cursor
        if phase == 0:  # "skipped" too: a frequency cap skips inside a batch
            page = await self._batch_page(snapshot, last, outcome, resent)
            if page:
                rows = [row for _, body, blob, attempts, done_at in page
                        for row in batch_rows(body, blob, attempts, outcome, done_at, resent)]
                return rows, (0, page[-1][0])
        if outcome not in (None, "skipped") or resent:  # a skipped row was never posted
            return [], None
        skips = await self._skip_page(snapshot, last if phase == 1 else 0)
        if not skips:
            return [], None
        return [
            RecipientRow(tracking_id or "", phone, "skipped", reason, 0, line)
            for _, line, tracking_id, phone, reason in skips
        ], (1, skips[-1][0])

    async def _batch_page(
        self, snapshot: int, after_seq: int, outcome: Outcome | None, resent: bool = False,
    ) -> list[TupleRow]:
        having: sql.Composable = sql.SQL(" AND s.resent > 0" if resent else "")
        if outcome is not None:
            having = sql.SQL(" AND s.{} > 0{}").format(
                sql.Identifier(_COUNT_COLUMNS[outcome]), having)
        query = sql.SQL(
            "SELECT s.seq, b.body, r.blob, s.attempts, s.done_at FROM batch_state s"
            " JOIN bodies b ON b.snapshot = s.snapshot AND b.seq = s.seq"
            " LEFT JOIN results r ON r.snapshot = s.snapshot AND r.seq = s.seq"
            " WHERE s.snapshot = %s AND s.seq > %s AND s.state = 'done'{}"
            " ORDER BY s.seq LIMIT %s",
        ).format(having)
        return await self._all(query, (snapshot, after_seq, _PAGE), binary=True)

    async def _skip_page(self, snapshot: int, after_id: int) -> list[TupleRow]:
        return await self._all(
            "SELECT id, line, tracking_id, phone, reason FROM skips"
            " WHERE snapshot = %s AND id > %s ORDER BY id LIMIT %s",
            (snapshot, after_id, _SKIP_CHUNK),
        )

    # --- per-message rows (off the hot path) -----------------------------------------------

    async def index_messages(self, max_batches: int = 8, first_poll: float = 30.0) -> int:
        """Copy the sent messages of up to ``max_batches`` closed batches into ``messages``,
        each due for a status poll ``first_poll`` seconds after it was sent."""
        batches = await self._all(
            "SELECT s.snapshot, s.seq, COALESCE(s.done_at, clock_timestamp()), c.id, c.type,"
            " b.body, r.blob FROM batch_state s JOIN campaigns c ON c.snapshot = s.snapshot"
            " JOIN bodies b ON b.snapshot = s.snapshot AND b.seq = s.seq"
            " LEFT JOIN results r ON r.snapshot = s.snapshot AND r.seq = s.seq"
            " WHERE s.state = 'done' AND NOT s.indexed LIMIT %s FOR UPDATE OF s SKIP LOCKED",
            (max_batches,), binary=True,
        )
        for snapshot, seq, sent_at, campaign, kind, body, blob in batches:
            sent = list(sent_messages(body, blob))
            await self.db.execute(
                "INSERT INTO messages (message_id, campaign, tracking_id, phone, type, sent_at,"
                " next_poll_at) SELECT m, %s, t, p, %s, %s, %s"
                " FROM unnest(%b::text[], %b::text[], %b::text[])"
                " AS u (m, t, p) ON CONFLICT (message_id) DO NOTHING",
                (campaign, kind, sent_at, sent_at + timedelta(seconds=first_poll),
                 [m for m, _, _ in sent], [t for _, t, _ in sent], [p for _, _, p in sent]),
            )
            await self.db.execute(
                "UPDATE batch_state SET indexed = true WHERE snapshot = %s AND seq = %s",
                (snapshot, seq),
            )
        return len(batches)

    async def capped_phones(
        self, types: Sequence[str], since: datetime, at_least: int, after: str = "",
        limit: int = 50_000, *, accounts: Sequence[str] | None = None,
    ) -> list[str]:
        """Phones with at least ``at_least`` messages of ``types`` sent since ``since``, in
        order (byte order, as SQLite's), after ``after``, at most ``limit`` (with
        ``accounts``: of those accounts' campaigns only)."""
        named, mine = _accounts_in("account", accounts)
        if mine:
            mine = f" AND campaign IN (SELECT id FROM campaigns WHERE {mine})"
        rows = await self._all(
            "SELECT phone FROM messages WHERE phone COLLATE \"C\" > %s"
            f" AND type = ANY(%s::text[]) AND sent_at >= %s{mine} GROUP BY phone"
            " HAVING COUNT(*) >= %s ORDER BY phone COLLATE \"C\" LIMIT %s",
            (after, list(types), _aware(since), *named, at_least, limit),
        )
        return [phone for (phone,) in rows]

    async def unindexed_page(
        self, types: Sequence[str], since: datetime, after: tuple[int, int] = (0, -1), *,
        accounts: Sequence[str] | None = None,
    ) -> tuple[list[str], tuple[int, int] | None]:
        """The phones of one page of `Journal.unindexed_phones` (up to `_PAGE` batches after
        ``after``, a (snapshot, seq)) and where the next page starts (None: that was the last).
        A batch closed by the first release has no time: it counts as sent now."""
        named, mine = _accounts_in("c.account", accounts)
        mine = f" AND {mine}" if mine else ""
        rows = await self._all(
            "SELECT s.snapshot, s.seq, b.body, r.blob FROM batch_state s"
            " JOIN campaigns c ON c.snapshot = s.snapshot"
            " JOIN bodies b ON b.snapshot = s.snapshot AND b.seq = s.seq"
            " JOIN results r ON r.snapshot = s.snapshot AND r.seq = s.seq"
            " WHERE s.state = 'done' AND NOT s.indexed AND c.type = ANY(%s::text[])"
            " AND (s.done_at IS NULL OR s.done_at >= %s) AND (s.snapshot, s.seq) > (%s, %s)"
            f"{mine} ORDER BY s.snapshot, s.seq LIMIT %s",
            (list(types), _aware(since), *after, *named, _PAGE), binary=True,
        )
        phones = [phone for _, _, body, blob in rows for _, _, phone in sent_messages(body, blob)]
        return phones, (rows[-1][0], rows[-1][1]) if len(rows) == _PAGE else None

    # --- delivery status ------------------------------------------------------------------

    async def record_statuses(
        self, reports: Sequence[StatusReport], log_key: str | None = None,
    ) -> list[StatusChange]:
        """Apply status reports in order, only ever forward (see `Journal.record_statuses`).
        The messages are locked first (in id order: two daemons recording webhooks at once
        cannot deadlock), so "final" is decided once whoever reports it."""
        rows = await self._all(
            "SELECT message_id, campaign, tracking_id, phone, type, sent_at, status"
            " FROM messages WHERE message_id = ANY(%s::text[]) ORDER BY message_id FOR UPDATE",
            (list(dict.fromkeys(r.message_id for r in reports)),),
        )
        current: dict[str, tuple[DeliveryStatus | None, MessageRecord]] = {
            row[0]: (row[6], _message_record(row)) for row in rows
        }
        changes, writes = decide_statuses(reports, current)
        if writes:
            w = list(writes.values())
            await self.db.execute(
                "UPDATE messages m SET status = u.status,"
                " status_at = COALESCE(u.at, clock_timestamp()),"
                " channel = COALESCE(u.channel, m.channel), parts = COALESCE(u.parts, m.parts),"
                " cost = COALESCE(u.cost, m.cost), currency = COALESCE(u.currency, m.currency),"
                " next_poll_at = CASE WHEN u.final THEN NULL ELSE m.next_poll_at END"
                " FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::float8[],"
                " %s::text[], %s::timestamptz[], %s::bool[])"
                " AS u (mid, status, channel, parts, cost, currency, at, final)"
                " WHERE m.message_id = u.mid",
                ([r.message_id for r in w], [r.status for r in w], [r.channel for r in w],
                 [r.parts for r in w], [r.cost for r in w], [r.currency for r in w],
                 [None if r.at is None else _aware(r.at) for r in w],
                 [r.status in DELIVERY_FINAL for r in w]),
            )
            finals = [r for r in w if r.status in DELIVERY_FINAL]
            if finals:
                await self.db.execute("INSERT INTO final_statuses (statuses) VALUES (%s)",
                                      (final_statuses_blob(finals, current),))
                if log_key is not None:
                    await self.db.execute(
                        "INSERT INTO unlogged_statuses (log_key, message_ids) VALUES (%s, %s)",
                        (log_key, orjson.dumps([r.message_id for r in finals])))
        return changes

    async def take_final_statuses(self, limit: int) -> list[FinalStatus]:
        """The first final statuses kept by the oldest ``limit`` calls, deleted. Rows that
        another transaction holds are left for the next take."""
        rows = await self._all(
            "DELETE FROM final_statuses WHERE id IN (SELECT id FROM final_statuses"
            " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id, statuses", (limit,),
        )
        return read_final_statuses(blob for _, blob in sorted(rows))

    async def messages_awaiting_status(
        self, due_before: datetime, limit: int,
    ) -> list[AwaitingMessage]:
        """Messages not final whose next poll is due by ``due_before``, most overdue first."""
        rows = await self._all(
            "SELECT m.message_id, m.campaign, m.tracking_id, m.phone, m.type, m.sent_at,"
            " c.deadline, m.polls FROM messages m JOIN campaigns c ON c.id = m.campaign"
            " WHERE m.next_poll_at IS NOT NULL AND m.next_poll_at <= %s"
            " ORDER BY m.next_poll_at LIMIT %s", (_aware(due_before), limit),
        )
        return [
            AwaitingMessage(_message_record(row), row[6].astimezone(UTC), row[7])
            for row in rows
        ]

    async def schedule_polls(self, polls: Sequence[tuple[str, datetime]]) -> None:
        """One poll more per message; its next one is due at the given time (unless final)."""
        await self.db.execute(
            "UPDATE messages m SET next_poll_at = u.due, polls = m.polls + 1"
            " FROM unnest(%s::text[], %s::timestamptz[]) AS u (mid, due)"
            " WHERE m.message_id = u.mid AND m.next_poll_at IS NOT NULL",
            ([message_id for message_id, _ in polls], [_aware(when) for _, when in polls]),
        )

    async def unlogged_statuses(self, before: datetime, limit: int) -> list[UnloggedStatus]:
        """The statuses kept unlogged by the oldest ``limit`` calls before ``before``."""
        found: list[UnloggedStatus] = []
        for key, recorded_at, blob in await self._all(
            "SELECT log_key, recorded_at, message_ids FROM unlogged_statuses"
            " WHERE recorded_at < %s ORDER BY recorded_at, log_key LIMIT %s",
            (_aware(before), limit),
        ):
            rows = await self._all(
                "SELECT message_id, campaign, tracking_id, phone, type, sent_at, status,"
                " channel, parts, cost, currency, status_at FROM messages"
                " WHERE message_id = ANY(%s::text[]) ORDER BY message_id",
                (orjson.loads(blob),),
            )
            found += [UnloggedStatus(
                _message_record(row),
                StatusReport(row[0], row[6], row[7], row[8], row[9], row[10],
                             None if row[11] is None else row[11].astimezone(UTC)),
                recorded_at.astimezone(UTC), key,
            ) for row in rows]
        return found

    async def mark_statuses_logged(self, log_keys: Sequence[str]) -> None:
        """The lines of the statuses kept under these keys are written."""
        await self.db.execute("DELETE FROM unlogged_statuses WHERE log_key = ANY(%s::text[])",
                              (list(log_keys),))

    async def delivery_counts(self, campaign_id: str) -> DeliveryCounts:
        """The campaign's indexed messages per status, delivered per channel, cost per currency."""
        groups = await self._all(
            "SELECT status, channel, currency, COUNT(*), SUM(cost) FROM messages"
            " WHERE campaign = %s GROUP BY status, channel, currency", (campaign_id,),
        )
        median = await self._one(
            "SELECT percentile_disc(0.5) WITHIN GROUP"
            " (ORDER BY EXTRACT(EPOCH FROM status_at - sent_at)) FROM messages"
            " WHERE campaign = %s AND status = 'delivered'", (campaign_id,),
        )
        return count_deliveries(groups, None if median is None else median[0])

    async def delivery_page(
        self, campaign_id: str, status: DeliveryStatus, after: str,
    ) -> list[DeliveryRow]:
        """One page of `Journal.delivery_recipients`: message ids after ``after``."""
        rows = await self._all(
            "SELECT tracking_id, phone, status, channel, parts, cost, currency, sent_at,"
            " status_at, message_id FROM messages WHERE campaign = %s AND status = %s"
            " AND message_id > %s ORDER BY message_id LIMIT %s",
            (campaign_id, status, after, _DELIVERY_PAGE),
        )
        return [
            DeliveryRow(tid, phone, status_, channel, parts, cost, currency,
                        sent_at.astimezone(UTC), _utc(status_at), message_id)
            for tid, phone, status_, channel, parts, cost, currency, sent_at, status_at,
            message_id in rows
        ]

    # --- leadership ---------------------------------------------------------------------------
    # The lease row is locked FOR UPDATE by whoever takes it, and FOR SHARE by every fenced
    # write until its group commits: a standby cannot take over between a leader's check and
    # its commit, so every write the old leader made is visible to the new one.

    async def acquire_lease(self, holder: str, seconds: float) -> int | None:
        """Take the lease if it is free, expired or already ours; the epoch, or None."""
        try:
            async with self.db.transaction():  # NOWAIT fails only this savepoint
                row = await self._lock_lease()
                if row is None:  # the first daemon ever on this database
                    await self.db.execute(
                        "INSERT INTO lease (name, holder, epoch, expires_at)"
                        " VALUES ('leader', '', 0, '-infinity') ON CONFLICT (name) DO NOTHING",
                    )
                    row = await self._lock_lease()
        except pg_errors.LockNotAvailable:
            return None  # another daemon is taking the lease, or writing under it, right now
        assert row is not None
        current, epoch, expired = row
        if not expired and current != holder:
            return None
        if expired or current != holder:
            epoch += 1
        await self.db.execute(
            "UPDATE lease SET holder = %s, epoch = %s, expires_at = clock_timestamp() + %s"
            " WHERE name = 'leader'", (holder, epoch, timedelta(seconds=seconds)),
        )
        new_epoch: int = epoch
        return new_epoch

    async def _lock_lease(self) -> TupleRow | None:
        """The lease row as (holder, epoch, expired), locked until commit; raises
        ``LockNotAvailable`` at once if another transaction holds it locked."""
        return await self._one(
            "SELECT holder, epoch, expires_at <= clock_timestamp() FROM lease"
            " WHERE name = 'leader' FOR UPDATE NOWAIT",
        )

    async def renew_lease(self, holder: str, epoch: int, seconds: float) -> bool:
        """Extend our unexpired lease; False when it is not ours any more."""
        cursor = await self.db.execute(
            "UPDATE lease SET expires_at = clock_timestamp() + %s WHERE name = 'leader'"
            " AND holder = %s AND epoch = %s AND expires_at > clock_timestamp()",
            (timedelta(seconds=seconds), holder, epoch),
        )
        return cursor.rowcount == 1

    async def release_lease(self, holder: str, epoch: int) -> None:
        """End our lease now."""
        await self.db.execute(
            "UPDATE lease SET expires_at = LEAST(expires_at, clock_timestamp())"
            " WHERE name = 'leader' AND holder = %s AND epoch = %s", (holder, epoch),
        )

    async def leader(self) -> str | None:
        """The holder of an unexpired lease (by the database's clock), or None."""
        row = await self._one(
            "SELECT holder FROM lease WHERE name = 'leader' AND expires_at > clock_timestamp()",
        )
        return None if row is None else str(row[0])

    async def set_stage(self, campaign_id: str, stage: int, stage_at: datetime) -> None:
        """Roll-out: record the stage in progress and when it may start."""
        cursor = await self.db.execute(
            "UPDATE campaigns SET stage = %s, stage_at = %s WHERE id = %s",
            (stage, stage_at, campaign_id),
        )
        if cursor.rowcount == 0:
            raise JournalConflict(campaign_id, "no such campaign in the journal")

    async def heartbeat(self, holder: str, since: datetime, seconds: float) -> None:
        """Renew ``holder``'s presence (a lease named "daemon:<holder>"; epoch: start time)."""
        await self.db.execute(
            "INSERT INTO lease (name, holder, epoch, expires_at)"
            " VALUES (%s, %s, %s, clock_timestamp() + %s)"
            " ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder,"
            " epoch = EXCLUDED.epoch, expires_at = EXCLUDED.expires_at",
            (f"daemon:{holder}", holder, int(since.timestamp()), timedelta(seconds=seconds)),
        )

    async def leave(self, holder: str) -> None:
        """Drop ``holder``'s presence."""
        await self.db.execute("DELETE FROM lease WHERE name = %s", (f"daemon:{holder}",))

    async def daemons(self) -> list[DaemonRecord]:
        """Daemons whose presence has not expired (the database's clock), oldest first."""
        rows = await self._all(
            "SELECT holder, epoch FROM lease WHERE name LIKE 'daemon:%%'"
            " AND expires_at > clock_timestamp() ORDER BY epoch, holder",
        )
        return [DaemonRecord(holder, datetime.fromtimestamp(epoch, UTC)) for holder, epoch in rows]

    async def stage_fence(self, holder: str, epoch: int) -> Callable[[], bool]:
        """Whether ``holder`` holds an unexpired lease of ``epoch``; the lease row stays
        locked (FOR SHARE) until the transaction ends, so no one can take it meanwhile."""
        cursor = await self.db.execute(_FENCE, (holder, epoch))
        return lambda: cursor.rowcount == 1

    async def guard_fence(self, holder: str, epoch: int) -> None:
        """`stage_fence` that fails the transaction (division by zero) when the lease does
        not hold, so a group sent ahead with its COMMIT is rolled back."""
        await self.db.execute(_FENCE_GUARDED, (holder, epoch))


# --------------------------------------------------------------------------------------------
# copying a whole journal: COPY in, server-side cursors out, each on a connection of its own


async def dump_table(db: Connection, table: str) -> AsyncIterator[list[TupleRow]]:
    """``table``'s rows in chunks, in the order of its primary key (inside the caller's
    transaction: a server-side cursor lives as long as it)."""
    query = sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
        sql.SQL(", ").join(map(sql.Identifier, DUMP_TABLES[table])), sql.Identifier(table),
        sql.SQL(_DUMP_ORDER[table]),
    )
    size = _DUMP_BLOBS if table in ("bodies", "results") else _DUMP_ROWS
    async with db.cursor(name=f"dump_{table}") as cursor:
        await cursor.execute(query)
        while rows := await cursor.fetchmany(size):
            yield rows


async def load_all(db: Connection, location: str, chunks: AsyncIterable[DumpChunk]) -> Counts:
    """Insert a dump into an empty journal inside the caller's transaction; the rows per
    table. Every table is locked against writers first, so nothing can slip in meanwhile."""
    tables = sql.SQL(", ").join(map(sql.Identifier, DUMP_TABLES))
    await db.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(tables))
    await _refuse_unless_empty(db, location)
    types = {table: await _column_types(db, location, table) for table in DUMP_TABLES}
    loaded = dict.fromkeys(DUMP_TABLES, 0)
    async for table, rows in chunks:
        if table not in DUMP_TABLES:
            raise JournalConflict(None, f"no table {table!r} in a journal")
        await _copy_in(db, table, types[table], rows)
        loaded[table] += len(rows)
    for table, column in _LOADED_IDS:
        await db.execute(
            sql.SQL("SELECT setval(pg_get_serial_sequence(%s, %s), max({})) FROM {}").format(
                sql.Identifier(column), sql.Identifier(table)),
            (table, column),
        )
    return loaded


async def _refuse_unless_empty(db: Connection, location: str) -> None:
    row = await (await db.execute("SELECT COUNT(*) FROM campaigns")).fetchone()
    if row is not None and row[0]:
        raise JournalNotEmpty(location, int(row[0]))
    for table in DUMP_TABLES:
        query = sql.SQL("SELECT 1 FROM {} LIMIT 1").format(sql.Identifier(table))
        if await (await db.execute(query)).fetchone() is not None:
            raise JournalNotEmpty(location, 0, table)


async def _column_types(db: Connection, location: str, table: str) -> list[int]:
    """The type oids of ``table``'s dump columns, as this database's schema has them."""
    columns = DUMP_TABLES[table]
    cursor = await db.execute(
        "SELECT a.atttypid FROM unnest(%s::text[]) WITH ORDINALITY AS c (name, n)"
        " JOIN pg_attribute a ON a.attrelid = %s::regclass AND a.attname = c.name"
        " ORDER BY c.n", (list(columns), table),
    )
    types = [int(row[0]) for row in await cursor.fetchall()]
    if len(types) != len(columns):
        raise JournalCorrupt(None, f"{location}: the {table} table lacks columns of this release")
    return types


async def _copy_in(
    db: Connection, table: str, types: list[int], rows: Sequence[tuple[Any, ...]],
) -> None:
    columns = DUMP_TABLES[table]
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)),
    )
    async with db.cursor() as cursor, cursor.copy(statement) as copy:
        copy.set_types(types)
        for row in rows:
            if len(row) != len(columns):
                raise JournalConflict(
                    None, f"a {table} row to load has {len(row)} values, not {len(columns)}",
                )
            await copy.write_row([_text(v) if isinstance(v, str) else v for v in row])


# --------------------------------------------------------------------------------------------
# the journal: one writer task, one connection, group commit


@dataclass(slots=True)
class _Op:
    """One queued call: what to run on the store, and whom to tell.

    ``fence``: the lease (holder, epoch) the write must still hold, checked in its group's
    transaction (None: not fenced). ``stage``: the write in two steps (see `PostgresStore`),
    so a group of such writes goes to the server in one pipeline; ``fn`` runs both at once.
    """

    fn: Callable[[PostgresStore], Awaitable[Any]]
    future: asyncio.Future[Any]
    fence: tuple[str, int] | None = None
    stage: Callable[[PostgresStore], Awaitable[Finish]] | None = None


_Settled = tuple[_Op, object, BaseException | None]


class _Again(Exception):
    """A write sent ahead found it could not be done in its one statement, and changed
    nothing: ``slow`` does it the whole way, in a transaction of its own."""

    def __init__(self, slow: Callable[[PostgresStore], Awaitable[Any]]) -> None:
        super().__init__("again")
        self.slow = slow


class _LostAtBegin(Exception):
    """The connection was found dead at a group's BEGIN: nothing was sent, try once more."""


def _lost_while_idle(db: Connection) -> bool:
    """Whether an idle connection is gone, without a round trip: the server has nothing to
    say to an idle client, so a readable socket means it closed the connection (a restart,
    a terminated backend; anything else, a notice, is read and kept)."""
    if db.closed or db.broken:
        return True
    try:
        for _ in range(3):  # the server's last word (FATAL ...), then the end of the stream
            readable, _, _ = select.select([db.pgconn.socket], [], [], 0)
            if not readable or db.pgconn.status == pq.ConnStatus.BAD:
                break
            db.pgconn.consume_input()
    except (psycopg.Error, OSError, ValueError):
        return True
    return db.pgconn.status == pq.ConnStatus.BAD


def _settle(op: _Op, value: object, error: BaseException | None) -> None:
    if op.future.done():  # the caller was cancelled; its operation still ran
        return
    if error is not None:
        op.future.set_exception(error)
    else:
        op.future.set_result(value)


class PostgresWriter:
    """The `Executor` of the PostgreSQL journal: one connection, one writer task, group commit.

    The writer takes one queued operation plus every other one waiting, runs them in ONE
    transaction (one failure fails only its caller: see `_group`), commits once, then
    resolves each caller: an ``await`` returns once its write is durable. ``conninfo`` is a
    libpq URL or key=value string; ``password`` (from the credential store) is never shown;
    ``location`` is the URL without any password, for people and error messages.
    """

    def __init__(
        self, conninfo: str, *, password: str | None = None, location: str,
        on_schema: SchemaListener | None = None,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self.location = location
        #: told each time a lost connection was replaced (the caller logs it plainly)
        self.on_reconnect = on_reconnect
        self._password = password
        self._on_schema = on_schema
        #: the older release's schema version `start` left for `acquire_lease` to upgrade
        self._waiting: int | None = None
        self._told_newer = False
        try:
            self._params: dict[str, Any] | None = conninfo_to_dict(conninfo)
        except psycopg.Error:
            self._params = None  # `start` says so, without echoing the text
        url_password = "" if self._params is None else str(self._params.get("password") or "")
        self._secrets = [conninfo, password or "", url_password]
        self._store: PostgresStore | None = None
        self._queue: asyncio.Queue[_Op | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._frozen: dict[str, int] = {}  # kept across reconnections (see `PostgresStore`)
        self.commits = 0  # durable commits so far (fewer than operations when grouped)

    # --- life ---------------------------------------------------------------------------

    async def start(self, *, writer: bool) -> None:
        """Connect and create the schema, or upgrade an older release's (``writer`` only,
        and only when no live leader uses it: else `acquire_lease` upgrades it once this
        process leads). Several writers may share the journal: leadership is the lease."""
        db = await self._connect()
        try:
            found, leader = await migrate(db, self.location, writer=writer)
        except psycopg.Error as exc:
            await db.close()
            raise self._error(exc) from None
        except BaseException:
            await db.close()
            raise
        self._store = PostgresStore(db, self._frozen)
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._serve(), name="journal-writer")
        if leader is not None:
            self._waiting = found
            self._tell("journal_upgrade_waiting", found, leader)
        elif 0 < found < SCHEMA_VERSION:
            self._tell("journal_upgraded", found)

    def _tell(
        self, event: Literal["journal_upgraded", "journal_upgrade_waiting", "journal_newer"],
        found: int, leader: str | None = None,
    ) -> None:
        if self._on_schema is not None:
            self._on_schema(SchemaNews(event, self.location, found, SCHEMA_VERSION, leader))

    def _check_schema(self) -> None:
        """Refuse while an older release's schema waits to be upgraded (only the lease and
        presence calls work then: they are the same in every release)."""
        if self._waiting is not None:
            raise JournalUnavailable(
                None, f"{self.location} still has the schema of an earlier release (version "
                f"{self._waiting}), which its leader uses: this daemon upgrades it to version "
                f"{SCHEMA_VERSION} once it takes the lead",
            )

    async def close(self) -> None:
        """Finish every queued operation, then close the connection and stop the writer."""
        if self._task is None or self._queue is None or self._closing:
            return
        self._closing = True
        self._queue.put_nowait(None)  # the stop mark, after everything already queued
        await self._task

    async def _connect(self) -> Connection:
        """A new connection with this journal's session settings; `JournalUnavailable` if
        the server cannot be reached (naming `location`, never the password)."""
        if self._params is None:
            raise JournalUnavailable(
                None, f"{self.location} is not a valid PostgreSQL URL: check [journal] url",
            )
        params = _CONNECT_DEFAULTS | self._params
        if self._password is not None:
            params["password"] = self._password
        try:
            db = await psycopg.AsyncConnection.connect(autocommit=True, **params)
        except psycopg.Error as exc:
            raise JournalUnavailable(
                None, f"cannot connect to {self.location}: {_scrub(str(exc), self._secrets)}",
            ) from None
        try:
            await db.execute(_SESSION)
        except psycopg.Error as exc:
            await db.close()
            raise self._error(exc) from None
        return db

    def _error(self, exc: psycopg.Error) -> JournalError:
        return _translate(exc, self.location, self._secrets)

    # --- the writer task ------------------------------------------------------------------

    async def run(self, fn: Callable[[PostgresStore], Awaitable[T]]) -> T:
        """Run ``fn(store)`` in the writer task, inside the group's transaction."""
        return await self._submit(fn)

    async def _submit(
        self, fn: Callable[[PostgresStore], Awaitable[T]], fence: tuple[str, int] | None = None,
        stage: Callable[[PostgresStore], Awaitable[Finish]] | None = None, *,
        any_schema: bool = False,
    ) -> T:
        if self._queue is None or self._closing:
            raise RuntimeError("the journal is not running (call start() first, not after close)")
        if not any_schema:
            self._check_schema()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Op(fn, future, fence, stage))
        return await future

    async def _staged(
        self, method: Callable[..., Awaitable[Finish]], fence: Fence | None,
        args: tuple[Any, ...], kwargs: dict[str, Any],
    ) -> Any:
        """A two-step write of the send path (fenced or not): pipelined with its group."""

        def stage(store: PostgresStore) -> Awaitable[Finish]:
            return method(store, *args, **kwargs)

        async def at_once(store: PostgresStore) -> Any:
            return await (await stage(store))()

        return await self._submit(at_once, fence, stage)

    async def _serve(self) -> None:
        assert self._queue is not None
        try:
            stop = False
            while not stop:
                ops, stop = await self._take(self._queue)
                if ops:
                    await self._run_group(ops)
        finally:
            if self._store is not None:
                with contextlib.suppress(psycopg.Error, OSError):
                    await self._store.db.close()

    @staticmethod
    async def _take(queue: asyncio.Queue[_Op | None]) -> tuple[list[_Op], bool]:
        """Wait for one operation, then take every other one already queued."""
        first = await queue.get()
        if first is None:
            return [], True
        ops = [first]
        while not queue.empty():
            op = queue.get_nowait()
            if op is None:
                return ops, True
            ops.append(op)
        return ops, False

    async def _run_group(self, ops: list[_Op]) -> None:
        """Run a group and resolve its callers once it is committed (or failed)."""
        try:
            outcomes = await self._group(ops)
        # Nothing of this group is durable. Any error at all goes to its callers: letting it
        # escape would stop the writer and hang every caller after them.
        except Exception as exc:  # noqa: BLE001
            outcomes = [(op, None, exc) for op in ops]
        for op, value, error in outcomes:
            _settle(op, value, error)

    async def _group(self, ops: list[_Op]) -> list[_Settled]:
        """One transaction, optimistically without savepoints (two round trips fewer per
        operation). If an operation fails, it is all rolled back; a lone operation's error
        is final, a group runs again with a savepoint each so the error stays its own."""
        outcomes = await self._transaction(ops, savepoints=False)
        if outcomes is None:
            outcomes = await self._transaction(ops, savepoints=True)
            assert outcomes is not None  # with savepoints, every failure stays its own
        return outcomes

    async def _transaction(self, ops: list[_Op], *, savepoints: bool) -> list[_Settled] | None:
        """`_commit` on a live connection; one found dead before anything of the group came
        back (nothing of it can have been committed) is replaced once."""
        try:
            return await self._commit(await self._live_store(), ops, savepoints)
        except _LostAtBegin:
            await self._reconnect()
            assert self._store is not None
            return await self._commit(self._store, ops, savepoints, retry=False)

    async def _commit(
        self, store: PostgresStore, ops: list[_Op], savepoints: bool, retry: bool = True,
    ) -> list[_Settled] | None:
        """Run ``ops`` in one transaction and commit it, checking each lease they are fenced
        by once, in that transaction (the lease row stays locked until the commit). An
        operation that failed outside a savepoint rolls it all back: then None (run the group
        again with savepoints), or for a lone operation its error."""
        if not savepoints and all(op.stage is not None for op in ops):
            return await self._commit_pipelined(store, ops, retry)
        began = failed = False
        outcomes: list[_Settled] = []
        store.learned.clear()
        try:
            async with store.db.transaction():
                began = True
                refused = await self._check_fences(store, ops, savepoints)
                if refused is None:
                    failed = True
                    raise psycopg.Rollback
                for op in ops:
                    if op.fence is not None and op.fence in refused:
                        outcomes.append((op, None, refused[op.fence]))
                        continue
                    outcomes.append(await self._run_one(store, op, savepoint=savepoints))
                    if outcomes[-1][2] is not None and not savepoints:
                        failed = True
                        raise psycopg.Rollback  # undoes it all, and leaves the block quietly
        except psycopg.Rollback:
            # psycopg lets it out (and warns) when the rollback itself failed: the connection
            # broke under the group. Nothing was committed; `failed` goes on as usual.
            pass
        except psycopg.Error as exc:
            if retry and not began and store.db.broken:
                raise _LostAtBegin from exc
            raise self._error(exc) from None
        if failed:
            return outcomes if len(ops) == 1 and outcomes else None
        store.committed()
        self.commits += 1
        return outcomes

    async def _check_fences(
        self, store: PostgresStore, ops: list[_Op], savepoints: bool,
    ) -> dict[tuple[str, int], BaseException] | None:
        """Check each lease the group's operations are fenced by, once: the error of each
        fence that does not hold. None: a check failed outside a savepoint (roll back)."""
        refused: dict[tuple[str, int], BaseException] = {}
        for fence in dict.fromkeys(op.fence for op in ops if op.fence is not None):
            try:
                if savepoints:
                    async with store.db.transaction():
                        holds = (await store.stage_fence(*fence))()
                else:
                    holds = (await store.stage_fence(*fence))()
            except psycopg.Error as exc:
                if not savepoints:
                    return None
                refused[fence] = self._error(exc)
                continue
            if not holds:
                refused[fence] = JournalFenced(fence[0])
        return refused

    async def _commit_pipelined(
        self, store: PostgresStore, ops: list[_Op], retry: bool,
    ) -> list[_Settled] | None:
        """`_commit` for a group of two-step writes (the send path's) in ONE round trip:
        BEGIN, a guard per lease (it fails the transaction if the lease does not hold), every
        write (a check that does not pass fails it too) and COMMIT go out in one pipeline.
        If anything failed, the server rolled it all back: roll back and return None, and the
        group runs again with savepoints, where each error, `JournalFenced` included, is its
        own. A record that could not be done in one statement was left untouched: it runs
        the whole way in a group of its own once this one is committed."""
        store.learned.clear()
        outcomes: list[_Settled] = []
        staged: list[tuple[_Op, Finish]] = []
        db = store.db
        try:
            async with db.pipeline() as pipeline:
                await db.execute("BEGIN")
                for fence in dict.fromkeys(op.fence for op in ops if op.fence is not None):
                    await store.guard_fence(*fence)
                store.ahead = True
                try:
                    for op in ops:
                        assert op.stage is not None
                        try:
                            staged.append((op, await op.stage(store)))
                        except psycopg.Error:
                            raise
                        # refused before it wrote anything (bad arguments, no such campaign):
                        # the error is its caller's, the group goes on
                        except Exception as exc:  # noqa: BLE001
                            outcomes.append((op, None, exc))
                finally:
                    store.ahead = False
                await db.execute("COMMIT")
                await pipeline.sync()
        except psycopg.Error as exc:
            if db.broken or db.closed:
                # Lost before the answer came: most likely it was gone before this began (a
                # restart `_live_store` could not see yet), so run it once more on a new
                # connection. Had it committed after all, the repeat is harmless: marks and
                # releases land again (an attempt counted twice at worst), and a record
                # finds its own results already there and changes nothing (`codec.repeats`).
                if retry:
                    raise _LostAtBegin from exc
                raise self._error(exc) from None
            with contextlib.suppress(psycopg.Error):
                await db.execute("ROLLBACK")
            return None
        store.committed()
        self.commits += 1
        again: list[_Op] = []
        for op, finish in staged:
            try:
                outcomes.append((op, await finish(), None))
            except _Again as slow:
                again.append(_Op(slow.slow, op.future, op.fence))
            # Task boundary: any error is handed to the awaiting caller (see `_run_one`).
            except Exception as exc:  # noqa: BLE001
                outcomes.append((op, None, exc))
        return outcomes + (await self._group(again) if again else [])

    async def _live_store(self) -> PostgresStore:
        """The store, on a new connection if the last one was lost (one try per group)."""
        if self._store is None or _lost_while_idle(self._store.db):
            await self._reconnect()
        assert self._store is not None
        return self._store

    async def _reconnect(self) -> None:
        if self._store is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await self._store.db.close()
            self._store = None
        self._store = PostgresStore(await self._connect(), self._frozen)
        if self.on_reconnect is not None:
            self.on_reconnect()

    async def _run_one(self, store: PostgresStore, op: _Op, *, savepoint: bool) -> _Settled:
        """Run one operation (in its own savepoint); its exception goes to its caller only."""
        try:
            if not savepoint:
                return op, await op.fn(store), None
            async with store.db.transaction():
                return op, await op.fn(store), None
        except psycopg.Error as exc:
            return op, None, self._error(exc)
        # Task boundary: any error is handed to the awaiting caller, never swallowed; letting
        # it escape would stop the writer and hang every other caller.
        except Exception as exc:  # noqa: BLE001
            return op, None, exc

    # --- the operations ---------------------------------------------------------------------

    async def call(
        self, op: str, fence: Fence | None, args: tuple[Any, ...], kwargs: dict[str, Any],
    ) -> Any:
        """`Executor.call`: ``PostgresStore.<op>`` in the writer task, once the group's
        transaction has checked ``fence`` (when set). The send path's two-step writes
        (`_STAGED`) are pipelined with their group; the lease and presence calls (`LEASE`)
        work on an older release's schema too."""
        if (staged := _STAGED.get(op)) is not None:
            return await self._staged(staged, fence, args, kwargs)
        if op == "acquire_lease":
            return await self._acquire_lease(*args, **kwargs)
        method = getattr(PostgresStore, op)
        return await self._submit(lambda store: method(store, *args, **kwargs), fence,
                                  any_schema=op in LEASE)

    async def _acquire_lease(self, holder: str, seconds: float) -> int | None:
        """`Journal.acquire_lease`: judged by the database's clock; upgrades the schema in
        the same transaction when `start` left it waiting."""
        epoch, found = await self._submit(
            lambda store: _acquire_upgrading(store, holder, seconds), any_schema=True)
        if found > SCHEMA_VERSION:
            if not self._told_newer:
                self._told_newer = True
                self._tell("journal_newer", found)
            return None
        if epoch is not None and self._waiting is not None:
            self._waiting = None
            if found < SCHEMA_VERSION:
                self._tell("journal_upgraded", found)
        return epoch

    async def dump(self) -> AsyncIterator[DumpChunk]:
        """`Journal.dump`: on a connection of its own, in one read-only REPEATABLE READ
        transaction, so the picture is consistent even beside a running daemon."""
        self._check_schema()
        db = await self._connect()
        try:
            await db.execute(_BULK_SESSION)
            async with db.transaction():
                await db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                for table in DUMP_TABLES:
                    async for rows in dump_table(db, table):
                        yield table, rows
        except psycopg.Error as exc:
            raise self._error(exc) from None
        finally:
            with contextlib.suppress(psycopg.Error, OSError):
                await db.close()

    async def load(self, chunks: AsyncIterable[DumpChunk]) -> Counts:
        """`Journal.load`: by COPY, on a connection of its own, in ONE transaction (never a
        group of the writer's: a failure there would run the operations again, and the chunks
        can be read only once)."""
        self._check_schema()
        db = await self._connect()
        try:
            await db.execute(_BULK_SESSION)
            async with db.transaction():
                return await load_all(db, self.location, chunks)
        except psycopg.Error as exc:
            raise self._error(exc) from None
        finally:
            with contextlib.suppress(psycopg.Error, OSError):
                await db.close()


#: the send path's writes done in two steps (see `PostgresStore`), by operation
_STAGED: dict[str, Callable[..., Awaitable[Finish]]] = {
    "mark_in_flight": PostgresStore.stage_mark_in_flight,
    "release": PostgresStore.stage_release,
    "record_results": functools.partial(PostgresStore.stage_record, close=True),
    "record_partial": functools.partial(PostgresStore.stage_record, close=False),
    "mark_logged": PostgresStore.stage_mark_logged,
}


class PostgresJournal(Front[PostgresWriter]):
    """The `Journal` interface on PostgreSQL: `Front` over a `PostgresWriter` (its arguments)."""

    def __init__(
        self, conninfo: str, *, password: str | None = None, location: str,
        on_schema: SchemaListener | None = None,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(PostgresWriter(conninfo, password=password, location=location,
                                        on_schema=on_schema, on_reconnect=on_reconnect))
