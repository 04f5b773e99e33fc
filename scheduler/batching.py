"""From a validated campaign to API batches: the snapshot that the journal freezes at start.

The snapshot is the audience after every row rule (SPEC §5), turned into the API's message
objects and cut into batches of ``batch_size``. It is built ahead of ``send_at`` and rebuilt
whenever the campaign file, its CSV or the suppression list change before the campaign starts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.audience import Recipient, Skip, Suppression, iter_audience
from scheduler.campaign import Campaign

Message = dict[str, Any]


def to_message(campaign: Campaign, recipient: Recipient) -> Message:
    """The API body element for one recipient, without ``ttl`` (added at send time)."""
    message: Message = {
        "id": recipient.tracking_id,
        "fromName": campaign.from_name,
        "toPhone": recipient.phone,
        "messageType": campaign.type,
    }
    if recipient.text is not None:
        message["text"] = recipient.text
    if campaign.survey_options is not None:
        message["surveyOptions"] = list(campaign.survey_options)
    return message


@dataclass
class Snapshot:
    """Streams a campaign's batches; the skipped rows are collected as the stream is consumed."""

    campaign: Campaign
    suppression: Suppression | None
    batch_size: int
    skips: list[Skip] = field(default_factory=list)

    def batches(self) -> Iterator[list[Message]]:
        """Yield lists of at most ``batch_size`` messages, in audience order."""
        batch: list[Message] = []
        for row in iter_audience(self.campaign, self.suppression):
            if isinstance(row, Skip):
                self.skips.append(row)
                continue
            batch.append(to_message(self.campaign, row))
            if len(batch) >= self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


def _stat_key(path: Path | None) -> str:
    if path is None:
        return "-"
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def snapshot_key(campaign: Campaign, suppression_path: Path | None, batch_size: int) -> str:
    """Identifies the inputs of a snapshot; when it changes before start, the snapshot is redone."""
    parts = (
        campaign.fingerprint,
        campaign.send_at.isoformat(),
        _stat_key(campaign.audience.csv),
        _stat_key(suppression_path),
        str(batch_size),
    )
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
