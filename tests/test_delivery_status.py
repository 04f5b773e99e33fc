"""Delivery status by polling (SPEC §11.3): the status body, the poll intervals, the poller
against the real sandbox with a real SQLite journal, and real daemons polling to the end.

The poller tests control the clock (the poller's, not the sandbox's: the sandbox's messages
reach their final status after ``dlr_delay`` real seconds, 0 or an hour here).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from daemon_helpers import (
    API_KEY,
    DaemonProcess,
    SandboxProcess,
    Workspace,
    poll,
    utc_seconds_from_now,
)
from hypothesis import given
from hypothesis import strategies as st

from scheduler.config import (
    ApiConfig,
    DeliveryReportsConfig,
    SendingConfig,
    load_config,
    load_credentials,
)
from scheduler.daemon import run_daemon
from scheduler.delivery_log import DeliveryLog
from scheduler.dlr import (
    Deliveries,
    Poller,
    PollSettings,
    StatusClient,
    give_up_at,
    next_poll,
    parse_report,
)
from scheduler.errors import ConfigError
from scheduler.journal import (
    AwaitingMessage,
    Journal,
    JournalLocation,
    MessageRecord,
    StatusReport,
    open_journal,
)
from scheduler.metrics import Metrics
from scheduler.sandbox import CHANNELS, PRICES, channel_for
from tests.engine_helpers import send_through
from tests.helpers import StartSandbox, free_port
from tests.journal_helpers import SyncJournal, indexed_message

KEY = {"X-Authorization-Key": "k"}
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


# --- the status body ------------------------------------------------------------------------


def test_parse_report_reads_smsbat_bodies() -> None:
    """The channel is the one that says delivered (or the last one tried); billAmount wins
    over cost; only final statuses keep channel, parts and cost."""
    body = {"messagelistId": 7, "messageId": "m-1", "deliverystatus": "Delivered",
            "partscount": 2, "cost": 1.0, "billAmount": "2.30", "billCurrency": "uah",
            "extendedStatuses": {"telegram": "undeliverable", "sms": "delivered"},
            "timestamp": "2026-12-01T09:00:05Z"}
    assert parse_report(body) == StatusReport(
        "m-1", "delivered", "sms", 2, 2.3, "UAH", T0 + timedelta(seconds=5))
    failed = {"messageId": "m-2", "deliverystatus": "undeliverable", "cost": 0,
              "extendedStatuses": {"telegram": "undeliverable", "viber": "undeliverable",
                                   "sms": "not_used"}}
    assert parse_report(failed) == StatusReport("m-2", "undeliverable", "viber", None, 0.0)
    webhook = {"messageId": "m-3", "deliverystatus": "processing", "timestamp": "bad",
               "cost": 5, "extendedStatuses": {"viber": "processing"}}
    assert parse_report(webhook) == StatusReport("m-3", "processing")
    for bad in ({"messageId": "m", "deliverystatus": "unknown"},
                {"messageId": "m", "deliverystatus": "lost"}, {"deliverystatus": "delivered"},
                {"messageId": 5, "deliverystatus": "delivered"}, [], "x", None):
        assert parse_report(bad) is None


_JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["messageId", "deliverystatus", "partscount", "cost", "billAmount",
                         "billCurrency", "extendedStatuses", "timestamp", "x"]) | st.text(),
        inner, max_size=6),
    max_leaves=20,
)


@given(_JSON)
def test_parse_report_never_raises(data: Any) -> None:
    """Any JSON at all gives a report or None, never an exception."""
    report = parse_report(data)
    assert report is None or report.status != "unknown"


def test_the_default_poll_rate_keeps_up_with_the_sending() -> None:
    """No poll_rate: one status request per message the account may send a second, up to
    1,000/s (was 10/s: a 50,000-message report took 80 minutes to fill); a poll_rate set is
    kept. The poller keeps enough requests in flight to reach its rate at 200 ms each."""
    reports = DeliveryReportsConfig(poll=True)
    assert reports.status_rate(SendingConfig()) == 1000  # 20 requests of 500 a second
    assert reports.status_rate(SendingConfig(requests_per_second=2, batch_size=100)) == 200
    assert DeliveryReportsConfig(poll_rate=10).status_rate(SendingConfig()) == 10
    assert [PollSettings(rate=r).concurrency for r in (10, 100, 1000)] == [8, 21, 64]


def test_intervals_double_up_to_the_cap_and_stop_at_give_up() -> None:
    """first_poll x 2, x 4, ... up to max_interval; never past min(deadline + 1 h, sent + 72 h)."""
    settings = PollSettings(rate=10, first_poll=30, max_interval=1800)
    sent = T0
    message = MessageRecord("m", "c", "c-1", "+380500000001", "promo", sent)
    waits = []
    for polls in range(8):
        awaiting = AwaitingMessage(message, sent + timedelta(days=9), polls)
        waits.append((next_poll(awaiting, sent, settings) - sent).total_seconds())
    assert waits == [60, 120, 240, 480, 960, 1800, 1800, 1800]
    short = AwaitingMessage(message, sent + timedelta(minutes=10), 5)
    assert give_up_at(short) == sent + timedelta(minutes=70)
    assert next_poll(short, sent + timedelta(minutes=60), settings) == give_up_at(short)
    long = AwaitingMessage(message, sent + timedelta(days=30), 0)
    assert give_up_at(long) == sent + timedelta(hours=72)


# --- the poller against the sandbox -----------------------------------------------------------


class Clock:
    """The poller's clock, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        """The current (test) time."""
        return self.now


