"""One event vocabulary in both logs (issue 9, item 15): every event the delivery log records
also reaches the operational log under the same name, a reload included (``daemon_reloading``
then ``daemon_reloaded``, never a lone "reloading"), and so do the engine's ``batch_retry`` and
``campaign_progress``.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from daemon_helpers import DaemonProcess, Workspace, daemon_fixture, poll
from structlog.testing import capture_logs

from scheduler.service import open_engine
from tests.engine_helpers import KEY, drive_with, make_setup
from tests.helpers import StartSandbox


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """One small campaign due now, sent through the embedded sandbox."""
    ws = Workspace(tmp_path)
    ws.audience("now", 120)
    ws.write_campaign("now", datetime.now(UTC))
    return ws


@pytest.fixture
def daemon(workspace: Workspace) -> Iterator[DaemonProcess]:
    """The workspace's daemon (not started), killed at teardown."""
    yield from daemon_fixture(workspace)


def _oplog_events(daemon: DaemonProcess) -> list[str]:
    """Event names of the operational log (stderr, JSON lines)."""
    events = []
    for line in daemon.stderr().splitlines():
        if line.startswith("{"):
            events.append(orjson.loads(line)["event"])
    return events


def test_a_reload_and_a_campaign_read_the_same_in_both_logs(
    workspace: Workspace, daemon: DaemonProcess,
) -> None:
    """SIGHUP: ``daemon_reloading`` then ``daemon_reloaded`` in the delivery log and on stderr;
    every other event of the delivery log is on stderr under the same name too."""
    daemon.start()
    poll(lambda: workspace.events("campaign_finished") or None, 20, "the campaign to finish")
    daemon.signal(signal.SIGHUP)
    poll(lambda: workspace.events("daemon_reloaded") or None, 20, "daemon_reloaded")
    assert daemon.stop() == 0
    logged = [e["event"] for e in workspace.events() if e["event"] != "message"]
    assert logged.index("daemon_reloading") < logged.index("daemon_reloaded")
    oplog = _oplog_events(daemon)
    assert "reloading" not in oplog
    assert oplog.index("daemon_reloading") < oplog.index("daemon_reloaded")
    assert set(logged) <= set(oplog), set(logged) - set(oplog)


async def test_engine_events_reach_the_operational_log(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """A flaky API and a slow campaign: ``batch_retry`` and ``campaign_progress`` are in the
    delivery log and in the operational log alike."""
    sandbox = await start_sandbox(api_key=KEY, fail_rate=0.3, latency_ms=20, seed=3)
    setup = make_setup(tmp_path, sandbox.base_url, 400, batch_size=20, concurrency=1,
                       max_attempts=8, requests_per_second=100)
    with capture_logs() as captured:
        async with open_engine(setup.config) as engine:
            engine.driver.progress_every = 0.05
            assert await drive_with(engine, setup.campaign) == "done"
    logged = {line["event"] for line in setup.log_lines()} - {"message"}
    oplog = {entry["event"] for entry in captured}
    assert {"batch_retry", "campaign_progress"} <= logged
    assert logged <= oplog, logged - oplog
