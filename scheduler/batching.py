"""From a validated campaign to API batches: the snapshot that the journal freezes at start.

The snapshot is the audience after every row rule (SPEC §5), turned into the API's message
objects and cut into batches of ``batch_size``. It is built ahead of ``send_at`` and rebuilt
whenever the campaign file, its CSV or the suppression list change before the campaign starts.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson

from scheduler.audience import iter_rows, summarize
from scheduler.campaign import Campaign
from scheduler.records import Recipient, Skip
from scheduler.rows import ValidRow
from scheduler.suppression import Suppression

Message = dict[str, Any]


def message_maker(campaign: Campaign) -> Callable[[str, str, str | None], Message]:
    """A function (tracking_id, phone, text) -> the API body element for one of the campaign's
    recipients, without ``ttl`` (added at send time); the campaign's fields are read once."""
    from_name, kind, options = campaign.from_name, campaign.type, campaign.survey_options

    def make(tracking_id: str, phone: str, text: str | None) -> Message:
        message: Message = {
            "id": tracking_id, "fromName": from_name, "toPhone": phone, "messageType": kind,
        }
        if text is not None:
            message["text"] = text
        if options is not None:
            message["surveyOptions"] = list(options)
        return message

    return make


def batch_builder(campaign: Campaign) -> Callable[[Sequence[ValidRow]], list[Message]]:
    """A function valid rows -> their messages (`message_maker`'s, in one comprehension)."""
    if campaign.survey_options is not None or campaign.text is None:
        make = message_maker(campaign)
        return lambda rows: [make(row[1], row[2], row[3]) for row in rows]
    from_name, kind = campaign.from_name, campaign.type
    return lambda rows: [
        {"id": row[1], "fromName": from_name, "toPhone": row[2], "messageType": kind,
         "text": row[3]}
        for row in rows
    ]


def to_message(campaign: Campaign, recipient: Recipient) -> Message:
    """The API body element for one recipient, without ``ttl`` (added at send time)."""
    return message_maker(campaign)(recipient.tracking_id, recipient.phone, recipient.text)


#: skipped rows a snapshot holds in memory before it moves them to a temporary file
SKIPS_HELD = 10_000


class SkipList:
    """A snapshot's skipped rows, in CSV order, in flat memory: up to ``SKIPS_HELD`` are held,
    the rest go to an unnamed temporary file (a 10,000,000-row audience with 5% bad rows would
    otherwise hold 500,000 `Skip` objects, ~100 MB, until the journal has them)."""

    def __init__(self) -> None:
        self._held: list[Skip] = []
        self._spilled: IO[bytes] | None = None

    def append(self, skip: Skip) -> None:
        """Add the next skipped row."""
        self._held.append(skip)
        if len(self._held) >= SKIPS_HELD:
            self._spill()

    def _spill(self) -> None:
        if self._spilled is None:
            self._spilled = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the finalizer)
            weakref.finalize(self, self._spilled.close)
        self._spilled.seek(0, io.SEEK_END)
        self._spilled.write(b"".join(
            orjson.dumps((s.line, s.tracking_id, s.phone, s.reason, s.detail)) + b"\n"
            for s in self._held
        ))
        self._held = []

    def drain(self) -> list[Skip]:
        """The rows appended since the last drain, in order; they are no longer held."""
        drained = list(self)
        self._held = []
        if self._spilled is not None:
            self._spilled.seek(0)
            self._spilled.truncate()
        return drained

    def __iter__(self) -> Iterator[Skip]:
        if self._spilled is not None:
            self._spilled.seek(0)
            for line in self._spilled:
                yield Skip(*orjson.loads(line))
        yield from list(self._held)


