"""The SQLite journal: a crash-safe record of each campaign's snapshot, batch states and outcomes.

One file, WAL, ``synchronous=FULL``. A batch's request body, stored once as orjson bytes, *is*
the snapshot; a small table holds each batch's changing state and per-outcome counts, and the
final outcomes are one compact blob per batch, matched to the body by tracking id.

Snapshots are written in chunks under a fresh snapshot id and swapped in by one small transaction,
so preparing a million-row audience never holds the writer for long and a crash at any point
leaves either the old snapshot or the new one, never a mix.

`SqliteConnection` is the synchronous core, the SQL (one connection, one thread at a time);
`SqliteWriter` runs its operations on one writer thread with group commit, and `SqliteJournal`
is the shared `Front` (`scheduler.journal.front`) over it. A writer holds an OS lock on
``<journal>.lock`` for its whole life, so a second daemon or `send` is refused, and a SIGKILL
never leaves a stale lock. This module is the only one that names ``sqlite3``: its errors leave
it as the `JournalError` family.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import os
import queue
import sqlite3
import sys
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, ParamSpec, TypeVar

import orjson

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
    JournalBusy,
    JournalConflict,
    JournalCorrupt,
    JournalError,
    JournalFenced,
    JournalNotEmpty,
    JournalUnavailable,
    Message,
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
    chunks,
    count_deliveries,
    decide_statuses,
    decided,
    encode_batches,
    final_statuses_blob,
    outcome_counts,
    read_final_statuses,
    sent_messages,
    streaming_snapshot,
    unlogged_rows,
)
from scheduler.journal.front import Fence, Front
from scheduler.journal.schema import SCHEMA_VERSION, SQLITE, STEPS
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

# the schema version (`schema.SCHEMA_VERSION`) is kept in ``PRAGMA user_version``

#: version 1: the first release's schema (kept as it was: a new file replays every step)
_SCHEMA_V1 = (
    """CREATE TABLE campaigns (
        id TEXT PRIMARY KEY, type TEXT NOT NULL, file TEXT NOT NULL, fingerprint TEXT NOT NULL,
        state TEXT NOT NULL, send_at TEXT NOT NULL, deadline TEXT NOT NULL,
        recipients INTEGER NOT NULL, skipped INTEGER NOT NULL, batches INTEGER NOT NULL,
        prepared_at TEXT, started_at TEXT, finished_at TEXT, error TEXT,
        snapshot INTEGER NOT NULL,
        skips_logged INTEGER NOT NULL DEFAULT 0)""",
    # one row per snapshot ever written; a campaign points at its current one
    "CREATE TABLE snapshots (id INTEGER PRIMARY KEY, campaign TEXT NOT NULL, created_at TEXT)",
    "CREATE INDEX snapshots_by_campaign ON snapshots (campaign)",
    # the immutable request bodies (orjson array of message dicts, without ttl)
    """CREATE TABLE bodies (snapshot INTEGER NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL,
        PRIMARY KEY (snapshot, seq))""",
    # the small mutable part: state, attempts and outcome counts (counting is a cheap SUM)
    """CREATE TABLE batch_state (snapshot INTEGER NOT NULL, seq INTEGER NOT NULL,
        size INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        sent INTEGER NOT NULL DEFAULT 0, rejected INTEGER NOT NULL DEFAULT 0,
        expired INTEGER NOT NULL DEFAULT 0, in_doubt INTEGER NOT NULL DEFAULT 0,
        logged INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (snapshot, seq))""",
    "CREATE INDEX batch_open ON batch_state (snapshot, seq) WHERE state <> 'done'",
    # final outcomes, one blob per batch: [[tracking_id, outcome, detail, attempts], ...]
    """CREATE TABLE results (snapshot INTEGER NOT NULL, seq INTEGER NOT NULL,
        blob BLOB NOT NULL, PRIMARY KEY (snapshot, seq))""",
    """CREATE TABLE skips (snapshot INTEGER NOT NULL, line INTEGER NOT NULL, tracking_id TEXT,
        phone TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL)""",
    "CREATE INDEX skips_by_snapshot ON skips (snapshot)",
)
#: version 2: room for the second version's features, none of it on the send path
_TO_V2 = (
    # roll-out: the stage reached and when the next one may start
    "ALTER TABLE campaigns ADD COLUMN stage INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE campaigns ADD COLUMN stage_at TEXT",
    # send windows: a batch (cut by due time) waits until then
    "ALTER TABLE batch_state ADD COLUMN not_before TEXT",
    # when the batch closed (the sent time of its messages), and whether index_messages copied
    # its sent messages into per-message rows yet
    "ALTER TABLE batch_state ADD COLUMN done_at TEXT",
    "ALTER TABLE batch_state ADD COLUMN indexed INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX batch_unindexed ON batch_state (snapshot, seq)"
    " WHERE state = 'done' AND indexed = 0",
    # per-message rows, written off the hot path: delivery status by messageId, caps by phone
    """CREATE TABLE messages (message_id TEXT PRIMARY KEY, campaign TEXT NOT NULL,
        tracking_id TEXT NOT NULL, phone TEXT NOT NULL, type TEXT NOT NULL,
        sent_at TEXT NOT NULL, status TEXT, status_at TEXT, channel TEXT, parts INTEGER,
        cost REAL, currency TEXT)""",
    "CREATE INDEX messages_by_phone ON messages (phone, sent_at)",
    # leadership among daemons sharing one journal (holder, epoch, expiry)
    """CREATE TABLE lease (name TEXT PRIMARY KEY, holder TEXT NOT NULL,
        epoch INTEGER NOT NULL, expires_at TEXT NOT NULL)""",
)
#: _MIGRATIONS[n] takes a journal from version n to n + 1: its own first two steps, then the
#: steps every backend shares (`scheduler.journal.schema`)
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    0: _SCHEMA_V1, 1: _TO_V2, **{version: SQLITE.steps(version) for version in STEPS},
}
#: outcome counted in its own batch_state column (a fixed map: never user input in SQL)
_COUNT_COLUMNS: dict[str, str] = {
    "sent": "sent", "rejected": "rejected", "expired": "expired", "in_doubt": "in_doubt",
    "skipped": "skipped",
}
_SNAPSHOT_TABLES = ("bodies", "batch_state", "results", "skips")
_BATCH_CHUNK = 64  # batches written per transaction while preparing
_SKIP_CHUNK = 10_000
_PAGE = 16  # batches decoded per query while streaming recipients
_BUSY_TIMEOUT_MS = 30_000
_STATUS_CHUNK = 500  # message ids per look-up while recording statuses (bound variables)
_DELIVERY_PAGE = 2_000  # messages per page of a delivery-status listing
#: rows per chunk of a dump; tables of blobs (a batch body can be ~200 kB) in smaller chunks
_DUMP_ROWS = 5_000
_DUMP_BLOBS = 64
#: columns stored as ISO text here, aware datetimes in a dump; and as 0/1 here, bools there
_TIME_COLUMNS = frozenset({
    "send_at", "deadline", "prepared_at", "started_at", "finished_at", "stage_at",
    "created_at", "not_before", "done_at", "sent_at", "status_at", "next_poll_at",
    "recorded_at",
})
_FLAG_COLUMNS = frozenset({"skips_logged", "indexed", "streaming", "doubtful"})

P = ParamSpec("P")
T = TypeVar("T")


def _translate(exc: sqlite3.Error, location: str) -> JournalError:
    """A driver error as the interface's: damaged data apart from everything else."""
    text = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and (
        "malformed" in text or "not a database" in text
    ):
        return JournalCorrupt(None, f"{location} is damaged ({text}): restore it from a backup")
    return JournalUnavailable(
        None, f"cannot use {location}: {text}: check [paths].state in the config, that this "
        "user may write there, and the free disk space",
    )


