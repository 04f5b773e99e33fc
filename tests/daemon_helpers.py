"""Shared pieces for the daemon tests: a workspace, the daemon and sandbox as real subprocesses,
a recording API server, and bounded polling.

Everything a test starts is stopped by the fixture or context manager that started it, so a
failing assertion never leaves a daemon or a sandbox running.
"""

from __future__ import annotations

import asyncio
import math
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiohttp import web

from scheduler.config import load_config
from scheduler.journal import CampaignRecord, JournalReader, RecipientRow, open_journal
from tests.journal_helpers import SyncJournal

T = TypeVar("T")
API_KEY = "test-key-h6"
#: environment variables of the machine that must not leak into a daemon under test
_SCRUBBED = ("CASCADE_CONFIG", "CASCADE_API_KEY", "CASCADE_VIBER_TOKEN", "CASCADE_TG_BOT_KEY",
             "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def poll(check: Callable[[], T | None], timeout: float, what: str, step: float = 0.05) -> T:
    """Call ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def utc_seconds_from_now(seconds: float) -> datetime:
    """A whole-second UTC time at least ``seconds`` from now (campaign files use whole seconds)."""
    moment = datetime.now(UTC) + timedelta(seconds=seconds)
    return datetime.fromtimestamp(math.ceil(moment.timestamp()), UTC)


def utc_text(moment: datetime) -> str:
    """``2026-11-26T21:40:00Z``: how send_at is written in campaign files."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ts(text: str) -> datetime:
    """A UTC ISO-8601 time as the sandbox record and the delivery log write it."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a file another process is appending to (a partial last line
    is left for the next read)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    return [orjson.loads(line) for line in complete.splitlines() if line.strip()]


def write_atomic(path: Path, text: str) -> None:
    """Replace a file in one step, as careful editors do (the watcher never sees half a file)."""
    draft = path.with_name(f".{path.name}.tmp")
    draft.write_text(text, "utf-8")
    draft.replace(path)


@dataclass
class Workspace:
    """A config file, a campaigns folder with audiences, and readers for what the daemon wrote."""

    root: Path
    base_url: str = "sandbox"
    sending: dict[str, Any] = field(default_factory=dict)
    journal_url: str | None = None  # a PostgreSQL journal (else SQLite under state/)
    lease: float | None = None  # [journal] lease, seconds
    shared_campaigns: Path | None = None  # another workspace's campaigns folder (a 2nd daemon)
    metrics_listen: str | None = None  # [metrics] listen, "HOST:PORT"
    delivery_reports: dict[str, Any] | None = None  # the [delivery_reports] table, if any

    def __post_init__(self) -> None:
        (self.root / "campaigns" / "audiences").mkdir(parents=True, exist_ok=True)
        self.write_config()

    @property
    def config(self) -> Path:
        """The config file."""
        return self.root / "config.toml"

    @property
    def campaigns(self) -> Path:
        """The watched campaigns folder."""
        return self.root / "campaigns"

    @property
    def journal_path(self) -> Path:
        """The journal (SQLite)."""
        return self.root / "state" / "journal.sqlite3"

    @property
    def delivery_log(self) -> Path:
        """The delivery log (JSON lines)."""
        return self.root / "logs" / "delivery.jsonl"

    @property
    def sandbox_record(self) -> Path:
        """Where the embedded sandbox records what it accepted (beside the journal)."""
        return self.root / "state" / "sandbox.jsonl"

    def write_config(self) -> None:
        """Write config.toml from ``base_url`` and the ``sending`` overrides (an override of
        None leaves the key out)."""
        sending = {"batch_size": 50, "requests_per_second": 50, "concurrency": 2,
                   "max_attempts": 3, "delivery": "at-least-once", **self.sending}
        lines = ["[api]", f'base_url = "{self.base_url}"', "timeout = 10", "", "[sending]"]
        for key, value in sending.items():
            if value is None:
                continue
            lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
        campaigns = str(self.shared_campaigns or "campaigns")
        lines += ["", "[paths]", f'campaigns = "{campaigns}"', 'state = "state/journal.sqlite3"',
                  'delivery_log = "logs/delivery.jsonl"', "", "[log]", 'format = "json"', ""]
        if self.metrics_listen is not None:
            lines += ["[metrics]", f'listen = "{self.metrics_listen}"', ""]
        if self.delivery_reports is not None:
            lines += ["[delivery_reports]", *(_toml_pair(key, value) for key, value in
                                              self.delivery_reports.items()), ""]
        if self.journal_url is not None:
            lines += ["[journal]", f'url = "{self.journal_url}"']
            lines += [f"lease = {self.lease}"] if self.lease is not None else []
        self.config.write_text("\n".join(lines) + "\n", "utf-8")

    def audience(self, name: str, rows: int, bad_rows: int = 0) -> Path:
        """A CSV of ``rows`` distinct valid phones, then ``bad_rows`` rows with a bad phone."""
        path = self.campaigns / "audiences" / f"{name}.csv"
        lines = ["phone,first_name"]
        lines += [f"+38050{i:07d},Name{i}" for i in range(1, rows + 1)]
        lines += [f"not-a-phone-{i},Bad{i}" for i in range(bad_rows)]
        path.write_text("\n".join(lines) + "\n", "utf-8")
        return path

    def campaign_text(
        self, cid: str, send_at: datetime, *, audience: str, kind: str = "transaction",
        text: str = "Hello {first_name}", ttl: int = 3600, paused: bool = False,
    ) -> str:
        """The TOML of one campaign file."""
        return "\n".join([
            f'id = "{cid}"', 'from_name = "TestShop"', f'type = "{kind}"',
            f"send_at = {utc_text(send_at)}", f"ttl = {ttl}", f'text = "{text}"',
            f"paused = {'true' if paused else 'false'}", "", "[audience]",
            f'csv = "audiences/{audience}.csv"', "",
        ])

    def write_campaign(self, cid: str, send_at: datetime, **fields: Any) -> Path:
        """Write (atomically) ``campaigns/{cid}.toml``; fields as for `campaign_text`."""
        fields.setdefault("audience", cid)
        path = self.campaigns / f"{cid}.toml"
        write_atomic(path, self.campaign_text(cid, send_at, **fields))
        return path

    # --- reading what the daemon wrote ----------------------------------------------------

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Delivery log lines, all or one event."""
        lines = json_lines(self.delivery_log)
        return lines if name is None else [line for line in lines if line["event"] == name]

    def record(self) -> list[dict[str, Any]]:
        """The embedded sandbox's record of accepted messages."""
        return json_lines(self.sandbox_record)

    def campaign_record(self, cid: str) -> CampaignRecord | None:
        """The journal's record of a campaign (None before it was prepared)."""
        if not self.journal_path.exists():
            return None
        with SyncJournal(self.journal_path) as journal:
            return journal.campaign(cid)

    def state(self, cid: str) -> str | None:
        """The campaign's state in the journal."""
        record = self.campaign_record(cid)
        return None if record is None else record.state

    def counts(self, cid: str) -> dict[str, int]:
        """The journal's outcome counts for a campaign."""
        with SyncJournal(self.journal_path) as journal:
            return journal.counts(cid)

    def recipients(self, cid: str) -> list[RecipientRow]:
        """Every recipient of a campaign with a final outcome in the journal."""
        with SyncJournal(self.journal_path) as journal:
            return list(journal.recipients(cid))


def _toml_pair(key: str, value: Any) -> str:
    """``key = value`` in TOML, for the plain values a test config holds."""
    if isinstance(value, bool):
        return f"{key} = {'true' if value else 'false'}"
    return f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}"


