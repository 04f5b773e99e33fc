"""Shared test helpers: write configs, campaigns and CSVs; run sandboxes and CLI subprocesses.

Generic on purpose (the sender, send/report and daemon tests all use it): nothing here knows what
a test asserts. Subprocesses are started with a clean environment (no credentials or config from
the machine running the tests) plus whatever the caller passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from scheduler.sandbox import Sandbox
from scheduler.sandbox_options import SandboxOptions

REPO = Path(__file__).resolve().parent.parent
#: environment variables that must not leak from the machine into a test's subprocess
MACHINE_VARIABLES = (
    "CASCADE_CONFIG", "CASCADE_API_KEY", "CASCADE_VIBER_TOKEN", "CASCADE_TG_BOT_KEY",
    "CREDENTIALS_DIRECTORY",
)
_LISTENING = re.compile(r"sandbox listening on (http://\S+)")
#: the ``start_sandbox`` fixture (conftest.py): options in, a started in-process sandbox out
StartSandbox = Callable[..., Awaitable[Sandbox]]


def utc_text(moment: datetime) -> str:
    """A UTC time as campaign files write it: ``2026-11-26T21:40:00Z`` (whole seconds)."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def phone(number: int) -> str:
    """A distinct valid E.164 phone per ``number`` (Ukrainian mobile range)."""
    return f"+38050{number:07d}"


async def wait_for_event(event: asyncio.Event, what: str, bound: float = 30) -> None:
    """Wait until ``event`` is set; after ``bound`` seconds (a bound for a hung test, not a
    measure of speed) fail, naming what never happened."""
    try:
        await asyncio.wait_for(event.wait(), bound)
    except TimeoutError:
        pytest.fail(f"{what}: not within {bound} s")


def write_audience(
    path: Path, count: int, *, extra_rows: Iterable[tuple[str, str]] = (), start: int = 0
) -> list[str]:
    """A ``phone,name`` CSV of ``count`` valid rows, then ``extra_rows``; returns the phones."""
    path.parent.mkdir(parents=True, exist_ok=True)
    phones = [phone(start + i) for i in range(count)]
    lines = ["phone,name", *(f"{p},Name{i}" for i, p in enumerate(phones))]
    lines.extend(f"{p},{name}" for p, name in extra_rows)
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return phones


def write_config(
    root: Path,
    base_url: str = "sandbox",
    *,
    phones: str = "masked",
    timeout: float = 10,
    **sending: Any,
) -> Path:
    """``root/config.toml`` with the usual relative paths and ``[sending]`` from keywords."""
    lines = [
        "[api]", f'base_url = "{base_url}"', f"timeout = {timeout}", "", "[sending]",
        *(f"{key} = {_toml_value(value)}" for key, value in sending.items()),
        "", "[paths]", 'campaigns = "campaigns"', 'state = "state/journal.sqlite3"',
        'delivery_log = "logs/delivery.jsonl"', "", "[log]", 'format = "json"',
        f'phones = "{phones}"', "",
    ]
    (root / "campaigns").mkdir(parents=True, exist_ok=True)
    path = root / "config.toml"
    path.write_text("\n".join(lines), "utf-8")
    return path


def _toml_value(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def write_campaign(
    folder: Path,
    campaign_id: str,
    csv: str,
    *,
    send_at: datetime | None = None,
    type: str = "transaction",
    ttl: int = 3600,
    text: str | None = "Hello {name}, your order is on its way",
    extra: str = "",
) -> Path:
    """``folder/ID.toml`` for the audience ``csv`` (relative to ``folder``); send_at: now."""
    lines = [
        f'id = "{campaign_id}"', 'from_name = "TestBrand"', f'type = "{type}"',
        f"send_at = {utc_text(send_at or datetime.now(UTC))}", f"ttl = {ttl}",
    ]
    if text is not None:
        lines.append(f'text = "{text}"')
    lines.extend([extra, "[audience]", f'csv = "{csv}"', ""])
    path = folder / f"{campaign_id}.toml"
    path.write_text("\n".join(lines), "utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON-lines file, parsed (a missing file is empty)."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def free_port() -> int:
    """A loopback port nothing listens on (closed again before it is returned)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def clean_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without the machine's config and credentials, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in MACHINE_VARIABLES}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def run_cli(
    args: Iterable[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m scheduler ARGS`` to completion and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "scheduler", *args], capture_output=True, text=True,
        timeout=timeout, cwd=cwd, check=False, env=dict(env if env is not None else clean_env()),
    )


@contextlib.contextmanager
def sandbox_process(*args: str, timeout: float = 20) -> Iterator[str]:
    """A ``python -m scheduler sandbox --port 0 ARGS`` subprocess; yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "scheduler", "sandbox", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
    )
    try:
        yield _wait_listening(process, timeout)
    finally:
        stop_process(process)


def _wait_listening(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        found = _LISTENING.search(line)
        if found:
            return found.group(1)
    stop_process(process)
    err = process.stderr.read() if process.stderr is not None else ""
    raise RuntimeError(f"the sandbox subprocess did not start: {err}")


def stop_process(process: subprocess.Popen[str], grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaped."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


class ThreadSandbox:
    """An in-process `Sandbox` on its own event loop in a thread, for tests of CLI subprocesses.

    The test process can read its counters (``sandbox.requests``, ``sandbox.accepted``) while a
    subprocess talks to it over loopback.
    """

    def __init__(self, options: SandboxOptions) -> None:
        self.sandbox = Sandbox(options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadSandbox:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.sandbox.start(), self._loop).result(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self.sandbox.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def base_url(self) -> str:
        """The sandbox's ``http://127.0.0.1:PORT``."""
        return self.sandbox.base_url


def snapshot_as_the_daemon(config_path: Path, run: Any) -> Any:
    """Snapshot ``run`` (a `Campaign`: a series' occurrence, a trigger's day run) into the
    journal of the config at ``config_path``, as the daemon plans it ahead of its time; its
    `CampaignRecord`."""
    from scheduler.config import load_config
    from scheduler.service import open_engine

    async def prepare() -> Any:
        async with open_engine(load_config(config_path, env={})) as engine:
            return await engine.prepare(run)

    return asyncio.run(prepare())


def counted_by_plan(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the campaigns `plan` counts from their CSV from now on, in order (those it
    reads from the journal instead are not there)."""
    from scheduler import planning

    counted: list[str] = []
    real_count = planning._Planner.count

    def count(self: planning._Planner, campaign: Any) -> Any:
        counted.append(campaign.id)
        return real_count(self, campaign)

    monkeypatch.setattr(planning._Planner, "count", count)
    return counted
