"""The journal's schema steps, described once for every backend.

`SCHEMA_VERSION` is the version this release writes. `STEPS[n]` takes a journal from version n
to n + 1; each statement is a template whose ``{name}`` fields a backend's `Dialect` fills
(its type for a time, a blob, a flag...), so a new step is written once and lands on every
backend alike. The first versions stay with their backend (`sqlite._SCHEMA_V1`, `_TO_V2`;
PostgreSQL began at version 2 with both in one, `postgres._SCHEMA`): they were written apart,
and a journal made by them must keep their exact tables.
"""

from __future__ import annotations

from typing import NamedTuple

#: the schema version of this release; each version after 2 is one entry of `STEPS`
SCHEMA_VERSION = 10


class Dialect(NamedTuple):
    """How a backend spells what the shared steps need."""

    time: str  # the column type of a time
    blob: str  # the column type of bytes
    flag: str  # the column type of a yes/no
    false: str  # a flag's "no", as a column default
    serial: str  # an integer primary key that numbers new rows itself
    bytewise: str  # after an indexed text column: compare it byte by byte
    stamped: str  # after a time column: its default, the database's clock (or nothing)

    def steps(self, version: int) -> tuple[str, ...]:
        """The statements of `STEPS` [version], in this dialect."""
        return tuple(statement.format_map(self._asdict()) for statement in STEPS[version])


SQLITE = Dialect(time="TEXT", blob="BLOB", flag="INTEGER", false="0", serial="INTEGER",
                 bytewise="", stamped="")
POSTGRES = Dialect(time="TIMESTAMPTZ", blob="BYTEA", flag="BOOLEAN", false="false",
                   serial="BIGSERIAL", bytewise=' COLLATE "C"',
                   stamped=" DEFAULT clock_timestamp()")

#: version 3: delivery status polling, resumable from the journal (SPEC §11.3)
_TO_V3 = (
    # when the next status poll of a message is due (NULL once its status is final) and how
    # many were made (the interval doubles with each)
    "ALTER TABLE messages ADD COLUMN next_poll_at {time}",
    "ALTER TABLE messages ADD COLUMN polls INTEGER NOT NULL DEFAULT 0",
    # messages indexed before: due at once
    "UPDATE messages SET next_poll_at = sent_at WHERE status IS NULL"
    " OR status IN ('scheduled', 'processing')",
    "CREATE INDEX messages_due ON messages (next_poll_at) WHERE next_poll_at IS NOT NULL",
    # report: counts per campaign, and listings of one status by message id (without the
    # status in it: recording a status, 20,000 a second from webhooks, then leaves it alone)
    "CREATE INDEX messages_by_campaign ON messages (campaign, message_id)",
)
#: version 4: send windows and frequency caps (SPEC §11.4)
_TO_V4 = (
    # the zones of a batch's recipients (a send window opens for all of them at once); NULL
    # for a campaign without a window
    "ALTER TABLE batch_state ADD COLUMN zones TEXT",
    # messages skipped when about to go (a frequency cap), counted like the other outcomes
    "ALTER TABLE batch_state ADD COLUMN skipped INTEGER NOT NULL DEFAULT 0",
    # frequency caps count a batch of phones' sent messages by type and time: from the index
    # alone, without a look at each message's row
    "DROP INDEX messages_by_phone",
    "CREATE INDEX messages_by_phone ON messages (phone{bytewise}, type, sent_at)",
)
#: version 5: a final status's delivery line survives a crash before it is written
_TO_V5 = (
    # the first final statuses one record_statuses call took (their message ids, orjson),
    # until the caller has written their `delivery` lines: one row per call, never per
    # message, so webhooks keep their pace; what a crash left here is written at the next start
    "CREATE TABLE unlogged_statuses (log_key TEXT PRIMARY KEY, recorded_at {time} NOT NULL"
    "{stamped},\n        message_ids {blob} NOT NULL)",
)
#: version 6: a snapshot streamed into the send (`send --now`)
_TO_V6 = (
    # batches are appended while the campaign sends; a crash mid-stream resumes reading the
    # audience after the batches and skips stored
    "ALTER TABLE campaigns ADD COLUMN streaming {flag} NOT NULL DEFAULT {false}",
    # a batch's tracking ids and phones beside its body: the send path splits them instead of
    # decoding the body (NULL in older snapshots: decoded as before)
    "ALTER TABLE bodies ADD COLUMN keys {blob}",
)
#: version 7: the leader's error brakes take every first final status, whoever journaled it
_TO_V7 = (
    # one row per record_statuses call with a first final status: [[campaign, tracking id,
    # status, channel], ...] (orjson), until the leader takes it (`take_final_statuses`)
    "CREATE TABLE final_statuses (id {serial} PRIMARY KEY, statuses {blob} NOT NULL)",
)
#: version 8: what a campaign is, kept when it is first planned (`scheduler.identity`)
_TO_V8 = (
    # the digest of its file's keys and its audience's bytes: a later file with its id is the
    # same campaign only if it has the same; NULL for campaigns planned before this version
    "ALTER TABLE campaigns ADD COLUMN content TEXT",
)
#: version 9: resends are visible (SPEC §13.4)
_TO_V9 = (
    # messages of the batch posted again after an ambiguous outcome (their result rows carry
    # a fifth value, true), counted like the outcomes
    "ALTER TABLE batch_state ADD COLUMN resent INTEGER NOT NULL DEFAULT 0",
    # an earlier post of the batch's open messages may have reached the API: given back after
    # an ambiguous answer (a batch left in flight says so by its state)
    "ALTER TABLE batch_state ADD COLUMN doubtful {flag} NOT NULL DEFAULT {false}",
)
#: version 10: several accounts (SPEC §13.3)
_TO_V10 = (
    # the ``[[accounts]]`` entry a campaign sends through, kept when it is planned: report,
    # status and plan show it (and frequency caps that name accounts count by it) even once
    # the file is edited or gone; NULL for campaigns planned before this version: "default"
    "ALTER TABLE campaigns ADD COLUMN account TEXT",
)
#: STEPS[n] takes a journal from version n to n + 1 (n >= 2; see the module's docstring)
STEPS: dict[int, tuple[str, ...]] = {
    2: _TO_V3, 3: _TO_V4, 4: _TO_V5, 5: _TO_V6, 6: _TO_V7, 7: _TO_V8, 8: _TO_V9, 9: _TO_V10,
}
