"""The Cascade API client against a real sandbox and a raw aiohttp server, plus its parsers."""

from __future__ import annotations

import random
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import orjson
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from scheduler.cascade import (
    ENDPOINTS,
    MESSAGE_LIMIT,
    RETRY_AFTER_CAP,
    Accepted,
    CascadeClient,
    ErrorInfo,
    PostResult,
    Rejected,
    Retryable,
    Unauthorized,
    backoff_delay,
    parse_error_body,
    parse_retry_after,
)
from scheduler.config import Route
from tests.helpers import StartSandbox

SECRET = "sk-SECRET-7f3a9c-do-not-leak"
VIBER = "viber-TOKEN-5e1d-do-not-leak"
TG = "tg-KEY-2b8f-do-not-leak"
ALL_HEADERS = {"X-Authorization-Key": SECRET, "X-Viber-Auth-Token": VIBER, "X-Tg-Bot-Key": TG}


def batch(*ids: str, phone: str = "+380501234567") -> bytes:
    """A serialised batch of valid promo messages with the given tracking ids."""
    return orjson.dumps([
        {"id": i, "fromName": "Brand", "toPhone": phone, "messageType": "promo", "text": "Hi"}
        for i in ids
    ])


def assert_no_secret(result: object) -> None:
    """No credential value appears anywhere in the result's repr (which includes every field)."""
    text = repr(result)
    for secret in (SECRET, VIBER, TG):
        assert secret not in text




def client(url: str, headers: dict[str, str] | None = None, timeout: float = 5) -> CascadeClient:
    """A client with every credential header unless told otherwise."""
    return CascadeClient(url, ALL_HEADERS if headers is None else headers,
                         timeout=timeout, pool_size=4)


async def post_once(url: str, body: bytes, headers: dict[str, str] | None = None,
                    route: Route = "standard", client_timeout: float = 5) -> PostResult:
    """Open a client, post one body, close the client."""
    async with client(url, headers, client_timeout) as api:
        return await api.post(route, body)


# --- client against the sandbox ---------------------------------------------------------------


@pytest.mark.parametrize("route", ["standard", "tg-viber"])
async def test_accepted_maps_every_tracking_id(
    start_sandbox: StartSandbox, route: Route
) -> None:
    """A 200 gives a messageId (a UUID) for every tracking id, on both routes."""
    sandbox = await start_sandbox(api_key=SECRET)
    result = await post_once(sandbox.base_url, batch("c-1", "c-2", "c-3"), route=route)
    assert isinstance(result, Accepted)
    assert set(result.message_ids) == {"c-1", "c-2", "c-3"}
    assert all(uuid.UUID(v).version == 4 for v in result.message_ids.values())
    assert sandbox.accepted == {"c-1": 1, "c-2": 1, "c-3": 1}


@pytest.mark.parametrize("header", ["X-Viber-Auth-Token", "X-Tg-Bot-Key", "X-Authorization-Key"])
async def test_any_single_credential_header_is_sent(
    start_sandbox: StartSandbox, header: str
) -> None:
    """Each credential header on its own reaches the API (the sandbox accepts any non-empty one)."""
    sandbox = await start_sandbox()
    result = await post_once(sandbox.base_url, batch("a"), headers={header: "value"})
    assert isinstance(result, Accepted)


async def test_no_credential_is_unauthorized(start_sandbox: StartSandbox) -> None:
    """Without any credential header the API answers 401, which is never retried."""
    sandbox = await start_sandbox()
    result = await post_once(sandbox.base_url, batch("a"), headers={})
    assert isinstance(result, Unauthorized)
    assert result.status == 401
    assert "Missing credentials" in result.message


async def test_wrong_key_then_fixed_key(start_sandbox: StartSandbox) -> None:
    """A refused key gives `Unauthorized`; once the server accepts it, the same client works."""
    sandbox = await start_sandbox(api_key="the-right-key")
    async with client(sandbox.base_url) as api:
        refused = await api.post("standard", batch("a"))
        sandbox.api_key = SECRET
        accepted = await api.post("standard", batch("a"))
    assert isinstance(refused, Unauthorized)
    assert refused.message == "Invalid API key"
    assert_no_secret(refused)
    assert isinstance(accepted, Accepted)


