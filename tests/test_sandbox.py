"""The sandbox emulator over real HTTP: validation, credentials, faults, records and counters."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from scheduler.cascade import ENDPOINTS
from scheduler.sandbox import (
    CHANNELS,
    CURRENCY,
    PRICES,
    STATUS_PATH,
    Sandbox,
    SandboxOptions,
    channel_for,
    message_ids,
    serve,
    sms_parts,
)
from tests.helpers import StartSandbox, run_cli

KEY = {"X-Authorization-Key": "sandbox-key"}
STANDARD = ENDPOINTS["standard"]
TG_VIBER = ENDPOINTS["tg-viber"]


def message(i: int = 0, **fields: Any) -> dict[str, Any]:
    """A valid transaction message; ``fields`` override (None removes a field)."""
    base: dict[str, Any] = {
        "id": f"t-{i}", "fromName": "Brand", "toPhone": f"+38050{i:07d}",
        "messageType": "transaction", "text": "Your order shipped", "ttl": 3600,
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}




@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session, to look at raw statuses and bodies."""
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession, sandbox: Sandbox, payload: object, *,
    path: str = STANDARD, headers: dict[str, str] | None = None, raw: bytes | None = None,
) -> tuple[int, Any]:
    """POST a JSON payload (or raw bytes); return the status and the JSON answer (None if not)."""
    data = orjson.dumps(payload) if raw is None else raw
    send_headers = {"Content-Type": "application/json", **(KEY if headers is None else headers)}
    async with http.post(sandbox.base_url + path, data=data, headers=send_headers) as response:
        answer = await response.read()
        return response.status, orjson.loads(answer) if answer.startswith((b"{", b"[")) else None


async def test_success_answers_uuid_per_tracking_id(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    """A valid batch gets ``[{"messageId": uuid4, "trackinId": id}]`` in request order."""
    sandbox = await start_sandbox()
    status, body = await call(http, sandbox, [message(1), message(2)])
    assert status == 200
    assert [entry["trackinId"] for entry in body] == ["t-1", "t-2"]
    assert all(uuid.UUID(entry["messageId"]).version == 4 for entry in body)
    assert sandbox.requests == 1
    assert sandbox.statuses == {200: 1}


@pytest.mark.parametrize(
    ("override", "code", "field"),
    [
        ({"id": ""}, "INVALID_PARAMETER", "id"),
        ({"id": 17}, "INVALID_PARAMETER", "id"),
        ({"fromName": None}, "INVALID_PARAMETER", "fromName"),
        ({"fromName": "  "}, "INVALID_PARAMETER", "fromName"),
        ({"toPhone": "380501234567"}, "INVALID_PHONE", "toPhone"),
        ({"toPhone": "+0501234567"}, "INVALID_PHONE", "toPhone"),
        ({"toPhone": "+12345"}, "INVALID_PHONE", "toPhone"),
        ({"toPhone": "+1234567890123456"}, "INVALID_PHONE", "toPhone"),
        ({"toPhone": "+38050\u0661\u0662\u0663\u0664\u0665\u0666\u0667"},  # Arabic-Indic
         "INVALID_PHONE", "toPhone"),
        ({"messageType": "sms"}, "INVALID_PARAMETER", "messageType"),
        ({"text": None}, "INVALID_PARAMETER", "text"),
        ({"text": ""}, "INVALID_PARAMETER", "text"),
        ({"ttl": 0}, "INVALID_PARAMETER", "ttl"),
        ({"ttl": "3600"}, "INVALID_PARAMETER", "ttl"),
        ({"ttl": True}, "INVALID_PARAMETER", "ttl"),
        ({"scheduledSent": "tomorrow"}, "INVALID_PARAMETER", "scheduledSent"),
        ({"messageType": "viber_survey", "surveyOptions": ["only one"]},
         "INVALID_PARAMETER", "surveyOptions"),
        ({"messageType": "viber_survey", "surveyOptions": ["a", "b", "c", "d", "e", "f"]},
         "INVALID_PARAMETER", "surveyOptions"),
        ({"messageType": "viber_survey", "surveyOptions": ["ok", "x" * 30]},
         "INVALID_PARAMETER", "surveyOptions"),
        ({"messageType": "viber_survey", "surveyOptions": None},
         "INVALID_PARAMETER", "surveyOptions"),
        ({"messageType": "viber_survey", "surveyOptions": ["Yes", "No"], "text": "q" * 86},
         "INVALID_PARAMETER", "text"),
    ],
)
async def test_one_invalid_message_rejects_the_whole_batch(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession,
    override: dict[str, Any], code: str, field: str,
) -> None:
    """The first bad message makes the request a 400 with the documented error body."""
    sandbox = await start_sandbox()
    status, body = await call(http, sandbox, [message(1), message(2, **override), message(3)])
    assert status == 400
    assert body["error"]["code"] == code
    assert body["error"]["field"] == field
    assert "message 1" in body["error"]["message"].lower()  # which one, counted from 0
    assert sandbox.accepted == {}


@pytest.mark.parametrize(
    "good",
    [
        {"messageType": "flashcall", "text": None, "ttl": 300},
        {"messageType": "viber_survey", "surveyOptions": ["Yes", "No", "x" * 29], "text": "q" * 85},
        {"scheduledSent": "2026-01-25T10:00:00Z"},
        {"ttl": None},
        {"toPhone": "+123456789012345"},
    ],
)
async def test_documented_valid_variants_are_accepted(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession, good: dict[str, Any]
) -> None:
    """Flashcall without text, a full survey, scheduledSent, no ttl, a 15-digit phone: all fine."""
    sandbox = await start_sandbox()
    status, _ = await call(http, sandbox, [message(1, **good)])
    assert status == 200


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"not json", "INVALID_JSON"),
        (b'{"id": "x"}', "INVALID_REQUEST"),
        (b"[]", "INVALID_REQUEST"),
        (orjson.dumps([message(i) for i in range(1001)]), "INVALID_REQUEST"),
        (b'["just a string"]', "INVALID_PARAMETER"),
    ],
)
async def test_body_must_be_an_array_of_1_to_1000_objects(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession, raw: bytes, code: str
) -> None:
    """Anything but a JSON array of 1..1000 message objects is a 400."""
    sandbox = await start_sandbox()
    status, body = await call(http, sandbox, None, raw=raw)
    assert status == 400
    assert body["error"]["code"] == code


