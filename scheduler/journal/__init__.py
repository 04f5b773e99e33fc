"""The journal: the storage interface (`Journal`), its records and errors, and its backends.

`open_journal` picks the backend the config names; everything else imports only the names
re-exported here, never a backend's module or its driver.
"""

from __future__ import annotations

from scheduler.config import Config
from scheduler.journal.base import (
    BatchRecord,
    CampaignRecord,
    Counts,
    Journal,
    JournalBusy,
    JournalConflict,
    JournalCorrupt,
    JournalError,
    JournalFenced,
    JournalUnavailable,
    MessageRecord,
    RecipientRow,
    Result,
    UnloggedBatch,
)
from scheduler.journal.reader import JournalReader
from scheduler.journal.sqlite import SqliteJournal

__all__ = [
    "BatchRecord",
    "CampaignRecord",
    "Counts",
    "Journal",
    "JournalBusy",
    "JournalConflict",
    "JournalCorrupt",
    "JournalError",
    "JournalFenced",
    "JournalReader",
    "JournalUnavailable",
    "MessageRecord",
    "RecipientRow",
    "Result",
    "UnloggedBatch",
    "journal_exists",
    "open_journal",
]


def open_journal(config: Config) -> Journal:
    """The journal the config names (today: SQLite at ``[paths].state``), not started yet."""
    return SqliteJournal(config.paths.state)


def journal_exists(config: Config) -> bool:
    """False when nothing was ever written (reading commands then have nothing to show)."""
    return config.paths.state.exists()
