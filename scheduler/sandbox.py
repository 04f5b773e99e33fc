"""The sandbox: a local emulator of the Cascade API (SPEC §10) with fault injection.

It answers both routes the way the documentation describes (credential check, validation with the
documented error body, UUID message ids, a simulated channel per message) and can misbehave on
purpose: latency, dropped connections, 429 rate limiting, 5xx failures, rejected phones and 200
answers that leave an id out. It is also the sink of the 1M-message benchmark, so the success path
does no per-message work beyond validating, answering and noting two bytes per message.

It also answers SMSBAT's status API (SPEC §11.3), ``GET /bat/message/{messageId}``: every accepted
message goes scheduled -> processing -> delivered (on its channel), undeliverable or
permanenterror after a delay of its own, with the channels the cascade tried, SMS parts and a
cost. A message's fate and delay follow from its id (and ``seed``), so asking twice gives the
same story; what is kept per accepted request is its time, route and a channel and SMS-part
count per message (two bytes a message). With ``dlr_url`` it also pushes each final status
there as a webhook would (arrays of reports), with faults: reports pushed twice, an older
"processing" pushed after the final one, reports never pushed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import heapq
import hmac
import math
import random
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

import aiohttp
import orjson
from aiohttp import web

from scheduler.campaign import MESSAGE_TYPES, SURVEY_OPTION_MAX, SURVEY_TEXT_MAX
from scheduler.cascade import ENDPOINTS
from scheduler.config import CREDENTIAL_SOURCES, Route
from scheduler.phones import E164
from scheduler.sandbox_options import SandboxOptions
from scheduler.vocabulary import CHANNELS as CASCADE_CHANNELS

MAX_BATCH: Final = 1000
#: request bodies up to this size are read (1000 long messages fit easily)
MAX_BODY: Final = 16 * 1024 * 1024
#: seconds `stop` lets in-flight requests finish (only injected latency makes them slow)
SHUTDOWN_GRACE: Final = 1.0
#: the channels of each route, in the order the cascade tries them
CHANNELS: Final[dict[Route, tuple[str, ...]]] = {
    "standard": CASCADE_CHANNELS,
    "tg-viber": CASCADE_CHANNELS[:2],  # telegram, viber
}
#: the status API's route (SMSBAT's "Check Message Status")
STATUS_PATH: Final = "/bat/message/{message_id}"
#: what one delivered message part costs on each channel (a made-up tariff, in `CURRENCY`)
PRICES: Final[dict[str, float]] = {
    "telegram": 0.25, "viber": 0.55, "viber_bm": 0.85, "rcs": 0.75, "sms": 1.15,
}
CURRENCY: Final = "UAH"
#: SMS parts: GSM-7 (taken as: ASCII) fits 160 characters, or 153 a part when split; UCS-2 70/67
_SMS_SINGLE, _SMS_PART = {True: 160, False: 70}, {True: 153, False: 67}
#: the share of a message's delay it spends "scheduled" before "processing"
_SCHEDULED_SHARE: Final = 0.2
_ID_COUNTER_BITS: Final = 48
#: pushed reports: at most this many in one POST; failed POSTs are tried this often
_PUSH_BATCH: Final = 500
_PUSH_TRIES: Final = 5
_CREDENTIAL_HEADERS: Final = tuple(header for _, _, header in CREDENTIAL_SOURCES)
_API_KEY_HEADER: Final = "X-Authorization-Key"
_TYPES: Final = frozenset(MESSAGE_TYPES)
_BAD_GATEWAY: Final = (
    b"<html><head><title>502 Bad Gateway</title></head>"
    b"<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
)


class InvalidMessage(ValueError):
    """One message (or the body as a whole) breaks the API's rules; becomes a 400."""

    def __init__(
        self, code: str, message: str, field: str | None = None, status: int = 400
    ) -> None:
        self.code = code
        self.field = field
        self.status = status
        super().__init__(message)


