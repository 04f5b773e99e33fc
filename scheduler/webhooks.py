"""The delivery-report webhook (SPEC §11.3): SMSBAT POSTs statuses, the journal keeps them.

``POST /delivery-reports/{token}`` takes one SMSBAT status object or an array of them. A wrong
token is a 404 (as if nothing listened there), a body that is not JSON status objects a 400
(nothing of it kept), and a report is durable in the journal before the answer: 200 when every
report named a message we sent, 202 when some named none (they are counted, and kept nowhere).
The same report twice, or an older status after a newer one, changes nothing: a sender may
retry freely. A report that comes before the daemon indexed its message (a batch closes, its
webhook arrives within the index's next two seconds) makes the receiver index first, once,
and try again. Reports of requests that arrive while a write is under way are journaled
together in the next one (one transaction, one delivery-log write): providers push one report
per request, and a commit per request would cap the receiver at the disk's commit rate.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import orjson
from aiohttp import web

from scheduler.dlr import Deliveries, parse_report
from scheduler.journal import JournalError, StatusChange, StatusReport
from scheduler.oplog import get_logger

PATH: Final = "/delivery-reports/{token}"
#: the largest body read (about 40,000 reports in one array)
MAX_BODY: Final = 16 * 1024 * 1024
MAX_REPORTS: Final = 50_000
#: seconds a sender should wait before retrying when the journal cannot take reports now
RETRY_AFTER: Final = 5
#: seconds between re-reads of the token credential prompted by requests with a wrong one
REFRESH_EVERY: Final = 5.0
#: rounds of indexing a receiver runs for reports whose message is not indexed yet
_CATCH_UP_ROUNDS: Final = 64


#: an answer to one webhook request: HTTP status and JSON body (503 also says Retry-After)
Answer = tuple[int, bytes]

_NOT_FOUND: Final = orjson.dumps({"error": {"code": "NOT_FOUND", "message": "No such endpoint"}})
_TOO_LARGE: Final = orjson.dumps({"error": {"code": "TOO_LARGE",
                                            "message": f"bodies are limited to {MAX_BODY} bytes"}})
_UNAVAILABLE: Final = orjson.dumps({"error": {"code": "UNAVAILABLE",
                                              "message": "the journal cannot take reports now"}})
_PREFIX: Final = PATH.removesuffix("{token}")


def _path_token(request: web.BaseRequest) -> str | None:
    """The token of a request to the webhook's path (POST ``/delivery-reports/{token}``), or
    None for any other request (answered 404, as if nothing listened there)."""
    path = request.path
    if request.method != "POST" or not path.startswith(_PREFIX):
        return None
    token = path[len(_PREFIX):]
    return token if token and "/" not in token else None


async def _read_body(request: web.BaseRequest) -> bytes | None:
    """The request's body, or None when it is larger than `MAX_BODY`."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return None


def _response(answer: Answer) -> web.Response:
    """The HTTP response of an answer."""
    status, body = answer
    headers = {"Retry-After": str(RETRY_AFTER)} if status == 503 else None
    return web.Response(status=status, body=body, content_type="application/json",
                        headers=headers)


def _low_level_server(handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
                     ) -> web.Server:
    """aiohttp's low-level server for ``handler``, reading bodies up to `MAX_BODY` (no
    application or router: ~10% less CPU a request, and the receiver has one path)."""
    loop = asyncio.get_running_loop()

    def make(message: Any, payload: Any, protocol: Any, writer: Any, task: Any,
             ) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, loop,
                               client_max_size=MAX_BODY)

    return web.Server(handler, request_factory=make)


