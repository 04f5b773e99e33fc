"""The sending engine: every running campaign's batches through one client, limiter and journal.

Work flows one way: the journal's pending batches are queued (transactional campaigns ahead of
promo), a fixed set of workers takes them, marks them in flight (durably) before each POST, and
records every message's final outcome before it is written to the delivery log. Failures follow
SPEC §6: 400s are split until the bad messages are isolated, retryable failures back off with
full jitter, an exhausted batch makes its whole campaign back off until the TTL deadline, a 401
stops everything until credentials are fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import operator
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, overload

import orjson

from scheduler.answers import Keeper
from scheduler.batching import Message, Snapshot, snapshot_key
from scheduler.brake import Brake, released
from scheduler.campaign import Campaign
from scheduler.caps import CAP_REASON, REFRESH, CapSummary, caps_for, since
from scheduler.caps import PAGE as CAP_PAGE
from scheduler.cascade import (
    Accepted,
    CascadeClient,
    PostResult,
    Rejected,
    Unauthorized,
    backoff_delay,
)
from scheduler.config import CapConfig, Route, SendingConfig
from scheduler.delivery_log import DeliveryLog, MessageOutcome, SentMessages
from scheduler.evergreen import ALREADY_MESSAGED, is_evergreen, messaged_before, unmessaged
from scheduler.identity import content_fingerprint
from scheduler.journal import (
    BatchRecord,
    CampaignRecord,
    Journal,
    JournalError,
    JournalFenced,
    Results,
    Run,
)
from scheduler.journal.codec import split_keys
from scheduler.lifecycle import Lifecycle
from scheduler.metrics import Metrics
from scheduler.oplog import get_logger
from scheduler.ratelimit import RateLimit
from scheduler.streaming import Reader, Resume, StreamFailed, StreamJob, StreamKilled
from scheduler.suppression import Suppression
from scheduler.vocabulary import (
    EXPIRED_REASON,
    FINISHED,
    OUTSIDE_WINDOW,
    CampaignState,
    Outcome,
)
from scheduler.window import Stretch, zones_of_group

Clock = Callable[[], datetime]
ProgressCallback = Callable[[int], None]

#: how long a campaign waits after its retries ran out, growing per round up to the cap (seconds)
CAMPAIGN_BACKOFF = (5.0, 300.0)
PAGE = 32
PROGRESS_EVERY = 10.0  # seconds between campaign_progress events
TAIL_BYTES_PER_LINE = 1024  # how far back to look for lines written just before a crash


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Deferred(Exception):
    """A batch could not be finished now (credentials refused, campaign backing off or stopping).

    Its messages stay pending in the journal; nothing about them is final yet.
    """


class CredentialsRefused(RuntimeError):
    """The API answered 401/403: no more requests until the credentials are fixed."""

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(
            f"the API refused the credentials (HTTP {status}): fix the key "
            "(CASCADE_API_KEY or the api-key credential) and run again; no recipient was marked"
        )


@dataclass
class CampaignRun:
    """One campaign being sent: its frozen deadline, its stop switch and its queue window."""

    campaign: Campaign
    route: Route
    deadline: datetime
    window: asyncio.Semaphore
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    backoff: asyncio.Event = field(default_factory=asyncio.Event)
    outstanding: set[asyncio.Future[None]] = field(default_factory=set)
    on_progress: ProgressCallback | None = None
    stop_state: CampaignState | None = None
    reason: str | None = None  # why it stopped in stop_state, for the journal and the logs
    broken: JournalError | OSError | None = None  # the journal or log failed: drive raises it
    first_post: bool = False  # the campaign's very first request is still to come (lag metric)
    brake: Brake | None = None  # None: brake_window = 0
    stage: int = 0  # roll-out: the stage in progress
    #: roll-out: how many messages belong to later stages (they stay pending meanwhile)
    later: int | None = None
    details: dict[str, Any] = field(default_factory=dict)  # fields for the stop's event
    caps: tuple[CapConfig, ...] = ()  # the [[policy.caps]] its messages are checked against
    capped: CapSummary | None = None  # the phones over them, rebuilt every caps.REFRESH s
    capped_ready: asyncio.Event = field(default_factory=asyncio.Event)  # the first is built
    #: an evergreen series' occurrence: who earlier occurrences messaged (`scheduler.evergreen`)
    already: frozenset[str] | None = None
    #: send windows: the stretch each zone group may be sent in (None: not before the deadline)
    stretches: dict[str, Stretch | None] = field(default_factory=dict)
    held_until: datetime | None = None  # the earliest opening of a batch held by its window
    held: int = 0  # messages held by their send window at the last feed
    announced_hold: datetime | None = None  # the opening last said in a campaign_held event

    def halt(self, state: CampaignState | None = None, reason: str | None = None) -> None:
        """Take no new batches; in-flight ones finish. ``state``: what to record (None: none)."""
        self.stop_state, self.reason = state, reason
        self.stop.set()

    def storage_failed(self, error: JournalError | OSError) -> None:
        """The journal or the delivery log failed: stop; `Engine.drive` raises the first error."""
        if self.broken is None:
            self.broken = error
        self.halt(None)

    @property
    def priority(self) -> int:
        """0 for transactional traffic (goes first), 1 for promo and surveys."""
        return 0 if self.campaign.is_transactional else 1

    @property
    def halted(self) -> bool:
        """True once the campaign should take no new batches."""
        return self.stop.is_set() or self.backoff.is_set()


@dataclass
class _Stream:
    """A streamed snapshot being appended to the journal while its campaign sends."""

    task: asyncio.Task[None] | None = None
    grew: asyncio.Event = field(default_factory=asyncio.Event)  # set by every append, and the end
    failure: Exception | None = None  # why it stopped short (`StreamFailed`, a journal error)
    whole: bool = False  # every batch and skip is in the journal, and it says so
    started: float = field(default_factory=time.monotonic)

    @property
    def ended(self) -> bool:
        """The child has finished, or failed (then ``failure`` says why)."""
        return self.task is None or self.task.done()


@dataclass(order=True)
class _Job:
    priority: int
    order: int
    run: CampaignRun = field(compare=False)
    seq: int = field(compare=False)
    messages: Sequence[Message] = field(compare=False)
    done: asyncio.Future[None] = field(compare=False)
    body: bytes | None = field(compare=False, default=None)  # the stored JSON, if all open
    until: datetime | None = field(compare=False, default=None)  # its send window closes
    doubtful: bool = field(compare=False, default=False)  # `BatchRecord.doubtful`


class Engine:
    """Shared by every campaign of a process: one client, one rate limit, one worker pool."""

    def __init__(
        self,
        *,
        client: CascadeClient,
        journal: Journal,
        log: DeliveryLog,
        sending: SendingConfig,
        default_route: Route,
        suppression: Suppression | None = None,
        suppression_path: Path | None = None,
        clock: Clock = utcnow,
        may_send: Callable[[], bool] = lambda: True,
        metrics: Metrics | None = None,
        caps: Sequence[CapConfig] = (),
    ) -> None:
        self.client = client
        self.journal = journal
        self.log = log
        self.lifecycle = Lifecycle(journal, log)
        self.sending = sending
        self.default_route = default_route
        self.suppression = suppression
        self.suppression_path = suppression_path
        self.clock = clock
        #: asked before every request: False (a daemon that is not the leader) posts nothing
        self.may_send = may_send
        self.metrics = metrics or Metrics()
        #: writes the outcomes of posted batches, and never lets go of an answer in hand
        self.answers = Keeper(journal, log, self.metrics)
        self.caps = tuple(caps)
        self.refused: CredentialsRefused | None = None
        self._oplog = get_logger("engine")
        self.progress_every = PROGRESS_EVERY
        self.caps_refresh = REFRESH
        self._limiter = RateLimit(sending.requests_per_second)
        self._queue: asyncio.PriorityQueue[_Job] = asyncio.PriorityQueue()
        self._order = itertools.count()
        self._workers: list[asyncio.Task[None]] = []
        self._marks: set[asyncio.Task[Any]] = set()  # recordings and logged-marks in progress
        self._streams: dict[str, _Stream] = {}  # campaign id -> its snapshot being streamed
        self._unnoted: dict[str, list[tuple[int, int]]] = {}  # logged marks not yet journaled
        self._noting: asyncio.Task[None] | None = None  # the task journaling them

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the worker pool (``concurrency`` requests in flight)."""
        for number in range(self.sending.concurrency):
            self._start_worker(number)

    def _start_worker(self, number: int) -> None:
        task = asyncio.create_task(self._worker(), name=f"worker-{number}")
        task.add_done_callback(functools.partial(self._worker_ended, number))
        self._workers.append(task)

    def _worker_ended(self, number: int, task: asyncio.Task[None]) -> None:
        """Supervision: a worker that died (it should not: `_settle` ends every job) is
        logged and replaced, so queued batches never wait for a worker that is gone."""
        if task.cancelled():
            return
        self._workers.remove(task)
        self._oplog.error("worker_died", worker=number, error=repr(task.exception()))
        self._start_worker(number)

    async def close(self) -> None:
        """Stop the workers and the streams; call after every campaign run has returned."""
        for cid in list(self._streams):
            await self._stop_stream(cid)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        while self._marks:  # a recording that ends starts a logged-mark
            await asyncio.gather(*self._marks, return_exceptions=True)

    def use_credentials(self, headers: Mapping[str, str]) -> None:
        """New credentials (a reload after the API refused the old ones): requests may go again."""
        self.client.set_headers(headers)
        self.refused = None

    # ----------------------------------------------------------------- campaigns

    async def prepare(
        self, campaign: Campaign, *, stream: bool = False, reader: Reader | None = None,
    ) -> CampaignRecord:
        """Snapshot the campaign's audience unless it already started (then it is frozen).

        ``stream`` (`send --now`): read the audience in a child process while the campaign
        sends (`scheduler.streaming`), unless a send window or a roll-out needs every batch
        known before the first one goes. ``reader``: one started already with this very job
        (`stream_job`), used if the stream starts here; its owner closes it either way."""
        key = snapshot_key(campaign, self.suppression_path, self.sending.batch_size)
        record = await self.journal.campaign(campaign.id)
        if record is not None and record.started_at is not None:
            return record
        if record is not None and record.fingerprint == key:
            if record.state not in ("invalid", "cancelled"):
                return record  # prepared already, from these very inputs
            await self.lifecycle.move(campaign.id, "scheduled")  # valid (or back) again
        else:
            await self._stop_stream(campaign.id)  # a newer file replaces what it was reading
            await self._snapshot(campaign, key, stream=stream and _streamable(campaign),
                                 reader=reader)
        fresh = await self.journal.campaign(campaign.id)
        assert fresh is not None  # prepare() just wrote it
        return fresh

    def stream_job(self, campaign: Campaign) -> StreamJob:
        """What a reader of this campaign's streamed snapshot is given."""
        return StreamJob(campaign, self.suppression_path, self.sending.batch_size)

    async def _snapshot(
        self, campaign: Campaign, key: str, *, stream: bool, reader: Reader | None = None,
    ) -> None:
        """Snapshot the campaign anew: whole, or swapped in empty and streamed into."""
        content = await asyncio.to_thread(content_fingerprint, campaign)
        if stream:
            await self.journal.open_stream(
                campaign_id=campaign.id, type=campaign.type, file=str(campaign.file),
                fingerprint=key, send_at=campaign.send_at, deadline=campaign.deadline,
                content=content,
            )
            job = self.stream_job(campaign)
            if reader is None or reader.job != job:
                reader = Reader.start(job)
            reader.used = True
            self._start_stream(campaign, reader, Resume())
            return
        # the engine runs threads (the journal's writer, asyncio's): it must not fork
        snapshot = Snapshot(campaign, self.suppression, self.sending.batch_size, may_fork=False)
        await self.journal.prepare(
            campaign_id=campaign.id,
            type=campaign.type,
            file=str(campaign.file),
            fingerprint=key,
            send_at=campaign.send_at,
            deadline=campaign.deadline,
            content=content,
            batches=snapshot.batches(),
            skips=snapshot.skips,
            zones=snapshot.zones,
        )

    # ----------------------------------------------------------------- streamed snapshots

    def _start_stream(self, campaign: Campaign, reader: Reader, resume: Resume) -> _Stream:
        stream = _Stream()
        stream.task = asyncio.create_task(self._pump(campaign.id, reader, resume, stream),
                                          name=f"stream-{campaign.id}")
        self._streams[campaign.id] = stream
        return stream

    async def _pump(self, cid: str, reader: Reader, resume: Resume, stream: _Stream) -> None:
        """Append the child's chunks to the journal as they come, then mark the snapshot whole."""
        appending: asyncio.Future[None] | None = None
        try:
            # aclosing: a pump cancelled between two chunks lets go of the pipe at once, not
            # whenever the abandoned generator is collected (the finally ends the reader)
            async with contextlib.aclosing(reader.chunks(resume)) as chunks:
                async for batches, skips in chunks:
                    # one append commits while the next chunk comes through the pipe: the
                    # child never waits for the journal's fsync; appends stay in order
                    if appending is not None:
                        await appending
                        stream.grew.set()
                    appending = asyncio.ensure_future(self.journal.extend(cid, batches, skips))
            if appending is not None:
                await appending
            await self.journal.close_stream(cid)
            stream.whole = True
            record = await self.journal.campaign(cid)
            if record is not None:
                self.lifecycle.announce(
                    "snapshot_streamed", campaign=cid, recipients=record.recipients,
                    skipped=record.skipped, batches=record.batches,
                    seconds=round(time.monotonic() - stream.started, 3),
                )
        except (StreamFailed, JournalError, OSError) as exc:
            stream.failure = exc
        except Exception as exc:  # noqa: BLE001 (a bug must stop the campaign, not end it)
            self._oplog.exception("snapshot_stream_crashed", campaign=cid)
            stream.failure = exc
        finally:
            if appending is not None and not appending.done():
                appending.cancel()  # cancelled with the pump (the journal may still apply it)
            stream.grew.set()  # a sender waiting for more also waits for this task's end
            await asyncio.to_thread(reader.close)  # the owner's close: the child is reaped

    async def _stop_stream(self, cid: str) -> None:
        """Stop reading (the child is killed); a later `drive` resumes where the journal is."""
        stream = self._streams.pop(cid, None)
        if stream is not None and stream.task is not None:
            stream.task.cancel()
            await asyncio.gather(stream.task, return_exceptions=True)

    async def _resume_stream(self, run: CampaignRun, record: CampaignRecord) -> None:
        """A snapshot cut short mid-stream (a crash, a stop): read on after what is stored,
        if the inputs are still the ones it was read from (else the campaign fails)."""
        current = self._streams.get(run.campaign.id)
        if not record.streaming or (current is not None and not current.ended):
            return
        key = snapshot_key(run.campaign, self.suppression_path, self.sending.batch_size,
                           send_at=record.send_at)
        if key != record.fingerprint:
            stream = self._streams[run.campaign.id] = _Stream()
            stream.failure = StreamFailed(
                "the campaign file, its audience CSV or the suppression list changed while its "
                f"snapshot was still being read ({record.recipients:,} recipients were read): "
                "restore them to finish it, or cancel it")
            return
        self._start_stream(run.campaign, Reader.start(self.stream_job(run.campaign)),
                           Resume(record.batches, record.skipped))

    async def _more_streamed(self, run: CampaignRun) -> bool:
        """Wait until the campaign's streamed snapshot grows (True: read again), or it is
        whole (False). A stream that failed stops the campaign."""
        stream = self._streams.get(run.campaign.id)
        if stream is None:
            return False
        if not stream.ended:
            assert stream.task is not None  # not ended
            grew = asyncio.ensure_future(stream.grew.wait())
            stopped = asyncio.ensure_future(run.stop.wait())
            # the pump's end counts as growth too, whatever it set before it ended
            await asyncio.wait((grew, stopped, stream.task), return_when=asyncio.FIRST_COMPLETED)
            grew.cancel()
            stopped.cancel()
            return not run.stop.is_set()
        if stream.whole:
            return False
        failure = stream.failure
        if failure is None or isinstance(failure, StreamKilled):
            # killed, or stopped with the engine: left running, the next start reads on
            reason = str(failure) if failure is not None else "the reader was stopped"
            self.lifecycle.announce("snapshot_stream_stopped", "warning",
                                    campaign=run.campaign.id, reason=reason)
            run.halt(None)
        elif isinstance(failure, JournalFenced):
            run.halt(None)
        elif isinstance(failure, JournalError | OSError):
            run.storage_failed(failure)
        elif isinstance(failure, StreamFailed):
            run.halt("failed", f"{failure} (the recipients read before it are final)")
        else:
            run.halt("failed", f"internal error while reading the audience: {failure!r}")
        return False

    async def _snapshot_whole(self, run: CampaignRun) -> bool:
        """The journal holds the whole snapshot (a last check before "done": a streamed one
        that is not whole must never look finished)."""
        current = await self.journal.campaign(run.campaign.id)
        if current is None or not current.streaming:
            return True
        run.halt(None)
        return False

    async def wait_whole(self, campaign_id: str) -> None:
        """Return once the campaign's snapshot is whole (at once unless it is streaming), or
        its stream failed or stopped."""
        stream = self._streams.get(campaign_id)
        if stream is not None and stream.task is not None:
            await asyncio.gather(stream.task, return_exceptions=True)

    def open_run(
        self,
        campaign: Campaign,
        record: CampaignRecord,
        on_progress: ProgressCallback | None = None,
    ) -> CampaignRun:
        """A handle for one campaign's sending; `drive` it, `halt` it from elsewhere."""
        return CampaignRun(
            campaign=campaign,
            route=campaign.route or self.default_route,
            deadline=record.deadline,
            # in flight + being recorded + queued ahead, so a worker rarely finds nothing of
            # this campaign queued (transactional work must be waiting to go first)
            window=asyncio.Semaphore(self.sending.concurrency * 2 + 2),
            on_progress=on_progress,
            brake=(Brake(self.sending.brake_rate, self.sending.brake_window)
                   if self.sending.brake_window else None),
            caps=caps_for(campaign, self.caps),
        )

    async def drive(self, run: CampaignRun) -> CampaignState:
        """Send the campaign until every recipient is final, or it is halted, fails or expires."""
        cid = run.campaign.id
        record = await self.journal.campaign(cid)
        assert record is not None  # prepare() comes first
        if record.state in FINISHED:
            return record.state  # finished long ago: nothing to send, nothing to log again
        if record.state == "braked" and not released(run.campaign.file, record.finished_at):
            return "braked"  # until its file is saved again after the brake
        if self.refused is not None:
            return await self._fail(run)
        # "running" freezes the snapshot (started_at) even when it expires at once, so an
        # expired campaign is never re-planned and its skipped rows are logged exactly once
        await self.lifecycle.move(
            cid, "running", type=run.campaign.type, recipients=record.recipients,
            skipped=record.skipped, send_at=record.send_at.isoformat(),
            deadline=record.deadline.isoformat(), route=run.route,
            **_streaming_field(record),
        )
        run.first_post = record.started_at is None  # the schedule lag is the first start's
        await self._resume_stream(run, record)
        if not record.streaming:
            await self._log_skips(run)  # a streamed snapshot's are logged once it is whole
        await self._log_unlogged(run)
        if self.clock() >= run.deadline:
            return await self._expire(run, record)
        await self._settle_crashed(run)
        await self._resume_stage(run, record)
        if is_evergreen(run.campaign):  # series (SPEC §13.1): only those never messaged
            run.already = await messaged_before(self.journal, run.campaign)
        ticker = asyncio.create_task(self._report_progress(run))
        summaries = asyncio.create_task(self._summarise_caps(run)) if run.caps else None
        try:
            if summaries is not None:
                await run.capped_ready.wait()
            return await self._rounds(run, record)
        finally:
            ticker.cancel()
            if summaries is not None:
                summaries.cancel()

    async def _rounds(self, run: CampaignRun, record: CampaignRecord) -> CampaignState:
        """Feed the batches, then decide: finished, halted, failed, backing off or expired."""
        rounds = 0
        while True:
            await self._feed(run)
            if self.refused is not None:
                return await self._fail(run)
            if run.stop.is_set():
                if run.stop_state == "braked" and (counts := await self._all_final(run)):
                    # the last batch tripped it: nothing is left to stop, the campaign is over
                    return await self._finish(run, record, counts, brake=run.details)
                return await self._halted(run)
            if run.backoff.is_set():
                rounds += 1
                if not await self._back_off(run, rounds):
                    continue
                if run.stop.is_set():
                    return await self._halted(run)
                return await self._expire(run, record)
            counts = await self.journal.counts(run.campaign.id)
            if counts.get("pending", 0) == 0 and await self._snapshot_whole(run):
                return await self._finish(run, record, counts)
            if self.clock() >= run.deadline:
                return await self._expire(run, record)
            if await self._stage_complete(run):
                await self._next_stage(run, record)
            elif run.held_until is not None:
                self._announce_hold(run)
                await self._hold_until(run, run.held_until)  # a send window opens then

    # ----------------------------------------------------------------- roll-out

    async def _resume_stage(self, run: CampaignRun, record: CampaignRecord) -> None:
        """Continue the journaled stage (never repeat one); wait out a hold that is running."""
        rollout = run.campaign.rollout
        if rollout is None:
            return
        run.stage = min(record.stage, len(rollout.stages) - 1)
        run.later = record.recipients - rollout.messages(run.stage, record.recipients)
        if record.stage_at is not None:
            await self._hold_until(run, record.stage_at)

    async def _stage_complete(self, run: CampaignRun) -> bool:
        """True when every message of the stage in progress is final and a later one waits.
        (The snapshot cuts a batch where a stage ends, so no open batch straddles two.)"""
        budget = await self._stage_budget(run)
        if budget is None:
            return False
        first_open = await self.journal.open_batches(run.campaign.id, -1, 1)
        return bool(first_open) and _open_size(first_open[0]) > budget

    async def _stage_budget(self, run: CampaignRun) -> int | None:
        """Roll-out: how many more messages the stages so far may send (None: no roll-out)."""
        if run.later is None:
            return None
        counts = await self.journal.counts(run.campaign.id)
        return counts.get("pending", 0) - run.later

    async def _next_stage(self, run: CampaignRun, record: CampaignRecord) -> None:
        """Journal the next stage with its start after the hold, announce it, and wait."""
        rollout = run.campaign.rollout
        assert rollout is not None  # only staged campaigns have a limit
        run.stage += 1
        starts = self.clock() + timedelta(seconds=rollout.hold)
        await self.journal.set_stage(run.campaign.id, run.stage, starts)
        run.later = record.recipients - rollout.messages(run.stage, record.recipients)
        self.lifecycle.announce(
            "campaign_stage", campaign=run.campaign.id, stage=run.stage + 1,
            stages=len(rollout.stages), share=rollout.stages[run.stage],
            starts_at=starts.isoformat(),
        )
        await self._hold_until(run, starts)

    async def _hold_until(self, run: CampaignRun, moment: datetime) -> None:
        """Wait until ``moment`` (or the deadline, or a stop)."""
        wait = (min(moment, run.deadline) - self.clock()).total_seconds()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.stop.wait(), max(0.0, wait))

    async def _feed(self, run: CampaignRun) -> None:
        """Queue the campaign's open batches (a bounded window at a time) and wait for them."""
        after = -1
        loop = asyncio.get_running_loop()
        run.held_until, run.held = None, 0
        stream = self._streams.get(run.campaign.id)
        budget = await self._stage_budget(run)
        while not run.halted and self.refused is None:
            if stream is not None:
                stream.grew.clear()  # an append after this read wakes the wait below
            page = await self.journal.open_batches(run.campaign.id, after, PAGE)
            staged, budget = _within(page, budget)
            if not staged:
                if await self._more_streamed(run):
                    continue
                break
            for batch in staged:
                after = batch.seq
                until = await self._window_of(run, batch)
                if until is None:
                    continue  # held by its send window, or expired by it
                await run.window.acquire()
                if run.halted or self.refused is not None:
                    run.window.release()
                    break
                # a job's future only ever gets a result: failures are kept on the run, so no
                # exception can sit unretrieved in a future that was already discarded
                done: asyncio.Future[None] = loop.create_future()
                run.outstanding.add(done)
                done.add_done_callback(run.outstanding.discard)
                messages = _open_messages(batch)
                body = None if batch.decided else batch.body
                self._queue.put_nowait(_Job(
                    run.priority, next(self._order), run, batch.seq, messages, done, body, until,
                    batch.doubtful,
                ))
            if len(staged) < len(page):
                break  # the rest belongs to later roll-out stages
        await asyncio.gather(*list(run.outstanding))
        if run.broken is not None:
            raise run.broken

    # ----------------------------------------------------------------- windows and caps

    async def _window_of(self, run: CampaignRun, batch: BatchRecord) -> datetime | None:
        """When the batch must have gone by: the deadline, or its send window's close. None
        when it may not go now: its window opens later (``run.held_until`` learns when), or
        not before the deadline (then its messages are recorded ``expired``, outside_window)."""
        hours = run.campaign.window
        if hours is None or batch.zones is None:
            return run.deadline
        now = self.clock()
        known = batch.zones in run.stretches
        stretch = run.stretches.get(batch.zones)
        if not known or (stretch is not None and now >= stretch[1]):
            stretch = hours.next_stretch(zones_of_group(batch.zones), now, run.deadline)
            run.stretches[batch.zones] = stretch
        if stretch is None:
            results = _all(_open_messages(batch), "expired", OUTSIDE_WINDOW, batch.attempts)
            await self._record(run, batch.seq, results)
            return None
        opens, closes = stretch
        if opens > now:
            run.held_until = opens if run.held_until is None else min(run.held_until, opens)
            run.held += batch.size - len(batch.decided)
            return None
        return min(closes, run.deadline)

    def _announce_hold(self, run: CampaignRun) -> None:
        """``campaign_held``: how many wait for their send window, and the next opening (once
        per opening, not per round)."""
        if run.announced_hold == run.held_until:
            return
        run.announced_hold = run.held_until
        assert run.held_until is not None  # only called while something is held
        self.lifecycle.announce(
            "campaign_held", campaign=run.campaign.id, held=run.held,
            next_opening=run.held_until.isoformat(), window=run.campaign.window.text()
            if run.campaign.window else None,
        )

    async def _summarise_caps(self, run: CampaignRun) -> None:
        """Keep ``run.capped`` fresh: index every closed batch (the caps count indexed sends,
        and `send` has no daemon indexing for it), then rebuild, every `caps.REFRESH` s."""
        while True:
            while await self.journal.index_messages(64):
                pass
            now = self.clock()
            run.capped = await CapSummary.gather(run.caps, functools.partial(
                self._capped_page, now=now))
            run.capped_ready.set()
            await asyncio.sleep(self.caps_refresh)

    async def _capped_page(self, cap: CapConfig, after: str, *, now: datetime) -> list[str]:
        return await self.journal.capped_phones(
            cap.types, since(cap, now), cap.max, after, CAP_PAGE)

    def _capped(
        self, run: CampaignRun, messages: Sequence[Message], out: _Outcomes,
    ) -> Sequence[Message]:
        """Record as skipped (frequency_cap) the messages whose phone reached a cap; return
        the others."""
        summary = run.capped
        assert summary is not None  # drive waits for the first one
        if not summary:
            return messages
        over = summary.over(_phones(messages))
        if not over:
            return messages
        out.add([m for m, o in zip(messages, over, strict=True) if o], "skipped", CAP_REASON, 0)
        return [m for m, o in zip(messages, over, strict=True) if not o]

    async def _report_progress(self, run: CampaignRun) -> None:
        """A ``campaign_progress`` event with the journal's counts every `progress_every` s."""
        while True:
            await asyncio.sleep(self.progress_every)
            counts = await self.journal.counts(run.campaign.id)
            self.lifecycle.announce("campaign_progress", campaign=run.campaign.id, counts=counts)

    async def _back_off(self, run: CampaignRun, rounds: int) -> bool:
        """Wait out an outage as a whole campaign; False means "try again", True "deadline"."""
        base, cap = CAMPAIGN_BACKOFF
        delay = min(cap, base * 2 ** (rounds - 1))
        left = (run.deadline - self.clock()).total_seconds()
        await self.lifecycle.move(
            run.campaign.id, "backing_off", wait=round(min(delay, max(left, 0)), 1), round=rounds,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.stop.wait(), max(0.0, min(delay, left)))
        if run.stop.is_set() or self.clock() >= run.deadline:
            return True
        run.backoff.clear()
        await self.lifecycle.move(run.campaign.id, "running")
        return False

    # ----------------------------------------------------------------- endings

    async def _fail(self, run: CampaignRun) -> CampaignState:
        assert self.refused is not None
        await self.lifecycle.move(run.campaign.id, "failed", error=str(self.refused))
        return "failed"

    async def _halted(self, run: CampaignRun) -> CampaignState:
        state = run.stop_state
        if state is not None:
            await self.lifecycle.move(run.campaign.id, state, error=run.reason, **run.details)
            return state
        return "running"  # shutdown: left running, resumed from the journal at the next start

    async def _expire(self, run: CampaignRun, record: CampaignRecord) -> CampaignState:
        """Every message still open is past send_at + ttl: record and log it as expired."""
        await self.wait_whole(run.campaign.id)
        if not await self._snapshot_whole(run):
            return await self._halted(run)  # its stream stopped short: expired at next start
        while page := await self.journal.open_batches(run.campaign.id, -1, PAGE):
            for batch in page:
                results = _all(_open_messages(batch), "expired", EXPIRED_REASON, batch.attempts)
                await self._record(run, batch.seq, results)
        counts = await self.journal.counts(run.campaign.id)
        await self._finish(run, record, counts, state="expired")
        return "expired"

    async def _all_final(self, run: CampaignRun) -> dict[str, int] | None:
        """The campaign's counts when every recipient has a final outcome (and its snapshot is
        whole), else None."""
        counts = await self.journal.counts(run.campaign.id)
        if counts.get("pending", 0):
            return None
        current = await self.journal.campaign(run.campaign.id)
        return None if current is None or current.streaming else counts

    async def _finish(
        self,
        run: CampaignRun,
        record: CampaignRecord,
        counts: dict[str, int],
        state: CampaignState = "done",
        **fields: Any,
    ) -> CampaignState:
        await self._log_skips(run)  # a streamed snapshot's, now that it is whole
        current = await self.journal.campaign(run.campaign.id) or record
        started = current.started_at or self.clock()
        seconds = max((self.clock() - started).total_seconds(), 1e-6)
        await self.lifecycle.move(
            run.campaign.id, state,
            counts={k: v for k, v in counts.items() if k != "pending"},
            duration_s=round(seconds, 3),
            rate_per_s=round(counts.get("sent", 0) / seconds, 1), **fields,
        )
        return state

    async def _log_skips(self, run: CampaignRun) -> None:
        """The skipped rows' message lines, once per campaign (even across a crash)."""
        cid = run.campaign.id
        if await self.journal.skips_logged(cid):
            return
        skipped = [row async for row in self.journal.recipients(cid, "skipped")]
        for reason, count in Counter(row.detail for row in skipped).items():
            self.metrics.skips.labels(reason or "unknown").inc(count)
        if skipped:
            seen = self.log.recent_message_ids(cid, TAIL_BYTES_PER_LINE * len(skipped))
            self.log.messages(cid, run.route, [
                MessageOutcome(row.tracking_id, "skipped", row.phone, 0, None, None, row.detail,
                               row.line)
                for row in skipped if not row.tracking_id or row.tracking_id not in seen
            ])
        await self.journal.mark_skips_logged(cid)

    async def _log_unlogged(self, run: CampaignRun) -> None:
        """Outcomes journaled just before a crash whose delivery-log lines never got written."""
        cid = run.campaign.id
        await self._flush_logged(cid)
        pending = await self.journal.unlogged(cid)
        if not pending:
            return
        count = sum(len(batch.rows) for batch in pending)
        seen = self.log.recent_message_ids(cid, TAIL_BYTES_PER_LINE * count)
        self.log.messages(cid, run.route, [
            _outcome_line(row.tracking_id, row.outcome, row.phone, row.attempts, row.detail,
                          row.resent)
            for batch in pending for row in batch.rows if row.tracking_id not in seen
        ])
        await self.journal.mark_logged(cid, [(batch.seq, batch.held) for batch in pending])

    async def _settle_crashed(self, run: CampaignRun) -> None:
        """Batches that may have reached the API already (left in flight by a crash or a
        deposed leader, or given back after an ambiguous answer): resent under at-least-once
        (then counted and logged as resent), in doubt under at-most-once."""
        if self.sending.delivery != "at-most-once":
            return
        after = -1
        while page := await self.journal.open_batches(run.campaign.id, after, PAGE):
            for batch in page:
                after = batch.seq
                if not batch.doubtful:
                    continue
                why = ("in flight when the process stopped" if batch.state == "in_flight"
                       else "posted before without a clear answer")
                results = _all(_open_messages(batch), "in_doubt", why, batch.attempts)
                await self._record(run, batch.seq, results)

    # ----------------------------------------------------------------- workers

    async def _worker(self) -> None:
        while True:
            job = await self._queue.get()
            results = await self._settle(job, self._process(job))
            if results is not None:
                # Recording runs beside the next request: the worker does not wait for the
                # journal's commit (the batch stays in flight until then, so a crash resends
                # it or marks it in doubt, never loses it).
                task = asyncio.create_task(self._settle(job, self._keep(job.run, job.seq,
                                                                        results)))
                self._marks.add(task)
                task.add_done_callback(self._marks.discard)

    async def _settle(
        self, job: _Job, step: Coroutine[Any, Any, Results | None]
    ) -> Results | None:
        """Run one step of a job; unless it hands results on, the job is finished here."""
        results: Results | None = None
        try:
            results = await step
        except Deferred:
            pass
        except JournalFenced:
            job.run.halt(None)  # another daemon leads now: stop quietly, it takes over
        except (JournalError, OSError) as exc:
            # the journal or the log failed: the campaign cannot record outcomes, stop it
            job.run.storage_failed(exc)
        # A job's boundary: whatever else goes wrong (a library's odd exception, a bug) must
        # end the job and stop its campaign with the reason, or the campaign waits forever.
        except Exception as exc:  # noqa: BLE001
            self._oplog.exception("batch_failed", campaign=job.run.campaign.id, batch=job.seq)
            job.run.halt("failed", f"internal error in batch {job.seq}: {exc!r}")
        if results is None:
            job.run.window.release()
            if not job.done.done():
                job.done.set_result(None)
        return results

    async def _process(self, job: _Job) -> Results | None:
        """Post the job's batch; returns the outcomes to record (None: nothing to record)."""
        run = job.run
        if run.halted or self.refused is not None:
            return None  # never marked in flight: stays pending
        if self.clock() >= run.deadline:
            return _all(job.messages, "expired", EXPIRED_REASON, 0)
        until = job.until or run.deadline
        if self.clock() >= until:
            return None  # its send window closed while it waited: pending, for the next one
        outcomes = _Outcomes(job.doubtful)
        messages, body = job.messages, job.body
        if run.caps:
            messages = self._capped(run, messages, outcomes)
            body = body if len(messages) == len(job.messages) else None
            if not messages:
                return outcomes.results
        if run.already:  # an evergreen series' occurrence (SPEC §13.1)
            messages, known = unmessaged(run.already, run.campaign, messages)
            if known:
                outcomes.add(known, "skipped", ALREADY_MESSAGED, 0)
                body = None
            if not messages:
                return outcomes.results
        with self.metrics.journal_write.time():
            await self.journal.mark_in_flight(run.campaign.id, [job.seq])
        try:
            await self._deliver(run, messages, outcomes, body, until, _Doubt(job.doubtful))
        except Deferred:
            await self._defer(run, job, outcomes)
            raise
        return outcomes.results

    async def _defer(self, run: CampaignRun, job: _Job, outcomes: _Outcomes) -> None:
        """Keep what was decided; the rest of the batch goes back to pending (doubtful when
        a post of it may have reached the API: posting it later is a resend)."""
        doubtful = outcomes.doubtful
        if not outcomes.results:
            await self.journal.release(run.campaign.id, [job.seq], doubtful=doubtful)
            return
        held = await self.answers.keep(run.campaign.id, job.seq, outcomes.results, close=False,
                                       doubtful=doubtful)
        self._recorded(run, job.seq, held, outcomes.results)

    async def _deliver(
        self, run: CampaignRun, part: Sequence[Message], out: _Outcomes, body: bytes | None,
        until: datetime, doubt: _Doubt,
    ) -> None:
        """Post ``part`` until each message is final; raise `Deferred` to stop trying for now.

        ``body``, when given, is ``part`` already serialised (a whole batch as stored);
        ``until`` is when its send window closes (else the deadline); ``doubt`` says whether
        a post of ``part`` may have reached the API already (then the next is a resend).
        """
        at_most_once = self.sending.delivery == "at-most-once"
        attempt = 0
        while part:
            if self.refused is not None or run.stop.is_set():
                raise Deferred
            if self.clock() >= run.deadline:
                out.add(part, "expired", EXPIRED_REASON, attempt, doubt.resent)
                return
            if self.clock() >= until:
                raise Deferred  # its send window closed: the rest waits for the next one
            attempt += 1
            doubt.resent = doubt.resent or doubt.doubtful  # this post may double the first
            reply = await self._post(run, part, body, until)
            if isinstance(reply, Accepted):
                body = None
                part = out.accept(part, reply.message_ids, attempt, doubt.resent)
                if part and at_most_once:
                    out.add(part, "in_doubt", "the API's answer left this message out", attempt)
                    return
                if part:  # left out of the answer: they may have been accepted all the same
                    out.doubted(doubt)
                reply_status: int | None = 200
                retry_after: float | None = None
            elif isinstance(reply, Rejected):
                await self._split(run, part, reply, out, attempt, until, doubt)
                return
            elif isinstance(reply, Unauthorized):
                self.refused = CredentialsRefused(reply.status)
                raise Deferred
            else:
                if reply.ambiguous and at_most_once:
                    out.add(part, "in_doubt", reply.reason, attempt)
                    return
                if reply.ambiguous:
                    out.doubted(doubt)
                reply_status, retry_after = reply.status, reply.retry_after
            if not part:
                return
            if attempt >= self.sending.max_attempts:
                run.backoff.set()
                raise Deferred
            await self._retry_wait(run, attempt, reply_status, retry_after)

    async def _split(
        self, run: CampaignRun, part: Sequence[Message], reply: Rejected, out: _Outcomes,
        attempt: int, until: datetime, doubt: _Doubt,
    ) -> None:
        """A 400 refuses the whole request: halve it until the bad messages stand alone."""
        if len(part) == 1:
            out.add(part, "rejected", reply.code or f"HTTP {reply.status}", attempt,
                    doubt.resent)
            return
        middle = len(part) // 2
        await self._deliver(run, part[:middle], out, None, until, replace(doubt))
        self._brake_midway(run, out)
        await self._deliver(run, part[middle:], out, None, until, replace(doubt))

    def _brake_midway(self, run: CampaignRun, out: _Outcomes) -> None:
        """Trip the brake inside a batch whose 400s are being split, once the outcomes
        decided so far are enough (`Brake.midway`); the rest of the batch stays pending."""
        if run.brake is None or run.stop.is_set():
            return
        reading = run.brake.midway(out.results)
        if reading is not None:
            run.details = reading.fields()
            run.halt("braked", reading.reason)
            raise Deferred

    async def _post(
        self, run: CampaignRun, part: Sequence[Message], body: bytes | None, until: datetime,
    ) -> PostResult:
        """POST ``part`` (``body`` is its stored JSON when it is a whole batch) with a ttl
        that ends at ``until`` (the deadline, or sooner: its send window's close)."""
        async with self._limiter:
            if self.refused is not None:
                raise Deferred  # a 401 came back while this one waited for its turn
            if not self.may_send():
                # this process is not (or no longer surely) the leader: stop the campaign
                # here; its open batches are for whoever leads next
                run.halt(None)
                raise Deferred
            ttl = max(1, int((until - self.clock()).total_seconds()))
            # Every message has exactly one "fromName" key, and inside a JSON string a quote is
            # always escaped, so this byte pattern only matches keys: one C-speed replace adds
            # the ttl to all messages instead of decoding and re-encoding the batch.
            raw = orjson.dumps(list(part)) if body is None else body
            body = raw.replace(b'"fromName":', b'"ttl":%d,"fromName":' % ttl)
            if run.first_post:
                run.first_post = False
                self.metrics.schedule_lag.observe(
                    max(0.0, (self.clock() - run.campaign.send_at).total_seconds()))
            started = time.monotonic()
            reply = await self.client.post(run.route, body)
            self._count_request(run.route, reply, time.monotonic() - started)
            return reply

    def _count_request(self, route: str, reply: PostResult, seconds: float) -> None:
        """Per request, never per message: requests by route and answer, and their time."""
        status = getattr(reply, "status", None)
        code = "200" if isinstance(reply, Accepted) else str(status or "no answer")
        self.metrics.api_requests.labels(route, code).inc()
        self.metrics.api_duration.labels(route).observe(seconds)
        if isinstance(reply, Accepted):
            self.metrics.last_send.set(time.time())

    async def _retry_wait(
        self, run: CampaignRun, attempt: int, status: int | None, retry_after: float | None
    ) -> None:
        wait = backoff_delay(attempt, retry_after=retry_after)
        self.lifecycle.announce(
            "batch_retry", "warning", campaign=run.campaign.id, status=status,
            attempt=attempt, wait=round(wait, 3),
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.stop.wait(), wait)

    async def _keep(self, run: CampaignRun, seq: int, results: Results) -> None:
        """A posted batch's outcomes: journaled however long that takes (`answers`), then
        logged. Until then the batch stays in flight, and its campaign waits for it."""
        held = await self.answers.keep(run.campaign.id, seq, results, close=True)
        self._recorded(run, seq, held, results)

    async def _record(self, run: CampaignRun, seq: int, results: Results) -> None:
        """Journal first (durable), then the delivery log, then progress."""
        held = await self.journal.record_results(run.campaign.id, seq, results)
        self._recorded(run, seq, held, results)

    def _recorded(
        self, run: CampaignRun, seq: int, held: int, results: Results,
    ) -> None:
        """After outcomes are durable: their log lines, the logged mark, the brake's look."""
        self._log_results(run, results)
        self._mark_logged(run, seq, held)
        if run.brake is not None and not run.stop.is_set():
            reading = run.brake.observe(results)
            if reading is not None:
                run.details = reading.fields()
                run.halt("braked", reading.reason)

    def _mark_logged(self, run: CampaignRun, seq: int, held: int) -> None:
        """Note (off the hot path) that the batch's lines are written; awaited by `close`.
        Marks made while a note is on its way go together in the next one: one journal
        operation for several batches."""
        self._unnoted.setdefault(run.campaign.id, []).append((seq, held))
        if self._noting is None or self._noting.done():
            self._noting = asyncio.create_task(self._note_logged())
            self._marks.add(self._noting)
            self._noting.add_done_callback(self._marks.discard)

    async def _note_logged(self) -> None:
        while self._unnoted:
            campaign_id, marks = self._unnoted.popitem()
            try:
                await self.journal.mark_logged(campaign_id, marks)
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
            await self.journal.mark_logged(campaign_id, marks)
        except JournalError:
            self._unnoted.setdefault(campaign_id, []).extend(marks)
            raise

    def _log_results(self, run: CampaignRun, results: Results) -> None:
        """The batch's lines (sent ones templated, per run), its counters, its progress."""
        cid, counted = run.campaign.id, self.metrics.messages
        self.log.sent(cid, run.route, [
            SentMessages(part.tracking_ids, part.details, part.phones, part.attempts,
                         part.resent)
            for part in results.runs if part.outcome == "sent"
        ])
        counted.labels(run.campaign.type, "sent").inc(results.counts.get("sent", 0))
        if results.resent:
            self.metrics.resent.inc(results.resent)
        others = [part for part in results.runs if part.outcome != "sent"]
        if others:
            self.log.messages(cid, run.route, [
                _outcome_line(tracking_id, part.outcome, phone, part.attempts, detail,
                              part.resent)
                for part in others
                for tracking_id, detail, phone in zip(part.tracking_ids, part.details,
                                                      part.phones, strict=True)
            ])
            for outcome, count in results.counts.items():
                if outcome != "sent":
                    counted.labels(run.campaign.type, outcome).inc(count)
        if run.on_progress is not None:
            run.on_progress(len(results))


