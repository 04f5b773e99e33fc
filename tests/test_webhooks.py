"""The delivery-report webhook (SPEC §11.3) on a real port with a real SQLite journal, the
sandbox pushing reports to it (duplicated, reordered, missing), and real daemons taking them,
a kill -9 right after a 200 included."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from daemon_helpers import (
    API_KEY,
    DaemonProcess,
    SandboxProcess,
    Workspace,
    poll,
    utc_seconds_from_now,
)

from scheduler.delivery_log import DeliveryLog
from scheduler.dlr import Deliveries
from scheduler.journal import (
    Journal,
    JournalError,
    JournalLocation,
    StatusChange,
    StatusReport,
    open_journal,
)
from scheduler.journal import sqlite as sqlite_backend
from scheduler.metrics import Metrics
from scheduler.webhooks import Gatherer, WebhookServer
from tests.engine_helpers import send_through
from tests.helpers import StartSandbox, free_port
from tests.journal_helpers import SyncJournal, indexed_message

TOKEN = "hook-Secret-42"


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    """A started SQLite journal."""
    started = open_journal(JournalLocation(tmp_path / "state" / "journal.sqlite3"))
    await started.start(writer=True)
    yield started
    await started.close()


@pytest.fixture
def log(tmp_path: Path) -> Iterator[DeliveryLog]:
    """The delivery log the receiver writes."""
    opened = DeliveryLog(tmp_path / "logs" / "delivery.jsonl", phones="masked")
    yield opened
    opened.close()


@pytest.fixture
async def receiver(journal: Journal, log: DeliveryLog) -> AsyncIterator[WebhookServer]:
    """The webhook receiver on a free loopback port, indexing on demand."""
    server = WebhookServer(Deliveries(journal, log, Metrics()), lambda: TOKEN, "127.0.0.1",
                           free_port(), index=lambda: journal.index_messages(2, 30))
    await server.start()
    yield server
    await server.stop()


def url(server: WebhookServer, token: str = TOKEN) -> str:
    """The receiver's URL for ``token``."""
    return f"http://127.0.0.1:{server.port}/delivery-reports/{token}"