@dataclasses.dataclass
class Setup:
    """A journal, a delivery log, metrics and a poller around one sandbox."""

    journal: Journal
    log_path: Path
    metrics: Metrics
    clock: Clock
    sent: list[tuple[str, str, str]]  # (tracking id, message id, phone)

    def lines(self) -> list[dict[str, Any]]:
        """The delivery log's ``delivery`` lines."""
        if not self.log_path.exists():
            return []
        return [line for line in map(orjson.loads, self.log_path.read_bytes().splitlines())
                if line["event"] == "delivery"]

    async def due(self, at: datetime) -> list[AwaitingMessage]:
        """Messages whose next poll is due by ``at``."""
        return await self.journal.messages_awaiting_status(at, 10_000)


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    """A started SQLite journal."""
    started = open_journal(JournalLocation(tmp_path / "state" / "journal.sqlite3"))
    await started.start(writer=True)
    yield started
    await started.close()


@pytest.fixture
def log(tmp_path: Path) -> Iterator[DeliveryLog]:
    """A delivery log (masked phones)."""
    opened = DeliveryLog(tmp_path / "logs" / "delivery.jsonl", phones="masked")
    yield opened
    opened.close()


async def make_poller(
    journal: Journal, log: DeliveryLog, base_url: str, sent: list[tuple[str, str, str]],
    **settings: Any,
) -> tuple[Poller, Setup, StatusClient]:
    """A poller (with its open client) whose clock starts just after the sending."""
    metrics = Metrics()
    record = await indexed_message(journal, sent[0][1])
    assert record is not None
    clock = Clock(record.sent_at + timedelta(seconds=1))
    client = StatusClient(base_url, lambda: KEY, timeout=5)
    await client.__aenter__()
    deliveries = Deliveries(journal, log, metrics, clock)
    poller = Poller(journal, client, deliveries,
                    PollSettings(**({"rate": 1000, "first_poll": 30} | settings)), clock=clock)
    return poller, Setup(journal, log.path, metrics, clock, sent), client


@pytest.fixture
async def close_clients() -> AsyncIterator[list[StatusClient]]:
    """Status clients to close at the end."""
    clients: list[StatusClient] = []
    yield clients
    for client in clients:
        await client.__aexit__(None, None, None)