def _read_only(path: Path) -> sqlite3.Connection:
    """A connection that only reads: `report` and `plan` never write the journal (no schema
    change, no checkpoint), whoever runs them. Beside it SQLite keeps only the ``-wal`` and
    ``-shm`` files every WAL reader shares with the daemon (owned like the journal file even
    when root opens it)."""
    uri = f"{path.absolute().as_uri()}?mode=ro"
    return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000)


@contextlib.contextmanager
def _translated(location: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise _translate(exc, location) from exc


# --------------------------------------------------------------------------------------------
# the writer lock


class WriterLock:
    """An exclusive ``flock`` on ``<journal>.lock``, holding the owner's pid for the refusal.

    The kernel drops it when the process dies, however it dies: no stale lock after SIGKILL.
    """

    def __init__(self, journal: Path) -> None:
        self.path = journal.with_name(journal.name + ".lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise `JournalBusy` naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise JournalBusy(str(self.path.with_suffix("")), holder) from None
        file.seek(0)
        file.truncate()
        file.write(f"process {os.getpid()} ({_command()})")
        file.flush()
        self._file = file

    def release(self) -> None:
        """Let go of the lock (closing the file drops it)."""
        if self._file is not None:
            self._file.close()
            self._file = None


def _command() -> str:
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    words = ["cascade-scheduler" if name in ("__main__.py", "scheduler") else name]
    return " ".join(words + [a for a in sys.argv[1:2] if not a.startswith("-")])


# --------------------------------------------------------------------------------------------
# helpers


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _later(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def _utc_text(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError(f"journal times must be timezone-aware (UTC), got {value!r}")
    return value.astimezone(UTC).isoformat()


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _accounts_in(
    column: str, accounts: Sequence[str] | None,
) -> tuple[tuple[str, ...], str]:
    """The parameters and condition "``column`` is one of ``accounts``" (NULL: the default
    account, as `CampaignRecord.account` reads it); no condition for None (every account)."""
    if accounts is None:
        return (), ""
    marks = ", ".join("?" for _ in accounts)
    return tuple(accounts), f"COALESCE({column}, '{DEFAULT_ACCOUNT}') IN ({marks})"


def _record(row: sqlite3.Row) -> CampaignRecord:
    return CampaignRecord(
        id=row["id"], type=row["type"], file=row["file"], fingerprint=row["fingerprint"],
        state=row["state"], send_at=datetime.fromisoformat(row["send_at"]),
        deadline=datetime.fromisoformat(row["deadline"]), recipients=row["recipients"],
        skipped=row["skipped"], batches=row["batches"], prepared_at=_time(row["prepared_at"]),
        started_at=_time(row["started_at"]), finished_at=_time(row["finished_at"]),
        error=row["error"], stage=row["stage"], stage_at=_time(row["stage_at"]),
        streaming=bool(row["streaming"]), content=row["content"],
        account=row["account"] or DEFAULT_ACCOUNT,
    )


def _message_record(row: sqlite3.Row | tuple[Any, ...]) -> MessageRecord:
    """A `MessageRecord` from a row that starts (message_id, campaign, tracking_id, phone,
    type, sent_at)."""
    message_id, campaign, tracking_id, phone, kind, sent_at = tuple(row)[:6]
    return MessageRecord(
        message_id, campaign, tracking_id, phone, kind, datetime.fromisoformat(sent_at),
    )


def _neutral_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(value)
    # every time this journal writes is UTC (with its offset); one without an offset is UTC too
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _neutral_flag(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def _stored_time(value: datetime | None) -> str | None:
    return None if value is None else _utc_text(value)


def _stored_flag(value: bool | None) -> int | None:
    return None if value is None else int(value)


Convert = Callable[[tuple[Any, ...]], tuple[Any, ...]]


def _converter(table: str, *, to_neutral: bool) -> Convert:
    """A function turning one row of ``table`` between this journal's values (ISO text times,
    0/1 flags) and a dump's neutral ones (aware datetimes, bools)."""
    steps: list[tuple[int, Callable[[Any], Any]]] = []
    columns = DUMP_TABLES[table]
    for index, column in enumerate(columns):
        if column in _TIME_COLUMNS:
            steps.append((index, _neutral_time if to_neutral else _stored_time))
        elif column in _FLAG_COLUMNS:
            steps.append((index, _neutral_flag if to_neutral else _stored_flag))

    def convert(row: tuple[Any, ...]) -> tuple[Any, ...]:
        if len(row) != len(columns):
            raise JournalConflict(
                None, f"a {table} row to load has {len(row)} values, not {len(columns)}",
            )
        values = list(row)
        for index, step in steps:
            values[index] = step(values[index])
        return tuple(values)

    return convert


def _columns(table: str) -> str:
    """``table``'s dump columns as this journal names them (skips keep their order by rowid)."""
    if table not in DUMP_TABLES:  # never a name from elsewhere in SQL
        raise JournalConflict(None, f"no table {table!r} in a journal")
    return ", ".join("rowid" if (table, c) == ("skips", "id") else c for c in DUMP_TABLES[table])


# --------------------------------------------------------------------------------------------
# the synchronous journal


class SqliteConnection:
    """One SQLite connection; WAL; synchronous=FULL; used from ONE thread at a time.

    Every write is one transaction, or a savepoint inside `transaction()` when grouped.
    ``commits`` counts the durable commits this connection made. Its methods raise
    ``sqlite3.Error`` as they meet it; `SqliteWriter` translates at its boundary.
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.commits = 0
        self.upgraded_from: int | None = None  # the version `_migrate` found, if it upgraded
        if read_only:
            self._db = _read_only(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000,
            )
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            if read_only:
                self._check_readable()
            else:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _check_readable(self) -> None:
        """A reader takes the schema as it is: it never migrates (that is a write)."""
        version = self._version()
        if version > SCHEMA_VERSION:
            raise JournalCorrupt(
                None, f"{self.path} has schema version {version}, newer than this program "
                f"({SCHEMA_VERSION}): upgrade cascade-scheduler",
            )
        if version < SCHEMA_VERSION:
            raise JournalUnavailable(
                None, f"{self.path} was written by an earlier release: start the daemon (or "
                "`send`) of this release once to upgrade it, then read it",
            )

    def close(self) -> None:
        """Close the connection (committed data is already durable)."""
        self._db.close()

    def __enter__(self) -> SqliteConnection:
        """Use as a context manager that closes the connection."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the connection."""
        self.close()

    def _version(self) -> int:
        version: int = self._db.execute("PRAGMA user_version").fetchone()[0]
        return version

    def _migrate(self) -> None:
        """Bring the schema to `SCHEMA_VERSION`, one step at a time, in one transaction (a
        crash leaves the old version whole); refuse a file written by a newer release."""
        if self._version() == SCHEMA_VERSION:
            return  # the common case takes no write lock (report/plan read beside the daemon)
        with self.transaction():
            version = self._version()
            if version > SCHEMA_VERSION:
                raise JournalCorrupt(
                    None, f"{self.path} has schema version {version}, newer than this program "
                    f"({SCHEMA_VERSION}): upgrade cascade-scheduler",
                )
            for step in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[step]:
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self.upgraded_from = version

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One durable transaction; nested, a savepoint (a failure undoes only its own part)."""
        if self._db.in_transaction:
            self._db.execute("SAVEPOINT op")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK TO op")
                self._db.execute("RELEASE op")
                raise
            self._db.execute("RELEASE op")
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        self.commits += 1

    # --- snapshot -----------------------------------------------------------------------

    def prepare(
        self, *, campaign_id: str, type: str, file: str, fingerprint: str,
        send_at: datetime, deadline: datetime, content: str | None = None,
        account: str = "default",
        batches: Iterable[Sequence[Message]], skips: Iterable[Skip],
        zones: Sequence[str | None] = (),
    ) -> None:
        """Snapshot a campaign (streaming), replacing an unstarted earlier snapshot atomically.

        Batches are consumed first, then skips, then ``zones``. Raises `JournalConflict` if it
        started.
        """
        snapshot = self.begin_snapshot(campaign_id)
        swapped = False
        try:
            for rows in chunks(encode_batches(batches), _BATCH_CHUNK):
                self.add_batches(campaign_id, snapshot, rows)
            for chunk in chunks(skips, _SKIP_CHUNK):
                self.add_skips(campaign_id, snapshot, chunk)
            self.commit_snapshot(
                snapshot, campaign_id=campaign_id, type=type, file=file,
                fingerprint=fingerprint, send_at=send_at, deadline=deadline, content=content,
                account=account, zones=zones,
            )
            swapped = True
        finally:
            if not swapped:
                self.drop_snapshot(campaign_id, snapshot)

    def _refuse_if_started(self, campaign_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._db.execute(
            "SELECT state, started_at, snapshot FROM campaigns WHERE id = ?", (campaign_id,),
        ).fetchone()
        # "paused" alone is not "started": a campaign paused before its send time has sent
        # nothing, and editing it (even just to unpause) re-plans it
        started = row is not None and (
            row["started_at"] is not None or row["state"] in STARTED
        )
        if row is not None and started:
            raise JournalConflict(
                campaign_id, f"it has started (state {row['state']}); its snapshot is frozen",
            )
        return row

    def begin_snapshot(self, campaign_id: str) -> int:
        """Allocate a staging snapshot, dropping this campaign's unfinished earlier ones."""
        with self.transaction():
            self._refuse_if_started(campaign_id)
            self._drop_orphans(campaign_id)
            cursor = self._db.execute(
                "INSERT INTO snapshots (campaign, created_at) VALUES (?, ?)",
                (campaign_id, _now()),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def _check_staging(self, campaign_id: str, snapshot: int) -> None:
        if self._db.execute("SELECT 1 FROM snapshots WHERE id = ?", (snapshot,)).fetchone() is None:
            raise JournalConflict(campaign_id, "this snapshot was superseded by a newer prepare")

    def add_batches(
        self, campaign_id: str, snapshot: int, rows: Sequence[EncodedBatch],
    ) -> None:
        with self.transaction():
            self._check_staging(campaign_id, snapshot)
            self._insert_batches(snapshot, rows)

    def _insert_batches(self, snapshot: int, rows: Sequence[EncodedBatch]) -> None:
        self._db.executemany(
            "INSERT INTO bodies (snapshot, seq, body, keys) VALUES (?, ?, ?, ?)",
            ((snapshot, seq, body, keys) for seq, body, _, keys in rows),
        )
        self._db.executemany(
            "INSERT INTO batch_state (snapshot, seq, size, state) VALUES (?, ?, ?, 'pending')",
            ((snapshot, seq, size) for seq, _, size, _ in rows),
        )

    def add_skips(self, campaign_id: str, snapshot: int, skips: Sequence[Skip]) -> None:
        with self.transaction():
            self._check_staging(campaign_id, snapshot)
            self._insert_skips(snapshot, skips)

    def _insert_skips(self, snapshot: int, skips: Sequence[Skip]) -> None:
        self._db.executemany(
            "INSERT INTO skips (snapshot, line, tracking_id, phone, reason, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            ((snapshot, s.line, s.tracking_id, s.phone, s.reason, s.detail) for s in skips),
        )

    def commit_snapshot(
        self, snapshot: int, *, campaign_id: str, type: str, file: str,
        fingerprint: str, send_at: datetime, deadline: datetime,
        zones: Sequence[str | None] = (), streaming: bool = False, content: str | None = None,
        account: str = "default",
    ) -> None:
        """Swap the staged snapshot in: one small transaction, so readers see old or new."""
        with self.transaction():
            self._check_staging(campaign_id, snapshot)
            self._db.executemany(
                "UPDATE batch_state SET zones = ? WHERE snapshot = ? AND seq = ?",
                ((group, snapshot, seq) for seq, group in enumerate(zones) if group),
            )
            previous = self._refuse_if_started(campaign_id)
            if previous is not None:
                self._delete_snapshot(previous["snapshot"])
            batches, recipients = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM batch_state WHERE snapshot = ?",
                (snapshot,),
            ).fetchone()
            skipped = self._db.execute(
                "SELECT COUNT(*) FROM skips WHERE snapshot = ?", (snapshot,),
            ).fetchone()[0]
            self._db.execute(
                "INSERT OR REPLACE INTO campaigns (id, type, file, fingerprint, state, send_at,"
                " deadline, recipients, skipped, batches, prepared_at, started_at, finished_at,"
                " error, snapshot, streaming, content, account) VALUES (?, ?, ?, ?, 'scheduled', ?,"
                " ?, ?, ?, ?, ?, NULL, NULL, NULL, ?, ?, ?, ?)",
                (campaign_id, type, file, fingerprint, _utc_text(send_at), _utc_text(deadline),
                 recipients, skipped, batches, _now(), snapshot, int(streaming), content,
                 account),
            )

    # --- a streamed snapshot: appended to while the campaign sends ------------------------

    def open_stream(
        self, *, campaign_id: str, type: str, file: str, fingerprint: str,
        send_at: datetime, deadline: datetime, content: str | None = None,
        account: str = "default",
    ) -> None:
        """Swap in an empty snapshot that `extend` fills (`Journal.open_stream`)."""
        snapshot = self.begin_snapshot(campaign_id)
        self.commit_snapshot(
            snapshot, campaign_id=campaign_id, type=type, file=file, fingerprint=fingerprint,
            send_at=send_at, deadline=deadline, streaming=True, content=content,
            account=account,
        )

    def extend(
        self, campaign_id: str, rows: Sequence[EncodedBatch], skips: Sequence[Skip],
    ) -> None:
        """Append batches and skipped rows to the streaming snapshot (`Journal.extend`)."""
        with self.transaction():
            row = self._db.execute(
                "SELECT snapshot, streaming, batches FROM campaigns WHERE id = ?", (campaign_id,),
            ).fetchone()
            snapshot, stored = streaming_snapshot(campaign_id, row)
            check_follows(campaign_id, rows, stored)
            self._insert_batches(snapshot, rows)
            self._insert_skips(snapshot, skips)
            self._db.execute(
                "UPDATE campaigns SET batches = batches + ?, recipients = recipients + ?,"
                " skipped = skipped + ? WHERE id = ?",
                (len(rows), sum(row.size for row in rows), len(skips), campaign_id),
            )

    def close_stream(self, campaign_id: str) -> None:
        """The streamed snapshot is whole (`Journal.close_stream`)."""
        with self.transaction():
            cursor = self._db.execute(
                "UPDATE campaigns SET streaming = 0 WHERE id = ? AND streaming = 1",
                (campaign_id,),
            )
            if cursor.rowcount != 1:
                raise JournalConflict(campaign_id, "its snapshot is not being streamed")

    def drop_snapshot(self, campaign_id: str, snapshot: int) -> None:
        """Remove a staging snapshot that will not be swapped in (failed or superseded)."""
        with self.transaction():
            current = self._db.execute(
                "SELECT 1 FROM campaigns WHERE snapshot = ?", (snapshot,),
            ).fetchone()
            if current is None:
                self._delete_snapshot(snapshot)

    def _drop_orphans(self, campaign_id: str) -> None:
        orphans = self._db.execute(
            "SELECT id FROM snapshots WHERE campaign = ? AND id NOT IN"
            " (SELECT snapshot FROM campaigns WHERE id = ?)", (campaign_id, campaign_id),
        ).fetchall()
        for (orphan,) in orphans:
            self._delete_snapshot(orphan)

    def _delete_snapshot(self, snapshot: int) -> None:
        for table in _SNAPSHOT_TABLES:
            self._db.execute(f"DELETE FROM {table} WHERE snapshot = ?", (snapshot,))
        self._db.execute("DELETE FROM snapshots WHERE id = ?", (snapshot,))

    def _snapshot(self, campaign_id: str) -> int:
        row = self._db.execute(
            "SELECT snapshot FROM campaigns WHERE id = ?", (campaign_id,),
        ).fetchone()
        if row is None:
            raise JournalConflict(campaign_id, "no such campaign in the journal")
        snapshot: int = row[0]
        return snapshot

    # --- campaigns ----------------------------------------------------------------------

    def campaign(self, campaign_id: str) -> CampaignRecord | None:
        """The campaign's record, or None if the journal has never prepared it."""
        row = self._db.execute("SELECT * FROM campaigns WHERE id = ?", (campaign_id,)).fetchone()
        return None if row is None else _record(row)

    def campaigns(self) -> list[CampaignRecord]:
        """Every campaign in the journal, by send time."""
        rows = self._db.execute("SELECT * FROM campaigns ORDER BY send_at, id").fetchall()
        return [_record(row) for row in rows]

    def set_state(
        self, campaign_id: str, state: CampaignState, error: str | None = None,
    ) -> CampaignRecord:
        """Move a campaign to ``state`` (with an error text or None), keeping its timestamps."""
        if state not in CAMPAIGN_STATES:
            raise ValueError(f"unknown campaign state {state!r}")
        now = _now()
        with self.transaction():
            record = self.campaign(campaign_id)
            if record is None:
                raise JournalConflict(campaign_id, "no such campaign in the journal")
            if not may_move(record.state, state):
                raise JournalConflict(
                    campaign_id, f"a {record.state} campaign cannot become {state}",
                )
            self._db.execute(
                "UPDATE campaigns SET state = ?1, error = ?2,"
                " started_at = CASE WHEN ?1 = 'running' THEN COALESCE(started_at, ?3)"
                "   ELSE started_at END,"
                " finished_at = CASE WHEN ?4 THEN ?3 ELSE NULL END WHERE id = ?5",
                (state, error, now, state in STAMPED, campaign_id),
            )
            fresh = self.campaign(campaign_id)
        assert fresh is not None  # updated just above, in the same transaction
        return fresh

    # --- batches ------------------------------------------------------------------------

    def open_batches(
        self, campaign_id: str, after_seq: int = -1, limit: int = 64,
    ) -> list[BatchRecord]:
        """Pending or in-flight batches after ``after_seq``, by seq, at most ``limit``."""
        rows = self._db.execute(
            "SELECT s.seq, b.body, s.size, s.state, s.attempts, r.blob, s.zones, b.keys,"
            " s.doubtful"
            " FROM batch_state s JOIN bodies b ON b.snapshot = s.snapshot AND b.seq = s.seq"
            " LEFT JOIN results r ON r.snapshot = s.snapshot AND r.seq = s.seq"
            " WHERE s.snapshot = ? AND s.seq > ? AND s.state <> 'done' ORDER BY s.seq LIMIT ?",
            (self._snapshot(campaign_id), after_seq, limit),
        ).fetchall()
        return [
            BatchRecord(seq, body, size, state, attempts, decided(blob), zones, keys,
                        state == "in_flight" or bool(doubtful))
            for seq, body, size, state, attempts, blob, zones, keys, doubtful in rows
        ]

    def mark_in_flight(self, campaign_id: str, seqs: Sequence[int]) -> None:
        """Mark open batches in flight (attempts + 1) before they are posted; durable on return."""
        if not seqs:
            return
        with self.transaction():
            snapshot = self._snapshot(campaign_id)
            cursor = self._db.executemany(
                "UPDATE batch_state SET state = 'in_flight', attempts = attempts + 1"
                " WHERE snapshot = ? AND seq = ? AND state <> 'done'",
                ((snapshot, seq) for seq in seqs),
            )
            if cursor.rowcount != len(seqs):
                raise JournalConflict(campaign_id, f"not every batch of {list(seqs)} is open")

    def release(self, campaign_id: str, seqs: Sequence[int], *, doubtful: bool = False) -> None:
        """Return in-flight batches to pending, to be posted later (``doubtful``: an earlier
        post may have reached the API; the mark stays once made)."""
        with self.transaction():
            snapshot = self._snapshot(campaign_id)
            self._db.executemany(
                "UPDATE batch_state SET state = 'pending', doubtful = MAX(doubtful, ?)"
                " WHERE snapshot = ? AND seq = ? AND state = 'in_flight'",
                ((int(doubtful), snapshot, seq) for seq in seqs),
            )

    def record_results(self, campaign_id: str, seq: int, results: Sequence[Result]) -> int:
        """Close a batch with one final outcome per message (matched to the body by tracking id).

        For a batch recorded partly before (`record_partial`), ``results`` covers the rest.
        """
        return self._record(campaign_id, seq, results, close=True)

    def record_partial(
        self, campaign_id: str, seq: int, results: Sequence[Result], *, doubtful: bool = False,
    ) -> int:
        """Keep the final outcomes decided so far; the batch's other messages go back to pending
        (``doubtful`` as for `release`).

        Used when a batch stops half way (a 400 split, or ids missing from an answer, then an
        outage): what was decided must never be sent again.
        """
        return self._record(campaign_id, seq, results, close=False, doubtful=doubtful)

    def _record(
        self, campaign_id: str, seq: int, results: Sequence[Result], *, close: bool,
        doubtful: bool = False,
    ) -> int:
        """Append ``results`` to the batch's outcomes; returns how many it holds now."""
        batch = Results.of(results)
        rows = batch.stored()
        with self.transaction():
            snapshot = self._snapshot(campaign_id)
            previous, repeat = check_record(campaign_id, seq, self._db.execute(
                "SELECT s.state, s.size, r.blob FROM batch_state s"
                " LEFT JOIN results r ON r.snapshot = s.snapshot AND r.seq = s.seq"
                " WHERE s.snapshot = ? AND s.seq = ?", (snapshot, seq),
            ).fetchone(), batch, close)
            if repeat:
                return len(previous)  # it landed before: nothing to change
            self._db.execute(
                "UPDATE batch_state SET state = :state, sent = sent + :sent,"
                " rejected = rejected + :rejected, expired = expired + :expired,"
                " in_doubt = in_doubt + :in_doubt, skipped = skipped + :skipped,"
                " resent = resent + :resent, doubtful = MAX(doubtful, :doubtful),"
                " done_at = :done_at WHERE snapshot = :snapshot AND seq = :seq",
                {**outcome_counts(batch), "state": "done" if close else "pending",
                 "doubtful": int(doubtful), "done_at": _now() if close else None,
                 "snapshot": snapshot, "seq": seq},
            )
            self._db.execute(
                "INSERT OR REPLACE INTO results (snapshot, seq, blob) VALUES (?, ?, ?)",
                (snapshot, seq, orjson.dumps(previous + rows if previous else rows)),
            )
        return len(previous) + len(rows)

    # --- what reached the delivery log ----------------------------------------------------
    # The journal commits an outcome before its delivery-log line is written; a crash in
    # between would lose the line. Each batch therefore counts how many of its results (a
    # prefix of the append-only results blob) are in the log, and a resume writes the rest.

    def mark_logged(self, campaign_id: str, marks: Sequence[tuple[int, int]]) -> None:
        """Record that the first ``count`` results of batch ``seq`` are in the delivery log."""
        with self.transaction():
            snapshot = self._snapshot(campaign_id)
            self._db.executemany(
                "UPDATE batch_state SET logged = MAX(logged, ?) WHERE snapshot = ? AND seq = ?",
                ((count, snapshot, seq) for seq, count in marks),
            )

    def unlogged(self, campaign_id: str) -> list[UnloggedBatch]:
        """Outcomes not yet in the delivery log, by batch."""
        found = []
        for seq, body, blob, logged in self._db.execute(
            "SELECT s.seq, b.body, r.blob, s.logged FROM batch_state s"
            " JOIN bodies b ON b.snapshot = s.snapshot AND b.seq = s.seq"
            " JOIN results r ON r.snapshot = s.snapshot AND r.seq = s.seq"
            " WHERE s.snapshot = ? AND s.logged < s.sent + s.rejected + s.expired + s.in_doubt"
            " + s.skipped"
            " ORDER BY s.seq", (self._snapshot(campaign_id),),
        ).fetchall():
            held, rows = unlogged_rows(body, blob, logged)
            found.append(UnloggedBatch(seq, held, rows))
        return found

    def skips_logged(self, campaign_id: str) -> bool:
        """True once the campaign's skipped rows are in the delivery log."""
        row = self._db.execute(
            "SELECT skips_logged FROM campaigns WHERE id = ?", (campaign_id,),
        ).fetchone()
        return row is not None and bool(row[0])

    def mark_skips_logged(self, campaign_id: str) -> None:
        """Record that the campaign's skipped rows are in the delivery log."""
        with self.transaction():
            self._db.execute(
                "UPDATE campaigns SET skips_logged = 1 WHERE id = ?", (campaign_id,),
            )


    # --- outcomes -----------------------------------------------------------------------

    def counts(self, campaign_id: str) -> Counts:
        """Messages per outcome, plus ``pending`` (not final yet) and ``skipped``."""
        snapshot = self._snapshot(campaign_id)
        row = self._db.execute(
            "SELECT COALESCE(SUM(sent), 0), COALESCE(SUM(rejected), 0),"
            " COALESCE(SUM(expired), 0), COALESCE(SUM(in_doubt), 0), COALESCE(SUM(skipped), 0),"
            " COALESCE(SUM(CASE WHEN state <> 'done'"
            "   THEN size - sent - rejected - expired - in_doubt - skipped END), 0),"
            " COALESCE(SUM(resent), 0)"
            " FROM batch_state WHERE snapshot = ?", (snapshot,),
        ).fetchone()
        skipped = self._db.execute(
            "SELECT skipped FROM campaigns WHERE id = ?", (campaign_id,),
        ).fetchone()[0]
        sent, rejected, expired, in_doubt, capped, pending, resent = row
        return {
            "sent": sent, "rejected": rejected, "expired": expired, "in_doubt": in_doubt,
            "skipped": skipped + capped, "pending": pending, "resent": resent,
        }

    def recipients(
        self, campaign_id: str, outcome: Outcome | None = None, *, resent: bool = False,
    ) -> Iterator[RecipientRow]:
        """Stream recipients with a final outcome (all, or one outcome; ``resent``: only those
        posted again after an ambiguous outcome): batches, then skips."""
        cursor: Cursor | None = START
        while cursor is not None:
            rows, cursor = self.recipient_page(campaign_id, outcome, cursor, resent=resent)
            yield from rows

    def recipient_page(
        self, campaign_id: str, outcome: Outcome | None, cursor: Cursor = (0, -1), *,
        resent: bool = False,
    ) -> tuple[list[RecipientRow], Cursor | None]:
        """One page of `recipients` and the cursor of the next (None: that was the last).

        Each page is its own query, so no read transaction stays open between pages.
        """
        snapshot = self._snapshot(campaign_id)
        phase, last = cursor
        if phase == 0:  # "skipped" too: a frequency cap skips inside a batch
            having = f" AND s.{_COUNT_COLUMNS[outcome]} > 0" if outcome is not None else ""
            having += " AND s.resent > 0" if resent else ""
            page = self._db.execute(
                "SELECT s.seq, b.body, r.blob, s.attempts, s.done_at FROM batch_state s"
                " JOIN bodies b ON b.snapshot = s.snapshot AND b.seq = s.seq"
                " LEFT JOIN results r ON r.snapshot = s.snapshot AND r.seq = s.seq"
                f" WHERE s.snapshot = ? AND s.seq > ? AND s.state = 'done'{having}"
                " ORDER BY s.seq LIMIT ?", (snapshot, last, _PAGE),
            ).fetchall()
            if page:
                rows = [row for _, body, blob, attempts, done_at in page
                        for row in batch_rows(body, blob, attempts, outcome, _time(done_at),
                                              resent)]
                return rows, (0, page[-1][0])
        if outcome not in (None, "skipped") or resent:  # a skipped row was never posted
            return [], None
        skips = self._skip_page(snapshot, last if phase == 1 else 0)
        if not skips:
            return [], None
        return [
            RecipientRow(tracking_id or "", phone, "skipped", reason, 0, line)
            for _, line, tracking_id, phone, reason, _ in skips
        ], (1, skips[-1][0])

    def skips(self, campaign_id: str) -> Iterator[Skip]:
        """Stream the campaign's skipped rows in CSV order, with their lines and details."""
        snapshot, last = self._snapshot(campaign_id), 0
        while page := self._skip_page(snapshot, last):
            for rowid, line, tracking_id, phone, reason, detail in page:
                last = rowid
                yield Skip(line, tracking_id, phone, reason, detail)

    def _skip_page(self, snapshot: int, after_rowid: int) -> list[sqlite3.Row]:
        return self._db.execute(
            "SELECT rowid, line, tracking_id, phone, reason, detail FROM skips"
            " WHERE snapshot = ? AND rowid > ? ORDER BY rowid LIMIT ?",
            (snapshot, after_rowid, _SKIP_CHUNK),
        ).fetchall()

    # --- per-message rows (off the hot path) -----------------------------------------------

    def index_messages(self, max_batches: int = 8, first_poll: float = 30.0) -> int:
        """Copy the sent messages of up to ``max_batches`` closed batches into ``messages``,
        each due for a status poll ``first_poll`` seconds after it was sent."""
        with self.transaction():
            batches = self._db.execute(
                "SELECT s.snapshot, s.seq, s.done_at, c.id, c.type, b.body, r.blob"
                " FROM batch_state s JOIN campaigns c ON c.snapshot = s.snapshot"
                " JOIN bodies b ON b.snapshot = s.snapshot AND b.seq = s.seq"
                " LEFT JOIN results r ON r.snapshot = s.snapshot AND r.seq = s.seq"
                " WHERE s.state = 'done' AND s.indexed = 0 LIMIT ?", (max_batches,),
            ).fetchall()
            for snapshot, seq, done_at, campaign, kind, body, blob in batches:
                sent_at = done_at or _now()  # a batch closed by the first release has no time
                due = (datetime.fromisoformat(sent_at) + timedelta(seconds=first_poll)).isoformat()
                self._db.executemany(
                    "INSERT OR IGNORE INTO messages (message_id, campaign, tracking_id, phone,"
                    " type, sent_at, next_poll_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    ((message_id, campaign, tid, phone, kind, sent_at, due)
                     for message_id, tid, phone in sent_messages(body, blob)),
                )
                self._db.execute(
                    "UPDATE batch_state SET indexed = 1 WHERE snapshot = ? AND seq = ?",
                    (snapshot, seq),
                )
        return len(batches)

    def capped_phones(
        self, types: Sequence[str], since: datetime, at_least: int, after: str = "",
        limit: int = 50_000, *, accounts: Sequence[str] | None = None,
    ) -> list[str]:
        """Phones with at least ``at_least`` messages of ``types`` sent since ``since``, in
        order, after ``after``, at most ``limit``: one walk of the phone index, no table
        (with ``accounts``, each message's campaign is looked up too)."""
        kinds = ", ".join("?" for _ in types)
        named, mine = _accounts_in("account", accounts)
        if mine:
            mine = f" AND campaign IN (SELECT id FROM campaigns WHERE {mine})"
        cursor = self._db.cursor()
        cursor.row_factory = None
        return [phone for (phone,) in cursor.execute(
            f"SELECT phone FROM messages WHERE phone > ? AND type IN ({kinds})"
            f" AND sent_at >= ?{mine} GROUP BY phone HAVING COUNT(*) >= ? ORDER BY phone"
            " LIMIT ?",
            (after, *types, _utc_text(since), *named, at_least, limit),
        )]

    def unindexed_page(
        self, types: Sequence[str], since: datetime, after: tuple[int, int] = (0, -1), *,
        accounts: Sequence[str] | None = None,
    ) -> tuple[list[str], tuple[int, int] | None]:
        """The phones of one page of `Journal.unindexed_phones` (up to `_PAGE` batches after
        ``after``, a (snapshot, seq)) and where the next page starts (None: that was the last).
        A batch closed by the first release has no time: it counts as sent now."""
        kinds = ", ".join("?" for _ in types)
        named, mine = _accounts_in("c.account", accounts)
        mine = f" AND {mine}" if mine else ""
        rows = self._db.execute(
            "SELECT s.snapshot, s.seq, b.body, r.blob FROM batch_state s"
            " JOIN campaigns c ON c.snapshot = s.snapshot"
            " JOIN bodies b ON b.snapshot = s.snapshot AND b.seq = s.seq"
            " JOIN results r ON r.snapshot = s.snapshot AND r.seq = s.seq"
            f" WHERE s.state = 'done' AND s.indexed = 0 AND c.type IN ({kinds})"
            " AND (s.done_at IS NULL OR s.done_at >= ?) AND (s.snapshot, s.seq) > (?, ?)"
            f"{mine} ORDER BY s.snapshot, s.seq LIMIT ?",
            (*types, _utc_text(since), *after, *named, _PAGE),
        ).fetchall()
        phones = [phone for _, _, body, blob in rows for _, _, phone in sent_messages(body, blob)]
        return phones, (rows[-1][0], rows[-1][1]) if len(rows) == _PAGE else None

    # --- delivery status ------------------------------------------------------------------

    def record_statuses(
        self, reports: Sequence[StatusReport], log_key: str | None = None,
    ) -> list[StatusChange]:
        """Apply status reports in order, only ever forward (see `Journal.record_statuses`)."""
        now = _now()
        with self.transaction():
            current: dict[str, tuple[DeliveryStatus | None, MessageRecord]] = {}
            ids = list(dict.fromkeys(r.message_id for r in reports))
            cursor = self._db.cursor()
            cursor.row_factory = None  # plain tuples: ~1 µs a row cheaper than sqlite3.Row
            for chunk in chunks(ids, _STATUS_CHUNK):
                marks = ", ".join("?" for _ in chunk)
                for mid, campaign, tid, phone, kind, sent_at, status in cursor.execute(
                    "SELECT message_id, campaign, tracking_id, phone, type, sent_at, status"
                    f" FROM messages WHERE message_id IN ({marks})", chunk,
                ):
                    current[mid] = (status, MessageRecord(
                        mid, campaign, tid, phone, kind, datetime.fromisoformat(sent_at)))
            changes, writes = decide_statuses(reports, current)
            self._db.executemany(
                "UPDATE messages SET status = ?, status_at = ?, channel = COALESCE(?, channel),"
                " parts = COALESCE(?, parts), cost = COALESCE(?, cost),"
                " currency = COALESCE(?, currency),"
                " next_poll_at = CASE WHEN ? THEN NULL ELSE next_poll_at END"
                " WHERE message_id = ?",
                ((r.status, now if r.at is None else _utc_text(r.at), r.channel, r.parts, r.cost,
                  r.currency, r.status in DELIVERY_FINAL, r.message_id) for r in writes.values()),
            )
            finals = [r for r in writes.values() if r.status in DELIVERY_FINAL]
            if finals:
                self._db.execute("INSERT INTO final_statuses (statuses) VALUES (?)",
                                 (final_statuses_blob(finals, current),))
                if log_key is not None:
                    self._db.execute(
                        "INSERT INTO unlogged_statuses (log_key, recorded_at, message_ids)"
                        " VALUES (?, ?, ?)",
                        (log_key, now, orjson.dumps([r.message_id for r in finals])))
        return changes

    def unlogged_statuses(self, before: datetime, limit: int) -> list[UnloggedStatus]:
        """The statuses kept unlogged by the oldest ``limit`` calls before ``before``."""
        found: list[UnloggedStatus] = []
        for key, recorded_at, blob in self._db.execute(
            "SELECT log_key, recorded_at, message_ids FROM unlogged_statuses"
            " WHERE recorded_at < ? ORDER BY recorded_at, log_key LIMIT ?",
            (_utc_text(before), limit),
        ).fetchall():
            recorded = datetime.fromisoformat(recorded_at)
            for chunk in chunks(orjson.loads(blob), _STATUS_CHUNK):
                marks = ", ".join("?" for _ in chunk)
                found += [UnloggedStatus(
                    _message_record(row),
                    StatusReport(row[0], row[6], row[7], row[8], row[9], row[10], _time(row[11])),
                    recorded, key,
                ) for row in self._db.execute(
                    "SELECT message_id, campaign, tracking_id, phone, type, sent_at, status,"
                    " channel, parts, cost, currency, status_at FROM messages"
                    f" WHERE message_id IN ({marks}) ORDER BY message_id", chunk,
                )]
        return found

    def mark_statuses_logged(self, log_keys: Sequence[str]) -> None:
        """The lines of the statuses kept under these keys are written."""
        with self.transaction():
            self._db.executemany("DELETE FROM unlogged_statuses WHERE log_key = ?",
                                 ((key,) for key in log_keys))

    def take_final_statuses(self, limit: int) -> list[FinalStatus]:
        """The first final statuses kept by the oldest ``limit`` calls, deleted."""
        with self.transaction():
            rows = self._db.execute(
                "SELECT id, statuses FROM final_statuses ORDER BY id LIMIT ?", (limit,),
            ).fetchall()
            if rows:
                self._db.execute("DELETE FROM final_statuses WHERE id <= ?", (rows[-1][0],))
        return read_final_statuses(blob for _, blob in rows)

    def messages_awaiting_status(
        self, due_before: datetime, limit: int,
    ) -> list[AwaitingMessage]:
        """Messages not final whose next poll is due by ``due_before``, most overdue first."""
        rows = self._db.execute(
            "SELECT m.message_id, m.campaign, m.tracking_id, m.phone, m.type, m.sent_at,"
            " c.deadline, m.polls FROM messages m JOIN campaigns c ON c.id = m.campaign"
            " WHERE m.next_poll_at IS NOT NULL AND m.next_poll_at <= ?"
            " ORDER BY m.next_poll_at LIMIT ?", (_utc_text(due_before), limit),
        ).fetchall()
        return [
            AwaitingMessage(_message_record(row), datetime.fromisoformat(row[6]), row[7])
            for row in rows
        ]

    def schedule_polls(self, polls: Sequence[tuple[str, datetime]]) -> None:
        """One poll more per message; its next one is due at the given time (unless final)."""
        with self.transaction():
            self._db.executemany(
                "UPDATE messages SET next_poll_at = ?, polls = polls + 1"
                " WHERE message_id = ? AND next_poll_at IS NOT NULL",
                ((_utc_text(when), message_id) for message_id, when in polls),
            )

    def delivery_counts(self, campaign_id: str) -> DeliveryCounts:
        """The campaign's indexed messages per status, delivered per channel, cost per currency."""
        groups = self._db.execute(
            "SELECT status, channel, currency, COUNT(*), SUM(cost) FROM messages"
            " WHERE campaign = ? GROUP BY status, channel, currency", (campaign_id,),
        ).fetchall()
        delivered: int = sum(count for status, _, _, count, _ in groups if status == "delivered")
        median = None
        if delivered:
            median = self._db.execute(
                "SELECT (julianday(status_at) - julianday(sent_at)) * 86400 AS took"
                " FROM messages WHERE campaign = ? AND status = 'delivered'"
                " ORDER BY took LIMIT 1 OFFSET ?", (campaign_id, (delivered - 1) // 2),
            ).fetchone()[0]
        return count_deliveries(groups, median)

    def delivery_page(
        self, campaign_id: str, status: DeliveryStatus, after: str,
    ) -> list[DeliveryRow]:
        """One page of `Journal.delivery_recipients`: message ids after ``after``."""
        rows = self._db.execute(
            "SELECT tracking_id, phone, status, channel, parts, cost, currency, sent_at,"
            " status_at, message_id FROM messages WHERE campaign = ? AND status = ?"
            " AND message_id > ? ORDER BY message_id LIMIT ?",
            (campaign_id, status, after, _DELIVERY_PAGE),
        ).fetchall()
        return [
            DeliveryRow(tid, phone, status, channel, parts, cost, currency,
                        datetime.fromisoformat(sent_at), _time(status_at), message_id)
            for tid, phone, status, channel, parts, cost, currency, sent_at, status_at,
            message_id in rows
        ]


    # --- copying a whole journal --------------------------------------------------------------
    # A dump pages each table by rowid (for skips, that is their CSV order, carried as
    # skips.id); times become aware datetimes and flags bools, and a load turns them back.

    def dump_page(self, table: str, after: int) -> tuple[list[tuple[Any, ...]], int]:
        """``table``'s next rows after rowid ``after``, as neutral values, and the rowid to go
        on from (no rows: the table is done)."""
        rows = self._db.execute(
            f"SELECT rowid, {_columns(table)} FROM {table} WHERE rowid > ? ORDER BY rowid"
            " LIMIT ?", (after, _DUMP_BLOBS if table in ("bodies", "results") else _DUMP_ROWS),
        ).fetchall()
        convert = _converter(table, to_neutral=True)
        try:
            return [convert(tuple(row)[1:]) for row in rows], rows[-1][0] if rows else after
        except ValueError as exc:  # a time that is not ISO text
            raise JournalCorrupt(
                None, f"{self.path} holds a bad time in {table} ({exc}): restore it from a backup",
            ) from None

    def load(self, pull: Callable[[], DumpChunk | None]) -> Counts:
        """Insert the chunks ``pull`` returns (until None) in ONE transaction, into an empty
        journal (else `JournalNotEmpty`); the rows loaded per table."""
        loaded = dict.fromkeys(DUMP_TABLES, 0)
        with self.transaction():
            self._refuse_unless_empty()
            while (chunk := pull()) is not None:
                table, rows = chunk
                columns = _columns(table)
                marks = ", ".join("?" for _ in DUMP_TABLES[table])
                self._db.executemany(
                    f"INSERT INTO {table} ({columns}) VALUES ({marks})",
                    map(_converter(table, to_neutral=False), rows),
                )
                loaded[table] += len(rows)
        return loaded

    def _refuse_unless_empty(self) -> None:
        campaigns: int = self._db.execute("SELECT COUNT(*) FROM campaigns").fetchone()[0]
        if campaigns:
            raise JournalNotEmpty(str(self.path), campaigns)
        for table in DUMP_TABLES:
            if self._db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None:
                raise JournalNotEmpty(str(self.path), 0, table)

    # --- leadership ---------------------------------------------------------------------------
    # On SQLite the writer lock already makes one process the only writer: the lease is kept
    # so the daemon runs one code path on every backend, and taking it never waits (a killed
    # predecessor's lease would otherwise hold a restart back for its remaining seconds).

    def acquire_lease(self, holder: str, seconds: float) -> int:
        """Take the lease (see above: on SQLite, always); returns the new epoch."""
        with self.transaction():
            row = self._db.execute("SELECT epoch FROM lease WHERE name = 'leader'").fetchone()
            epoch = (row[0] if row is not None else 0) + 1
            self._db.execute(
                "INSERT OR REPLACE INTO lease (name, holder, epoch, expires_at)"
                " VALUES ('leader', ?, ?, ?)", (holder, epoch, _later(seconds)),
            )
        return epoch

    def renew_lease(self, holder: str, epoch: int, seconds: float) -> bool:
        """Extend our unexpired lease; False when it is not ours any more."""
        with self.transaction():
            cursor = self._db.execute(
                "UPDATE lease SET expires_at = ? WHERE name = 'leader' AND holder = ?"
                " AND epoch = ? AND expires_at > ?", (_later(seconds), holder, epoch, _now()),
            )
        return cursor.rowcount == 1

    def release_lease(self, holder: str, epoch: int) -> None:
        """End our lease now."""
        with self.transaction():
            self._db.execute(
                "UPDATE lease SET expires_at = ? WHERE name = 'leader' AND holder = ?"
                " AND epoch = ?", (_now(), holder, epoch),
            )

    def leader(self) -> str | None:
        """The holder of an unexpired lease, or None."""
        row = self._db.execute(
            "SELECT holder FROM lease WHERE name = 'leader' AND expires_at > ?", (_now(),),
        ).fetchone()
        return None if row is None else str(row[0])

    def set_stage(self, campaign_id: str, stage: int, stage_at: datetime) -> None:
        """Roll-out: record the stage in progress and when it may start."""
        with self.transaction():
            cursor = self._db.execute(
                "UPDATE campaigns SET stage = ?, stage_at = ? WHERE id = ?",
                (stage, _utc_text(stage_at), campaign_id),
            )
            if cursor.rowcount == 0:
                raise JournalConflict(campaign_id, "no such campaign in the journal")

    def heartbeat(self, holder: str, since: datetime, seconds: float) -> None:
        """Renew ``holder``'s presence (a lease named "daemon:<holder>"; epoch: start time)."""
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO lease (name, holder, epoch, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (f"daemon:{holder}", holder, int(since.timestamp()), _later(seconds)),
            )

    def leave(self, holder: str) -> None:
        """Drop ``holder``'s presence."""
        with self.transaction():
            self._db.execute("DELETE FROM lease WHERE name = ?", (f"daemon:{holder}",))

    def daemons(self) -> list[DaemonRecord]:
        """Daemons whose presence has not expired, oldest first."""
        rows = self._db.execute(
            "SELECT holder, epoch FROM lease WHERE name LIKE 'daemon:%' AND expires_at > ?"
            " ORDER BY epoch, holder", (_now(),),
        ).fetchall()
        return [DaemonRecord(holder, datetime.fromtimestamp(epoch, UTC)) for holder, epoch in rows]

    def check_fence(self, holder: str, epoch: int) -> None:
        """Raise `JournalFenced` unless ``holder`` holds an unexpired lease of ``epoch``."""
        row = self._db.execute(
            "SELECT 1 FROM lease WHERE name = 'leader' AND holder = ? AND epoch = ?"
            " AND expires_at > ?", (holder, epoch, _now()),
        ).fetchone()
        if row is None:
            raise JournalFenced(holder)


# --------------------------------------------------------------------------------------------
# the asynchronous journal: one writer thread, group commit


@dataclass(slots=True)
class _Op:
    """One queued call: what to run in the writer thread, and whom to tell."""

    fn: Callable[[SqliteConnection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]

    def settle(self, value: object, error: BaseException | None) -> None:
        """Resolve the caller's future from the writer thread (after the commit)."""
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            self.loop.call_soon_threadsafe(_settle, self.future, value, error)


def _settle(future: asyncio.Future[Any], value: object, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled; its operation still ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class SqliteWriter:
    """The `Executor` of the SQLite journal: a `SqliteConnection` on one writer thread.

    Group commit: the thread takes one queued operation plus every other one waiting, runs them
    in ONE transaction (a savepoint each, so one failure fails only its caller), commits once
    (synchronous=FULL), then resolves each caller: an ``await`` returns once its write is durable.
    """

    def __init__(self, path: Path, *, on_schema: SchemaListener | None = None) -> None:
        self.path = path
        self.location = str(path)
        self._on_schema = on_schema
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._connection: SqliteConnection | None = None
        self._lock = WriterLock(path)
        self._stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._closing = False
        self._read_only = False

    @property
    def commits(self) -> int:
        """Durable commits so far (fewer than operations when writes are grouped)."""
        return 0 if self._connection is None else self._connection.commits

    async def start(self, *, writer: bool) -> None:
        """Take the writer lock (``writer``), then open the journal in the writer thread."""
        if writer:
            self._lock.acquire()  # an OSError (no such folder...) names its path: let it go
        self._read_only = not writer
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name="journal-writer", daemon=True,
        )
        self._thread.start()
        try:
            await asyncio.wrap_future(ready)
        except BaseException:
            self._lock.release()
            raise
        found = None if self._connection is None else self._connection.upgraded_from
        if found and self._on_schema is not None:  # (0: a new file, made at this version)
            self._on_schema(SchemaNews("journal_upgraded", self.location, found, SCHEMA_VERSION))

    async def close(self) -> None:
        """Finish every queued operation, then close the connection and stop the thread."""
        if self._thread is None or self._closing:
            return
        self._closing = True
        self._queue.put(None)  # the stop mark, after everything already queued
        await asyncio.wrap_future(self._stopped)
        self._lock.release()

    async def run(self, fn: Callable[[SqliteConnection], T]) -> T:
        """Run ``fn(connection)`` in the writer thread inside the group's transaction."""
        if self._thread is None or self._closing:
            raise RuntimeError("the journal is not running (call start() first, not after close)")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Op(fn, loop, future))
        return await future

    async def call(
        self, op: str, fence: Fence | None, args: tuple[Any, ...], kwargs: dict[str, Any],
    ) -> Any:
        """`Executor.call`: ``SqliteConnection.<op>`` in the writer thread, after checking the
        lease in the same savepoint (when fenced)."""
        method = getattr(SqliteConnection, op)
        if fence is None:
            return await self.run(lambda connection: method(connection, *args, **kwargs))

        def guarded(connection: SqliteConnection) -> Any:
            connection.check_fence(*fence)
            return method(connection, *args, **kwargs)

        return await self.run(guarded)

    # --- the writer thread ----------------------------------------------------------------

    def _serve(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            self._connection = SqliteConnection(self.path, read_only=self._read_only)
        except sqlite3.Error as exc:
            ready.set_exception(_translate(exc, self.location))
            self._stopped.set_result(None)
            return
        except (OSError, JournalError) as exc:
            ready.set_exception(exc)
            self._stopped.set_result(None)
            return
        ready.set_result(None)
        try:
            stop = False
            while not stop:
                ops, stop = self._take()
                self._run_group(self._connection, ops)
        finally:
            self._connection.close()
            self._stopped.set_result(None)

    def _take(self) -> tuple[list[_Op], bool]:
        """Block for one operation, then drain every other one already queued."""
        first = self._queue.get()
        if first is None:
            return [], True
        ops = [first]
        while True:
            try:
                op = self._queue.get_nowait()
            except queue.Empty:
                return ops, False
            if op is None:
                return ops, True
            ops.append(op)

    def _run_group(self, connection: SqliteConnection, ops: list[_Op]) -> None:
        outcomes: list[tuple[_Op, object, BaseException | None]] = []
        try:
            with connection.transaction():
                for op in ops:
                    outcomes.append(self._run_one(connection, op))
        except sqlite3.Error as exc:  # the commit failed: nothing of this group is durable
            error = _translate(exc, self.location)
            outcomes = [(op, None, error) for op in ops]
        for op, value, failure in outcomes:
            op.settle(value, failure)

    def _run_one(
        self, connection: SqliteConnection, op: _Op,
    ) -> tuple[_Op, object, BaseException | None]:
        """Run one operation in its own savepoint; its exception goes to its caller only."""
        try:
            with connection.transaction():
                return op, op.fn(connection), None
        except sqlite3.Error as exc:
            return op, None, _translate(exc, self.location)
        # Thread boundary: like concurrent.futures, any error is handed to the awaiting caller,
        # never swallowed; letting it escape would kill the writer and hang every other caller.
        except Exception as exc:  # noqa: BLE001
            return op, None, exc

    # --- copying a whole journal ----------------------------------------------------------

    async def dump(self) -> AsyncIterator[DumpChunk]:
        """`Journal.dump`: one page per trip to the writer thread."""
        for table in DUMP_TABLES:
            after = 0  # rowids start at 1
            while True:
                rows, after = await self.call("dump_page", None, (table, after), {})
                if not rows:
                    break
                yield table, rows

    async def load(self, chunks: AsyncIterable[DumpChunk]) -> Counts:
        """`Journal.load`: ONE transaction on the writer thread, which takes ``chunks`` from
        this event loop one at a time (so they must come from another journal: this one's
        own `dump` would wait for the thread that waits for it)."""
        loop = asyncio.get_running_loop()
        source = aiter(chunks)

        async def following() -> DumpChunk | None:
            return await anext(source, None)

        def pull() -> DumpChunk | None:
            return asyncio.run_coroutine_threadsafe(following(), loop).result()

        return await self.run(lambda connection: connection.load(pull))


class SqliteJournal(Front[SqliteWriter]):
    """The `Journal` interface on SQLite: `Front` over a `SqliteWriter`."""

    def __init__(self, path: Path, *, on_schema: SchemaListener | None = None) -> None:
        super().__init__(SqliteWriter(path, on_schema=on_schema))
        self.path = path