class TokenBucket:
    """A token bucket on the monotonic clock: ``rate`` tokens a second, at most ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()

    def take(self) -> float:
        """Take a token and return 0, or return the seconds until one is available."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


@dataclass(frozen=True, slots=True)
class _Request:
    """What the status API keeps of one accepted request: when, which route, and for each
    message (in id order) its channel's index in ``CHANNELS[route]`` and its SMS parts."""

    accepted_at: float  # Unix time
    route: Route
    first: int  # the counter (last 48 bits) of its first message id
    channels: bytes
    parts: bytes
    key: str = ""  # the `key_id` of the key that sent it


@dataclass(frozen=True, slots=True)
class Fate:
    """How one message's story ends, and when: its final status ``delay`` seconds after it
    was accepted."""

    status: str  # delivered | undeliverable | permanenterror
    delay: float


class Sandbox:
    """The emulator server: start it, point a client at `base_url`, read the counters after."""

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.api_key = options.api_key
        #: keys accepted beside `api_key` (a test may change both while it runs)
        self.api_keys: set[str] = set(options.api_keys)
        #: requests by the `key_id` of their API key (every request, answered or not)
        self.requests_by_key: collections.Counter[str] = collections.Counter()
        self._keys_file: tuple[tuple[int, int], frozenset[str]] | None = None
        self.accepted: collections.Counter[str] = collections.Counter()
        self.requests = 0
        self.dropped = 0
        self.statuses: collections.Counter[int] = collections.Counter()
        #: answers of the status API, by HTTP status
        self.status_answers: collections.Counter[int] = collections.Counter()
        self._rng = random.Random(options.seed)
        self._bucket = _bucket_for(options.rate_limit)
        self._status_bucket = _bucket_for(options.status_rate_limit)
        self._fate_key = str(options.seed).encode()
        #: accepted requests by the first 24 characters of their message ids
        self._requests: dict[str, _Request] = {}
        self.pusher = None if options.dlr_url is None else ReportPusher(self, options.dlr_url)
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._record: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        if self._base_url is None:
            raise RuntimeError("the sandbox is not running: await start() first")
        return self._base_url

    def reset_stats(self) -> None:
        """Forget every counter (accepted, requests, statuses, dropped)."""
        self.accepted.clear()
        self.statuses.clear()
        self.status_answers.clear()
        self.requests = 0
        self.dropped = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: a free port) and return the base URL."""
        if self._runner is not None:
            return self.base_url
        app = web.Application(client_max_size=MAX_BODY)
        for route, path in ENDPOINTS.items():
            app.router.add_post(path, self._handler(route))
        app.router.add_get(STATUS_PATH, self._status)
        app.router.add_route("*", "/{tail:.*}", _not_found)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self._base_url = f"http://{_url_host(bound_host)}:{bound_port}"
        self._open_record()
        if self.pusher is not None:
            self.pusher.start()
        return self._base_url

    async def stop(self) -> None:
        """Stop listening and close the record file; safe to call twice."""
        runner, self._runner = self._runner, None
        self._base_url = None
        if self.pusher is not None:
            await self.pusher.stop()
        if runner is not None:
            await runner.cleanup()
        if self._record is not None:
            self._record.close()
            self._record = None

    def _open_record(self) -> None:
        path = self.options.record
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._record = path.open("ab")

    def _handler(self, route: Route) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            response = await self._answer(request, route)
            if response is not None:
                self.statuses[response.status] += 1
                return response
            self.dropped += 1
            if request.transport is not None:
                request.transport.close()
            # the client already saw the connection close; nothing is written
            raise web.HTTPServiceUnavailable()

        return handle

    async def _answer(self, request: web.Request, route: Route) -> web.Response | None:
        """The response to one API request, or None to hang up without answering."""
        self.requests += 1
        if self.options.latency_ms:
            await asyncio.sleep(self.options.latency_ms / 1000)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = f"Request bodies are limited to {MAX_BODY} bytes"
            return _error(413, "PAYLOAD_TOO_LARGE", limit)
        if not self._authorized(request):
            return _error(401, "UNAUTHORIZED", _unauthorized_message(request))
        if self._chance(self.options.drop_rate):
            return None
        if self._bucket is not None and (wait := self._bucket.take()):
            return _too_many_requests(self._bucket.rate, wait)
        if self._chance(self.options.fail_rate):
            return self._server_error()
        try:
            messages = self._validate(request, body)
        except InvalidMessage as exc:
            return _error(exc.status, exc.code, str(exc), exc.field)
        return self._accept(messages, route, key_id(request.headers.get(_API_KEY_HEADER, "")))

    def _authorized(self, request: web.Request) -> bool:
        headers = request.headers
        given = headers.get(_API_KEY_HEADER, "")
        self.requests_by_key[key_id(given)] += 1
        keys = self._accepted_keys()
        if keys is None:
            return any(headers.get(name, "").strip() for name in _CREDENTIAL_HEADERS)
        # every key compared (in constant time each): no early exit tells which one was close
        return sum(hmac.compare_digest(given.encode(), key.encode()) for key in keys) > 0

    def _accounts_apart(self) -> bool:
        """True when several keys are accepted (``api_keys``, a keys file): then each key's
        messages are its own."""
        return bool(self.api_keys) or self.options.api_keys_file is not None

    def _accepted_keys(self) -> set[str] | None:
        """The keys accepted now; None: any non-empty credential."""
        keys = set(self.api_keys)
        if self.api_key is not None:
            keys.add(self.api_key)
        path = self.options.api_keys_file
        if path is not None:
            keys |= self._read_keys_file(path)
        elif not keys:
            return None
        return keys

    def _read_keys_file(self, path: Path) -> frozenset[str]:
        """The keys in ``path``, read again when its size or time changed (none if it is
        missing)."""
        try:
            stat = path.stat()
        except OSError:
            return frozenset()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._keys_file is None or self._keys_file[0] != stamp:
            try:
                lines = path.read_text("utf-8").splitlines()
            except (OSError, UnicodeDecodeError):
                lines = []
            self._keys_file = stamp, frozenset(line.strip() for line in lines if line.strip())
        return self._keys_file[1]

    def _chance(self, rate: float) -> bool:
        return rate > 0.0 and self._rng.random() < rate

    def _server_error(self) -> web.Response:
        status = self._rng.choice((500, 502, 503))
        if status == 502:
            return web.Response(status=502, body=_BAD_GATEWAY, content_type="text/html")
        if status == 503:
            body = {"status": 503, "error": "Service Unavailable",
                    "message": "The service is temporarily overloaded", "code": 5003}
            return _json(503, body, headers={"Retry-After": "1"})
        return _error(500, "INTERNAL_ERROR", "Internal server error")

    def _validate(self, request: web.Request, body: bytes) -> list[dict[str, Any]]:
        if request.content_type != "application/json":
            raise InvalidMessage(
                "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json", status=415
            )
        messages = _parse_batch(body)
        reject = self.options.reject_phones
        for index, message in enumerate(messages):
            check_message(message, index, reject)
        if self.options.reject_rate:
            for index, message in enumerate(messages):
                if self._unreachable(message["toPhone"]):
                    raise InvalidMessage(
                        "INVALID_PHONE", f"Invalid phone number format (message {index} "
                        f"(id {message['id'][:64]}))", "toPhone")
        return messages

    def _unreachable(self, phone: str) -> bool:
        """True for the ``reject_rate`` share of phones (always the same ones for a seed)."""
        digest = hashlib.blake2b(phone.encode(), digest_size=8, key=self._fate_key).digest()
        return int.from_bytes(digest) < self.options.reject_rate * 2**64

    def _accept(
        self, messages: list[dict[str, Any]], route: Route, key: str = "",
    ) -> web.Response:
        channels = CHANNELS[route]
        prefix, first, ids = _id_block(len(messages))
        results = [
            {"messageId": message_id, "trackinId": message["id"]}
            for message, message_id in zip(messages, ids, strict=True)
        ]
        self.accepted.update(message["id"] for message in messages)
        accepted_at = time.time()
        self._requests[prefix] = _Request(
            accepted_at, route, first,
            bytes(zlib.crc32(m["toPhone"].encode()) % len(channels) for m in messages),
            bytes(min(255, sms_parts(m.get("text") or "")) for m in messages), key,
        )
        if self.pusher is not None:
            self.pusher.schedule(ids, accepted_at)
        if self._record is not None:
            self._write_record(messages, results, channels, route, key)
        if self._chance(self.options.omit_rate):
            del results[self._rng.randrange(len(results))]
        return web.Response(body=orjson.dumps(results), content_type="application/json")

    def _write_record(
        self,
        messages: list[dict[str, Any]],
        results: list[dict[str, str]],
        channels: tuple[str, ...],
        route: Route,
        key: str,
    ) -> None:
        assert self._record is not None
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        lines = [
            orjson.dumps({
                "ts": stamp,
                "messageId": result["messageId"],
                "trackinId": message["id"],
                "toPhone": message["toPhone"],
                "messageType": message["messageType"],
                "channel": channel_for(message["toPhone"], channels),
                "route": route,
                "ttl": message.get("ttl"),
                "key": key,  # which API key sent it (`key_id`: never the key itself)
            })
            for message, result in zip(messages, results, strict=True)
        ]
        lines.append(b"")
        self._record.write(b"\n".join(lines))
        self._record.flush()


    # --- the status API -------------------------------------------------------------------

    async def _status(self, request: web.Request) -> web.Response:
        response = await self._status_answer(request)
        self.status_answers[response.status] += 1
        return response

    async def _status_answer(self, request: web.Request) -> web.Response:
        """``GET /bat/message/{messageId}``: faults first, as on the send routes."""
        if self.options.latency_ms:
            await asyncio.sleep(self.options.latency_ms / 1000)
        if not self._authorized(request):
            return _error(401, "UNAUTHORIZED", _unauthorized_message(request))
        if self._status_bucket is not None and (wait := self._status_bucket.take()):
            return _too_many_requests(self._status_bucket.rate, wait)
        if self._chance(self.options.status_fail_rate):
            return self._server_error()
        message_id = request.match_info["message_id"]
        body = self.message_status(message_id, time.time())
        if body is not None and self._accounts_apart():
            # several accounts: each sees only its own messages, as on the real API
            found = self._find(message_id)
            asker = key_id(request.headers.get(_API_KEY_HEADER, ""))
            if found is not None and found[0].key != asker:
                body = None
        if body is None:
            return _error(404, "NOT_FOUND", f"No message with id {message_id[:64]}")
        return _json(200, body)

    def fate(self, message_id: str) -> Fate:
        """Where ``message_id``'s story ends, and after how many seconds: the same answer
        every time for the same id and seed."""
        digest = hashlib.blake2b(message_id.encode(), digest_size=8, key=self._fate_key).digest()
        luck = int.from_bytes(digest[:4]) / 2**32
        pace = int.from_bytes(digest[4:]) / 2**32
        options = self.options
        if luck < options.undeliverable_rate:
            status = "undeliverable"
        elif luck < options.undeliverable_rate + options.permanent_error_rate:
            status = "permanenterror"
        else:
            status = "delivered"
        return Fate(status, options.dlr_delay * (0.5 + pace))

    def message_status(self, message_id: str, now: float) -> dict[str, Any] | None:
        """The status API's answer for ``message_id`` at Unix time ``now`` (None: unknown)."""
        found = self._find(message_id)
        if found is None:
            return None
        accepted, index = found
        channels = CHANNELS[accepted.route]
        channel = channels[accepted.channels[index]]
        fate = self.fate(message_id)
        elapsed = now - accepted.accepted_at
        if elapsed >= fate.delay:
            status, tried = fate.status, _tried(fate.status, channels, channel)
        elif elapsed >= fate.delay * _SCHEDULED_SHARE:
            status, tried = "processing", {channels[0]: "processing"}
        else:
            status, tried = "scheduled", {}
        parts = accepted.parts[index] if channel == "sms" else 1
        cost = round(PRICES[channel] * parts, 2) if status == "delivered" else 0.0
        body: dict[str, Any] = {
            "messagelistId": int(message_id[:8], 16), "messageId": message_id,
            "deliverystatus": status, "partscount": parts, "cost": cost,
            "billAmount": cost, "billCurrency": CURRENCY,
        }
        if tried:
            body["extendedStatuses"] = {c: tried.get(c, "not_used") for c in channels}
            body["fallbacks"] = [{"type": c, "status": s} for c, s in tried.items()][1:]
        if status in ("delivered", "undeliverable", "permanenterror"):
            body["timestamp"] = _iso(accepted.accepted_at + fate.delay)
        return body

    def _find(self, message_id: str) -> tuple[_Request, int] | None:
        """The accepted request that gave out ``message_id``, and the message's index in it."""
        accepted = self._requests.get(message_id[:24])
        if accepted is None or len(message_id) != 36:
            return None
        try:
            counter = int(message_id[24:], 16)
        except ValueError:
            return None
        index = (counter - accepted.first) & ((1 << _ID_COUNTER_BITS) - 1)
        return (accepted, index) if index < len(accepted.channels) else None


