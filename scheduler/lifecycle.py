"""The one owner of a campaign's state: every change is journaled, then announced once.

The engine and the daemon never write a state themselves; they call `Lifecycle.move`, which
makes the change durable (the journal checks it against `vocabulary.may_move` in the same
transaction as the write) and writes the event that goes with it to the delivery log and the
operational log under the same name.
"""

from __future__ import annotations

import contextlib
from typing import Any

from structlog.typing import FilteringBoundLogger

from scheduler.delivery_log import DeliveryLog, DeliveryLogUnwritable
from scheduler.journal import CampaignRecord, SendJournal
from scheduler.oplog import get_logger
from scheduler.vocabulary import CampaignState

#: the event each state change announces, and at which level; None: the change is announced
#: by the event that caused it ("campaign_invalid" names the file's problems when it is read,
#: "campaign_scheduled" when the timer is armed). "running" is special: see `_running_event`.
EVENTS: dict[CampaignState, tuple[str, str] | None] = {
    "scheduled": None,
    "running": ("campaign_started", "info"),
    "backing_off": ("campaign_backing_off", "warning"),
    "paused": ("campaign_paused", "info"),
    "done": ("campaign_finished", "info"),
    "expired": ("campaign_finished", "info"),
    "failed": ("campaign_failed", "error"),
    "invalid": None,
    "cancelled": ("campaign_cancelled", "info"),
    "braked": ("campaign_braked", "error"),
}


class Lifecycle:
    """Moves campaigns between states: journal first (durable), then both logs."""

    def __init__(self, journal: SendJournal, log: DeliveryLog) -> None:
        self.journal = journal
        self.log = log
        self._oplog: FilteringBoundLogger = get_logger("campaign")

    async def move(
        self, campaign_id: str, state: CampaignState, *, error: str | None = None,
        **fields: Any,
    ) -> CampaignRecord:
        """Put the campaign in ``state``; announce it when the state really changed.

        ``fields`` go into the event (counts, reasons...). Raises `JournalConflict` for a move
        the vocabulary forbids, e.g. anything out of "done", and for an unknown campaign.
        """
        before = await self.journal.campaign(campaign_id)
        record = await self.journal.set_state(campaign_id, state, error)  # checks the move
        if before is not None and before.state != state:
            self._announce(before, record, error, fields)
        return record

    def _announce(
        self, before: CampaignRecord, after: CampaignRecord, error: str | None,
        fields: dict[str, Any],
    ) -> None:
        spec = EVENTS[after.state]
        if spec is None:
            return
        event, level = spec
        if after.state == "running" and before.started_at is not None:
            event = "campaign_resumed"  # started before: after a pause, an outage or a restart
        if after.state in ("done", "expired"):
            fields = {"state": after.state, **fields}
        if error is not None:
            fields = {**fields, "error": error}
        self.announce(event, level, campaign=after.id, **fields)

    def announce(self, event: str, level: str = "info", **fields: Any) -> None:
        """Write one campaign event to the operational log and the delivery log alike.

        A delivery log that cannot be written does not stop a state change: the operational
        log has the event, and the log reports its own failure (``delivery_log_unwritable``).
        """
        getattr(self._oplog, level)(event, **fields)
        with contextlib.suppress(DeliveryLogUnwritable):
            self.log.event(event, level=level, **fields)