async def test_invalid_phone_is_rejected_with_code_and_field(start_sandbox: StartSandbox) -> None:
    """A non-E.164 phone rejects the batch: code INVALID_PHONE, field toPhone."""
    sandbox = await start_sandbox()
    result = await post_once(sandbox.base_url, batch("a", phone="0501234567"))
    assert isinstance(result, Rejected)
    assert (result.status, result.code, result.field) == (400, "INVALID_PHONE", "toPhone")
    assert "Invalid phone number format" in result.message


async def test_reject_phones_option(start_sandbox: StartSandbox) -> None:
    """A phone on the sandbox's reject list fails validation like a malformed one."""
    sandbox = await start_sandbox(reject_phones=frozenset({"+380500000000"}))
    bad = await post_once(sandbox.base_url, batch("a", phone="+380500000000"))
    good = await post_once(sandbox.base_url, batch("b", phone="+380500000001"))
    assert isinstance(bad, Rejected)
    assert bad.code == "INVALID_PHONE"
    assert isinstance(good, Accepted)


async def test_rate_limit_gives_unambiguous_retry_after(start_sandbox: StartSandbox) -> None:
    """Beyond the rate limit: 429, not ambiguous, with the server's Retry-After in seconds."""
    sandbox = await start_sandbox(rate_limit=0.5)  # burst of 1, then one token per 2 s
    async with client(sandbox.base_url) as api:
        first = await api.post("standard", batch("a"))
        second = await api.post("standard", batch("b"))
    assert isinstance(first, Accepted)
    assert isinstance(second, Retryable)
    assert second.status == 429
    assert second.ambiguous is False
    assert second.retry_after is not None
    assert 1 <= second.retry_after <= 2
    assert "Too Many Requests" in second.reason
    assert sandbox.accepted == {"a": 1}


async def test_server_errors_are_ambiguous(start_sandbox: StartSandbox) -> None:
    """Every injected 5xx (500 JSON, 502 HTML, 503 with Retry-After) is an ambiguous retry."""
    sandbox = await start_sandbox(fail_rate=1.0, seed=7)
    async with client(sandbox.base_url) as api:
        results = [await api.post("standard", batch("a")) for _ in range(30)]
    retries = [r for r in results if isinstance(r, Retryable) and r.ambiguous]
    assert len(retries) == len(results)
    assert {r.status for r in retries} == {500, 502, 503}
    assert_no_secret(retries)
    reasons = {r.status: r.reason for r in retries}
    assert "502 Bad Gateway" in reasons[502]
    assert "Internal server error" in reasons[500]
    assert {r.retry_after for r in retries if r.status == 503} == {1.0}
    assert sandbox.accepted == {}


async def test_dropped_connection_is_ambiguous(start_sandbox: StartSandbox) -> None:
    """The server read the request and hung up: the message may have gone, so ambiguous."""
    sandbox = await start_sandbox(drop_rate=1.0)
    result = await post_once(sandbox.base_url, batch("a"))
    assert isinstance(result, Retryable)
    assert result.status is None
    assert result.ambiguous is True
    assert "ServerDisconnectedError" in result.reason
    assert sandbox.dropped == 1


async def test_connection_refused_is_not_ambiguous() -> None:
    """Nothing listens on the port: the request was never written, so not ambiguous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = await post_once(f"http://127.0.0.1:{port}", batch("a"))
    assert isinstance(result, Retryable)
    assert result.status is None
    assert result.ambiguous is False
    assert "ClientConnectorError" in result.reason
    assert_no_secret(result)


async def test_omitted_id_is_missing_from_the_map(start_sandbox: StartSandbox) -> None:
    """A 200 that leaves an id out gives a map without it (the caller treats it as ambiguous)."""
    sandbox = await start_sandbox(omit_rate=1.0, seed=1)
    result = await post_once(sandbox.base_url, batch("a", "b", "c"))
    assert isinstance(result, Accepted)
    assert len(result.message_ids) == 2
    assert set(result.message_ids) < {"a", "b", "c"}
    assert sum(sandbox.accepted.values()) == 3  # the API did take all three


async def test_timeout_after_sending_is_ambiguous(start_sandbox: StartSandbox) -> None:
    """No answer within the timeout after the request went out: ambiguous, no status."""
    sandbox = await start_sandbox(latency_ms=1000)
    result = await post_once(sandbox.base_url, batch("a"), client_timeout=0.2)
    assert isinstance(result, Retryable)
    assert result.status is None
    assert result.ambiguous is True
    assert "no answer" in result.reason


async def test_post_outside_the_context_manager_raises(start_sandbox: StartSandbox) -> None:
    """Using the client before `async with` is a programming error, said plainly."""
    sandbox = await start_sandbox()
    with pytest.raises(RuntimeError, match="async with"):
        await client(sandbox.base_url).post("standard", batch("a"))


def test_client_repr_shows_header_names_only() -> None:
    """The client's repr names the credential headers but never their values."""
    text = repr(client("https://user@restapi.example.com"))
    assert "X-Authorization-Key" in text
    assert "restapi.example.com" in text
    assert_no_secret(text)


