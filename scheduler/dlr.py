"""Delivery status (SPEC §11.3): from "accepted" to "delivered, on which channel, at what cost".

`StatusClient` asks SMSBAT's status API about one message and sorts the answer into a closed
union (it never raises, like `CascadeClient`). `Deliveries` journals status reports (they only
move a message forward) and writes each message's first final status once to the delivery log
and the metrics. `Poller` is the daemon's task: it takes the messages whose next poll is due
from the journal, a chunk at a time, asks about them on its own session and under its own rate
limit (never the send path's), and sets each one's next poll: the first ``first_poll`` seconds
after sending, then at doubling intervals up to ``max_interval``, until a final status or the
give-up time, min(send_at + ttl + 1 h, sent + 72 h), when the message is journaled ``unknown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Final
from urllib.parse import quote, urlsplit

import aiohttp
import orjson

from scheduler import __version__
from scheduler.cascade import CONNECT_TIMEOUT_CAP, clip, parse_error_body, parse_retry_after
from scheduler.delivery_log import DeliveryLine, DeliveryLog, DeliveryLogUnwritable
from scheduler.journal import (
    AwaitingMessage,
    JournalError,
    MessageRecord,
    StatusChange,
    StatusJournal,
    StatusReport,
)
from scheduler.metrics import Metrics
from scheduler.oplog import get_logger
from scheduler.ratelimit import RateLimit
from scheduler.vocabulary import (
    DELIVERY_FINAL,
    DELIVERY_STATUSES,
    NO_CHANNEL,
    NO_CURRENCY,
    DeliveryStatus,
)

STATUS_PATH: Final = "/bat/message/{message_id}"
#: polling gives a message up (``unknown``) this long after its campaign's deadline...
AFTER_DEADLINE: Final = timedelta(hours=1)
#: ... or this long after it was sent, whichever comes first
AFTER_SENDING: Final = timedelta(hours=72)
#: seconds the poller waits after the status API failed (doubling), and at most
BACKOFF_FIRST, BACKOFF_CAP = 1.0, 60.0
IDLE_WAIT: Final = 1.0  # seconds between looks for due messages while none is due
CONCURRENCY: Final = 8  # status requests in flight at once, at least...
CONCURRENCY_MAX: Final = 64  # ... and at most
ROUND_TRIP: Final = 0.2  # seconds: the slow end of the API's 50-200 ms (SPEC §13.5)
_LONGEST_ID: Final = 128
MARK_EVERY: Final = 0.5  # seconds between the journal writes that mark lines written
REPLAY_CHUNK: Final = 20  # record_statuses calls whose unlogged lines are written at once
TAIL_BYTES_PER_LINE: Final = 1024  # how far back the log is read for lines written before it


def utcnow() -> datetime:
    """The current UTC time (the poller's clock, unless a test gives it another)."""
    return datetime.now(UTC)


# --------------------------------------------------------------------------------------------
# reading SMSBAT's status body (a poll's answer, or a webhook's)


def parse_report(data: object) -> StatusReport | None:
    """A `StatusReport` from one SMSBAT status object, or None when it is not one.

    ``{"messageId", "deliverystatus", "partscount", "cost", "billAmount", "billCurrency",
    "extendedStatuses": {channel: status}, "timestamp"}``: the channel is the one whose
    extended status says "delivered" (for a message that failed, the last one tried); the cost
    is ``billAmount``, else ``cost``. Channel, parts and cost are kept for final statuses only.
    """
    if not isinstance(data, dict):
        return None
    message_id = data.get("messageId")
    status = data.get("deliverystatus", data.get("deliveryStatus"))
    if type(message_id) is not str or not 0 < len(message_id) <= _LONGEST_ID:
        return None
    status = status.strip().lower() if isinstance(status, str) else None
    if status not in DELIVERY_STATUSES or status == "unknown":  # "unknown" is ours to give
        return None
    delivery: DeliveryStatus = status
    at = _time(data.get("timestamp"))
    if delivery not in DELIVERY_FINAL:
        return StatusReport(message_id, delivery, at=at)
    cost = _number(data.get("billAmount"))
    cost = _number(data.get("cost")) if cost is None else cost
    currency = data.get("billCurrency")
    code = currency.strip().upper()[:8] if isinstance(currency, str) else ""
    return StatusReport(
        message_id, delivery, _channel(data.get("extendedStatuses"), delivery),
        _whole(data.get("partscount")), cost, code or None, at,
    )


def _channel(extended: object, status: DeliveryStatus) -> str | None:
    if not isinstance(extended, dict):
        return None
    if status == "delivered":
        for channel, said in extended.items():
            if said == "delivered" or (isinstance(said, str) and said.strip().lower()
                                       == "delivered"):
                return str(channel).strip().lower()[:32]
        return None
    tried = [channel for channel, said in extended.items()
             if str(said).strip().lower() not in ("not_used", "")]
    return str(tried[-1]).strip().lower()[:32] if tried else None


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if number >= 0 and number == number and number != float("inf") else None


def _whole(value: object) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number.is_integer() and number < 2**31 else None


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --------------------------------------------------------------------------------------------
# the status API client


@dataclass(frozen=True, slots=True)
class Found:
    """A status answer for the message asked about."""

    report: StatusReport


@dataclass(frozen=True, slots=True)
class Missing:
    """404: the status API does not know the message (yet): ask again later."""


@dataclass(frozen=True, slots=True)
class Unreadable:
    """An answer that says nothing usable about this message (a body that is no status,
    another 4xx): ask again later."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Later:
    """429, 5xx, a timeout or no connection: the status API is in trouble; wait, then retry."""

    status: int | None
    retry_after: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    """401/403: the status API refused the credentials."""

    status: int
    reason: str


StatusAnswer = Found | Missing | Unreadable | Later | Refused


class StatusClient:
    """One aiohttp session for the status API: its own connections, apart from sending's."""

    def __init__(
        self, base_url: str, headers: Callable[[], Mapping[str, str]], *, timeout: float,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._host = urlsplit(self.base_url).netloc.rpartition("@")[2]
        self._headers = headers
        self._timeout = timeout
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> StatusClient:
        timeout = aiohttp.ClientTimeout(
            total=self._timeout, sock_connect=min(self._timeout / 2, CONNECT_TIMEOUT_CAP),
        )
        self._session = aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=self._concurrency),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(
        self, message_id: str, credentials: Mapping[str, str] | None = None,
    ) -> StatusAnswer:
        """Ask about one message (with ``credentials``, else the client's); never raises for
        HTTP or network trouble."""
        if self._session is None:
            raise RuntimeError("StatusClient is not open: use `async with StatusClient(...)`")
        url = self.base_url + STATUS_PATH.format(message_id=quote(message_id, safe=""))
        headers = {"Accept": "application/json",
                   "User-Agent": f"cascade-scheduler/{__version__}",
                   **(self._headers() if credentials is None else credentials)}
        try:
            async with self._session.get(url, headers=headers, allow_redirects=False) as answer:
                body = await answer.read()
                return self._classify(message_id, answer.status,
                                      answer.headers.get("Retry-After"), body)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
            return Later(None, None, f"cannot connect to {self._host}")
        except TimeoutError:
            return Later(None, None, f"no answer from {self._host} in {self._timeout:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            return Later(None, None, self._redact(f"{type(exc).__name__}: {exc}"))

    def _classify(
        self, message_id: str, status: int, retry_after: str | None, body: bytes,
    ) -> StatusAnswer:
        if status == 200:
            try:
                report = parse_report(orjson.loads(body))
            except orjson.JSONDecodeError:
                report = None
            if report is not None and report.message_id == message_id:
                return Found(report)
            return Unreadable(status, "HTTP 200 with a body that is not this message's status")
        reason = self._redact(f"HTTP {status}: {parse_error_body(body).message}")
        if status == 404:
            return Missing()
        if status in (401, 403):
            return Refused(status, reason)
        if status in (408, 429) or status >= 500:
            return Later(status, parse_retry_after(retry_after), reason)
        return Unreadable(status, reason)

    def _redact(self, text: str) -> str:
        for secret in self._headers().values():
            if secret:
                text = text.replace(secret, "***")
        return clip(text)


def answer_code(answer: StatusAnswer | None) -> str:
    """The ``code`` label of ``cascade_status_requests_total`` for an answer."""
    if isinstance(answer, Found):
        return "200"
    if isinstance(answer, Missing):
        return "404"
    if isinstance(answer, Unreadable | Refused):
        return str(answer.status)
    if isinstance(answer, Later):
        return "error" if answer.status is None else str(answer.status)
    return "none"


# --------------------------------------------------------------------------------------------
# journal, log and count


class Deliveries:
    """Journals status reports; each message's first final status is logged and counted once.
    A cost reported without its currency is taken in ``currency`` (the account's, from
    ``[delivery_reports] currency``) when given."""

    def __init__(self, journal: StatusJournal, log: DeliveryLog, metrics: Metrics,
                 clock: Callable[[], datetime] = utcnow, currency: str | None = None) -> None:
        self.journal = journal
        self.log = log
        self.metrics = metrics
        self.clock = clock
        self.currency = currency
        if currency is not None:
            metrics.cost.labels(currency)  # exported at 0 from the start
        self._oplog = get_logger("delivery_status")
        self._written: list[str] = []  # keys of record_statuses calls whose lines are written
        self._marking: asyncio.Task[None] | None = None
        self._flushing = asyncio.Event()

    async def record(self, reports: Sequence[StatusReport]) -> list[StatusChange]:
        """Journal ``reports`` (durable on return), then write a ``delivery`` line per message
        that reached its first final status, then (off the caller's path) mark those lines
        written in the journal. A crash before the mark leaves them for `replay`; a delivery
        log that cannot be written now leaves them too (said as ``delivery_lines_deferred``)."""
        if not reports:
            return []
        if self.currency is not None:
            reports = [replace(r, currency=self.currency)
                       if r.cost is not None and r.currency is None else r for r in reports]
        key = uuid.uuid4().hex
        changes = await self.journal.record_statuses(reports, key)
        now = self.clock()
        lines = [_line(change.message, report, now)
                 for report, change in zip(reports, changes, strict=True)
                 if change.result == "final" and change.message is not None]
        self._count(lines)
        if lines:
            try:
                self.log.deliveries(lines)
            except DeliveryLogUnwritable as exc:
                self._oplog.error("delivery_lines_deferred", count=len(lines), error=str(exc))
            else:
                self._mark([key])
        return changes

    async def replay(self, before: datetime) -> int:
        """Write the ``delivery`` lines of final statuses journaled before ``before`` and never
        marked written (the process died between the two, or the log could not take them),
        except those the log's tail already holds; mark them all. How many were written.
        Raises `JournalError` or `DeliveryLogUnwritable` (the rest stay for the next time)."""
        written = 0
        while waiting := await self.journal.unlogged_statuses(before, REPLAY_CHUNK):
            seen = self.log.recent_delivery_ids(TAIL_BYTES_PER_LINE * len(waiting))
            lines = [_line(u.message, u.report, u.recorded_at) for u in waiting
                     if u.message.message_id not in seen]
            self._count(lines)
            self.log.deliveries(lines)
            await self.journal.mark_statuses_logged(list({u.key: 0 for u in waiting}))
            written += len(lines)
        if written:
            self._oplog.info("delivery_lines_replayed", count=written)
        return written

    def _mark(self, keys: list[str]) -> None:
        """Mark these calls' lines written, together with others written meanwhile, in the
        background: one journal write every `MARK_EVERY` s at most, whatever the rate of
        reports (each write is a commit of its own; a crash before it leaves lines that
        `replay` finds in the log's tail)."""
        self._written += keys
        if self._marking is None:
            self._marking = asyncio.create_task(self._mark_written())

    async def _mark_written(self) -> None:
        try:
            while self._written:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._flushing.wait(), MARK_EVERY)
                keys, self._written = self._written, []
                try:
                    await self.journal.mark_statuses_logged(keys)
                except JournalError as exc:  # left unmarked: `replay` checks the log's tail
                    self._oplog.warning("delivery_mark_failed", count=len(keys),
                                        error=str(exc))
        finally:
            self._marking = None

    async def flush(self) -> None:
        """Write the marks of the lines written so far to the journal now."""
        self._flushing.set()
        try:
            while self._marking is not None:
                await asyncio.shield(self._marking)
        finally:
            self._flushing.clear()

    def _count(self, lines: Sequence[DeliveryLine]) -> None:
        """Move the metrics once per status, channel and currency, never per message."""
        groups = Counter((line.status, line.channel) for line in lines)
        for (status, channel), count in groups.items():
            self.metrics.deliveries.labels(status, channel or NO_CHANNEL).inc(count)
        costs: dict[str, float] = {}
        for line in lines:
            if line.cost:
                currency = line.currency or NO_CURRENCY
                costs[currency] = costs.get(currency, 0.0) + line.cost
        for currency, total in costs.items():
            self.metrics.cost.labels(currency).inc(total)


def _line(message: MessageRecord, report: StatusReport, now: datetime) -> DeliveryLine:
    """The ``delivery`` line of a message's first final status (``now``: when it was taken,
    for a report without a time of its own)."""
    took = ((report.at or now) - message.sent_at).total_seconds()
    currency = report.currency or (NO_CURRENCY if report.cost else None)
    return DeliveryLine(message.campaign, message.tracking_id, message.message_id,
                        report.status, report.channel or NO_CHANNEL, report.cost, currency,
                        message.phone, max(0.0, took))


# --------------------------------------------------------------------------------------------
# polling


@dataclass(frozen=True, slots=True)
class PollSettings:
    """How the poller paces itself (``[delivery_reports]``)."""

    rate: float = 10.0  # status requests a second
    first_poll: float = 30.0  # seconds after sending
    max_interval: float = 1800.0  # the interval doubles up to this

    @property
    def chunk(self) -> int:
        """Due messages taken from the journal at once: about five seconds of requests."""
        return max(10, min(500, int(self.rate * 5)))

    @property
    def concurrency(self) -> int:
        """Status requests in flight at once: enough to reach ``rate`` when each takes
        `ROUND_TRIP` (Little's law, plus one), between `CONCURRENCY` and `CONCURRENCY_MAX`."""
        return max(CONCURRENCY, min(CONCURRENCY_MAX, math.ceil(self.rate * ROUND_TRIP) + 1))


def give_up_at(awaiting: AwaitingMessage) -> datetime:
    """When polling stops and the message becomes ``unknown``: min(send_at + ttl + 1 h,
    72 h after sending)."""
    return min(awaiting.deadline + AFTER_DEADLINE, awaiting.message.sent_at + AFTER_SENDING)


def next_poll(awaiting: AwaitingMessage, now: datetime, settings: PollSettings) -> datetime:
    """After its poll number ``polls + 1``: the interval doubles (first_poll x 2, x 4, ...) up
    to ``max_interval``; never past the give-up time, so that comes on time."""
    interval = settings.first_poll * 2.0 ** min(awaiting.polls + 1, 32)
    step = timedelta(seconds=min(interval, settings.max_interval))
    return min(now + step, give_up_at(awaiting))


async def _client_credentials(campaign_id: str) -> None:
    """Every campaign's messages are asked about with the client's own headers."""
    return None


class Poller:
    """Asks the status API about every due message, forever; only while ``leading()``."""

    def __init__(
        self, journal: StatusJournal, client: StatusClient, deliveries: Deliveries,
        settings: PollSettings, *, leading: Callable[[], bool] = lambda: True,
        clock: Callable[[], datetime] = utcnow,
        credentials_of: Callable[[str], Awaitable[Mapping[str, str] | None]] | None = None,
    ) -> None:
        """``credentials_of``: the headers to ask about a campaign's messages with (its
        account's key, SPEC §13.3; None: the client's)."""
        self.credentials_of = credentials_of or _client_credentials
        self.journal = journal
        self.client = client
        self.deliveries = deliveries
        self.settings = settings
        self.leading = leading
        self.clock = clock
        self.log = get_logger("delivery_status")
        self._limiter = RateLimit(settings.rate)
        self._failures = 0  # rounds in a row the status API failed

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; a journal or log that fails is said and retried."""
        while not stop.is_set():
            wait = IDLE_WAIT
            if self.leading():
                try:
                    wait = await self.round()
                except JournalError as exc:
                    self.log.warning("status_poll_failed", error=str(exc))
                    wait = BACKOFF_CAP / 4
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)

    async def round(self) -> float:
        """One chunk of due messages: give up the overdue, ask about the others, journal and
        log what came back, set the next polls. Returns the seconds to wait before the next
        round (0: more may be due right away)."""
        now = self.clock()
        due = await self.journal.messages_awaiting_status(now, self.settings.chunk)
        if not due:
            return IDLE_WAIT
        overdue = [a for a in due if now >= give_up_at(a)]
        await self.deliveries.record(
            [StatusReport(a.message.message_id, "unknown", at=now) for a in overdue])
        live = [a for a in due if now < give_up_at(a)]
        answers = await self._ask(live)
        reports = [answer.report for answer in answers if isinstance(answer, Found)]
        await self.deliveries.record(reports)
        now = self.clock()
        again = [
            (awaiting.message.message_id, next_poll(awaiting, now, self.settings))
            for awaiting, answer in zip(live, answers, strict=True)
            if isinstance(answer, Missing | Unreadable)
            or (isinstance(answer, Found) and answer.report.status not in DELIVERY_FINAL)
        ]
        if again:
            await self.journal.schedule_polls(again)
        return self._pause(answers)

    async def _ask(self, due: Sequence[AwaitingMessage]) -> list[StatusAnswer | None]:
        """Ask about each message under the rate limit, a few at a time; once the API is in
        trouble the rest are not asked (None) and stay due."""
        gate = asyncio.Semaphore(self.settings.concurrency)
        stalled = False
        credentials = {campaign: await self.credentials_of(campaign)
                       for campaign in {awaiting.message.campaign for awaiting in due}}

        async def ask(awaiting: AwaitingMessage) -> StatusAnswer | None:
            nonlocal stalled
            async with gate:
                if stalled:
                    return None
                await self._limiter.acquire()
                if stalled:
                    return None
                answer = await self.client.get(
                    awaiting.message.message_id, credentials[awaiting.message.campaign])
                self.deliveries.metrics.status_requests.labels(answer_code(answer)).inc()
                stalled = stalled or isinstance(answer, Later | Refused)
                return answer

        return list(await asyncio.gather(*(ask(a) for a in due)))

    def _pause(self, answers: Sequence[StatusAnswer | None]) -> float:
        """0 when the status API answered; else how long to leave it alone, said once."""
        trouble = [a for a in answers if isinstance(a, Later | Refused)]
        if not trouble:
            if self._failures:
                self.log.info("status_api_answering", after_failures=self._failures)
            self._failures = 0
            return 0.0
        self._failures += 1
        first = trouble[0]
        if isinstance(first, Refused):
            self.log.error("status_api_refused", status=first.status, reason=first.reason,
                           retry_in=BACKOFF_CAP)
            return BACKOFF_CAP
        wait = min(BACKOFF_CAP, BACKOFF_FIRST * 2.0 ** (self._failures - 1))
        wait = max(wait, min(first.retry_after or 0.0, BACKOFF_CAP * 5))
        self.log.warning("status_poll_retry", status=first.status, reason=first.reason,
                         retry_in=wait, failures=self._failures)
        return wait
