"""An answer in hand is kept (issue 23, SPEC §13.4): when the journal cannot take what the API
answered, the answer is held and its write retried; the batch is never posted again.

Everything is real: the sandbox on loopback (its count of accepted tracking ids is the proof
that nothing reached the API twice), a SQLite file locked by a second connection, a PostgreSQL
server of the test's own that is stopped and started again mid-send, and a `run` daemon.
The outage begins at a chosen request: the sandbox holds that request until the journal is
down, then answers it, so the answer always arrives while the journal cannot take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from aiohttp import web
from daemon_helpers import (
    API_KEY,
    DaemonProcess,
    Workspace,
    expected_ids,
    json_lines,
    poll,
    utc_seconds_from_now,
)
from structlog.testing import capture_logs

from scheduler.config import load_config
from scheduler.journal import (
    Journal,
    JournalLocation,
    JournalUnavailable,
    Results,
    Run,
    open_journal,
)
from scheduler.journal import sqlite as sqlite_backend
from scheduler.journal.front import Front
from scheduler.metrics import Metrics
from scheduler.sandbox import Sandbox
from scheduler.sandbox_options import SandboxOptions
from scheduler.sender import CampaignRun
from scheduler.service import open_engine
from tests.engine_helpers import KEY, drive_with, make_setup
from tests.pg_helpers import PostgresServer

Hook = Callable[[], Awaitable[None]]


class GatedSandbox(Sandbox):
    """The sandbox, awaiting ``before()`` ahead of its ``gate``-th API request's answer."""

    def __init__(self, options: SandboxOptions, gate: int, before: Hook) -> None:
        super().__init__(options)
        self.gate, self.before = gate, before
        self.posts = 0

    async def _answer(self, request: web.Request, route: Any) -> web.Response | None:
        self.posts += 1
        if self.posts == self.gate:
            await self.before()
        return await super()._answer(request, route)


async def until(check: Callable[[], object], within: float, what: str) -> None:
    """Wait (without blocking the loop) until ``check()`` is truthy; fail naming ``what``."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


def events(captured: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The captured operational-log entries of one event."""
    return [entry for entry in captured if entry["event"] == name]


# --- SQLite: the journal is locked while an answer comes back ------------------------------


async def test_an_answer_is_held_while_sqlite_is_locked_and_never_posted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another connection holds the journal's write lock when batch 3's answer comes: the
    write fails ("database is locked"), ``answer_held`` is logged once and the write is
    retried; once the lock goes the answer lands (``answer_recorded``). The campaign stops
    on its next mark (nothing was posted for it) and a second run finishes it: every
    recipient reached the API exactly once, and has one message line."""
    monkeypatch.setattr(sqlite_backend, "_BUSY_TIMEOUT_MS", 100)  # fail fast while locked
    count, size = 300, 50
    lock: list[sqlite3.Connection] = []
    setup_at: list[Path] = []

    async def take_the_lock() -> None:
        holder = sqlite3.connect(setup_at[0], isolation_level=None, timeout=10)
        holder.execute("BEGIN EXCLUSIVE")
        lock.append(holder)

    sandbox = GatedSandbox(SandboxOptions(api_key=KEY), gate=3, before=take_the_lock)
    await sandbox.start()
    try:
        setup = make_setup(tmp_path, sandbox.base_url, count, batch_size=size, concurrency=1,
                           requests_per_second=200)
        setup_at.append(setup.journal_path)
        with capture_logs() as captured:
            async with open_engine(setup.config) as engine:
                engine.answers.waits = (0.05, 0.2)
                first = asyncio.ensure_future(drive_with(engine, setup.campaign))
                # (without the fix the run stops at once, and leaves batch 3 in flight)
                await until(lambda: events(captured, "answer_held") or first.done(), 20,
                            "answer_held")
                lock[0].execute("ROLLBACK")
                lock[0].close()
                with pytest.raises(JournalUnavailable, match="locked"):
                    await first
            async with open_engine(setup.config) as engine:
                assert await drive_with(engine, setup.campaign) == "done"
    finally:
        await sandbox.stop()
    assert set(sandbox.accepted) == {f"engine-test-{n}" for n in range(1, count + 1)}
    assert set(sandbox.accepted.values()) == {1}, "a batch whose answer was held went twice"
    held = events(captured, "answer_held")
    assert [(e["batch"], e["messages"], e["counts"]) for e in held] == [(2, 50, {"sent": 50})]
    assert "locked" in held[0]["error"]
    assert [e["batch"] for e in events(captured, "answer_recorded")] == [2]
    lines = Counter(e["tracking_id"] for e in setup.log_lines() if e["event"] == "message")
    assert set(lines) == set(sandbox.accepted) and set(lines.values()) == {1}
    assert setup.counts()["sent"] == count


async def test_lines_whose_logged_mark_failed_are_not_written_again_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The journal fails once as batch 1's lines are noted as logged (found by the restart
    test: the delivery log then had those 50 lines twice). The mark is kept and journaled
    with the next one, so when the campaign resumes after a stop, eleven batches later, it
    does not take batch 1 for a batch whose lines a crash cut off: one line per recipient."""
    original = Front.mark_logged
    calls: list[int] = []

    async def fail_once(self: Journal, campaign_id: str,
                        marks: Sequence[tuple[int, int]]) -> None:
        calls.append(len(marks))
        if len(calls) == 1:
            raise JournalUnavailable(None, "injected: the disk is briefly full")
        await original(self, campaign_id, marks)

    monkeypatch.setattr(Front, "mark_logged", fail_once)
    runs: list[CampaignRun] = []

    async def stop_the_run() -> None:
        runs[0].halt(None)

    sandbox = GatedSandbox(SandboxOptions(api_key=KEY), gate=12, before=stop_the_run)
    await sandbox.start()
    try:
        setup = make_setup(tmp_path, sandbox.base_url, 1000, batch_size=50, concurrency=1,
                           requests_per_second=500)
        async with open_engine(setup.config) as engine:
            record = await engine.prepare(setup.campaign)
            runs.append(engine.open_run(setup.campaign, record))
            assert await engine.drive(runs[0]) == "running"
            again = engine.open_run(setup.campaign, record)
            assert await engine.drive(again) == "done"
    finally:
        await sandbox.stop()
    assert set(sandbox.accepted.values()) == {1}
    lines = Counter(e["tracking_id"] for e in setup.log_lines() if e["event"] == "message")
    assert set(lines) == set(sandbox.accepted) and set(lines.values()) == {1}