async def test_a_round_journals_logs_and_counts_each_final_status_once(
    start_sandbox: StartSandbox, journal: Journal, log: DeliveryLog,
    close_clients: list[StatusClient],
) -> None:
    """Every due message is asked about; the final ones are journaled with their channel and
    cost, one ``delivery`` line each (masked phone, seconds), and counted in the metrics."""
    sandbox = await start_sandbox(dlr_delay=0, undeliverable_rate=0.3,
                                  permanent_error_rate=0.1, seed=11)
    sent = await send_through(journal, sandbox.base_url, "c", 120,
                              deadline=datetime.now(UTC) + timedelta(hours=1))
    poller, setup, client = await make_poller(journal, log, sandbox.base_url, sent)
    close_clients.append(client)
    assert await poller.round() == 0
    assert await setup.due(setup.clock.now + timedelta(days=9)) == []
    lines = setup.lines()
    assert sorted(line["message_id"] for line in lines) == sorted(mid for _, mid, _ in sent)
    fates = {mid: sandbox.fate(mid).status for _, mid, _ in sent}
    phones = {mid: phone for _, mid, phone in sent}
    for line in lines:
        mid = line["message_id"]
        assert line["status"] == fates[mid] and line["campaign"] == "c"
        assert line["phone"] == phones[mid][:4] + "*****" + phones[mid][-4:]
        assert line["seconds"] >= 0 and line["currency"] == "UAH"
        if line["status"] == "delivered":
            channel = channel_for(phones[mid], CHANNELS["standard"])
            assert (line["channel"], line["cost"], line["level"]) == (
                channel, PRICES[channel], "info")
        else:
            assert line["cost"] == 0 and line["level"] == "warning"
    counts = await journal.delivery_counts("c")
    assert counts.statuses == dict(Counter(fates.values()))
    assert sum(counts.delivered_by_channel.values()) == counts.statuses["delivered"]
    exposed = setup.metrics.exposition().decode()
    total = sum(float(v) for v in re.findall(r"^cascade_deliveries_total\{.*\} (\S+)$",
                                             exposed, re.MULTILINE))
    assert total == 120
    assert f'cascade_status_requests_total{{code="200"}} {120:.1f}' in exposed
    assert await poller.round() > 0  # nothing due: idle
    assert len(setup.lines()) == 120  # asked nothing again, logged nothing twice


async def test_unfinished_messages_are_asked_again_at_doubling_intervals_then_given_up(
    start_sandbox: StartSandbox, journal: Journal, log: DeliveryLog,
    close_clients: list[StatusClient],
) -> None:
    """A message still processing is asked again after 2x, 4x... first_poll; at the give-up
    time (here its deadline + 1 h) it becomes ``unknown``, logged once."""
    sandbox = await start_sandbox(dlr_delay=36_000)
    sent = await send_through(journal, sandbox.base_url, "c", 5,
                              deadline=datetime.now(UTC) + timedelta(minutes=10))
    poller, setup, client = await make_poller(journal, log, sandbox.base_url, sent)
    close_clients.append(client)
    start = setup.clock.now
    await poller.round()
    assert await setup.due(start + timedelta(seconds=59)) == []
    again = await setup.due(start + timedelta(seconds=60))
    assert {(a.polls, a.message.message_id) for a in again} == {(1, m) for _, m, _ in sent}
    setup.clock.now = start + timedelta(seconds=60)
    await poller.round()
    assert await setup.due(start + timedelta(seconds=179)) == []
    assert {a.polls for a in await setup.due(start + timedelta(seconds=180))} == {2}
    assert setup.lines() == []
    assert (await journal.delivery_counts("c")).statuses == {"awaiting": 5}
    setup.clock.now = start + timedelta(minutes=75)  # past the deadline + 1 h
    asked = sum(sandbox.status_answers.values())
    await poller.round()
    assert sum(sandbox.status_answers.values()) == asked  # given up without asking
    assert [line["status"] for line in setup.lines()] == ["unknown"] * 5
    assert (await journal.delivery_counts("c")).statuses == {"unknown": 5}


