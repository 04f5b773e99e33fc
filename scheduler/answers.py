"""An answer in hand is kept (SPEC §6, §13.4): the journal write of a batch's outcomes is
retried until it lands, so this process never posts that batch again.

The API's answer is the one thing that cannot be had twice without sending twice. When the
journal cannot take it (the database restarts, the connection drops, the disk is briefly full),
the answer stays in memory and the write is tried again, with growing waits, until it lands or
the process dies. The batch stays in flight meanwhile and its campaign waits for it, so nothing
posts it again; a crash while it is held leaves it in flight, as a crash right after the answer
always did (SPEC §6: resent, or ``in_doubt``).

A process that lost the leadership lease cannot write the answer at all (`JournalFenced`): the
new leader will resend the batch (or mark it ``in_doubt``). Then every message the API accepted
here goes to the delivery log as a ``late_answer`` line and to ``cascade_late_answers_total``,
so a possible duplicate is never invisible.
"""

from __future__ import annotations

import asyncio
import random
import time

from scheduler.delivery_log import DeliveryLog, SentMessages
from scheduler.journal import JournalFenced, JournalUnavailable, Results, SendJournal
from scheduler.metrics import Metrics
from scheduler.oplog import get_logger

#: seconds between tries of a held write: doubling from the first, up to the last
RETRY_WAITS = (0.1, 5.0)


class Keeper:
    """Writes batches' outcomes to the journal and lets go of them only once they landed."""

    def __init__(self, journal: SendJournal, log: DeliveryLog, metrics: Metrics) -> None:
        self.journal = journal
        self.log = log
        self.metrics = metrics
        self.waits = RETRY_WAITS
        self._oplog = get_logger("engine")

    async def keep(
        self, campaign: str, seq: int, results: Results, *, close: bool, doubtful: bool = False,
    ) -> int:
        """Journal ``results`` for batch ``seq`` (closing it, or as a partial record, ``doubtful``
        as for `Journal.record_partial`); returns how many results the batch holds. While the
        journal is unavailable the write is tried again (``answer_held`` once,
        ``answer_recorded`` when it lands). Raises `JournalFenced` once the late answers are
        logged, and any other `JournalError`."""
        tries, held_since = 0, 0.0
        while True:
            try:
                held = await (
                    self.journal.record_results(campaign, seq, results) if close else
                    self.journal.record_partial(campaign, seq, results, doubtful=doubtful))
            except JournalFenced:
                self._late(campaign, seq, results)
                raise
            except JournalUnavailable as exc:
                tries += 1
                if tries == 1:
                    held_since = time.monotonic()
                    self._oplog.warning(
                        "answer_held", campaign=campaign, batch=seq, messages=len(results),
                        counts=dict(results.counts), error=str(exc),
                        action="the answer is kept and its write retried; the batch will not "
                        "be posted again",
                    )
                await asyncio.sleep(self._wait(tries))
                continue
            if tries:
                self._oplog.info("answer_recorded", campaign=campaign, batch=seq, tries=tries + 1,
                                 held_s=round(time.monotonic() - held_since, 3))
            return held

    def _wait(self, tries: int) -> float:
        """Doubling waits with jitter (held writes of several batches do not retry in step)."""
        first, last = self.waits
        ceiling: float = min(last, first * 2.0 ** (tries - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _late(self, campaign: str, seq: int, results: Results) -> None:
        """The messages the API accepted, which this deposed process cannot journal: a
        ``late_answer`` line each, counted; the operational log says how many."""
        sent = [SentMessages(run.tracking_ids, run.details, run.phones, run.attempts)
                for run in results.runs if run.outcome == "sent"]
        count = sum(len(run.tracking_ids) for run in sent)
        if not count:
            return
        self.metrics.late_answers.inc(count)
        self._oplog.warning("late_answer", campaign=campaign, batch=seq, messages=count)
        try:
            self.log.late_answers(campaign, sent)
        except OSError as exc:  # the operational log keeps them instead
            self._oplog.error(
                "late_answer_unlogged", campaign=campaign, batch=seq, error=str(exc),
                messages={tid: mid for run in sent
                          for tid, mid in zip(run.tracking_ids, run.message_ids, strict=True)},
            )