# --- client against a raw server that answers whatever a test sets ---------------------------


@dataclass
class RawServer:
    """A one-route aiohttp server: answers every request with `reply`, keeps what it received."""

    url: str = ""
    status: int = 200
    body: bytes = b"[]"
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    echo_headers: bool = False
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    def reply(self, status: int, body: bytes, content_type: str = "application/json",
              **headers: str) -> None:
        """Set the next answers."""
        self.status, self.body, self.content_type = status, body, content_type
        self.headers = {k.replace("_", "-"): v for k, v in headers.items()}

    async def handle(self, request: web.Request) -> web.Response:
        """Record the request, then answer as configured (optionally echoing every header)."""
        body = await request.read()
        self.received.append((request.path, dict(request.headers), body))
        answer = self.body
        if self.echo_headers:
            answer = answer.replace(b"ECHO", repr(dict(request.headers)).encode())
            answer = answer.replace(b"KEY", request.headers["X-Authorization-Key"].encode())
        return web.Response(status=self.status, body=answer, headers=self.headers,
                            content_type=self.content_type)


@pytest.fixture
async def raw() -> AsyncIterator[RawServer]:
    """A running `RawServer` on a free loopback port."""
    server = RawServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield server
    await runner.cleanup()


@pytest.mark.parametrize("route", ["standard", "tg-viber"])
async def test_request_carries_every_header_and_the_exact_body(
    raw: RawServer, route: Route
) -> None:
    """The body goes out byte for byte to the route's path, with JSON content type and all keys."""
    body = batch("x-1")
    await post_once(raw.url, body, route=route)
    [(path, headers, received)] = raw.received
    assert path == ENDPOINTS[route]
    assert received == body
    assert headers["Content-Type"] == "application/json"
    for name, value in ALL_HEADERS.items():
        assert headers[name] == value


async def test_ids_are_matched_by_tracking_id_not_position(raw: RawServer) -> None:
    """Results out of order, with junk entries, still map each trackinId to its own messageId."""
    raw.reply(200, orjson.dumps([
        {"messageId": "m-b", "trackinId": "b"},
        {"messageId": "m-a", "trackinId": "a"},
        {"messageId": None, "trackinId": "c"},
        {"trackinId": "d"},
    ]))
    result = await post_once(raw.url, batch("a", "b", "c", "d"))
    assert result == Accepted({"a": "m-a", "b": "m-b"})


async def test_fixed_spelling_tracking_id_is_understood(raw: RawServer) -> None:
    """Should the API ever answer ``trackingId`` instead of ``trackinId``, ids still match."""
    raw.reply(200, b'[{"messageId": "m-a", "trackingId": "a"}]')
    assert await post_once(raw.url, batch("a")) == Accepted({"a": "m-a"})


@pytest.mark.parametrize("body", [b"not json", b"", b'{"ok": true}', b"[1, 2]", b"<html></html>"])
async def test_unreadable_success_body_is_ambiguous(raw: RawServer, body: bytes) -> None:
    """A 200 whose body is not an array of objects: the messages may have gone, so ambiguous."""
    raw.reply(200, body)
    result = await post_once(raw.url, batch("a"))
    assert isinstance(result, Retryable)
    assert (result.status, result.ambiguous) == (200, True)