def expected_ids(cid: str, rows: int) -> set[str]:
    """The tracking ids of a `Workspace.audience` of ``rows`` valid rows (SPEC §5: row numbers)."""
    return {f"{cid}-{row}" for row in range(1, rows + 1)}


def accepted(record: list[dict[str, Any]], cid: str) -> Counter[str]:
    """How many times the API accepted each tracking id of one campaign."""
    return Counter(r["trackinId"] for r in record if r["trackinId"].startswith(cid + "-"))


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the machine's cascade/systemd variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class DaemonProcess:
    """``python -m scheduler run`` as a subprocess; stderr (the operational log) goes to a file."""

    def __init__(self, workspace: Workspace, **env: str) -> None:
        self.workspace = workspace
        self.env = clean_env(**env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, wait: bool = True) -> DaemonProcess:
        """Start it; with ``wait``, return once the delivery log says ``daemon_started``."""
        self.starts += 1
        # counted before the start: another daemon of the same workspace may have started before
        before = len(self.workspace.events("daemon_started"))
        log = self.workspace.root / f"daemon-{self.starts}.stderr"
        with log.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scheduler", "run", "--config", str(self.workspace.config)],
                cwd=self.workspace.root, env=self.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr,
            )
        if wait:
            poll(lambda: len(self.workspace.events("daemon_started")) > before
                 or self._died(), 60, "daemon_started")
            assert self.alive, f"the daemon exited at start: {self.stderr()}"
        return self

    def wait_watching(self) -> None:
        """Return once the folder watcher reacts to a change: rewrite an invalid probe file
        until the daemon reports it, then remove it. (A file written in the moment between the
        daemon's first load and its watcher starting is missed; see test_daemon.py.)"""
        probe = self.workspace.campaigns / "zz-watch-probe.toml"

        def seen() -> bool:
            write_atomic(probe, 'id = "zz-watch-probe"\n')
            events = self.workspace.events("campaign_invalid")
            return any(e.get("file") == str(probe) for e in events)

        poll(seen, 30, "the folder watcher to react", step=0.2)
        probe.unlink()

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    @property
    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: signal.Signals) -> None:
        """Send a signal to the daemon."""
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then the exit code (fails if it does not exit within ``timeout``)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the daemon did not exit within {timeout} s of SIGTERM") from None

    def kill(self) -> None:
        """SIGKILL and reap (a no-op when it already exited)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stderr(self) -> str:
        """The operational log of the latest start."""
        return (self.workspace.root / f"daemon-{self.starts}.stderr").read_text("utf-8", "replace")


class SandboxProcess:
    """``python -m scheduler sandbox --port 0 --record FILE`` as a subprocess."""

    def __init__(self, record: Path, *args: str) -> None:
        self.record_path = record
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scheduler", "sandbox", "--port", "0", "--api-key", API_KEY,
             "--record", str(record), *args],
            env=clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.url = self._read_url()

    def _read_url(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("sandbox listening on "):
            self.close()
            raise AssertionError(f"the sandbox did not start: {line!r}")
        return line.split()[3]

    def record(self) -> list[dict[str, Any]]:
        """Every message accepted so far."""
        return json_lines(self.record_path)

    def close(self) -> None:
        """SIGTERM (it stops cleanly), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@dataclass(frozen=True)