async def post(target: str, body: object | bytes) -> tuple[int, Any]:
    """POST a JSON body (or raw bytes); (status, JSON answer)."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with aiohttp.ClientSession() as http, http.post(
            target, data=data, headers={"Content-Type": "application/json"}) as answer:
        return answer.status, orjson.loads(await answer.read())


def delivery_lines(log: DeliveryLog) -> list[dict[str, Any]]:
    """The ``delivery`` lines written so far."""
    if not log.path.exists():
        return []
    return [line for line in map(orjson.loads, log.path.read_bytes().splitlines())
            if line["event"] == "delivery"]


def report(message_id: str, status: str = "delivered", **extra: Any) -> dict[str, Any]:
    """One webhook report as SMSBAT sends it."""
    return {"messageId": message_id, "deliverystatus": status,
            "timestamp": "2026-12-01T09:00:05Z", "cost": 0.55,
            "extendedStatuses": {"telegram": "undeliverable", "viber": "delivered"}, **extra}


async def test_token_and_malformed_bodies_are_refused_and_keep_nothing(
    start_sandbox: StartSandbox, journal: Journal, receiver: WebhookServer,
) -> None:
    """A wrong (or no) token is a 404 like any unknown path; a body that is no status report,
    or an array with one bad report, is a 400 and nothing of it is kept."""
    sandbox = await start_sandbox()
    sent = await send_through(journal, sandbox.base_url, "c", 3,
                              deadline=datetime.now(UTC) + timedelta(hours=1))
    mid = sent[0][1]
    assert (await post(url(receiver, "wrong"), report(mid)))[0] == 404
    assert (await post(url(receiver, TOKEN + "x"), report(mid)))[0] == 404
    assert (await post(f"http://127.0.0.1:{receiver.port}/delivery-reports/", report(mid)))[
        0] == 404
    for bad in (b"not json", [], {"deliverystatus": "delivered"},
                {"messageId": mid, "deliverystatus": "lost"}, [report(mid), {"messageId": 5}]):
        status, answer = await post(url(receiver), bad)
        assert status == 400, bad
        assert answer["error"]["code"] == "MALFORMED"
    assert (await journal.delivery_counts("c")).statuses == {"awaiting": 3}
    assert receiver.received == {"wrong_token": 2, "malformed": 5}  # no token: no route


async def test_reports_are_durable_before_200_and_idempotent(
    start_sandbox: StartSandbox, journal: Journal, receiver: WebhookServer,
    log: DeliveryLog,
) -> None:
    """200 once journaled (another reader sees it at once); the same report again, or an
    older status after it, changes nothing and logs nothing twice; unknown ids are 202."""
    sandbox = await start_sandbox()
    sent = await send_through(journal, sandbox.base_url, "c", 3,
                              deadline=datetime.now(UTC) + timedelta(hours=1))
    mid = sent[0][1]
    status, answer = await post(url(receiver), report(mid, partscount=1, billCurrency="UAH"))
    assert (status, answer) == (200, {"recorded": 1, "unknown": 0})
    with SyncJournal(Path(journal.location)) as reader:
        rows = reader.delivery_recipients("c", "delivered")
    assert [(r.message_id, r.channel, r.cost, r.currency) for r in rows] == [
        (mid, "viber", 0.55, "UAH")]
    for again in (report(mid), report(mid, "processing"), report(mid, "undeliverable")):
        assert (await post(url(receiver), again))[0] == 200
    assert [line["message_id"] for line in delivery_lines(log)] == [mid]
    assert (await journal.delivery_counts("c")).statuses == {"delivered": 1, "awaiting": 2}
    status, answer = await post(url(receiver), [report(sent[1][1], "undeliverable"),
                                                report("not-ours"), report(sent[2][1])])
    assert (status, answer) == (202, {"recorded": 2, "unknown": 1})
    assert receiver.received["unknown"] == 1 and receiver.received["final"] == 3
    assert len(delivery_lines(log)) == 3


async def test_a_report_before_its_message_was_indexed_is_kept(
    start_sandbox: StartSandbox, journal: Journal, receiver: WebhookServer,
) -> None:
    """The webhook can beat the daemon's index: the receiver indexes, then records."""
    sandbox = await start_sandbox()
    sent = await send_through(journal, sandbox.base_url, "c", 2,
                              deadline=datetime.now(UTC) + timedelta(hours=1))
    more = await send_through(journal, sandbox.base_url, "d", 2,
                              deadline=datetime.now(UTC) + timedelta(hours=1), index=False)
    assert await indexed_message(journal, more[0][1]) is None
    status, _ = await post(url(receiver), [report(more[0][1]), report(sent[0][1])])
    assert status == 200
    assert (await journal.delivery_counts("d")).statuses == {"delivered": 1, "awaiting": 1}


async def test_the_sandbox_pushes_duplicated_reordered_and_missing_reports(
    start_sandbox: StartSandbox, journal: Journal, receiver: WebhookServer,
    log: DeliveryLog,
) -> None:
    """With every fault on: each pushed message ends in its final status, logged once; the
    missing ones stay awaiting (polling would find them)."""
    sandbox = await start_sandbox(dlr_url=url(receiver), dlr_delay=0.3, seed=8,
                                  dlr_duplicate_rate=0.5, dlr_reorder_rate=0.5,
                                  dlr_missing_rate=0.2)
    sent = await send_through(journal, sandbox.base_url, "c", 100,
                              deadline=datetime.now(UTC) + timedelta(hours=1))
    pusher = sandbox.pusher
    assert pusher is not None
    for _ in range(100):
        if not pusher.waiting:
            break
        await asyncio.sleep(0.05)
    assert pusher.waiting == 0 and pusher.failed == 0
    lines = delivery_lines(log)
    ids = Counter(line["message_id"] for line in lines)
    assert set(ids.values()) == {1}
    assert 60 <= len(ids) <= 95  # about 20% never pushed
    fates = {mid: sandbox.fate(mid).status for _, mid, _ in sent}
    assert all(line["status"] == fates[line["message_id"]] for line in lines)
    counts = (await journal.delivery_counts("c")).statuses
    assert counts.get("awaiting", 0) == 100 - len(ids)
    assert receiver.received["unchanged"] > 10  # duplicates and late "processing" reports


# --- real daemons -------------------------------------------------------------------------