# --- PostgreSQL: the server restarts mid-send under a running daemon ------------------------


@contextlib.contextmanager
def sandbox_in_thread(gate: int, before: Hook, record: Path) -> Iterator[GatedSandbox]:
    """A `GatedSandbox` serving from a thread of its own (a daemon subprocess posts to it)."""
    started = threading.Event()
    loop = asyncio.new_event_loop()
    sandbox = GatedSandbox(SandboxOptions(api_key=API_KEY, record=record, latency_ms=50),
                           gate=gate, before=before)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(sandbox.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(20), "the sandbox did not start"
    try:
        yield sandbox
    finally:
        asyncio.run_coroutine_threadsafe(sandbox.stop(), loop).result(20)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(20)
        loop.close()


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL server for this test alone: restarting the session's would cut every
    other test's connections."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.mark.timeout(240)
def test_a_postgres_restart_mid_send_sends_nothing_twice(
    tmp_path: Path, own_postgres: PostgresServer,
) -> None:
    """Issue 23, item 1: the server stops while four requests are in flight (the tenth
    request's answer waits for the stop) and starts again once the daemon says it holds an
    answer. The held answers land after the restart; the campaign, interrupted by the marks
    that failed meanwhile, resumes and finishes. The sandbox accepted every tracking id
    exactly once, the delivery log has one line per recipient carrying the messageId the
    API gave, and no "batch N is not open" alarm was raised."""
    count = 2000
    url = own_postgres.url(own_postgres.create_database())

    stopped = threading.Event()

    async def stop_the_database() -> None:
        await asyncio.to_thread(own_postgres.stop)
        stopped.set()

    with sandbox_in_thread(10, stop_the_database, tmp_path / "record.jsonl") as sandbox:
        workspace = Workspace(tmp_path / "ws", base_url=sandbox.base_url, journal_url=url,
                              sending={"batch_size": 50, "requests_per_second": 20,
                                       "concurrency": 4})
        workspace.audience("restart", count)
        workspace.write_campaign("restart", utc_seconds_from_now(2))
        daemon = DaemonProcess(workspace, CASCADE_API_KEY=API_KEY).start()
        try:
            # (without the fix the answers are dropped and the campaign is interrupted)
            poll(lambda: stopped.is_set() and ("answer_held" in daemon.stderr()
                                               or "campaign_interrupted" in daemon.stderr()),
                 60, "the server to stop and the daemon to hold an answer")
            own_postgres.start()
            poll(lambda: workspace.events("campaign_finished") or None, 120,
                 "the campaign to finish")
            assert daemon.stop() == 0
        finally:
            daemon.kill()
        record = json_lines(tmp_path / "record.jsonl")
    accepted = Counter(r["trackinId"] for r in record)
    assert set(accepted) == expected_ids("restart", count), "a recipient was lost"
    twice = sorted(tid for tid, n in accepted.items() if n > 1)
    assert twice == [], f"{len(twice)} messages reached the API twice"
    given = {r["trackinId"]: r["messageId"] for r in record}
    lines = workspace.events("message")
    assert Counter(e["tracking_id"] for e in lines) == Counter(list(given))
    assert all(e["message_id"] == given[e["tracking_id"]] for e in lines)
    assert workspace.events("campaign_finished")[0]["counts"]["sent"] == count
    stderr = daemon.stderr()
    oplog = [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    held = {e["batch"] for e in oplog if e["event"] == "answer_held"}
    assert held and held == {e["batch"] for e in oplog if e["event"] == "answer_recorded"}
    assert "journal_reconnected" in stderr
    assert "is not open" not in stderr and "Traceback" not in stderr
    assert workspace.events("late_answer") == []


# --- a deposed leader: answers it may no longer record --------------------------------------


async def test_a_deposed_leader_logs_late_answers_and_posts_nothing_more(
    tmp_path: Path, postgres_url: str,
) -> None:
    """SPEC §13.4: the lease runs out while batch 2 is at the API and a rival takes it; the
    answer comes back and cannot be recorded (fenced). Every message the API accepted in it
    gets a ``late_answer`` line (tracking id, messageId, campaign) and counts in
    ``cascade_late_answers_total``; the batch stays in flight for the new leader, and
    nothing more is posted."""
    lease, holder = 2.0, "deposed"
    rival = open_journal(JournalLocation(tmp_path / "unused", url=postgres_url))
    taken = asyncio.Event()

    async def depose() -> None:  # (the gate: the deposed leader's request is at the API)
        for _ in range(200):  # the lease runs out (on the database's clock) within 2 s
            if await rival.acquire_lease("rival", 30) is not None:
                taken.set()
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the deposed leader's lease never ran out")

    sandbox = GatedSandbox(SandboxOptions(api_key=KEY, record=tmp_path / "record.jsonl"),
                           gate=2, before=depose)
    await sandbox.start()
    await rival.start(writer=True)
    try:
        setup = make_setup(tmp_path, sandbox.base_url, 150, batch_size=50, concurrency=1,
                           requests_per_second=200)
        with (tmp_path / "config.toml").open("a", encoding="utf-8") as config:
            config.write(f'\n[journal]\nurl = "{postgres_url}"\n')
        settings = load_config(tmp_path / "config.toml", env={"CASCADE_API_KEY": KEY})
        with capture_logs() as captured:
            async with open_engine(settings, may_send=lambda: not taken.is_set()) as engine:
                epoch = await engine.journal.acquire_lease(holder, lease)
                engine.journal.fence(holder, epoch)
                assert await drive_with(engine, setup.campaign) == "running"
                exposition = engine.metrics.exposition().decode()
        opened = await rival.open_batches(setup.campaign.id)
    finally:
        await rival.close()
        await sandbox.stop()
    given = {r["trackinId"]: r["messageId"] for r in json_lines(tmp_path / "record.jsonl")}
    assert sorted(sandbox.accepted.values()) == [1] * 100, "batch 3 must never be posted"
    late = [line for line in setup.log_lines() if line["event"] == "late_answer"]
    second = [f"engine-test-{n}" for n in range(51, 101)]
    assert [line["tracking_id"] for line in late] == second
    assert all(line["message_id"] == given[line["tracking_id"]] for line in late)
    assert {(line["campaign"], line["level"]) for line in late} == {("engine-test", "warning")}
    sent = {line["tracking_id"] for line in setup.log_lines() if line["event"] == "message"}
    assert sent == {f"engine-test-{n}" for n in range(1, 51)}
    assert "cascade_late_answers_total 50.0" in exposition
    assert [(e["batch"], e["messages"]) for e in events(captured, "late_answer")] == [(1, 50)]
    assert [(b.seq, b.state) for b in opened] == [(1, "in_flight"), (2, "pending")]


# --- item 7: a commit that landed, its answer lost with the connection ----------------------


class LosingProxy:
    """A TCP proxy in front of PostgreSQL that, once armed, loses the answer to one COMMIT:
    it forwards the client's COMMIT, drops everything the server says after it, waits until
    ``landed()`` sees the commit in the database, then cuts the client's connection."""

    def __init__(self, port: int, landed: Callable[[], Awaitable[bool]]) -> None:
        self.target, self.landed = port, landed
        self.armed = False
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        """Listen on a free loopback port; returns it."""
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop listening and end every connection's pumps."""
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await self._server.wait_closed()

    async def _connect(self, client_in: asyncio.StreamReader,
                       client_out: asyncio.StreamWriter) -> None:
        server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers += [client_out, server_out]
        muted = asyncio.Event()
        for pump in (self._upstream(client_in, server_out, client_out, muted),
                     self._downstream(server_in, client_out, muted)):
            task = asyncio.ensure_future(pump)
            self._tasks.add(task)

    async def _upstream(self, source: asyncio.StreamReader, server: asyncio.StreamWriter,
                        client: asyncio.StreamWriter, muted: asyncio.Event) -> None:
        while data := await source.read(65536):
            cut = self.armed and b"COMMIT" in data
            if cut:
                self.armed = False
                muted.set()  # the server's answers from here on never reach the client
            server.write(data)
            await server.drain()
            if cut:
                await until_true(self.landed, 10, "the commit to land")
                self.cuts += 1
                client.close()
                server.close()
                return
        server.close()

    @staticmethod
    async def _downstream(source: asyncio.StreamReader, client: asyncio.StreamWriter,
                          muted: asyncio.Event) -> None:
        while data := await source.read(65536):
            if not muted.is_set():
                client.write(data)
                with contextlib.suppress(ConnectionError):
                    await client.drain()
        client.close()


async def until_true(check: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    """`until`, for a check that must be awaited."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


async def test_a_record_whose_commit_answer_was_lost_is_not_an_alarm(postgres_url: str) -> None:
    """Issue 23, item 7: the record's commit lands but the connection dies before its answer
    comes. The journal runs it once more on a new connection, finds its own results there
    and returns as if it had heard: no "batch 0 is not open", nothing counted twice, and the
    new connection is reported (``on_reconnect``: the daemon logs ``journal_reconnected``)."""
    direct = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)

    async def landed() -> bool:
        cursor = await direct.execute("SELECT count(*) FROM batch_state WHERE state = 'done'")
        row = await cursor.fetchone()
        return row is not None and row[0] > 0

    port = int(postgres_url.rsplit(":", 1)[1].split("/")[0])
    proxy = LosingProxy(port, landed)
    through = postgres_url.replace(f":{port}/", f":{await proxy.start()}/")
    reconnects: list[None] = []
    journal = open_journal(JournalLocation(Path("unused"), url=through),
                           on_reconnect=lambda: reconnects.append(None))
    await journal.start(writer=True)
    try:
        await journal.prepare(
            campaign_id="c", type="promo", file="/c/c.toml", fingerprint="f1",
            send_at=datetime(2026, 12, 1, tzinfo=UTC),
            deadline=datetime(2026, 12, 1, 1, tzinfo=UTC),
            batches=[[{"id": f"c-{n}", "fromName": "B", "toPhone": f"+38050{n:07d}",
                       "messageType": "promo", "text": "Hi"} for n in range(4)]], skips=[])
        await journal.mark_in_flight("c", [0])
        answers = Results([Run("sent", 1, [f"c-{n}" for n in range(4)],
                               [f"mid-{n}" for n in range(4)], ["+380500000000"] * 4)])
        proxy.armed = True
        assert await journal.record_results("c", 0, answers) == 4
        assert proxy.cuts == 1 and len(reconnects) == 1
        counts = await journal.counts("c")
        assert (counts["sent"], counts["pending"]) == (4, 0)
    finally:
        await journal.close()
        await proxy.close()
        await direct.close()


def test_late_answers_are_exported_at_zero_from_the_start() -> None:
    """``cascade_late_answers_total`` is on /metrics before any late answer, so ``increase()``
    sees the first one."""
    assert "cascade_late_answers_total 0.0" in Metrics().exposition().decode()
