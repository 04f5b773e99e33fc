"""The journal: the storage interface (`Journal`), its records and errors, and its backends.

`open_journal` picks the backend a `JournalLocation` names; everything else imports only the
names re-exported here, never a backend's module or its driver. Storage stands at the bottom:
nothing here imports the config, the audience reader or anything else above it
(`tests/test_layout.py` checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scheduler.journal.base import (
    DUMP_TABLES,
    AwaitingMessage,
    BatchRecord,
    CampaignRecord,
    CopyJournal,
    Counts,
    DaemonRecord,
    DeliveryCounts,
    DeliveryRow,
    DumpChunk,
    EncodedBatch,
    FinalStatus,
    Journal,
    JournalBusy,
    JournalConflict,
    JournalCorrupt,
    JournalError,
    JournalFenced,
    JournalLife,
    JournalNotEmpty,
    JournalUnavailable,
    LeaseJournal,
    MessageRecord,
    ReadingJournal,
    RecipientRow,
    Result,
    Results,
    Run,
    SchemaListener,
    SchemaNews,
    SendJournal,
    StatusChange,
    StatusJournal,
    StatusReport,
    UnloggedBatch,
    UnloggedStatus,
    holder_parts,
)
from scheduler.journal.reader import JournalReader
from scheduler.journal.sqlite import SqliteJournal

__all__ = [
    "DUMP_TABLES",
    "AwaitingMessage",
    "BatchRecord",
    "CampaignRecord",
    "CopyJournal",
    "Counts",
    "DaemonRecord",
    "DeliveryCounts",
    "DeliveryRow",
    "DumpChunk",
    "EncodedBatch",
    "FinalStatus",
    "Journal",
    "JournalBusy",
    "JournalConflict",
    "JournalCorrupt",
    "JournalError",
    "JournalFenced",
    "JournalLife",
    "JournalLocation",
    "JournalNotEmpty",
    "JournalReader",
    "JournalUnavailable",
    "LeaseJournal",
    "MessageRecord",
    "ReadingJournal",
    "RecipientRow",
    "Result",
    "Results",
    "Run",
    "SchemaListener",
    "SchemaNews",
    "SendJournal",
    "StatusChange",
    "StatusJournal",
    "StatusReport",
    "UnloggedBatch",
    "UnloggedStatus",
    "holder_parts",
    "open_journal",
]


@dataclass(frozen=True, slots=True)
class JournalLocation:
    """Where the journal is: PostgreSQL at ``url`` (its ``password`` from the credentials, never
    shown), else the SQLite file at ``path``."""

    path: Path
    url: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def exists(self) -> bool:
        """False when nothing was ever written (reading commands then have nothing to show).
        A PostgreSQL journal is taken to exist: only connecting would tell."""
        return self.url is not None or self.path.exists()


def open_journal(
    where: JournalLocation, on_schema: SchemaListener | None = None, *,
    on_reconnect: Callable[[], None] | None = None,
) -> Journal:
    """The journal at ``where``, not started yet: PostgreSQL when it has a URL, else SQLite.
    ``on_schema`` is told what it does with its schema (an upgrade, a wait for one);
    ``on_reconnect`` is called each time PostgreSQL's lost connection is replaced (a SQLite
    file has no connection to lose)."""
    if where.url is None:
        return SqliteJournal(where.path, on_schema=on_schema)
    from scheduler.journal.postgres import PostgresJournal  # only its users load the driver

    # the config refuses a URL that holds a password: the URL may be shown
    return PostgresJournal(where.url, password=where.password, location=where.url,
                           on_schema=on_schema, on_reconnect=on_reconnect)