def _finals(workspace: Workspace, cid: str) -> int:
    with SyncJournal(workspace.journal_path) as journal:
        statuses = journal.delivery_counts(cid).statuses
    return sum(n for status, n in statuses.items() if status != "awaiting")


def _daemon(workspace: Workspace) -> DaemonProcess:
    return DaemonProcess(workspace, CASCADE_API_KEY=API_KEY, CASCADE_WEBHOOK_TOKEN=TOKEN)


@pytest.mark.parametrize("polling", [False, True])
def test_a_daemon_takes_pushed_reports(tmp_path: Path, polling: bool) -> None:
    """The sandbox pushes to the daemon's webhook with duplicates and reordering; without
    polling every pushed message ends final once; with polling on too, so do the ones whose
    report never came."""
    listen = f"127.0.0.1:{free_port()}"
    settings: dict[str, Any] = {"listen": listen}
    missing = "0.3" if polling else "0"
    hook = f"http://{listen}/delivery-reports/{TOKEN}"
    sandbox = SandboxProcess(tmp_path / "record.jsonl", "--dlr-url", hook, "--dlr-delay", "0.5",
                             "--dlr-duplicate-rate", "0.3", "--dlr-reorder-rate", "0.3",
                             "--dlr-missing-rate", missing, "--seed", "4")
    if polling:
        settings |= {"poll": True, "status_url": sandbox.url, "first_poll": 1,
                     "max_interval": 2, "poll_rate": 200}
    workspace = Workspace(tmp_path / "ws", base_url=sandbox.url, delivery_reports=settings)
    daemon = _daemon(workspace)
    try:
        workspace.audience("hooked", 80)
        workspace.write_campaign("hooked", utc_seconds_from_now(1))
        daemon.start()
        poll(lambda: _finals(workspace, "hooked") == 80, 40, "80 final statuses")
        poll(lambda: len(workspace.events("delivery")) >= 80, 30, "80 delivery lines")
        ids = Counter(line["message_id"] for line in workspace.events("delivery"))
        assert len(ids) == 80 and set(ids.values()) == {1}
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        sandbox.close()