#: a message's tracking id and phone, read at C speed
_ID, _PHONE = operator.itemgetter("id"), operator.itemgetter("toPhone")


@dataclass
class _Doubt:
    """Where one part of a batch stands (SPEC §13.4): ``doubtful`` once a post of it may have
    reached the API without a clear answer, ``resent`` once it was posted again after that
    (every outcome it then gets is marked resent: it may have gone twice)."""

    doubtful: bool = False
    resent: bool = False


class _Outcomes:
    """The final outcomes decided so far for one batch (across retries and splits), and
    whether any post of its open messages may have reached the API (``doubtful``)."""

    __slots__ = ("doubtful", "results")

    def __init__(self, doubtful: bool = False) -> None:
        self.results = Results()
        self.doubtful = doubtful

    def add(
        self, part: Sequence[Message], outcome: Outcome, detail: str | None, attempts: int,
        resent: bool = False,
    ) -> None:
        self.results.add(_run(part, outcome, detail, attempts, resent))

    def doubted(self, doubt: _Doubt) -> None:
        """A post of ``doubt``'s part had an ambiguous outcome: the next one is a resend."""
        doubt.doubtful = self.doubtful = True

    def accept(
        self, part: Sequence[Message], ids: Mapping[str, str], attempts: int,
        resent: bool = False,
    ) -> list[Message]:
        """Record the accepted messages as sent; return those the answer left out."""
        tracking = _ids(part)
        if list(ids) == tracking:  # the usual answer: every message, in the request's order
            message_ids: list[str | None] = list(ids.values())
        else:
            message_ids = list(map(ids.get, tracking))
        if all(message_ids):  # every message named: one run, no Python code per message
            self.results.add(Run("sent", attempts, tracking, message_ids, _phones(part), resent))
            return []
        named = [message_id is not None for message_id in message_ids]
        sent = list(itertools.compress(part, named))
        self.results.add(Run("sent", attempts, list(map(_ID, sent)),
                             [m for m in message_ids if m is not None], list(map(_PHONE, sent)),
                             resent))
        return [message for message, found in zip(part, named, strict=True) if not found]


