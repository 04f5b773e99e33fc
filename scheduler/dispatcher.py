"""Posting: one account's running campaigns' batches through its client, rate limit and pool.

Work flows one way: the driver queues a campaign's open batches (transactional campaigns ahead
of promo), a fixed set of workers takes them, marks them in flight (durably) before each POST,
and hands every message's final outcome to the recorder. Failures follow SPEC §6: 400s are
split until the bad messages are isolated, retryable failures back off with full jitter, an
exhausted batch makes its whole campaign back off, a 401 stops the account's campaigns until
its credentials are fixed (other accounts have dispatchers of their own).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson

from scheduler.batching import Message
from scheduler.campaign_run import CampaignRun, Clock
from scheduler.cascade import (
    Accepted,
    CascadeClient,
    PostResult,
    Rejected,
    Unauthorized,
    backoff_delay,
)
from scheduler.config import SendingConfig
from scheduler.evergreen import ALREADY_MESSAGED, unmessaged
from scheduler.inflight import Busy, InFlight
from scheduler.journal import Journal, JournalError, JournalFenced, Results
from scheduler.lifecycle import Lifecycle
from scheduler.metrics import Metrics
from scheduler.oplog import get_logger
from scheduler.outcomes import Doubt, Outcomes, same_results
from scheduler.ratelimit import RateLimit
from scheduler.recorder import Recorder
from scheduler.vocabulary import EXPIRED_REASON


class Deferred(Exception):
    """A batch could not be finished now (credentials refused, campaign backing off or stopping).

    Its messages stay pending in the journal; nothing about them is final yet.
    """


class CredentialsRefused(RuntimeError):
    """The API answered 401/403: no more requests until the credentials are fixed."""

    def __init__(
        self, status: int, account: str = "default",
        source: tuple[str, str] = ("CASCADE_API_KEY", "api-key"),
    ) -> None:
        self.status = status
        self.account = account
        whose = "" if source == ("CASCADE_API_KEY", "api-key") else f' of account "{account}"'
        super().__init__(
            f"the API refused the credentials{whose} (HTTP {status}): fix the key "
            f"({source[0]} or the {source[1]} credential) and run again; no recipient was "
            "marked"
        )


@dataclass(order=True)
class Job:
    """One open batch queued for a worker (ordered: transactional first, then first come)."""

    priority: int
    order: int
    run: CampaignRun = field(compare=False)
    seq: int = field(compare=False)
    messages: Sequence[Message] = field(compare=False)
    done: asyncio.Future[None] = field(compare=False)
    body: bytes | None = field(compare=False, default=None)  # the stored JSON, if all open
    until: datetime | None = field(compare=False, default=None)  # its send window closes
    doubtful: bool = field(compare=False, default=False)  # `BatchRecord.doubtful`


class Dispatcher:
    """Shared by every campaign of one account: one client, one rate limit, one worker pool
    (a process has one per ``[[accounts]]`` entry, SPEC §13.3)."""

    def __init__(
        self, *, client: CascadeClient, journal: Journal, recorder: Recorder,
        lifecycle: Lifecycle, sending: SendingConfig, metrics: Metrics, clock: Clock,
        may_send: Callable[[], bool], account: str = "default",
        key_source: tuple[str, str] = ("CASCADE_API_KEY", "api-key"),
    ) -> None:
        #: the account it sends for, and where its key comes from (said when it is refused)
        self.account, self._key_source = account, key_source
        self._client, self._journal, self._recorder = client, journal, recorder
        self._lifecycle, self._sending, self._metrics = lifecycle, sending, metrics
        self._clock = clock
        #: asked before every request: False (a daemon that is not the leader) posts nothing
        self._may_send = may_send
        self._refused: CredentialsRefused | None = None
        self._oplog = get_logger("engine")
        self._limiter = RateLimit(sending.requests_per_second)
        self._in_flight = InFlight(sending.requests_per_second, sending.concurrency)
        self._queue: asyncio.PriorityQueue[Job] = asyncio.PriorityQueue()
        self._order = itertools.count()
        self._workers: list[asyncio.Task[None]] = []
        self._keeping: set[asyncio.Task[Any]] = set()  # recordings in progress

    @property
    def in_flight_limit(self) -> int:
        """How many requests may be in flight now (it follows the round trip)."""
        return self._in_flight.limit

    @property
    def refused(self) -> CredentialsRefused | None:
        """Why the API refuses requests now (a 401/403), until new credentials come."""
        return self._refused

    def use_credentials(self, headers: Mapping[str, str] | None) -> None:
        """New credentials (a reload after the API refused the old ones): requests may go
        again. ``None`` keeps the client's headers (the embedded sandbox takes any)."""
        if headers is not None:
            self._client.set_headers(headers)
        self._refused = None
        self._metrics.credentials_refused.labels(self.account).set(0)

    # ----------------------------------------------------------------- the pool

    def start(self) -> None:
        """Start the worker pool: as many workers as requests may ever be in flight (the
        configured ``concurrency``, else `inflight.MAX_IN_FLIGHT`); each holds an `InFlight`
        slot while it takes a batch and posts it, so as many work at once as the round trip
        needs."""
        for number in range(self._in_flight.cap):
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
        """Stop the workers; wait for the outcomes being recorded."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        while self._keeping:
            await asyncio.gather(*self._keeping, return_exceptions=True)

    def submit(
        self, run: CampaignRun, seq: int, messages: Sequence[Message], done: asyncio.Future[None],
        *, body: bytes | None, until: datetime, doubtful: bool,
    ) -> None:
        """Queue one open batch; ``done`` gets a result (never an exception) once it ends."""
        self._queue.put_nowait(Job(run.priority, next(self._order), run, seq, messages, done,
                                   body, until, doubtful))

    async def _worker(self) -> None:
        while True:
            # the slot first: a worker without one takes no batch, so batches wait in the
            # priority queue (a transactional one still goes first) and none is marked in
            # flight before it can go
            async with self._in_flight.slot():
                job = await self._queue.get()
                busy = Busy()
                results = await self._settle(job, self._process(job, busy))
                if busy.posted and busy.clean:
                    self._in_flight.timed(busy.seconds)
            if results is not None:
                # Recording runs beside the next request: the worker does not wait for the
                # journal's commit (the batch stays in flight until then, so a crash resends
                # it or marks it in doubt, never loses it).
                task = asyncio.create_task(self._settle(
                    job, self._recorder.keep(job.run, job.seq, results)))
                self._keeping.add(task)
                task.add_done_callback(self._keeping.discard)

    async def _settle(
        self, job: Job, step: Coroutine[Any, Any, Results | None]
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
            job.run.free_slot()
            if not job.done.done():
                job.done.set_result(None)
        return results

    # ----------------------------------------------------------------- one batch

    async def _process(self, job: Job, busy: Busy) -> Results | None:
        """Post the job's batch; returns the outcomes to record (None: nothing to record)."""
        run = job.run
        if run.halted or self._refused is not None:
            return None  # never marked in flight: stays pending
        if self._clock() >= run.deadline:
            return same_results(job.messages, "expired", EXPIRED_REASON, 0)
        until = job.until or run.deadline
        if self._clock() >= until:
            return None  # its send window closed while it waited: pending, for the next one
        outcomes = Outcomes(job.doubtful)
        messages, body = job.messages, job.body
        if run.caps is not None:
            messages = run.caps.admit(messages, outcomes)
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
        with self._metrics.journal_write.time():
            await self._journal.mark_in_flight(run.campaign.id, [job.seq])
        try:
            await self._deliver(run, messages, outcomes, body, until, Doubt(job.doubtful),
                                busy)
        except Deferred:
            await self._recorder.give_back(run, job.seq, outcomes)
            raise
        return outcomes.results

    async def _deliver(
        self, run: CampaignRun, part: Sequence[Message], out: Outcomes, body: bytes | None,
        until: datetime, doubt: Doubt, busy: Busy,
    ) -> None:
        """Post ``part`` until each message is final; raise `Deferred` to stop trying for now.

        ``body``, when given, is ``part`` already serialised (a whole batch as stored);
        ``until`` is when its send window closes (else the deadline); ``doubt`` says whether
        a post of ``part`` may have reached the API already (then the next is a resend);
        ``busy`` times the job's slot, less its waits for the rate limit.
        """
        at_most_once = self._sending.delivery == "at-most-once"
        attempt = 0
        while part:
            if self._refused is not None or run.stopped:
                raise Deferred
            if self._clock() >= run.deadline:
                out.add(part, "expired", EXPIRED_REASON, attempt, doubt.resent)
                return
            if self._clock() >= until:
                raise Deferred  # its send window closed: the rest waits for the next one
            attempt += 1
            doubt.resent = doubt.resent or doubt.doubtful  # this post may double the first
            with busy.waiting():
                await self._limiter.acquire()
            reply = await self._post(run, part, body, until)
            busy.answered(isinstance(reply, Accepted))
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
                await self._split(run, part, reply, out, attempt, until, doubt, busy)
                return
            elif isinstance(reply, Unauthorized):
                self._refused = CredentialsRefused(reply.status, self.account,
                                                   self._key_source)
                self._metrics.credentials_refused.labels(self.account).set(1)
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
            if attempt >= self._sending.max_attempts:
                run.back_off()
                raise Deferred
            await self._retry_wait(run, attempt, reply_status, retry_after)

    async def _split(
        self, run: CampaignRun, part: Sequence[Message], reply: Rejected, out: Outcomes,
        attempt: int, until: datetime, doubt: Doubt, busy: Busy,
    ) -> None:
        """A 400 refuses the whole request: halve it until the bad messages stand alone."""
        if len(part) == 1:
            out.add(part, "rejected", reply.code or f"HTTP {reply.status}", attempt,
                    doubt.resent)
            return
        middle = len(part) // 2
        await self._deliver(run, part[:middle], out, None, until, replace(doubt), busy)
        # the brake may trip inside a batch being split: the rest of it stays pending
        if run.observe_midway(out.results):
            raise Deferred
        await self._deliver(run, part[middle:], out, None, until, replace(doubt), busy)

    async def _post(
        self, run: CampaignRun, part: Sequence[Message], body: bytes | None, until: datetime,
    ) -> PostResult:
        """POST ``part`` (``body`` is its stored JSON when it is a whole batch) with a ttl
        that ends at ``until`` (the deadline, or sooner: its send window's close), once the
        rate limit gave it its turn."""
        if self._refused is not None:
            raise Deferred  # a 401 came back while this one waited for its turn
        if not self._may_send():
            # this process is not (or no longer surely) the leader: stop the campaign here;
            # its open batches are for whoever leads next
            run.halt(None)
            raise Deferred
        ttl = max(1, int((until - self._clock()).total_seconds()))
        # Every message has exactly one "fromName" key, and inside a JSON string a quote is
        # always escaped, so this byte pattern only matches keys: one C-speed replace adds the
        # ttl to all messages instead of decoding and re-encoding the batch.
        raw = orjson.dumps(list(part)) if body is None else body
        body = raw.replace(b'"fromName":', b'"ttl":%d,"fromName":' % ttl)
        if run.first_request():
            self._metrics.schedule_lag.observe(
                max(0.0, (self._clock() - run.campaign.send_at).total_seconds()))
        started = time.monotonic()
        reply = await self._client.post(run.route, body)
        self._count_request(run.route, reply, time.monotonic() - started)
        return reply

    def _count_request(self, route: str, reply: PostResult, seconds: float) -> None:
        """Per request, never per message: requests by route and answer, and their time."""
        status = getattr(reply, "status", None)
        code = "200" if isinstance(reply, Accepted) else str(status or "no answer")
        self._metrics.api_requests.labels(self.account, route, code).inc()
        self._metrics.api_duration.labels(self.account, route).observe(seconds)
        if isinstance(reply, Accepted):
            self._metrics.last_send.set(time.time())

    async def _retry_wait(
        self, run: CampaignRun, attempt: int, status: int | None, retry_after: float | None
    ) -> None:
        wait = backoff_delay(attempt, retry_after=retry_after)
        self._lifecycle.announce(
            "batch_retry", "warning", campaign=run.campaign.id, status=status,
            attempt=attempt, wait=round(wait, 3),
        )
        await run.wait_stop(wait)
