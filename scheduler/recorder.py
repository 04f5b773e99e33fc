"""The delivery-log bookkeeping of a campaign's outcomes: journal first, then its log lines.

Every final outcome is durable in the journal before its line is written to the delivery log;
the journal then notes (off the hot path, several batches at a time) that the lines are
written, so a crash between the two writes the missing lines at the next start, and never a
line twice. Skipped rows are logged once per campaign.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from scheduler.answers import Keeper
from scheduler.campaign_run import CampaignRun
from scheduler.delivery_log import DeliveryLog, MessageOutcome, SentMessages
from scheduler.journal import Journal, JournalError, Results
from scheduler.metrics import Metrics
from scheduler.oplog import get_logger
from scheduler.outcomes import Outcomes

TAIL_BYTES_PER_LINE = 1024  # how far back to look for lines written just before a crash


class Recorder:
    """Writes a campaign's outcomes: journal, delivery log, counters, progress, the brake."""

    def __init__(
        self, journal: Journal, log: DeliveryLog, metrics: Metrics, answers: Keeper,
    ) -> None:
        self._journal, self._log, self._metrics = journal, log, metrics
        #: writes the outcomes of posted batches, and never lets go of an answer in hand
        self._answers = answers
        self._oplog = get_logger("engine")
        self._unnoted: dict[str, list[tuple[int, int]]] = {}  # logged marks not yet journaled
        self._noting: asyncio.Task[None] | None = None  # the task journaling them
        self._notes: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Wait for the logged-marks on their way."""
        while self._notes:
            await asyncio.gather(*self._notes, return_exceptions=True)

    # ----------------------------------------------------------------- outcomes

    async def record(self, run: CampaignRun, seq: int, results: Results) -> None:
        """Outcomes decided without a post (expired, in doubt): journal, then log."""
        held = await self._journal.record_results(run.campaign.id, seq, results)
        self._recorded(run, seq, held, results)

    async def keep(self, run: CampaignRun, seq: int, results: Results) -> None:
        """A posted batch's outcomes: journaled however long that takes (`answers`), then
        logged. Until then the batch stays in flight, and its campaign waits for it."""
        held = await self._answers.keep(run.campaign.id, seq, results, close=True)
        self._recorded(run, seq, held, results)

    async def give_back(self, run: CampaignRun, seq: int, outcomes: Outcomes) -> None:
        """Keep what was decided; the rest of the batch goes back to pending (doubtful when
        a post of it may have reached the API: posting it later is a resend)."""
        doubtful = outcomes.doubtful
        if not outcomes.results:
            await self._journal.release(run.campaign.id, [seq], doubtful=doubtful)
            return
        held = await self._answers.keep(run.campaign.id, seq, outcomes.results, close=False,
                                        doubtful=doubtful)
        self._recorded(run, seq, held, outcomes.results)

    def _recorded(self, run: CampaignRun, seq: int, held: int, results: Results) -> None:
        """After outcomes are durable: their log lines, the logged mark, the brake's look."""
        self.log_results(run, results)
        self._mark_logged(run.campaign.id, seq, held)
        run.observe(results)

    def log_results(self, run: CampaignRun, results: Results) -> None:
        """The batch's lines (sent ones templated, per run), its counters, its progress."""
        cid, counted = run.campaign.id, self._metrics.messages
        self._log.sent(cid, run.route, [
            SentMessages(part.tracking_ids, part.details, part.phones, part.attempts,
                         part.resent)
            for part in results.runs if part.outcome == "sent"
        ])
        account, kind = run.campaign.account, run.campaign.type
        counted.labels(account, kind, "sent").inc(results.counts.get("sent", 0))
        if results.resent:
            self._metrics.resent.inc(results.resent)
        others = [part for part in results.runs if part.outcome != "sent"]
        if others:
            self._log.messages(cid, run.route, [
                outcome_line(tracking_id, part.outcome, phone, part.attempts, detail,
                             part.resent)
                for part in others
                for tracking_id, detail, phone in zip(part.tracking_ids, part.details,
                                                      part.phones, strict=True)
            ])
            for outcome, count in results.counts.items():
                if outcome != "sent":
                    counted.labels(account, kind, outcome).inc(count)
        run.progressed(len(results))

    # ----------------------------------------------------------------- logged marks

    def _mark_logged(self, campaign_id: str, seq: int, held: int) -> None:
        """Note (off the hot path) that the batch's lines are written; awaited by `close`.
        Marks made while a note is on its way go together in the next one: one journal
        operation for several batches."""
        self._unnoted.setdefault(campaign_id, []).append((seq, held))
        if self._noting is None or self._noting.done():
            self._noting = asyncio.create_task(self._note_logged())
            self._notes.add(self._noting)
            self._noting.add_done_callback(self._notes.discard)

    async def _note_logged(self) -> None:
        while self._unnoted:
            campaign_id, marks = self._unnoted.popitem()
            try:
                await self._journal.mark_logged(campaign_id, marks)
            except JournalError as exc:
                # the lines are written: keep the marks for the next note, or for the
                # campaign's next start (`_flush_logged`), so they are not written again
                self._unnoted.setdefault(campaign_id, []).extend(marks)
                self._oplog.warning("mark_logged_failed", campaign=campaign_id,
                                    batches=[seq for seq, _ in marks], error=str(exc))
                return  # the journal fails now: the next batch's note tries again

    async def _flush_logged(self, campaign_id: str) -> None:
        """Journal the campaign's logged-marks this process still holds (the journal failed
        when they were noted), before anything looks for lines that are missing: lines
        written before an outage may lie further back than the delivery log's tail check
        reaches. Raises `JournalError` while the journal still fails (the marks are kept)."""
        if self._noting is not None:
            await asyncio.gather(self._noting, return_exceptions=True)
        marks = self._unnoted.pop(campaign_id, None)
        if not marks:
            return
        try:
            await self._journal.mark_logged(campaign_id, marks)
        except JournalError:
            self._unnoted.setdefault(campaign_id, []).extend(marks)
            raise

    # ----------------------------------------------------------------- at a start

    async def log_skips(self, run: CampaignRun) -> None:
        """The skipped rows' message lines, once per campaign (even across a crash)."""
        cid = run.campaign.id
        if await self._journal.skips_logged(cid):
            return
        skipped = [row async for row in self._journal.recipients(cid, "skipped")]
        for reason, count in Counter(row.detail for row in skipped).items():
            self._metrics.skips.labels(reason or "unknown").inc(count)
        if skipped:
            seen = self._log.recent_message_ids(cid, TAIL_BYTES_PER_LINE * len(skipped))
            self._log.messages(cid, run.route, [
                MessageOutcome(row.tracking_id, "skipped", row.phone, 0, None, None, row.detail,
                               row.line)
                for row in skipped if not row.tracking_id or row.tracking_id not in seen
            ])
        await self._journal.mark_skips_logged(cid)

    async def log_unlogged(self, run: CampaignRun) -> None:
        """Outcomes journaled just before a crash whose delivery-log lines never got written."""
        cid = run.campaign.id
        await self._flush_logged(cid)
        pending = await self._journal.unlogged(cid)
        if not pending:
            return
        count = sum(len(batch.rows) for batch in pending)
        seen = self._log.recent_message_ids(cid, TAIL_BYTES_PER_LINE * count)
        self._log.messages(cid, run.route, [
            outcome_line(row.tracking_id, row.outcome, row.phone, row.attempts, row.detail,
                         row.resent)
            for batch in pending for row in batch.rows if row.tracking_id not in seen
        ])
        await self._journal.mark_logged(cid, [(batch.seq, batch.held) for batch in pending])


def outcome_line(
    tracking_id: str, outcome: str, phone: str, attempts: int, detail: str | None,
    resent: bool = False,
) -> MessageOutcome:
    """A final outcome as its delivery-log ``message`` line (the detail goes where it fits)."""
    sent, rejected = outcome == "sent", outcome == "rejected"
    return MessageOutcome(
        tracking_id, outcome, phone, attempts,
        detail if sent else None, detail if rejected else None,
        None if sent or rejected else detail, resent=resent,
    )