def _streaming_field(record: CampaignRecord) -> dict[str, Any]:
    """``streaming: true`` on campaign_started while the snapshot is still being read (its
    recipients and skipped counts are those read so far)."""
    return {"streaming": True} if record.streaming else {}


def _streamable(campaign: Campaign) -> bool:
    """A snapshot may be streamed unless every batch must be known before the first goes: a
    send window cuts batches by zone group at the end, a roll-out's stages need the total."""
    return campaign.window is None and campaign.rollout is None


class _Stored(Sequence[Message]):
    """A stored batch's messages: their tracking ids and phones at hand (split from the
    snapshot's keys), the message dicts decoded from the body only when a path needs them
    (a 400 split, an answer that leaves ids out, a frequency cap). The usual batch is posted
    as stored and accepted whole without ever being decoded (~0.6 µs a message saved)."""

    __slots__ = ("_decoded", "body", "ids", "phones")

    def __init__(self, body: bytes, ids: list[str], phones: list[str]) -> None:
        self.body, self.ids, self.phones = body, ids, phones
        self._decoded: list[Message] | None = None

    def _messages(self) -> list[Message]:
        if self._decoded is None:
            self._decoded = orjson.loads(self.body)
        return self._decoded

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> Message: ...

    @overload
    def __getitem__(self, index: slice) -> list[Message]: ...

    def __getitem__(self, index: int | slice) -> Message | list[Message]:
        return self._messages()[index]

    def __iter__(self) -> Iterator[Message]:
        return iter(self._messages())


