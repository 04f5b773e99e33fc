"""Copying a journal into another backend (`cascade-scheduler journal copy --to URL`): the
SQLite journal of one machine into PostgreSQL, so a site can grow to several daemons without
losing its history.

The copy is safe or it is nothing: the source is opened as the writer (a daemon writing it
meanwhile would make the copy inconsistent, so it is refused), the target must be empty and
takes everything in ONE transaction, and afterwards every campaign's record and counts are
compared on both sides. Only the `Journal` interface is used (`dump`, `load`): no driver here.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, replace

from scheduler.errors import UserError
from scheduler.journal import (
    CampaignRecord,
    CopyJournal,
    Counts,
    JournalCorrupt,
    JournalLocation,
    open_journal,
)


@dataclass(frozen=True, slots=True)
class CopiedCampaign:
    """One campaign as found equal on both sides after the copy."""

    record: CampaignRecord
    counts: Counts

    def line(self) -> str:
        """``ID: STATE (sent 600, pending 600, skipped 2)``, as `send` ends."""
        counts = ", ".join(f"{name} {n:,}" for name, n in self.counts.items() if n)
        return f"{self.record.id}: {self.record.state} ({counts or 'no recipients'})"


@dataclass(frozen=True, slots=True)
class CopyReport:
    """What a copy moved: the campaigns (checked), the rows per table, where, how long."""

    target: str
    campaigns: list[CopiedCampaign]
    rows: Counts
    seconds: float

    @property
    def recipients(self) -> int:
        """Valid recipients of every campaign copied (skipped rows not included)."""
        return sum(c.record.recipients for c in self.campaigns)

    def lines(self) -> list[str]:
        """One line per campaign, then the summary and what to do next."""
        count = len(self.campaigns)
        return [*(c.line() for c in self.campaigns), (
            f"copied {count:,} campaign{'' if count == 1 else 's'}, {self.recipients:,} "
            f"recipients into {self.target} in {self.seconds:.1f} s; set [journal] url to it "
            "and restart the daemons"
        )]


async def copy_journal(source: CopyJournal, target: CopyJournal) -> CopyReport:
    """Copy every row of ``source`` (started as the writer, so nobody else writes it) into
    ``target`` (started and empty), then check every campaign on both sides."""
    began = time.monotonic()
    rows = await target.load(source.dump())
    campaigns = await compare(source, target)
    return CopyReport(target.location, campaigns, rows, time.monotonic() - began)


async def compare(source: CopyJournal, target: CopyJournal) -> list[CopiedCampaign]:
    """Every campaign of ``source`` with the same record and counts in ``target``, and no
    other; else `JournalCorrupt` saying what differs."""
    copied = {record.id: record for record in await target.campaigns()}
    checked = []
    for record in await source.campaigns():
        other = copied.pop(record.id, None)
        if other is None:
            raise _differs(target, record.id, "it is missing")
        if other != record:
            fields = [f.name for f in dataclasses.fields(record)
                      if getattr(record, f.name) != getattr(other, f.name)]
            raise _differs(target, record.id, "its " + ", ".join(fields))
        counts = await source.counts(record.id)
        if await target.counts(record.id) != counts:
            raise _differs(target, record.id, "its counts")
        checked.append(CopiedCampaign(record, counts))
    if copied:
        raise _differs(target, None, "campaigns the source does not have: " + ", ".join(copied))
    return checked


def _differs(target: CopyJournal, campaign_id: str | None, what: str) -> JournalCorrupt:
    return JournalCorrupt(
        campaign_id, f"the copy in {target.location} differs from the source ({what}): "
        "empty that database and copy again",
    )


async def copy_to_postgres(source_at: JournalLocation, url: str) -> CopyReport:
    """`journal copy --to URL`: the SQLite journal at ``source_at.path`` into the empty
    PostgreSQL journal at ``url`` (a checked URL; password from ``source_at``'s credentials,
    or PGPASSFILE)."""
    if not source_at.path.exists():
        raise UserError.single(
            f"no journal at {source_at.path}: nothing to copy", field="[paths].state",
        )
    source = open_journal(replace(source_at, url=None))
    target = open_journal(replace(source_at, url=url))
    await source.start(writer=True)  # first: a running daemon is refused before any change
    try:
        await target.start(writer=True)
        try:
            return await copy_journal(source, target)
        finally:
            await target.close()
    finally:
        await source.close()
