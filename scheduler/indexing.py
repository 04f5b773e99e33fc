"""The one indexer of sent messages: closed batches copied into per-message rows.

The send path stays per batch (SPEC §12); the index serves look-ups by messageId (a message's
delivery status is polled once it is indexed) and by phone (frequency caps, `report --phone`).
The daemon's upkeep indexes a little at a time (`some`); a cap gate brings the index up to
date before it counts (`catch_up`), which is all the indexing a foreground `send` gets.
"""

from __future__ import annotations

from scheduler.journal import Journal

SOME = 2  # closed batches indexed per writer transaction (a few ms of the writer)
CATCH_UP = 64  # ... and per transaction while catching up


class MessageIndex:
    """Indexes the journal's closed batches, each message due for its first status poll
    ``first_poll`` seconds after it was sent."""

    def __init__(self, journal: Journal, first_poll: float) -> None:
        self._journal = journal
        self._first_poll = first_poll

    async def some(self) -> int:
        """Index a few closed batches; how many it indexed (0: caught up)."""
        return await self._journal.index_messages(SOME, self._first_poll)

    async def catch_up(self) -> None:
        """Index every closed batch."""
        while await self._journal.index_messages(CATCH_UP, self._first_poll):
            pass