class Received:
    """One request the recording API answered: when it arrived, its route and its messages."""

    at: datetime
    path: str
    messages: list[dict[str, Any]]


class RecordingApi:
    """A minimal Cascade API on loopback that keeps every request body (the sandbox's record
    leaves out the text); answers 200 with a message id per tracking id."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    def __enter__(self) -> RecordingApi:
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError("the recording API did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._sock.close()

    def messages(self) -> list[tuple[datetime, dict[str, Any]]]:
        """Every message received, with its request's arrival time."""
        with self._lock:
            return [(r.at, m) for r in self.received for m in r.messages]

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/api/CascadeMessage/send_message/async", self._handle)
        app.router.add_post("/api/CascadeMessage/send_message/tg-viber/async", self._handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.SockSite(runner, self._sock).start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        messages = orjson.loads(await request.read())
        with self._lock:
            self.received.append(Received(datetime.now(UTC), request.path, messages))
        answer = [{"messageId": str(uuid.uuid4()), "trackinId": m["id"]} for m in messages]
        return web.Response(body=orjson.dumps(answer), content_type="application/json")


def daemon_fixture(workspace: Workspace, **env: str) -> Iterator[DaemonProcess]:
    """A `DaemonProcess` (not started) that is killed at teardown whatever happened."""
    daemon = DaemonProcess(workspace, **env)
    try:
        yield daemon
    finally:
        daemon.kill()


class DaemonPair:
    """Daemon A and daemon B (not started) on one PostgreSQL journal and one campaigns
    folder, each posting to a sandbox of its own (so the records tell who posted what)."""

    def __init__(
        self, root: Path, url: str, sending: dict[str, Any], *, lease: float,
        latency_ms: int = 150, url_a: str | None = None,
    ) -> None:
        """``url_a``: where A finds the journal, if not at ``url`` (through a proxy)."""
        self.sandboxes = [
            SandboxProcess(root / f"record-{n}.jsonl", "--latency-ms", str(latency_ms))
            for n in "ab"]
        self.a = Workspace(root / "a", base_url=self.sandboxes[0].url, sending=sending,
                           journal_url=url_a or url, lease=lease)
        self.b = Workspace(root / "b", base_url=self.sandboxes[1].url, sending=sending,
                           journal_url=url, lease=lease, shared_campaigns=self.a.campaigns)
        self.daemons = [DaemonProcess(self.a, CASCADE_API_KEY=API_KEY),
                        DaemonProcess(self.b, CASCADE_API_KEY=API_KEY)]

    def start(self) -> tuple[DaemonProcess, DaemonProcess]:
        """A first (it becomes the leader), then B (standby)."""
        first, second = self.daemons
        first.start()
        poll(lambda: self.a.events("leadership_acquired"), 30, "A to lead")
        second.start()
        return first, second

    def records(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """What each sandbox accepted."""
        first, second = self.sandboxes
        return first.record(), second.record()

    def take_over_mid_run(self, run: str, following: str) -> DaemonProcess:
        """Start both; once A's sandbox has 400 messages of ``run``, kill A (-9); wait for B
        to lead, finish ``run`` and plan ``following``. Returns B, still running."""
        first, second = self.start()
        poll(lambda: len(self.sandboxes[0].record()) >= 400, 120, "A to be sending")
        first.signal(signal.SIGKILL)
        poll(lambda: self.b.events("leadership_acquired"), 30, "B to take over")
        poll(lambda: self.state(run) == "done", 60, f"{run} done", step=0.3)
        poll(lambda: self.state(following) == "scheduled", 30, f"{following} planned")
        return second

    def state(self, cid: str) -> str | None:
        """The campaign's state in the shared journal."""
        location = load_config(self.a.config).journal_location()
        with JournalReader(open_journal(location)) as journal:
            record = journal.campaign(cid)
        return None if record is None else record.state

    def accepted(self, cid: str | None = None) -> Counter[str]:
        """How often each tracking id (of campaign ``cid``; None: of any) was accepted, by
        either sandbox."""
        prefix = "" if cid is None else cid + "-"
        a, b = self.records()
        return Counter(r["trackinId"] for r in a + b if r["trackinId"].startswith(prefix))

    def close(self) -> None:
        """Kill what is still running."""
        for daemon in self.daemons:
            daemon.kill()
        for sandbox in self.sandboxes:
            sandbox.close()
