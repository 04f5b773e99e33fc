"""The SMSBAT Cascade API client: posts pre-serialised batches, sorts every outcome into 4 classes.

The sending engine decides what to do next from the class alone: `Accepted` (match ids by tracking
id), `Rejected` (split the batch), `Unauthorized` (stop the campaign) or `Retryable` (back off;
``ambiguous`` says whether the request may have reached the API, SPEC §6). `CascadeClient.post`
never raises for HTTP or network trouble, and no secret or request body ever reaches a message.
"""

from __future__ import annotations

import math
import operator
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import orjson

from scheduler import __version__
from scheduler.config import Route

ENDPOINTS: Final[dict[Route, str]] = {
    "standard": "/api/CascadeMessage/send_message/async",
    "tg-viber": "/api/CascadeMessage/send_message/tg-viber/async",
}
#: longest human message taken from an error body
MESSAGE_LIMIT: Final = 200
#: the longest Retry-After we honour; a server asking for more is retried after this
RETRY_AFTER_CAP: Final = 300.0
#: 4xx answers about the request's content: the batch is split, the bad messages rejected
CONTENT_STATUSES: Final = frozenset({400, 409, 413, 415, 422})
#: 4xx answers that say "you are not allowed": the campaign stops, nothing is retried
AUTH_STATUSES: Final = frozenset({401, 403})
#: the longest TCP/TLS connect we wait for; a connect timeout is certainly-not-delivered
CONNECT_TIMEOUT_CAP: Final = 10.0

#: an answer item's fields (sic: the API spells it "trackinId")
_TRACKING, _MESSAGE = operator.itemgetter("trackinId"), operator.itemgetter("messageId")
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


@dataclass(frozen=True, slots=True)
class Accepted:
    """A 2xx with a parseable JSON array: tracking id -> the API's messageId."""

    message_ids: dict[str, str]


@dataclass(frozen=True, slots=True)
class Rejected:
    """The API refused the request's content (400, 422, ...): do not retry it as it is."""

    status: int
    code: str | None
    message: str
    field: str | None


@dataclass(frozen=True, slots=True)
class Unauthorized:
    """401 / 403: the credentials were refused; stop the campaign, never retry."""

    status: int
    message: str


@dataclass(frozen=True, slots=True)
class Retryable:
    """A failure worth retrying (429, 5xx, 408, network trouble, an unreadable 2xx)."""

    status: int | None  # None when no HTTP answer came at all
    retry_after: float | None  # seconds the server asked us to wait, if it did
    ambiguous: bool  # True when the request may have reached the API (SPEC §6)
    reason: str  # short and human; never a secret nor the request body


PostResult = Accepted | Rejected | Unauthorized | Retryable


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What an error body says, whichever of the API's shapes it came in."""

    code: str | None
    message: str
    field: str | None