class WebhookServer:
    """The receiver on ``host:port``; ``token`` is asked for at every request (None: every
    request is refused, as with a wrong token); ``index`` indexes a few closed batches and
    says how many (0: caught up)."""

    def __init__(
        self, deliveries: Deliveries, token: Callable[[], str | None], host: str, port: int,
        *, index: Callable[[], Awaitable[int]] | None = None,
        refresh: Callable[[], bool] | None = None,
    ) -> None:
        self.deliveries = deliveries
        self.host, self.port = host, port
        self._token = token
        self._index = index
        self._refresh = refresh
        self._refreshed = -REFRESH_EVERY  # monotonic time of the last re-read
        self._catching_up = asyncio.Lock()
        self._gathered = Gatherer(deliveries.record)
        self._runner: web.BaseRunner | None = None
        self._oplog = get_logger("webhooks")
        self.received: Counter[str] = Counter()  # reports (and refused requests) by result

    async def start(self) -> None:
        """Listen; a port in use raises OSError (the caller names the config key)."""
        self._runner = web.ServerRunner(_low_level_server(self._receive), access_log=None,
                                        handle_signals=False)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise

    async def stop(self) -> None:
        """Stop listening (a request being answered finishes first)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _receive(self, request: web.BaseRequest) -> web.Response:
        token = _path_token(request)
        if token is None:
            return _response((404, _NOT_FOUND))
        if not self._known(token):
            self._count("wrong_token")
            return _response((404, _NOT_FOUND))
        return _response(await self._answer(await _read_body(request)))

    async def _answer(self, body: bytes | None) -> Answer:
        """The answer to a request with the right token and ``body`` (None: larger than
        `MAX_BODY`): its reports are journaled (with those of requests answered meanwhile),
        durable before this returns."""
        if body is None:
            self._count("malformed")
            return 413, _TOO_LARGE
        try:
            reports = _reports(body)
        except ValueError as exc:
            self._count("malformed")
            return 400, orjson.dumps({"error": {"code": "MALFORMED", "message": str(exc)}})
        try:
            changes = await self._record(reports)
        except JournalError as exc:
            self._oplog.error("webhook_not_recorded", reports=len(reports), error=str(exc))
            return 503, _UNAVAILABLE
        results = Counter(change.result for change in changes)
        for result, count in results.items():
            self._count(result, count)
        unknown = results["unknown"]
        return 202 if unknown else 200, orjson.dumps(
            {"recorded": len(changes) - unknown, "unknown": unknown})

    def _known(self, given: str) -> bool:
        """True when ``given`` is the token; a wrong one makes the server re-read the
        credential (at most every `REFRESH_EVERY` s: it may have been rotated) and look again."""
        if _same(given, self._token()):
            return True
        now = time.monotonic()
        if self._refresh is None or now - self._refreshed < REFRESH_EVERY:
            return False
        self._refreshed = now
        return self._refresh() and _same(given, self._token())

    async def _record(self, reports: Sequence[StatusReport]) -> list[StatusChange]:
        """Journal the reports; those naming no indexed message get one more chance after
        the journal indexed what it has not yet."""
        changes = await self._gathered.record(reports)
        missing = [i for i, change in enumerate(changes) if change.result == "unknown"]
        if not missing or self._index is None:
            return changes
        await self._catch_up()
        again = await self._gathered.record([reports[i] for i in missing])
        for i, change in zip(missing, again, strict=True):
            changes[i] = change
        return changes

    async def _catch_up(self) -> None:
        """Index closed batches until caught up (one request at a time does it; the others
        wait for it rather than index the same batches again)."""
        assert self._index is not None
        async with self._catching_up:
            for _ in range(_CATCH_UP_ROUNDS):
                if not await self._index():
                    break

    def _count(self, result: str, count: int = 1) -> None:
        self.received[result] += count
        self.deliveries.metrics.webhook_reports.labels(result).inc(count)


Record = Callable[[Sequence[StatusReport]], Awaitable[list[StatusChange]]]


class Gatherer:
    """Calls of ``record`` made while one is under way wait and go together in the next one
    (at most `MAX_REPORTS` reports a call); each caller gets its own reports' changes, or the
    call's exception. The first caller is never kept waiting for company."""

    def __init__(self, record: Record) -> None:
        self._record = record
        self._waiting: list[tuple[Sequence[StatusReport], asyncio.Future[list[StatusChange]]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def record(self, reports: Sequence[StatusReport]) -> list[StatusChange]:
        answer: asyncio.Future[list[StatusChange]] = asyncio.get_running_loop().create_future()
        self._waiting.append((reports, answer))
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        return await answer

    async def _drain(self) -> None:
        try:
            while self._waiting:
                group = self._take()
                try:
                    changes = await self._record([r for reports, _ in group for r in reports])
                # handed to every waiting caller, as if it had made the call: never swallowed
                except Exception as exc:  # noqa: BLE001
                    for _, answer in group:
                        if not answer.done():
                            answer.set_exception(exc)
                    continue
                start = 0
                for reports, answer in group:
                    if not answer.done():  # its request was given up meanwhile
                        answer.set_result(changes[start:start + len(reports)])
                    start += len(reports)
        finally:
            self._draining = None

    def _take(self) -> list[tuple[Sequence[StatusReport], asyncio.Future[list[StatusChange]]]]:
        taken, count = 0, 0
        for reports, _ in self._waiting:
            if taken and count + len(reports) > MAX_REPORTS:
                break
            taken, count = taken + 1, count + len(reports)
        group, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return group


def _same(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def _reports(body: bytes) -> list[StatusReport]:
    """The status reports of a webhook body, or ValueError saying what is wrong with it."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError("the body is not JSON") from None
    items = data if isinstance(data, list) else [data]
    if not 0 < len(items) <= MAX_REPORTS:
        raise ValueError(f"send 1 to {MAX_REPORTS} reports, not {len(items)}")
    reports = []
    for index, item in enumerate(items):
        report = parse_report(item)
        if report is None:
            raise ValueError(
                f"report {index} is not a status: it needs messageId and deliverystatus "
                "(scheduled, processing, delivered, undeliverable or permanenterror)")
        reports.append(report)
    return reports
