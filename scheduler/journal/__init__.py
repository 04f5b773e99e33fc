"""The journal: the storage interface (`Journal`), its records and errors, and its backends.

`open_journal` picks the backend the config names; everything else imports only the names
re-exported here, never a backend's module or its driver.
"""

from __future__ import annotations

from scheduler.config import Config
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
    Journal,
    JournalBusy,
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
    Run,
    StatusChange,
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
    "JournalNotEmpty",
    "JournalReader",
    "JournalUnavailable",
    "MessageRecord",
    "RecipientRow",
    "Result",
    "Results",
    "Run",
    "StatusChange",
    "StatusReport",
    "UnloggedBatch",
    "UnloggedStatus",
    "holder_parts",
    "journal_exists",
    "open_journal",
]


def open_journal(config: Config) -> Journal:
    """The journal the config names, not started yet: PostgreSQL at ``[journal].url`` (its
    password from the credentials), else SQLite at ``[paths].state``."""
    url = config.journal.url
    if url is None:
        return SqliteJournal(config.paths.state)
    from scheduler.journal.postgres import PostgresJournal  # only its users load the driver

    password = config.credentials.journal_password
    return PostgresJournal(  # the config refuses a URL that holds a password: url shows
        url, password=None if password is None else password.get_secret_value(), location=url,
    )


def journal_exists(config: Config) -> bool:
    """False when nothing was ever written (reading commands then have nothing to show).
    A PostgreSQL journal is taken to exist: only connecting would tell."""
    return config.journal.url is not None or config.paths.state.exists()