async def test_documented_error_shape(raw: RawServer) -> None:
    """``{"error": {"code", "message", "field"}}`` on a 400."""
    raw.reply(400, b'{"error": {"code": "INVALID_PHONE", "message": "Invalid phone number '
                   b'format", "field": "toPhone"}}')
    result = await post_once(raw.url, batch("a"))
    assert result == Rejected(400, "INVALID_PHONE", "Invalid phone number format", "toPhone")


async def test_status_code_error_shape(raw: RawServer) -> None:
    """``{"status", "error", "message", "code": 1001}``: the numeric code is kept as text."""
    raw.reply(400, b'{"status": 400, "error": "Bad Request", "message": "Phone is invalid", '
                   b'"code": 1001}')
    result = await post_once(raw.url, batch("a"))
    assert result == Rejected(400, "1001", "Bad Request: Phone is invalid", None)


async def test_too_many_requests_shape_with_http_date(raw: RawServer) -> None:
    """``{"error": "Too Many Requests", ...}`` on a 429 whose Retry-After is an HTTP-date."""
    when = datetime.now(UTC) + timedelta(seconds=120)
    raw.reply(429, b'{"error": "Too Many Requests", "message": "Slow down", "status": 429}',
              Retry_After=format_datetime(when, usegmt=True))
    result = await post_once(raw.url, batch("a"))
    assert isinstance(result, Retryable)
    assert (result.status, result.ambiguous) == (429, False)
    assert result.retry_after is not None
    assert 100 < result.retry_after <= 121
    assert "Too Many Requests: Slow down" in result.reason


async def test_html_bad_gateway_is_ambiguous(raw: RawServer) -> None:
    """A proxy's HTML 502 page becomes an ambiguous retry whose reason is the page title."""
    raw.reply(502, b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
              content_type="text/html")
    result = await post_once(raw.url, batch("a"))
    assert result == Retryable(502, None, True, "HTTP 502: 502 Bad Gateway")


async def test_empty_server_error_body(raw: RawServer) -> None:
    """A 500 with no body at all still gives a readable reason."""
    raw.reply(500, b"", content_type="text/plain")
    result = await post_once(raw.url, batch("a"))
    assert result == Retryable(500, None, True, "HTTP 500: empty response body")


@pytest.mark.parametrize(
    ("status", "kind", "ambiguous"),
    [(403, Unauthorized, None), (422, Rejected, None), (413, Rejected, None),
     (408, Retryable, True), (404, Retryable, False), (405, Retryable, False),
     (307, Retryable, False), (503, Retryable, True)],
)
async def test_status_classes(
    raw: RawServer, status: int, kind: type, ambiguous: bool | None
) -> None:
    """Each status lands in its class; wrong-address answers are safe (not ambiguous) retries."""
    raw.reply(status, b'{"error": {"code": "X", "message": "m", "field": null}}',
              Location="https://elsewhere.example/")
    result = await post_once(raw.url, batch("a"))
    assert isinstance(result, kind)
    if ambiguous is not None:
        assert isinstance(result, Retryable)
        assert result.ambiguous is ambiguous
    assert len(raw.received) == 1  # never retried, never redirected


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 502])
async def test_echoed_secrets_are_redacted(raw: RawServer, status: int) -> None:
    """Even a server that echoes our headers back in its error body cannot leak them."""
    raw.echo_headers = True
    raw.reply(status, b'{"error": {"code": "E", "message": "got ECHO", "field": "ECHO"}}')
    result = await post_once(raw.url, batch("a"))
    assert not isinstance(result, Accepted)
    assert_no_secret(result)


async def test_secret_cut_by_clipping_is_still_redacted(raw: RawServer) -> None:
    """A secret that straddles the message length limit must not leak even in part."""
    raw.echo_headers = True
    filler = b"x" * (MESSAGE_LIMIT - 8)
    raw.reply(400, b'{"error": {"code": "E", "message": "' + filler + b'KEY"}}')
    result = await post_once(raw.url, batch("a"))
    assert isinstance(result, Rejected)
    assert SECRET[:6] not in result.message


async def test_reason_never_contains_the_request_body(raw: RawServer) -> None:
    """Error reasons are built from the answer, never from what we sent."""
    raw.reply(500, b"oops", content_type="text/plain")
    result = await post_once(raw.url, batch("unique-tracking-id-42"))
    assert "unique-tracking-id-42" not in repr(result)