def _ids(part: Sequence[Message]) -> list[str]:
    """The tracking ids of ``part``, in order."""
    return part.ids if isinstance(part, _Stored) else list(map(_ID, part))


def _phones(part: Sequence[Message]) -> list[str]:
    """The phones of ``part``, in order."""
    return part.phones if isinstance(part, _Stored) else list(map(_PHONE, part))


def _open_size(batch: BatchRecord) -> int:
    """How many of the batch's messages have no final outcome yet."""
    return batch.size - len(batch.decided)


def _within(
    page: list[BatchRecord], budget: int | None,
) -> tuple[list[BatchRecord], int | None]:
    """The first batches of ``page`` whose open messages fit in a roll-out's ``budget`` (None:
    no roll-out, all of them), and the budget they leave."""
    if budget is None:
        return page, None
    fitting = []
    for batch in page:
        size = _open_size(batch)
        if size > budget:
            break
        fitting.append(batch)
        budget -= size
    return fitting, budget


def _open_messages(batch: BatchRecord) -> Sequence[Message]:
    """The batch's messages that have no final outcome yet."""
    if batch.keys is not None and not batch.decided:
        return _Stored(batch.body, *split_keys(batch.keys))
    messages: list[Message] = orjson.loads(batch.body)
    if batch.decided:
        messages = [m for m in messages if m["id"] not in batch.decided]
    return messages


def _outcome_line(
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


def _run(
    messages: Sequence[Message], outcome: Outcome, detail: str | None, attempts: int,
    resent: bool = False,
) -> Run:
    """The same final outcome for every message of ``messages``."""
    return Run(outcome, attempts, _ids(messages), [detail] * len(messages), _phones(messages),
               resent)


def _all(
    messages: Sequence[Message], outcome: Outcome, detail: str | None, attempts: int
) -> Results:
    """The same final outcome for every message of ``messages``, as a batch's results."""
    return Results([_run(messages, outcome, detail, attempts)])