class CascadeClient:
    """One aiohttp session and connection pool for everything that sends."""

    def __init__(
        self, base_url: str, headers: Mapping[str, str], *, timeout: float, pool_size: int
    ) -> None:
        base = base_url.rstrip("/")
        self.base_url = base  # the API it posts to (the embedded sandbox's, with "sandbox")
        self._urls: dict[Route, str] = {route: base + path for route, path in ENDPOINTS.items()}
        self._host = urlsplit(base).netloc.rpartition("@")[2]
        self._header_names: tuple[str, ...] = ()
        self._headers: dict[str, str] = {}
        self._secrets: tuple[str, ...] = ()
        self.set_headers(headers)
        self._timeout = timeout
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    def set_headers(self, headers: Mapping[str, str]) -> None:
        """Use new credentials from the next request on (after a reload fixed a refused key)."""
        self._header_names = tuple(headers)
        self._headers = {**self._headers_base(), **headers}
        self._secrets = tuple(value for value in headers.values() if value)

    @staticmethod
    def _headers_base() -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "User-Agent": f"cascade-scheduler/{__version__}",
        }

    def __repr__(self) -> str:
        names = ", ".join(self._header_names)
        return f"CascadeClient(host={self._host!r}, headers=[{names}], timeout={self._timeout})"

    async def __aenter__(self) -> CascadeClient:
        # A connect timeout below the total one tells "never connected" (certainly not
        # delivered) apart from "sent, then no answer" (ambiguous).
        timeout = aiohttp.ClientTimeout(
            total=self._timeout, sock_connect=min(self._timeout / 2, CONNECT_TIMEOUT_CAP)
        )
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            connector=aiohttp.TCPConnector(limit=self._pool_size),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, route: Route, body: bytes) -> PostResult:
        """POST one serialised JSON array of messages to ``route`` and classify the outcome."""
        session = self._session
        if session is None:
            raise RuntimeError("CascadeClient is not open: use `async with CascadeClient(...)`")
        try:
            # Redirects are refused: following one would send the credentials elsewhere.
            async with session.post(
                self._urls[route], data=body, headers=self._headers, allow_redirects=False
            ) as response:
                payload = await response.read()
                return self._classify(response.status, response.headers.get("Retry-After"), payload)
        except aiohttp.ClientConnectorError as exc:
            return Retryable(None, None, False, self._describe(exc))
        except aiohttp.ConnectionTimeoutError:
            return Retryable(None, None, False, f"could not connect to {self._host} in time")
        except TimeoutError:
            reason = f"no answer from {self._host} in {self._timeout:g} s"
            return Retryable(None, None, True, reason)
        except (aiohttp.ClientError, OSError) as exc:
            return Retryable(None, None, True, self._describe(exc))

    def _classify(self, status: int, retry_after: str | None, body: bytes) -> PostResult:
        if 200 <= status < 300:
            accepted = parse_accepted(body)
            if accepted is not None:
                return accepted
            return Retryable(status, None, True, f"HTTP {status} with a body that is not a "
                             "JSON array of results")
        info = self._error_info(body)
        if status in AUTH_STATUSES:
            return Unauthorized(status, info.message)
        if status in CONTENT_STATUSES:
            return Rejected(status, info.code, info.message, info.field)
        wait = parse_retry_after(retry_after)
        reason = f"HTTP {status}: {info.message}"
        if status == 408 or status >= 500:
            return Retryable(status, wait, True, reason)
        # 429, and answers that mean "wrong address" (3xx, 404, 405, ...): the request was
        # not processed, so retrying cannot duplicate anything.
        if status != 429:
            reason += f" (is [api].base_url right? it points at {self._host})"
        return Retryable(status, wait, False, reason)

    def _error_info(self, body: bytes) -> ErrorInfo:
        """The error body, read with every secret blanked out (a server may echo our headers)."""
        for secret in self._secrets:
            body = body.replace(secret.encode(), b"***")
        info = parse_error_body(body)
        code = None if info.code is None else self._redact(info.code)
        field = None if info.field is None else self._redact(info.field)
        return ErrorInfo(code, self._redact(info.message), field)

    def _describe(self, exc: BaseException) -> str:
        text = self._redact(str(exc)) or "connection lost"
        return clip(f"{type(exc).__name__}: {text}")

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def parse_accepted(body: bytes) -> Accepted | None:
    """The id map of a success body, or None when the body is not a JSON array of objects."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not list:
        return None
    try:  # the usual, well-formed answer: C-level passes, no Python code per item
        tracking_ids, message_ids = list(map(_TRACKING, data)), list(map(_MESSAGE, data))
        "".join(tracking_ids + message_ids)  # the type check: TypeError for a non-string
    except (KeyError, TypeError):
        pass
    else:
        return Accepted(dict(zip(tracking_ids, message_ids, strict=True)))
    ids: dict[str, str] = {}
    for item in data:
        if type(item) is not dict:
            return None
        tracking = item.get("trackinId")  # sic: the API's spelling
        if tracking is None:
            # should the API ever fix the typo, every id would otherwise look missing
            tracking = item.get("trackingId")
        message_id = item.get("messageId")
        if type(tracking) is str and type(message_id) is str:
            ids[tracking] = message_id
    return Accepted(ids)


def parse_error_body(body: bytes) -> ErrorInfo:
    """Read any error body the API (or a proxy in front of it) may send; never raises."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ErrorInfo(None, _text_of(body), None)
    if isinstance(data, dict):
        info = _error_from_mapping(data)
        if info is not None:
            return info
    return ErrorInfo(None, clip(body.decode("utf-8", "replace")), None)


def _error_from_mapping(data: dict[str, Any]) -> ErrorInfo | None:
    error = data.get("error")
    if isinstance(error, dict):  # {"error": {"code", "message", "field"}}: the documented shape
        return ErrorInfo(
            _scalar(error.get("code")),
            _scalar(error.get("message")) or "no message given",
            _scalar(error.get("field")),
        )
    # {"status", "error", "message", "code"} and {"error", "message", "status"}; also ASP.NET's
    # problem details {"title", "status", "errors": {field: [messages]}}
    title = _scalar(error) or _scalar(data.get("title"))
    message = _scalar(data.get("message"))
    field, detail = _first_field_error(data.get("errors"))
    message = message or detail
    if title is None and message is None:
        return None
    if title and message and title != message:
        text = clip(f"{title}: {message}")
    else:
        text = message or title or ""
    return ErrorInfo(_scalar(data.get("code")), text, field)


def _first_field_error(errors: object) -> tuple[str | None, str | None]:
    if not isinstance(errors, dict) or not errors:
        return None, None
    field, messages = next(iter(errors.items()))
    if isinstance(messages, list) and messages:
        messages = messages[0]
    return clip(str(field)), _scalar(messages)


def _scalar(value: object) -> str | None:
    """A JSON value as a short string; None and empty strings become None."""
    if value is None:
        return None
    text = clip(value if isinstance(value, str) else str(value))
    return text or None


def _text_of(body: bytes) -> str:
    """A short readable line from a non-JSON body (an HTML error page, plain text, binary)."""
    if not body.strip():
        return "empty response body"
    head = body[: MESSAGE_LIMIT * 20]
    title = _TITLE.search(head)
    if title is not None:
        head = title.group(1)
    text = clip(_TAG.sub(" ", head.decode("utf-8", "replace")))
    return text or "unreadable response body"


def clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """One printable line of at most ``limit`` characters (``…`` marks a cut)."""
    text = text[: limit * 4]
    text = "".join(char if char.isprintable() else " " for char in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or HTTP-date), else None."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        return _seconds_until(value, now)
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _seconds_until(http_date: str, now: datetime | None) -> float | None:
    try:
        when = parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC in RFC 5322
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def backoff_delay(
    attempt: int,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds before retry ``attempt`` (1-based): full jitter, but never less than Retry-After."""
    exponent = min(max(attempt, 1) - 1, 60)  # beyond 2**60 the cap wins anyway
    ceiling = min(cap, base * 2.0**exponent)
    delay = (rng or random).uniform(0.0, ceiling)
    if retry_after is not None:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
    return delay