async def test_a_full_batch_of_1000_is_accepted(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    """The largest documented batch goes through in one request."""
    sandbox = await start_sandbox()
    status, body = await call(http, sandbox, [message(i) for i in range(1000)])
    assert status == 200
    assert len(body) == 1000
    assert len(sandbox.accepted) == 1000


async def test_wrong_content_type_is_refused(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    """A body not declared as JSON gets 415, as an ASP.NET API would answer."""
    sandbox = await start_sandbox()
    async with http.post(sandbox.base_url + STANDARD, data=orjson.dumps([message()]),
                         headers={**KEY, "Content-Type": "text/plain"}) as response:
        assert response.status == 415


@pytest.mark.parametrize(
    ("api_key", "headers", "expected"),
    [
        (None, {"X-Tg-Bot-Key": "anything"}, 200),
        (None, {"X-Viber-Auth-Token": "anything"}, 200),
        (None, {"X-Authorization-Key": "  "}, 401),
        (None, {}, 401),
        ("right", {"X-Authorization-Key": "right"}, 200),
        ("right", {"X-Authorization-Key": "wrong"}, 401),
        ("right", {"X-Viber-Auth-Token": "right"}, 401),
    ],
)
async def test_credential_check(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession,
    api_key: str | None, headers: dict[str, str], expected: int,
) -> None:
    """Any non-empty credential header, or exactly the configured API key."""
    sandbox = await start_sandbox(api_key=api_key)
    status, body = await call(http, sandbox, [message()], headers=headers)
    assert status == expected
    if expected == 401:
        assert body["error"]["code"] == "UNAUTHORIZED"
        assert body["error"]["field"] is None


async def test_api_key_can_change_at_runtime(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    """Setting `api_key` on a running sandbox takes effect on the next request."""
    sandbox = await start_sandbox(api_key="old")
    before, _ = await call(http, sandbox, [message()])
    sandbox.api_key = KEY["X-Authorization-Key"]
    after, _ = await call(http, sandbox, [message()])
    assert (before, after) == (401, 200)


async def test_unknown_paths_and_methods_answer_json(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    """Other paths are a JSON 404; GET on an API route is a JSON 405."""
    sandbox = await start_sandbox()
    status, body = await call(http, sandbox, [message()], path="/api/nope")
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND")
    async with http.get(sandbox.base_url + TG_VIBER) as response:
        assert response.status == 405
        assert (await response.json())["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_record_lines_match_the_answers(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Every accepted message is one JSONL line carrying the messageId the client received."""
    record = tmp_path / "records" / "sandbox.jsonl"
    sandbox = await start_sandbox(record=record)
    _, first = await call(http, sandbox, [message(i) for i in range(5)])
    _, second = await call(http, sandbox, [message(i) for i in range(5, 8)], path=TG_VIBER)
    await call(http, sandbox, [message(9, toPhone="bad")])  # rejected: not recorded
    lines = [orjson.loads(line) for line in record.read_bytes().splitlines()]
    answered = {e["trackinId"]: e["messageId"] for e in first + second}
    assert {line["trackinId"]: line["messageId"] for line in lines} == answered
    assert len(lines) == 8
    for line in lines:
        assert set(line) == {"ts", "messageId", "trackinId", "toPhone", "messageType",
                             "channel", "route", "ttl", "key"}
        assert line["channel"] in CHANNELS[line["route"]]
        assert line["channel"] == channel_for(line["toPhone"], CHANNELS[line["route"]])
        assert line["ts"].endswith("Z")
    assert {line["route"] for line in lines} == {"standard", "tg-viber"}


def test_channels_are_deterministic_and_varied() -> None:
    """The same phone always gets the same channel; many phones use every channel."""
    phones = [f"+38050{i:07d}" for i in range(500)]
    for route, channels in CHANNELS.items():
        first = [channel_for(p, channels) for p in phones]
        assert first == [channel_for(p, channels) for p in phones]
        assert set(first) == set(channels), route
    assert CHANNELS["tg-viber"] == ("telegram", "viber")


async def test_reject_rate_refuses_a_share_of_phones_always_the_same_ones(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession,
) -> None:
    """``reject_rate = 0.2``: about a fifth of the phones are answered 400 INVALID_PHONE, a
    refused phone is refused again (a 400 split isolates it), an accepted one accepted again
    (issue 24, item 16: tripping the brake took 40 ``--reject-phone`` flags)."""
    sandbox = await start_sandbox(reject_rate=0.2)
    answers = [(await call(http, sandbox, [message(i)]))[0] for i in range(300)]
    refused = [i for i, status in enumerate(answers) if status == 400]
    assert 30 <= len(refused) <= 90, len(refused)
    assert set(answers) == {200, 400}
    status, body = await call(http, sandbox, [message(0), message(refused[0])])
    assert status == 400 and body["error"]["code"] == "INVALID_PHONE"
    assert (await call(http, sandbox, [message(refused[0])]))[0] == 400
    accepted = answers.index(200)
    assert (await call(http, sandbox, [message(accepted)]))[0] == 200


async def test_drop_hangs_up_after_reading(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    """A dropped request reaches the client as ServerDisconnectedError; nothing is accepted."""
    sandbox = await start_sandbox(drop_rate=1.0)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, sandbox, [message()])
    assert (sandbox.requests, sandbox.dropped, sandbox.accepted) == (1, 1, {})
    assert sandbox.statuses == {}


async def test_credentials_are_checked_before_faults(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    """Fault order: a bad key is a 401 even when every request would be dropped or failed."""
    sandbox = await start_sandbox(api_key="right", drop_rate=1.0, fail_rate=1.0)
    status, _ = await call(http, sandbox, [message()])
    assert status == 401


async def test_rate_limit_comes_before_failures_and_validation(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    """With a burst of 1: the first request meets fail_rate, the next ones get 429."""
    sandbox = await start_sandbox(rate_limit=0.5, fail_rate=1.0)
    first, _ = await call(http, sandbox, [message()])
    second, body = await call(http, sandbox, [message(toPhone="bad")])
    assert first in (500, 502, 503)
    assert second == 429
    assert body == {"error": "Too Many Requests",
                    "message": "Rate limit of 0.5 requests per second exceeded", "status": 429}


async def test_rate_limit_burst_and_retry_after(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    """At 10 requests/s the burst is 15; then 429 with Retry-After in whole seconds."""
    sandbox = await start_sandbox(rate_limit=10)
    url = sandbox.base_url + STANDARD
    data = orjson.dumps([message()])
    headers = {**KEY, "Content-Type": "application/json"}
    statuses, retry_after = [], []
    for _ in range(20):
        async with http.post(url, data=data, headers=headers) as response:
            statuses.append(response.status)
            retry_after.append(response.headers.get("Retry-After"))
    # a few tokens may refill while 20 requests run, never many on loopback
    assert 15 <= statuses.count(200) <= 17
    assert statuses[:15] == [200] * 15
    assert {r for s, r in zip(statuses, retry_after, strict=True) if s == 429} == {"1"}


async def test_fault_injection_is_reproducible_with_a_seed(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    """Two sandboxes with the same seed fail the same requests with the same statuses."""
    runs = []
    for _ in range(2):
        sandbox = await start_sandbox(fail_rate=0.5, seed=42)
        runs.append([(await call(http, sandbox, [message()], raw=None))[0] for _ in range(20)])
    assert runs[0] == runs[1]
    assert 200 in runs[0]
    assert set(runs[0]) - {200}


async def test_omit_leaves_out_one_id_but_counts_it(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    """An omitted id was still accepted (so a resend shows up as a duplicate in `accepted`)."""
    sandbox = await start_sandbox(omit_rate=1.0, seed=3)
    _, body = await call(http, sandbox, [message(i) for i in range(4)])
    assert len(body) == 3
    assert sum(sandbox.accepted.values()) == 4


async def test_latency_is_added(start_sandbox: StartSandbox) -> None:
    """With latency, a client whose timeout is shorter gets no answer in time."""
    sandbox = await start_sandbox(latency_ms=1000)
    timeout = aiohttp.ClientTimeout(total=0.1)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with pytest.raises(TimeoutError):
            await session.post(sandbox.base_url + STANDARD, data=b"[]")


async def test_reset_stats(start_sandbox: StartSandbox, http: aiohttp.ClientSession) -> None:
    """`reset_stats` zeroes every counter."""
    sandbox = await start_sandbox()
    await call(http, sandbox, [message()])
    sandbox.reset_stats()
    assert (sandbox.requests, sandbox.accepted, sandbox.statuses, sandbox.dropped) == (
        0, {}, {}, 0)


async def test_base_url_needs_a_running_sandbox() -> None:
    """Asking a stopped sandbox for its URL is a clear error; stop() twice is fine."""
    sandbox = Sandbox(SandboxOptions())
    with pytest.raises(RuntimeError, match="not running"):
        _ = sandbox.base_url
    await sandbox.start()
    assert sandbox.base_url.startswith("http://127.0.0.1:")
    await sandbox.stop()
    await sandbox.stop()
    with pytest.raises(RuntimeError):
        _ = sandbox.base_url


@pytest.mark.parametrize(
    "options",
    [{"fail_rate": 1.5}, {"drop_rate": -0.1}, {"omit_rate": 2}, {"rate_limit": 0},
     {"latency_ms": -1}, {"undeliverable_rate": 1.2}, {"status_fail_rate": -1},
     {"status_rate_limit": 0}, {"dlr_delay": -1}, {"reject_rate": 1.5}],
)
def test_options_are_validated(options: dict[str, Any]) -> None:
    """Impossible option values are refused up front."""
    with pytest.raises(ValueError, match="must"):
        SandboxOptions(**options)


async def test_serve_runs_until_cancelled(http: aiohttp.ClientSession) -> None:
    """`serve` reports its URL, answers requests, and shuts down cleanly when cancelled."""
    ready: asyncio.Queue[str] = asyncio.Queue()
    task = asyncio.create_task(serve(SandboxOptions(), "127.0.0.1", 0, ready.put_nowait))
    url = await ready.get()
    async with http.post(url + STANDARD, data=orjson.dumps([message()]),
                         headers={**KEY, "Content-Type": "application/json"}) as response:
        assert response.status == 200
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    with pytest.raises(aiohttp.ClientConnectorError):
        await http.post(url + STANDARD, data=b"[]")


def test_message_ids_are_distinct_version_4_uuids() -> None:
    """Ids from one request and from different requests never repeat and parse as UUID v4."""
    ids = message_ids(1000) + message_ids(1000)
    assert len(set(ids)) == 2000
    for value in ids:
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == value


# --- the status API (SPEC §11.3) ------------------------------------------------------------


async def status_of(
    http: aiohttp.ClientSession, sandbox: Sandbox, message_id: str,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """GET the status API for one message id: the HTTP status and the JSON answer."""
    url = sandbox.base_url + STATUS_PATH.format(message_id=message_id)
    async with http.get(url, headers=KEY if headers is None else headers) as response:
        answer = await response.read()
        return response.status, orjson.loads(answer) if answer.startswith(b"{") else None


async def send_ids(
    http: aiohttp.ClientSession, sandbox: Sandbox, messages: list[dict[str, Any]],
    path: str = STANDARD,
) -> dict[str, str]:
    """Send ``messages``; tracking id -> messageId."""
    status, body = await call(http, sandbox, messages, path=path)
    assert status == 200
    return {entry["trackinId"]: entry["messageId"] for entry in body}


async def test_status_moves_from_scheduled_through_processing_to_final(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    """A message is scheduled, then processing, then final after its own delay; the answer
    has SMSBAT's fields, and asking again after the end tells the same story."""
    sandbox = await start_sandbox(dlr_delay=0.6, undeliverable_rate=0, permanent_error_rate=0)
    ids = await send_ids(http, sandbox, [message(i) for i in range(20)])
    seen: dict[str, list[str]] = {mid: [] for mid in ids.values()}
    for _ in range(40):
        for mid, statuses in seen.items():
            _, body = await status_of(http, sandbox, mid)
            if not statuses or statuses[-1] != body["deliverystatus"]:
                statuses.append(body["deliverystatus"])
        if all(s[-1] == "delivered" for s in seen.values()):
            break
        await asyncio.sleep(0.05)
    order = ["scheduled", "processing", "delivered"]
    for statuses in seen.values():
        assert statuses[-1] == "delivered"
        assert statuses == sorted(statuses, key=order.index)  # only ever forward
    assert any(len(s) == 3 for s in seen.values())
    mid = ids["t-3"]
    _, body = await status_of(http, sandbox, mid)
    channel = channel_for(message(3)["toPhone"], CHANNELS["standard"])
    assert body["messageId"] == mid and isinstance(body["messagelistId"], int)
    assert body["extendedStatuses"][channel] == "delivered"
    assert body["partscount"] == 1
    assert body["cost"] == body["billAmount"] == PRICES[channel]
    assert body["billCurrency"] == CURRENCY
    assert body["timestamp"].endswith("Z")
    assert (await status_of(http, sandbox, mid))[1] == body


async def test_channel_mix_per_route_and_fates(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    """Delivered messages come through every channel of their route, the channel the record
    names; undeliverable and permanenterror shares follow the options; only delivered costs."""
    sandbox = await start_sandbox(dlr_delay=0, undeliverable_rate=0.2, permanent_error_rate=0.1,
                                  seed=7)
    bodies: dict[str, list[dict[str, Any]]] = {}
    for route, path in (("standard", STANDARD), ("tg-viber", TG_VIBER)):
        batch = [message(i, id=f"{route}-{i}") for i in range(400)]
        ids = await send_ids(http, sandbox, batch, path)
        bodies[route] = []
        for m in batch:
            _, body = await status_of(http, sandbox, ids[m["id"]])
            body["phone"] = m["toPhone"]
            bodies[route].append(body)
    for route, answers in bodies.items():
        channels = CHANNELS[route]
        fates = Counter(b["deliverystatus"] for b in answers)
        assert 50 <= fates["undeliverable"] <= 110, fates
        assert 15 <= fates["permanenterror"] <= 70, fates
        delivered = [b for b in answers if b["deliverystatus"] == "delivered"]
        used = {c for b in delivered for c, s in b["extendedStatuses"].items() if s == "delivered"}
        assert used == set(channels), route
        for body in answers:
            assert list(body["extendedStatuses"]) == list(channels)
            if body["deliverystatus"] == "delivered":
                channel = channel_for(body["phone"], channels)
                assert body["extendedStatuses"][channel] == "delivered"
                assert body["cost"] == PRICES[channel]
            else:
                assert body["cost"] == 0
            if body["deliverystatus"] == "undeliverable":
                assert set(body["extendedStatuses"].values()) == {"undeliverable"}


async def test_sms_parts_and_their_cost(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    """A long text delivered by SMS costs one price per part; other channels count one part."""
    assert [sms_parts("a" * n) for n in (0, 160, 161, 306, 307)] == [1, 1, 2, 2, 3]
    assert [sms_parts("я" * n) for n in (70, 71, 134, 135)] == [1, 2, 2, 3]
    sandbox = await start_sandbox(dlr_delay=0, undeliverable_rate=0, permanent_error_rate=0)
    batch = [message(i, text="x" * 200) for i in range(60)]
    ids = await send_ids(http, sandbox, batch)
    for m in batch:
        _, body = await status_of(http, sandbox, ids[m["id"]])
        channel = channel_for(m["toPhone"], CHANNELS["standard"])
        parts = 2 if channel == "sms" else 1
        assert (body["partscount"], body["cost"]) == (parts, round(PRICES[channel] * parts, 2))


async def test_fates_are_reproducible_with_a_seed(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    """The same message id with the same seed always meets the same fate after the same delay."""
    options = {"seed": 5, "undeliverable_rate": 0.5, "permanent_error_rate": 0}
    first, second = await start_sandbox(**options), await start_sandbox(**options)
    ids = message_ids(50)
    assert [first.fate(i) for i in ids] == [second.fate(i) for i in ids]
    assert {first.fate(i).status for i in ids} == {"delivered", "undeliverable"}


async def test_status_errors_unknown_ids_credentials_and_faults(
    start_sandbox: StartSandbox, http: aiohttp.ClientSession
) -> None:
    """Unknown or malformed ids are 404, a missing key 401; the status route has its own 5xx
    share and its own rate limit (429 with Retry-After), and sending is untouched by both."""
    sandbox = await start_sandbox(api_key="sandbox-key")
    ids = await send_ids(http, sandbox, [message(1)])
    mid = ids["t-1"]
    assert (await status_of(http, sandbox, str(uuid.uuid4())))[0] == 404
    assert (await status_of(http, sandbox, mid[:24] + "ffffffffffff"))[0] == 404
    status, body = await status_of(http, sandbox, "not-a-message-id")
    assert (status, body["error"]["code"]) == (404, "NOT_FOUND")
    assert (await status_of(http, sandbox, mid, headers={}))[0] == 401
    assert (await status_of(http, sandbox, mid, headers={"X-Authorization-Key": "x"}))[0] == 401
    assert sandbox.status_answers == {404: 3, 401: 2}

    failing = await start_sandbox(status_fail_rate=1.0)
    ids = await send_ids(http, failing, [message(1)])
    assert {(await status_of(http, failing, ids["t-1"]))[0] for _ in range(10)} <= {
        500, 502, 503}
    limited = await start_sandbox(status_rate_limit=1)
    ids = await send_ids(http, limited, [message(1)])
    url = limited.base_url + STATUS_PATH.format(message_id=ids["t-1"])
    async with http.get(url, headers=KEY) as response:
        assert response.status == 200
    async with http.get(url, headers=KEY) as response:
        assert (response.status, response.headers["Retry-After"]) == (429, "1")
    assert (await call(http, limited, [message(2)]))[0] == 200  # sending has its own limit


def test_status_options_on_the_command_line(tmp_path: Path) -> None:
    """`sandbox --help` lists the status API's options with their defaults."""
    result = run_cli(["sandbox", "--help"], cwd=tmp_path)
    for option in ("--dlr-delay", "--undeliverable-rate", "--permanent-error-rate",
                   "--status-fail-rate", "--status-rate-limit"):
        assert option in result.stdout
    assert "default: 5.0" in result.stdout