def test_a_report_answered_200_survives_kill_9(tmp_path: Path) -> None:
    """kill -9 right after the 200: the status is in the journal."""
    listen = f"127.0.0.1:{free_port()}"
    sandbox = SandboxProcess(tmp_path / "record.jsonl")
    workspace = Workspace(tmp_path / "ws", base_url=sandbox.url,
                          delivery_reports={"listen": listen})
    daemon = _daemon(workspace)
    try:
        workspace.audience("k", 10)
        workspace.write_campaign("k", utc_seconds_from_now(1))
        daemon.start()
        poll(lambda: len(sandbox.record()) == 10, 20, "10 messages sent")
        poll(lambda: workspace.counts("k")["sent"] == 10, 30, "10 sent in the journal")
        message_ids = [r["messageId"] for r in sandbox.record()]
        body = json.dumps([report(mid, "undeliverable") for mid in message_ids]).encode()
        request = urllib.request.Request(f"http://{listen}/delivery-reports/{TOKEN}", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
        daemon.kill()
        assert _finals(workspace, "k") == 10
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(request, timeout=2)
    finally:
        daemon.kill()
        sandbox.close()


def test_listen_needs_the_token(tmp_path: Path) -> None:
    """``listen`` without the webhook-token credential: the daemon refuses to start, saying
    which credential to set."""
    workspace = Workspace(tmp_path, delivery_reports={"listen": f"127.0.0.1:{free_port()}"})
    daemon = DaemonProcess(workspace).start(wait=False)
    assert daemon.proc is not None
    assert daemon.proc.wait(20) == 1
    assert "CASCADE_WEBHOOK_TOKEN" in daemon.stderr()
    assert "Traceback" not in daemon.stderr()


def test_delivery_lines_survive_kill_9_between_the_journal_and_the_log(tmp_path: Path) -> None:
    """Reports pour in; the daemon is frozen (SIGSTOP) until the journal holds final statuses
    whose delivery lines are not written yet, then killed right there. The next start writes
    the missing lines (and not the ones already written): every message has exactly one.
    (30 requests of 400 reports: each is one chance to catch it; 10 missed them all once.)"""
    count = 12_000
    listen = f"127.0.0.1:{free_port()}"
    sandbox = SandboxProcess(tmp_path / "record.jsonl")
    workspace = Workspace(tmp_path / "ws", base_url=sandbox.url,
                          sending={"batch_size": 200, "requests_per_second": 50},
                          delivery_reports={"listen": listen})
    hook = f"http://{listen}/delivery-reports/{TOKEN}"
    daemon = _daemon(workspace)

    def awaiting() -> int:
        with SyncJournal(workspace.journal_path) as journal:
            return journal.delivery_counts("k").statuses.get("awaiting", 0)

    def logged() -> int:
        return workspace.delivery_log.read_bytes().count(b'"event":"delivery"')

    def push(bodies: list[bytes], stop_on_error: bool) -> None:
        for body in bodies:
            request = urllib.request.Request(hook, body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    assert answer.status == 200
            except (urllib.error.URLError, ConnectionError):
                if stop_on_error:
                    return
                raise

    try:
        workspace.audience("k", count)
        workspace.write_campaign("k", utc_seconds_from_now(1))
        daemon.start()
        poll(lambda: awaiting() == count, 40, f"{count} messages sent and indexed")
        ids = [r["messageId"] for r in sandbox.record()]
        bodies = [orjson.dumps([report(mid, "delivered" if i % 3 else "undeliverable")
                                for i, mid in enumerate(ids[start:start + 400])])
                  for start in range(0, count, 400)]
        pusher = threading.Thread(target=push, args=(bodies, True))
        pusher.start()
        caught = False
        while not caught and pusher.is_alive():
            daemon.signal(signal.SIGSTOP)
            caught = _finals(workspace, "k") > logged()
            if not caught:
                daemon.signal(signal.SIGCONT)
                time.sleep(0.001)
        daemon.signal(signal.SIGKILL)
        assert daemon.proc is not None
        daemon.proc.wait(10)
        pusher.join(30)
        assert caught, "never caught the daemon between the journal and the log"
        finals, lines = _finals(workspace, "k"), logged()
        assert finals > lines  # some lines are missing right now

        daemon.start()  # (returns once it says daemon_started: listening by then)
        poll(lambda: logged() >= finals, 20, "the missing lines written at the start")
        push(bodies, False)  # the sender retries all: duplicates change nothing
        poll(lambda: _finals(workspace, "k") == count, 20, "every status final")
        poll(lambda: logged() >= count, 30, "every delivery line")
        written = Counter(line["message_id"] for line in workspace.events("delivery"))
        assert set(written) == set(ids) and set(written.values()) == {1}
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        sandbox.close()


def test_a_rotated_token_takes_effect_without_a_restart(tmp_path: Path) -> None:
    """The token in $CREDENTIALS_DIRECTORY is replaced: a request with the new one makes the
    daemon re-read it (and is taken); the old one is refused from then on. SIGHUP re-reads it
    too. No token ever reaches a log."""
    listen = f"127.0.0.1:{free_port()}"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "webhook-token").write_text("old-Token-1\n", "utf-8")
    workspace = Workspace(tmp_path / "ws", delivery_reports={"listen": listen})
    daemon = DaemonProcess(workspace, CREDENTIALS_DIRECTORY=str(credentials))
    body = orjson.dumps(report("not-ours"))

    def answer(token: str) -> int:
        request = urllib.request.Request(f"http://{listen}/delivery-reports/{token}", body,
                                         {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        daemon.start()
        assert answer("old-Token-1") == 202  # taken (the id is not ours: counted, kept nowhere)
        assert answer("new-Token-2") == 404
        (credentials / "webhook-token").write_text("new-Token-2\n", "utf-8")
        time.sleep(5.2)  # the re-reads a wrong token prompts come at most every 5 s
        assert answer("new-Token-2") == 202
        assert answer("old-Token-1") == 404
        (credentials / "webhook-token").write_text("third-Token-3\n", "utf-8")
        daemon.signal(signal.SIGHUP)
        poll(lambda: len(workspace.events("daemon_reloaded")) >= 1, 30, "the reload")
        assert answer("new-Token-2") == 404  # refused at once: no re-read can bring it back
        assert answer("third-Token-3") == 202
        assert daemon.stop() == 0
        logs = daemon.stderr() + workspace.delivery_log.read_text("utf-8")
        assert "webhook_token_changed" in logs
        assert not any(token in logs for token in ("old-Token", "new-Token", "third-Token"))
    finally:
        daemon.kill()


async def _reports_without_channel_or_currency(
    journal: Journal, log: DeliveryLog, base_url: str, currency: str | None,
) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """Two reports through a receiver of its own: one as SPEC §11.3's webhook sends it (cost,
    no currency, no channel), one with both. The delivery lines, the summary's delivery
    object (JSON) and the exposition."""
    from scheduler.journal import JournalLocation, JournalReader, open_journal
    from scheduler.report import write_summary

    sent = await send_through(journal, base_url, "c", 2,
                              deadline=datetime.now(UTC) + timedelta(hours=1))
    metrics = Metrics()
    server = WebhookServer(Deliveries(journal, log, metrics, currency=currency),
                           lambda: TOKEN, "127.0.0.1", free_port())
    await server.start()
    try:
        bare = {"messageId": sent[0][1], "deliverystatus": "delivered",
                "timestamp": "2026-12-01T09:00:05Z", "cost": 1.15}
        assert (await post(url(server), [bare, report(sent[1][1], billCurrency="UAH")]))[0] == 200
    finally:
        await server.stop()

    def summary() -> Any:  # a reader runs its own event loop: in a thread of its own
        out = io.StringIO()
        with JournalReader(open_journal(JournalLocation(journal.path))) as reader:
            write_summary(reader, "c", "json", out, delivery=True)
        return orjson.loads(out.getvalue())[0]["delivery"]

    return delivery_lines(log), await asyncio.to_thread(summary), (
        metrics.exposition().decode())


async def test_no_channel_is_one_word_in_the_log_the_metrics_and_the_report(
    start_sandbox: StartSandbox, journal: Journal, log: DeliveryLog,
) -> None:
    """A report that names no channel: "unknown" in its delivery line, in the metric label and
    in `report`; a cost without a currency (and none in the config) is kept under "unknown",
    never dropped."""
    sandbox = await start_sandbox()
    lines, summary, exposition = await _reports_without_channel_or_currency(
        journal, log, sandbox.base_url, None)
    bare = lines[0]
    assert (bare["channel"], bare["cost"], bare["currency"]) == ("unknown", 1.15, "unknown")
    assert (lines[1]["channel"], lines[1]["currency"]) == ("viber", "UAH")
    assert summary["by_channel"] == {"unknown": 1, "viber": 1}
    assert summary["cost"] == {"UAH": 0.55, "unknown": 1.15}
    assert 'cascade_deliveries_total{channel="unknown",status="delivered"} 1.0' in exposition
    assert 'cascade_cost_total{currency="unknown"} 1.15' in exposition
    assert 'channel="none"' not in exposition


async def test_a_cost_without_currency_is_in_the_configured_one(
    start_sandbox: StartSandbox, journal: Journal, log: DeliveryLog,
) -> None:
    """With ``[delivery_reports] currency`` set, a cost reported alone is in that currency:
    in the delivery line, the metric and `report`'s total."""
    sandbox = await start_sandbox()
    lines, summary, exposition = await _reports_without_channel_or_currency(
        journal, log, sandbox.base_url, "UAH")
    assert [line["currency"] for line in lines] == ["UAH", "UAH"]
    assert summary["cost"] == {"UAH": 1.70}
    assert 'cascade_cost_total{currency="UAH"} 1.7' in exposition


async def test_concurrent_requests_each_get_their_own_answer(
    start_sandbox: StartSandbox, journal: Journal, receiver: WebhookServer,
    log: DeliveryLog,
) -> None:
    """Providers push one report per request: requests that arrive together are journaled
    together, and each still gets the answer for its own reports (200, or 202 with its own
    unknown count), a message reported twice in one group is logged once."""
    sandbox = await start_sandbox()
    sent = await send_through(journal, sandbox.base_url, "c", 40,
                              deadline=datetime.now(UTC) + timedelta(hours=1))
    bodies: list[object] = [report(mid) for _, mid, _ in sent]
    bodies += [report(sent[0][1]), [report("nobody-1"), report(sent[1][1], "undeliverable")],
               [report("nobody-2"), report("nobody-3")]]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:

        async def one(body: object) -> tuple[int, Any]:
            async with http.post(url(receiver), data=orjson.dumps(body),
                                 headers={"Content-Type": "application/json"}) as answer:
                return answer.status, orjson.loads(await answer.read())

        answers = await asyncio.gather(*map(one, bodies))
    assert answers[:41] == [(200, {"recorded": 1, "unknown": 0})] * 41
    assert answers[41:] == [(202, {"recorded": 1, "unknown": 1}),
                            (202, {"recorded": 0, "unknown": 2})]
    assert (await journal.delivery_counts("c")).statuses == {"delivered": 40}
    assert sorted(line["message_id"] for line in delivery_lines(log)) == sorted(
        mid for _, mid, _ in sent)


async def test_the_gatherer_sends_calls_made_meanwhile_together() -> None:
    """While one write is under way, the calls that come wait and go in one next write; its
    failure is every one of their failure, and a caller that gave up does not stop the rest."""
    calls: list[list[str]] = []
    release = asyncio.Event()

    async def record(reports: Sequence[StatusReport]) -> list[StatusChange]:
        calls.append([r.message_id for r in reports])
        await release.wait()
        if any(r.message_id == "boom" for r in reports):
            raise JournalError(None, "the journal is unavailable")
        return [StatusChange("moved") for _ in reports]

    def reports(*ids: str) -> list[StatusReport]:
        return [StatusReport(i, "processing") for i in ids]

    gatherer = Gatherer(record)
    first = asyncio.create_task(gatherer.record(reports("a")))
    await poll_until(lambda: calls == [["a"]])
    second = asyncio.create_task(gatherer.record(reports("b", "c")))
    gave_up = asyncio.create_task(gatherer.record(reports("d")))
    third = asyncio.create_task(gatherer.record(reports("e")))
    await asyncio.sleep(0)
    gave_up.cancel()
    release.set()
    assert len(await first) == 1
    assert [len(await second), len(await third)] == [2, 1]
    assert calls == [["a"], ["b", "c", "d", "e"]]
    release.clear()
    failing = [asyncio.create_task(gatherer.record(reports(i))) for i in ("x", "boom")]
    await poll_until(lambda: len(calls) == 3)
    release.set()
    for task in failing:
        with pytest.raises(JournalError):
            await task
    assert calls[2:] == [["x", "boom"]] and len(await gatherer.record(reports("y"))) == 1


async def poll_until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


async def test_a_journal_that_cannot_take_reports_is_a_503_with_retry_after(
    start_sandbox: StartSandbox, tmp_path: Path, log: DeliveryLog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another connection holds the journal's write lock: the sender is told 503 with
    Retry-After (nothing is kept); once the lock goes, the same report is a 200."""
    monkeypatch.setattr(sqlite_backend, "_BUSY_TIMEOUT_MS", 100)  # fail fast while locked
    path = tmp_path / "state" / "journal.sqlite3"
    journal = open_journal(JournalLocation(path))
    await journal.start(writer=True)
    server = WebhookServer(Deliveries(journal, log, Metrics()), lambda: TOKEN, "127.0.0.1",
                           free_port())
    await server.start()
    try:
        sandbox = await start_sandbox()
        sent = await send_through(journal, sandbox.base_url, "c", 1,
                                  deadline=datetime.now(UTC) + timedelta(hours=1))
        holder = sqlite3.connect(path, isolation_level=None, timeout=10)
        holder.execute("BEGIN EXCLUSIVE")
        async with aiohttp.ClientSession() as http, http.post(
                url(server), data=orjson.dumps(report(sent[0][1]))) as answer:
            assert answer.status == 503
            assert answer.headers["Retry-After"] == "5"
            assert (orjson.loads(await answer.read()))["error"]["code"] == "UNAVAILABLE"
        holder.execute("ROLLBACK")
        holder.close()
        assert (await journal.delivery_counts("c")).statuses == {"awaiting": 1}
        assert await post(url(server), report(sent[0][1])) == (
            200, {"recorded": 1, "unknown": 0})
    finally:
        await server.stop()
        await journal.close()