# --- parsers ---------------------------------------------------------------------------------


NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0), (" 3 ", 3.0), ("0", 0.0), ("1.5", 1.5),
        ("Mon, 01 Jun 2026 12:01:30 GMT", 90.0),
        ("Mon, 01 Jun 2026 12:01:30 -0000", 90.0),
        ("Mon, 01 Jun 2026 11:00:00 GMT", 0.0),  # already past: retry now
        ("-5", None), ("soon", None), ("", None), (None, None), ("nan", None), ("inf", None),
        ("Mon, 99 Foo 2026 12:00:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Delay-seconds and HTTP-dates are understood; garbage and negatives give None."""
    assert parse_retry_after(value, now=NOW) == expected


@given(st.text())
def test_parse_retry_after_never_raises(value: str) -> None:
    """Any header text gives a non-negative number or None."""
    result = parse_retry_after(value, now=NOW)
    assert result is None or result >= 0


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8, 20, 5000])
def test_backoff_stays_within_the_full_jitter_window(attempt: int) -> None:
    """Every delay is in [0, min(cap, base * 2**(attempt-1))], even for absurd attempts."""
    rng = random.Random(attempt)
    ceiling = min(30.0, 0.5 * 2 ** min(attempt - 1, 60))
    delays = [backoff_delay(attempt, rng=rng) for _ in range(500)]
    assert all(0.0 <= d <= ceiling for d in delays)


def test_backoff_uses_full_jitter() -> None:
    """Delays spread over the whole window (not just its top half)."""
    rng = random.Random(3)
    delays = [backoff_delay(5, base=1.0, cap=100.0, rng=rng) for _ in range(2000)]
    assert min(delays) < 1.0
    assert max(delays) > 15.0  # window is [0, 16]


def test_backoff_respects_retry_after() -> None:
    """With Retry-After the wait is at least that long, but a silly value is capped."""
    rng = random.Random(1)
    assert all(backoff_delay(1, retry_after=7.0, rng=rng) >= 7.0 for _ in range(200))
    assert backoff_delay(1, retry_after=86400.0, rng=rng) == RETRY_AFTER_CAP
    assert 0 <= backoff_delay(0, rng=rng) <= 0.5  # attempt 0 counts as the first


def test_error_body_huge_message_is_clipped() -> None:
    """A megabyte of message still gives one short line."""
    info = parse_error_body(orjson.dumps({"error": {"message": "x" * 1_000_000}}))
    assert len(info.message) == MESSAGE_LIMIT
    assert info.message.endswith("…")


def test_error_body_problem_details() -> None:
    """ASP.NET validation problem details give a field and its first message."""
    body = orjson.dumps({"title": "One or more validation errors occurred.", "status": 400,
                         "errors": {"[0].toPhone": ["The toPhone field is required."]}})
    info = parse_error_body(body)
    assert info.field == "[0].toPhone"
    assert "The toPhone field is required." in info.message


@pytest.mark.parametrize("body", [b"[1, 2]", b'"just a string"', b"42", b'{"foo": "bar"}'])
def test_error_body_of_other_json(body: bytes) -> None:
    """JSON of an unknown shape becomes its text, code and field unknown."""
    info = parse_error_body(body)
    assert info.code is None
    assert info.field is None
    assert info.message


@given(st.binary(max_size=2000))
def test_error_body_never_raises_on_bytes(body: bytes) -> None:
    """Any bytes give an ErrorInfo with a short, single-line, printable message."""
    info = parse_error_body(body)
    assert isinstance(info, ErrorInfo)
    assert info.message
    assert len(info.message) <= MESSAGE_LIMIT
    assert info.message.isprintable()


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=300),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(["error", "message", "code", "field", "status", "title",
                                       "errors", "x"]), children, max_size=6),
    max_leaves=30,
)


@given(_json_values)
def test_error_body_never_raises_on_json(value: object) -> None:
    """Any JSON document, however shaped, gives a sane ErrorInfo."""
    info = parse_error_body(orjson.dumps(value))
    assert info.message
    assert len(info.message) <= MESSAGE_LIMIT
    for part in (info.code, info.field):
        assert part is None or len(part) <= MESSAGE_LIMIT