@dataclass
class Snapshot:
    """Streams a campaign's batches; the skipped rows are collected as the stream is consumed.

    With a send window, each batch holds recipients of one zone group only (their window opens
    and closes at the same moments), and ``zones`` gets each batch's group as it is yielded.
    With a roll-out, a batch that a stage's end falls inside is cut in two there, so every
    stage is exactly the share asked for (the audience is counted first to know where).
    ``may_fork``: the process building it runs no other thread (`iter_audience`).
    """

    campaign: Campaign
    suppression: Suppression | None
    batch_size: int
    may_fork: bool
    skips: SkipList = field(default_factory=SkipList)
    zones: list[str | None] = field(default_factory=list)

    def batches(self) -> Iterator[list[Message]]:
        """Yield lists of at most ``batch_size`` messages, in audience order (per zone group)."""
        batches = self._zoned() if zoned(self.campaign) else self._plain()
        rollout = self.campaign.rollout
        if rollout is not None:
            valid = summarize(self.campaign, self.suppression, may_fork=self.may_fork).valid
            batches = self._cut(batches, rollout.ends(valid))
        yield from batches

    def _cut(self, batches: Iterator[list[Message]], ends: list[int]) -> Iterator[list[Message]]:
        """``batches`` with each one that a stage ends inside split there (its zone group, when
        there are groups, recorded for both parts)."""
        by_zone, done = zoned(self.campaign), 0
        waiting = iter(ends)
        end = next(waiting, None)
        for batch in batches:
            while end is not None and end < done + len(batch):
                if end > done:
                    head, batch = batch[:end - done], batch[end - done:]
                    if by_zone:  # the group of the batch just yielded by `_zoned`, once more
                        self.zones.insert(len(self.zones) - 1, self.zones[-1])
                    done += len(head)
                    yield head
                end = next(waiting, None)
            done += len(batch)
            yield batch

    def _plain(self) -> Iterator[list[Message]]:
        """Batches in audience order, without zone groups."""
        # Valid rows come as plain tuples, never `Recipient`s, and become messages a batch at
        # a time (one comprehension, no call a row): the hot path of a snapshot.
        build, skips, size = batch_builder(self.campaign), self.skips, self.batch_size
        rows: list[ValidRow] = []
        for row in iter_rows(self.campaign, self.suppression, may_fork=self.may_fork):
            if isinstance(row, Skip):
                skips.append(row)
                continue
            rows.append(row)
            if len(rows) >= size:
                yield build(rows)
                rows = []
        if rows:
            yield build(rows)

    def _zoned(self) -> Iterator[list[Message]]:
        """One open batch per zone group (memory: groups x batch_size, a few hundred groups
        at most), each yielded when full, the partial ones at the end."""
        make, skips, size = message_maker(self.campaign), self.skips, self.batch_size
        open_batches: dict[str, list[Message]] = {}
        for row in iter_rows(self.campaign, self.suppression, may_fork=self.may_fork):
            if isinstance(row, Skip):
                skips.append(row)
                continue
            group = row[4] or self.campaign.timezone
            batch = open_batches.setdefault(group, [])
            batch.append(make(row[1], row[2], row[3]))
            if len(batch) >= size:
                del open_batches[group]
                self.zones.append(group)
                yield batch
        for group, batch in open_batches.items():
            self.zones.append(group)
            yield batch


def zoned(campaign: Campaign) -> bool:
    """Batches hold one zone group each: with a send window, or for a trigger (each group
    goes at ``at`` on its own clock, SPEC §13.2)."""
    return campaign.window is not None or campaign.trigger is not None


def _stat_key(path: Path | None) -> str:
    if path is None:
        return "-"
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def snapshot_key(
    campaign: Campaign, suppression_path: Path | None, batch_size: int,
    send_at: datetime | None = None,
) -> str:
    """Identifies the inputs of a snapshot; when it changes before start, the snapshot is redone.

    ``send_at``: the journaled one instead of the campaign's (`send --now` sets it anew)."""
    parts = (
        campaign.fingerprint,
        (send_at or campaign.send_at).isoformat(),
        # a window (the file's or [policy]'s) and the default zone shape the batches too
        *((campaign.window.text(), campaign.timezone) if campaign.window else ()),
        *((campaign.timezone,) if campaign.trigger else ()),
        _stat_key(campaign.audience.csv),
        _stat_key(suppression_path),
        str(batch_size),
    )
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