class ReportPusher:
    """Pushes each accepted message's final status to ``url`` when it is reached, in arrays,
    as SMSBAT's webhook would; with the sandbox's ``dlr_*`` faults. Counters: ``pushed``
    (reports a 2xx took), ``answers`` (per HTTP status), ``failed`` (reports given up)."""

    def __init__(self, sandbox: Sandbox, url: str) -> None:
        self.sandbox = sandbox
        self.url = url
        self.pushed = 0
        self.failed = 0
        self.answers: collections.Counter[int] = collections.Counter()
        self._due: list[tuple[float, int, str, str]] = []  # (when, order, message id, status)
        self._order = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start pushing (from the sandbox's event loop)."""
        self._task = asyncio.create_task(self._run(), name="sandbox-dlr-push")

    async def stop(self) -> None:
        """Stop pushing; what is not pushed yet never will be."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def waiting(self) -> int:
        """Reports not pushed yet."""
        return len(self._due)

    def schedule(self, message_ids: list[str], accepted_at: float) -> None:
        """Plan the reports of freshly accepted messages (faults decided now)."""
        options, chance = self.sandbox.options, self.sandbox._chance
        for message_id in message_ids:
            final = accepted_at + self.sandbox.fate(message_id).delay
            if not chance(options.dlr_missing_rate):
                self._add(final, message_id, "final")
                if chance(options.dlr_duplicate_rate):
                    self._add(final + 0.05, message_id, "final")
            if chance(options.dlr_reorder_rate):
                self._add(final + 0.1, message_id, "processing")
        self._wake.set()

    def _add(self, when: float, message_id: str, status: str) -> None:
        self._order += 1
        heapq.heappush(self._due, (when, self._order, message_id, status))

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while True:
                batch = self._take(time.time())
                if batch:
                    await self._push(session, batch)
                    continue
                self._wake.clear()
                wait = self._due[0][0] - time.time() if self._due else 60.0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.01, wait))

    def _take(self, now: float) -> list[dict[str, Any]]:
        """The reports due by ``now`` (at most one POST's worth), as webhook bodies."""
        bodies: list[dict[str, Any]] = []
        while self._due and self._due[0][0] <= now and len(bodies) < _PUSH_BATCH:
            when, _, message_id, status = heapq.heappop(self._due)
            body = self.sandbox.message_status(message_id, max(now, when))
            if body is None:
                continue
            if status == "processing":  # the older report, late
                body = {"messageId": message_id, "deliverystatus": "processing"}
            bodies.append(body)
        return bodies

    async def _push(self, session: aiohttp.ClientSession, bodies: list[dict[str, Any]]) -> None:
        """POST one array; a failure is tried again a few times, then given up."""
        data = orjson.dumps(bodies)
        for attempt in range(_PUSH_TRIES):
            try:
                async with session.post(self.url, data=data,
                                        headers={"Content-Type": "application/json"}) as answer:
                    self.answers[answer.status] += 1
                    if answer.status < 300:
                        self.pushed += len(bodies)
                        return
            except (aiohttp.ClientError, OSError, TimeoutError):
                self.answers[0] += 1
            await asyncio.sleep(0.2 * 2**attempt)
        self.failed += len(bodies)


def _tried(status: str, channels: tuple[str, ...], channel: str) -> dict[str, str]:
    """What each channel the cascade tried says, in order, for a final ``status``."""
    if status == "permanenterror":
        return {channels[0]: "permanenterror"}
    if status == "undeliverable":
        return dict.fromkeys(channels, "undeliverable")
    reached = channels.index(channel)
    return {**dict.fromkeys(channels[:reached], "undeliverable"), channel: "delivered"}


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def sms_parts(text: str) -> int:
    """How many SMS parts ``text`` takes: 160 GSM-7 (here: ASCII) characters in one, 153 a
    part when split; 70 and 67 for anything else (UCS-2). Flashcall's empty text: 1."""
    gsm = text.isascii()
    if len(text) <= _SMS_SINGLE[gsm]:
        return 1
    return math.ceil(len(text) / _SMS_PART[gsm])


def message_ids(count: int) -> list[str]:
    """``count`` distinct version-4 UUIDs: one random UUID per request, the last 48 bits counted.

    ``uuid.uuid4()`` per message cost 3.7 µs, more than everything else the sink does.
    """
    return _id_block(count)[2]


def _id_block(count: int) -> tuple[str, int, list[str]]:
    """`message_ids`, with the ids' shared first 24 characters and the first one's counter."""
    head = uuid.uuid4().hex
    prefix = f"{head[:8]}-{head[8:12]}-{head[12:16]}-{head[16:20]}-"
    start = int(head[20:], 16)
    mask = (1 << _ID_COUNTER_BITS) - 1
    return prefix, start, [f"{prefix}{(start + i) & mask:012x}" for i in range(count)]


def channel_for(phone: str, channels: tuple[str, ...]) -> str:
    """The simulated channel that delivers to ``phone``: the same phone always gets the same."""
    return channels[zlib.crc32(phone.encode()) % len(channels)]


def _parse_batch(body: bytes) -> list[dict[str, Any]]:
    try:
        messages = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidMessage("INVALID_JSON", "The request body is not valid JSON") from None
    if type(messages) is not list:
        raise InvalidMessage("INVALID_REQUEST", "The request body must be a JSON array of messages")
    if not 1 <= len(messages) <= MAX_BATCH:
        raise InvalidMessage(
            "INVALID_REQUEST", f"A request carries 1 to {MAX_BATCH} messages, not {len(messages)}"
        )
    return messages


def check_message(message: object, index: int, reject_phones: frozenset[str]) -> None:
    """Raise `InvalidMessage` when one message breaks the documented rules."""
    if type(message) is not dict:
        raise InvalidMessage("INVALID_PARAMETER", f"Message {index} is not a JSON object")
    tracking = message.get("id")
    if type(tracking) is not str or not tracking:
        raise InvalidMessage("INVALID_PARAMETER", f"Message {index}: id is required", "id")
    where = f"message {index} (id {tracking[:64]})"
    if not _nonempty(message.get("fromName")):
        raise InvalidMessage("INVALID_PARAMETER", f"fromName is required ({where})", "fromName")
    phone = message.get("toPhone")
    if type(phone) is not str or not E164.fullmatch(phone) or phone in reject_phones:
        raise InvalidMessage("INVALID_PHONE", f"Invalid phone number format ({where})", "toPhone")
    kind = message.get("messageType")
    if kind not in _TYPES:
        raise InvalidMessage(
            "INVALID_PARAMETER", f"messageType must be one of {', '.join(MESSAGE_TYPES)} "
            f"({where})", "messageType",
        )
    if kind != "flashcall" and not _nonempty(message.get("text")):
        raise InvalidMessage("INVALID_PARAMETER", f"text is required ({where})", "text")
    _check_optional(message, where)
    if kind == "viber_survey":
        _check_survey(message, where)


def _check_optional(message: dict[str, Any], where: str) -> None:
    ttl = message.get("ttl")
    if ttl is not None and (type(ttl) is not int or ttl <= 0):
        raise InvalidMessage(
            "INVALID_PARAMETER", f"ttl must be a positive integer ({where})", "ttl"
        )
    scheduled = message.get("scheduledSent")
    if scheduled is not None and not _is_iso_datetime(scheduled):
        raise InvalidMessage(
            "INVALID_PARAMETER", f"scheduledSent must be an ISO 8601 date-time ({where})",
            "scheduledSent",
        )


def _check_survey(message: dict[str, Any], where: str) -> None:
    options = message.get("surveyOptions")
    if (
        type(options) is not list
        or not 2 <= len(options) <= 5
        or not all(_nonempty(o) and len(o) <= SURVEY_OPTION_MAX for o in options)
    ):
        raise InvalidMessage(
            "INVALID_PARAMETER",
            f"surveyOptions must be 2 to 5 strings under 30 characters ({where})",
            "surveyOptions",
        )
    if len(message["text"]) > SURVEY_TEXT_MAX:
        raise InvalidMessage(
            "INVALID_PARAMETER", f"Survey text is limited to {SURVEY_TEXT_MAX} characters "
            f"({where})", "text",
        )


def _nonempty(value: object) -> bool:
    return type(value) is str and bool(value.strip())


def _is_iso_datetime(value: object) -> bool:
    if type(value) is not str:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def key_id(key: str) -> str:
    """What the record and `Sandbox.requests_by_key` say of an API key: the first 12 hex
    digits of its SHA-256 ("" for none), which tell keys apart and never show one."""
    return hashlib.sha256(key.encode()).hexdigest()[:12] if key else ""


def _unauthorized_message(request: web.Request) -> str:
    if any(name in request.headers for name in _CREDENTIAL_HEADERS):
        return "Invalid API key"
    return "Missing credentials: send X-Authorization-Key, X-Viber-Auth-Token or X-Tg-Bot-Key"


def _too_many_requests(rate: float, wait: float) -> web.Response:
    body = {"error": "Too Many Requests",
            "message": f"Rate limit of {rate:g} requests per second exceeded", "status": 429}
    return _json(429, body, headers={"Retry-After": str(max(1, math.ceil(wait)))})


def _error(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    return _json(status, {"error": {"code": code, "message": message, "field": field}})


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


async def _not_found(request: web.Request) -> web.Response:
    if request.path in ENDPOINTS.values():
        return _error(405, "METHOD_NOT_ALLOWED", f"Use POST, not {request.method}")
    return _error(404, "NOT_FOUND", "No such endpoint")


def _bucket_for(rate: float | None) -> TokenBucket | None:
    return None if rate is None else TokenBucket(rate, max(1.0, rate * 1.5))


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve(
    options: SandboxOptions,
    host: str,
    port: int,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run a sandbox until cancelled (SIGINT under `asyncio.run`); ``on_ready`` gets the URL."""
    sandbox = Sandbox(options)
    url = await sandbox.start(host, port)
    try:
        if on_ready is not None:
            on_ready(url)
        await asyncio.Event().wait()
    finally:
        await sandbox.stop()