async def test_a_status_api_outage_backs_off_and_loses_nothing(
    start_sandbox: StartSandbox, journal: Journal, log: DeliveryLog,
    close_clients: list[StatusClient],
) -> None:
    """A 5xx storm: the poller stops asking at the first failure, waits longer each round,
    keeps every message due (no poll counted); once the API answers, everything is final."""
    sandbox = await start_sandbox(dlr_delay=0, undeliverable_rate=0, permanent_error_rate=0,
                                  status_fail_rate=1.0)
    sent = await send_through(journal, sandbox.base_url, "c", 40,
                              deadline=datetime.now(UTC) + timedelta(hours=1))
    # 40 a second: 9 in flight (`PollSettings.concurrency`), so a round cannot ask all 40
    poller, setup, client = await make_poller(journal, log, sandbox.base_url, sent, rate=40)
    close_clients.append(client)
    waits = [await poller.round() for _ in range(3)]
    assert waits == [1.0, 2.0, 4.0]
    in_flight = poller.settings.concurrency
    assert sum(sandbox.status_answers.values()) <= 3 * in_flight  # a few, not all 40 each
    due = await setup.due(setup.clock.now)
    assert len(due) == 40 and {a.polls for a in due} == {0}
    sandbox.options = dataclasses.replace(sandbox.options, status_fail_rate=0.0)
    assert await poller.round() == 0
    assert len(setup.lines()) == 40
    assert (await journal.delivery_counts("c")).statuses == {"delivered": 40}


async def test_429_is_honoured_and_unknown_ids_and_bad_bodies_are_asked_again(
    start_sandbox: StartSandbox, journal: Journal, log: DeliveryLog,
    close_clients: list[StatusClient],
) -> None:
    """429 with Retry-After: the poller waits at least that long; a 404 (an id the status API
    does not know yet) and a 200 that is no status are asked again later, never lost."""
    limited = await start_sandbox(dlr_delay=0, status_rate_limit=1)
    sent = await send_through(journal, limited.base_url, "c", 5,
                              deadline=datetime.now(UTC) + timedelta(hours=1))
    poller, setup, client = await make_poller(journal, log, limited.base_url, sent)
    close_clients.append(client)
    assert await poller.round() >= 1.0
    assert limited.status_answers[429] >= 1 and len(setup.lines()) == 1

    stranger = await start_sandbox()  # knows none of these ids: 404
    poller, setup, client = await make_poller(journal, log, stranger.base_url, sent)
    close_clients.append(client)
    assert await poller.round() == 0
    assert stranger.status_answers == {404: 4}
    assert {a.polls for a in await setup.due(setup.clock.now + timedelta(seconds=60))} == {1}

    async def garbage(_: web.Request) -> web.Response:
        return web.Response(text="<html>maintenance</html>")

    app = web.Application()
    app.router.add_get("/bat/message/{message_id}", garbage)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        poller, setup, client = await make_poller(journal, log, f"http://127.0.0.1:{port}",
                                                  sent)
        close_clients.append(client)
        setup.clock.now += timedelta(seconds=60)
        assert await poller.round() == 0
        assert {a.polls for a in await setup.due(setup.clock.now + timedelta(seconds=120))} == {2}
    finally:
        await runner.cleanup()


async def test_the_poller_asks_nothing_while_not_leading(
    start_sandbox: StartSandbox, journal: Journal, log: DeliveryLog,
    close_clients: list[StatusClient],
) -> None:
    """A standby never polls: only the leader does."""
    sandbox = await start_sandbox(dlr_delay=0)
    sent = await send_through(journal, sandbox.base_url, "c", 3,
                              deadline=datetime.now(UTC) + timedelta(hours=1))
    poller, _, client = await make_poller(journal, log, sandbox.base_url, sent)
    close_clients.append(client)
    poller.leading = lambda: False
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    await asyncio.sleep(0.3)
    stop.set()
    await task
    assert sandbox.status_answers == {}


