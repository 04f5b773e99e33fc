"""Series in the daemon (SPEC §13.1), through real daemon subprocesses and the embedded sandbox.

Cron counts in minutes and a series may not repeat within the hour, so these tests use a daily
cron whose next fire is the coming minute (seconds away), never a wait of hours.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import DaemonProcess, Workspace, poll, write_atomic

from scheduler.config import load_config
from scheduler.loader import load_campaign
from scheduler.series import run_id
from scheduler.service import open_engine
from tests.helpers import free_port, run_cli
from tests.series_helpers import next_minute, series_text


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """A workspace with the series' audience (5 rows) and /metrics on a free port."""
    ws = Workspace(tmp_path, metrics_listen=f"127.0.0.1:{free_port()}")
    ws.audience("daily", 5)
    return ws


@pytest.fixture
def daemons(workspace: Workspace) -> Iterator[list[DaemonProcess]]:
    """Daemons the test starts (appended), killed at teardown."""
    started: list[DaemonProcess] = []
    yield started
    for process in started:
        process.kill()


def start(workspace: Workspace, daemons: list[DaemonProcess]) -> DaemonProcess:
    """Start one more daemon of the workspace."""
    process = DaemonProcess(workspace)
    daemons.append(process)
    return process.start()


def wire_ids(workspace: Workspace, run: str) -> list[str]:
    """The tracking ids the sandbox accepted for an occurrence."""
    prefix = run.replace("@", ".") + "-"
    return sorted(m["trackinId"] for m in workspace.record() if m["trackinId"].startswith(prefix))


@pytest.mark.slow
def test_an_occurrence_fires_on_time_and_a_restart_never_fires_it_again(
    workspace: Workspace, daemons: list[DaemonProcess],
) -> None:
    """The occurrence goes at its fire time as a campaign of its own (run id, tracking ids
    with a dot); the next one is planned in the journal; a restarted daemon sends nothing
    twice and plans the same next occurrence."""
    fire_at = next_minute()
    write_atomic(workspace.campaigns / "daily.toml", series_text(fire_at))
    first = start(workspace, daemons)
    run, following = run_id("daily", fire_at), run_id("daily", fire_at + timedelta(days=1))
    poll(lambda: workspace.state(run) == "done", 120, f"{run} done")
    assert wire_ids(workspace, run) == [f"{run.replace('@', '.')}-{n}" for n in range(1, 6)]
    record = workspace.campaign_record(run)
    assert record is not None and record.started_at is not None
    assert record.started_at >= fire_at
    assert record.send_at == fire_at
    assert record.deadline == fire_at + timedelta(days=1)  # promo TTL from its own fire time
    poll(lambda: workspace.state(following) == "scheduled", 30, f"{following} planned")
    assert 'cascade_series_occurrences_total{result="fired",series="daily"} 1.0' in metrics(
        workspace)
    first.stop()
    sent = len(workspace.record())
    start(workspace, daemons)
    poll(lambda: [e for e in workspace.events("campaign_scheduled")
                  if e.get("campaign") == following][1:], 30, "the next planned again")
    assert len(workspace.record()) == sent
    assert workspace.state(run) == "done"
    assert [(r["campaign"], r["sent"]) for r in report(workspace, "daily")] == [
        (run, 5), (following, 0)]
    assert [r["campaign"] for r in report(workspace, run)] == [run]


def report(workspace: Workspace, campaign: str) -> list[dict[str, Any]]:
    """``report --campaign CAMPAIGN --format json``: a row per occurrence."""
    done = run_cli(["report", "--campaign", campaign, "--format", "json", "--config",
                    str(workspace.config)], cwd=workspace.root)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return sorted(rows, key=lambda r: r["campaign"])


def metrics(workspace: Workspace) -> str:
    """The daemon's /metrics text."""
    assert workspace.metrics_listen is not None
    with urllib.request.urlopen(f"http://{workspace.metrics_listen}/metrics",
                                timeout=5) as answer:
        text: str = answer.read().decode()
    return text


def test_a_paused_series_sends_nothing_and_removal_ends_it(
    workspace: Workspace, daemons: list[DaemonProcess],
) -> None:
    """``paused = true`` holds the occurrence; removing the file cancels the planned one."""
    fire_at = next_minute()
    path = workspace.campaigns / "daily.toml"
    write_atomic(path, series_text(fire_at, paused=True))
    start(workspace, daemons)
    run = run_id("daily", fire_at)
    poll(lambda: workspace.state(run) == "paused", 30, f"{run} paused")
    path.unlink()
    poll(lambda: workspace.state(run) == "cancelled", 30, f"{run} cancelled")
    assert workspace.record() == []


def test_after_downtime_only_the_latest_occurrence_goes_and_the_older_is_missed(
    workspace: Workspace, daemons: list[DaemonProcess],
) -> None:
    """The journal planned yesterday's occurrence; no daemon ran since, and today's passed a
    minute ago: today's goes (its TTL is ahead), yesterday's is recorded missed, no burst."""
    today = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    yesterday = today - timedelta(days=1)
    write_atomic(workspace.campaigns / "daily.toml", series_text(today))
    asyncio.run(plan_occurrence(workspace, yesterday))
    start(workspace, daemons)
    run, old = run_id("daily", today), run_id("daily", yesterday)
    poll(lambda: workspace.state(run) == "done", 60, f"{run} done")
    assert workspace.state(old) == "cancelled"
    old_record = workspace.campaign_record(old)
    assert old_record is not None and (old_record.error or "").startswith("missed: ")
    missed = [e for e in workspace.events("occurrence_missed") if e.get("campaign") == old]
    assert missed and missed[0]["series"] == "daily"
    assert len(wire_ids(workspace, run)) == 5
    assert wire_ids(workspace, old) == []


async def plan_occurrence(
    workspace: Workspace, fire_at: datetime, *, started: bool = False,
) -> None:
    """Plan (snapshot) the series' occurrence at ``fire_at`` as a daemon would have; with
    ``started``, as one that began sending when that daemon stopped."""
    config = load_config(workspace.config, env={})
    check = load_campaign(workspace.campaigns / "daily.toml", config, datetime.now(UTC))
    assert check.campaign is not None, check.problems
    async with open_engine(config) as engine:
        occurrence = check.campaign.occurrence(fire_at)
        await engine.prepare(occurrence)
        if started:
            await engine.lifecycle.move(occurrence.id, "running")


def test_an_occurrence_due_while_the_previous_one_sends_is_skipped(
    workspace: Workspace, daemons: list[DaemonProcess],
) -> None:
    """Yesterday's occurrence is still sending (its TTL is two days) when today's is due:
    today's is recorded skipped_occurrence (previous_running), never queued."""
    today = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    yesterday = today - timedelta(days=1)
    write_atomic(workspace.campaigns / "daily.toml",
                 series_text(today).replace('type = "promo"', 'type = "promo"\nttl = 172800'))
    asyncio.run(plan_occurrence(workspace, yesterday, started=True))
    start(workspace, daemons)
    run, old = run_id("daily", today), run_id("daily", yesterday)
    poll(lambda: workspace.state(old) == "done", 60, f"{old} done")
    skipped = poll(lambda: [e for e in workspace.events("skipped_occurrence")
                            if e.get("campaign") == run], 30, "skipped_occurrence")
    assert skipped[0]["reason"] == "previous_running"
    assert workspace.state(run) == "cancelled"
    assert report(workspace, run)[0]["note"] == (
        "5 not sent: skipped_occurrence: the previous occurrence was still sending")
    assert wire_ids(workspace, run) == []
    assert len(wire_ids(workspace, old)) == 5