# --- real daemons -------------------------------------------------------------------------


def _polling(sandbox: SandboxProcess, **extra: Any) -> dict[str, Any]:
    return {"poll": True, "status_url": sandbox.url, "first_poll": 1, "max_interval": 2,
            "poll_rate": 200, **extra}


def _finals(workspace: Workspace, cid: str) -> int:
    with SyncJournal(workspace.journal_path) as journal:
        statuses = journal.delivery_counts(cid).statuses
    return sum(n for status, n in statuses.items() if status != "awaiting")


def test_a_daemon_polls_a_campaign_with_mixed_channels_to_the_end(tmp_path: Path) -> None:
    """Every sent message reaches its final status on the channel the sandbox chose, with
    one ``delivery`` line each and the metrics to match."""
    sandbox = SandboxProcess(tmp_path / "record.jsonl", "--dlr-delay", "1",
                             "--undeliverable-rate", "0.2", "--seed", "3")
    metrics = f"127.0.0.1:{free_port()}"
    workspace = Workspace(tmp_path / "ws", base_url=sandbox.url, metrics_listen=metrics,
                          delivery_reports=_polling(sandbox))
    daemon = DaemonProcess(workspace, CASCADE_API_KEY=API_KEY)
    try:
        workspace.audience("mix", 150)
        workspace.write_campaign("mix", utc_seconds_from_now(1))
        daemon.start()
        poll(lambda: _finals(workspace, "mix") == 150, 40, "150 final statuses")
        poll(lambda: len(workspace.events("delivery")) == 150, 30, "150 delivery lines")
        lines = workspace.events("delivery")
        record = {r["messageId"]: r for r in sandbox.record()}
        assert {line["message_id"] for line in lines} == set(record)
        statuses = Counter(line["status"] for line in lines)
        assert 10 <= statuses["undeliverable"] <= 55, statuses
        for line in lines:
            if line["status"] == "delivered":
                assert line["channel"] == record[line["message_id"]]["channel"]
                assert line["cost"] == PRICES[line["channel"]]
            assert line["tracking_id"].startswith("mix-") and "*" in line["phone"]
            assert 0 < line["seconds"] < 30
        delivered = {line["channel"] for line in lines if line["status"] == "delivered"}
        assert delivered == set(CHANNELS["standard"])
        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as response:
            exposed = response.read().decode()
        total = sum(float(v) for v in re.findall(r"^cascade_deliveries_total\{.*\} (\S+)$",
                                                 exposed, re.MULTILINE))
        assert total == 150
        assert 'cascade_cost_total{currency="UAH"}' in exposed
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        sandbox.close()


@pytest.mark.slow
def test_polling_resumes_from_the_journal_after_kill_9(tmp_path: Path) -> None:
    """kill -9 while messages await their status: the next start asks again where the
    journal says, every message ends final, none is logged twice."""
    sandbox = SandboxProcess(tmp_path / "record.jsonl", "--dlr-delay", "8")
    workspace = Workspace(tmp_path / "ws", base_url=sandbox.url,
                          delivery_reports=_polling(sandbox))
    daemon = DaemonProcess(workspace, CASCADE_API_KEY=API_KEY)
    try:
        workspace.audience("later", 60)
        workspace.write_campaign("later", utc_seconds_from_now(1))
        daemon.start()

        def polled() -> bool:
            with SyncJournal(workspace.journal_path) as journal:
                due = journal.messages_awaiting_status(datetime.now(UTC) + timedelta(days=9),
                                                       100)
            return len(due) == 60 and all(a.polls >= 1 for a in due)

        poll(polled, 20, "every message polled at least once, none final")
        daemon.kill()
        assert workspace.events("delivery") == []
        daemon.start()
        poll(lambda: _finals(workspace, "later") == 60, 40, "60 final statuses")
        poll(lambda: len(workspace.events("delivery")) >= 60, 30, "60 delivery lines")
        ids = Counter(line["message_id"] for line in workspace.events("delivery"))
        assert len(ids) == 60 and set(ids.values()) == {1}
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        sandbox.close()


def test_the_embedded_sandbox_answers_the_status_api_too(tmp_path: Path) -> None:
    """With ``base_url = "sandbox"`` the status API is the embedded one: no URL to write."""
    workspace = Workspace(tmp_path, delivery_reports={"poll": True, "first_poll": 1,
                                                      "max_interval": 2})
    daemon = DaemonProcess(workspace)
    try:
        workspace.audience("small", 20)
        workspace.write_campaign("small", utc_seconds_from_now(1))
        daemon.start()
        poll(lambda: _finals(workspace, "small") == 20, 40, "20 final statuses")
        assert daemon.stop() == 0
        assert len(workspace.events("delivery")) == 20
    finally:
        daemon.kill()


def test_polling_follows_a_standalone_sandbox_without_a_status_url(tmp_path: Path) -> None:
    """``base_url`` = a sandbox run apart (the README's recipe), no ``status_url``: the
    statuses are asked of that sandbox, not of SMSBAT's status API (issue 24, item 3)."""
    sandbox = SandboxProcess(tmp_path / "record.jsonl", "--dlr-delay", "0.5")
    polling = {key: value for key, value in _polling(sandbox).items() if key != "status_url"}
    workspace = Workspace(tmp_path / "ws", base_url=sandbox.url, delivery_reports=polling)
    daemon = DaemonProcess(workspace, CASCADE_API_KEY=API_KEY)
    try:
        workspace.audience("apart", 20)
        workspace.write_campaign("apart", utc_seconds_from_now(1))
        daemon.start()
        poll(lambda: _finals(workspace, "apart") == 20, 40, "20 final statuses")
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        sandbox.close()
    loaded = load_config(workspace.config, env={})
    assert loaded.delivery_reports.status_base(loaded.api) == sandbox.url
    for real in ("https://restapi.smsbat.com", "https://eu.restapi.smsbat.com/"):
        assert DeliveryReportsConfig().status_base(ApiConfig(base_url=real)) == \
            "https://api.smsbat.com"


def test_the_status_url_is_checked(tmp_path: Path) -> None:
    """Plain http:// off this machine is refused with its line; "sandbox" needs the sandbox."""
    config = tmp_path / "config.toml"
    config.write_text('[delivery_reports]\npoll = true\nstatus_url = "http://example.com"\n')
    with pytest.raises(ConfigError) as refused:
        load_config(config, env={})
    assert "config.toml:3: delivery_reports.status_url: plain http://" in str(refused.value)
    (tmp_path / "campaigns").mkdir()
    config.write_text('[api]\nbase_url = "https://restapi.smsbat.com"\n\n'
                      '[delivery_reports]\npoll = true\nstatus_url = "sandbox"\n')
    loaded = load_config(config, env={"CASCADE_API_KEY": "k"})
    with pytest.raises(ConfigError, match='status_url = "sandbox" needs'):
        asyncio.run(run_daemon(loaded))
    assert DeliveryReportsConfig().status_base(ApiConfig()) == "sandbox"
    assert DeliveryReportsConfig().status_base(
        ApiConfig(base_url="https://restapi.smsbat.com")) == "https://api.smsbat.com"


def test_the_webhook_token_is_a_credential_kept_secret(tmp_path: Path) -> None:
    """From the environment or $CREDENTIALS_DIRECTORY/webhook-token, and among the secrets
    every log redacts."""
    assert load_credentials({"CASCADE_WEBHOOK_TOKEN": "t0k\n"}).webhook_token is not None
    (tmp_path / "webhook-token").write_text("from-file\n")
    found = load_credentials({"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert found.webhook_token is not None
    assert found.webhook_token.get_secret_value() == "from-file"
    assert "from-file" in found.secrets() and "from-file" not in repr(found)
