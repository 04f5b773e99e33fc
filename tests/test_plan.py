"""`plan` and `plan --json` (SPEC §9): every campaign's state, audience (valid/skipped), progress
and ETA at the configured rate, from the campaign files and a journal written by the real engine.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Workspace

from scheduler import cli
from scheduler.config import Config, load_config
from scheduler.loader import load_campaign
from scheduler.planning import PLAN_COLUMNS, plan_rows
from scheduler.service import open_engine

BATCH = 100
RATE = 5  # requests per second: 500 messages a second
NOW = datetime.now(UTC).replace(microsecond=0)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _eta(start: datetime, pending: int) -> str:
    """The expected finish: ``pending`` messages at RATE requests of BATCH messages a second."""
    return _iso(start + timedelta(seconds=pending / (RATE * BATCH)))


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """Six campaigns, one per state: done and running (sent by the engine), scheduled with
    skipped rows, paused, expired before it started, and an invalid file."""
    monkeypatch.delenv("CASCADE_CONFIG", raising=False)
    monkeypatch.delenv("CASCADE_API_KEY", raising=False)
    ws = Workspace(tmp_path, sending={"batch_size": BATCH, "requests_per_second": RATE,
                                      "concurrency": 1})
    for cid, rows, bad in (("a-done", 300, 0), ("b-running", 1000, 0), ("c-scheduled", 1000, 3),
                           ("d-paused", 500, 0), ("f-expired", 50, 0)):
        ws.audience(cid, rows, bad_rows=bad)
    ws.write_campaign("a-done", NOW - timedelta(minutes=2))
    ws.write_campaign("b-running", NOW - timedelta(minutes=1))
    ws.write_campaign("c-scheduled", NOW + timedelta(days=1), kind="promo", ttl=86400)
    ws.write_campaign("d-paused", NOW + timedelta(hours=2), paused=True)
    ws.write_campaign("f-expired", NOW - timedelta(hours=2), ttl=3600)
    (ws.campaigns / "e-broken.toml").write_text('id = "e-broken"\nsendat = 1\n', "utf-8")
    return ws


async def _send(config: Config, cid: str, *, halt_after_first_batch: bool) -> None:
    """Send a campaign with the real engine; optionally stop it after its first batch."""
    campaign = load_campaign(config.paths.campaigns / f"{cid}.toml", config, NOW).campaign
    assert campaign is not None
    async with open_engine(config) as engine:
        record = await engine.prepare(campaign)
        run = engine.open_run(campaign, record)
        if halt_after_first_batch:
            run.on_progress = lambda _count: run.halt(None)
        await engine.drive(run)


@pytest.fixture
async def sent(workspace: Workspace) -> Config:
    """The workspace after a-done was sent whole and b-running stopped after one batch."""
    config = load_config(workspace.config)
    await _send(config, "a-done", halt_after_first_batch=False)
    await _send(config, "b-running", halt_after_first_batch=True)
    return config


def _by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["campaign"]: row for row in rows}


def test_plan_rows_every_state(sent: Config, workspace: Workspace) -> None:
    """States, valid/skipped counts, sent so far and the ETA at the configured rate."""
    running = workspace.counts("b-running")
    assert 0 < running["sent"] < 1000, "the running campaign did not stop half way"
    rows = plan_rows(sent, NOW)
    assert [tuple(row) for row in rows] == [PLAN_COLUMNS] * len(rows)
    assert _by_id(rows) == {
        "a-done": {"campaign": "a-done", "type": "transaction", "state": "done",
                   "send_at": _iso(NOW - timedelta(minutes=2)), "valid": 300, "skipped": 0,
                   "sent": 300, "eta": ""},
        "b-running": {"campaign": "b-running", "type": "transaction", "state": "running",
                      "send_at": _iso(NOW - timedelta(minutes=1)), "valid": 1000, "skipped": 0,
                      "sent": running["sent"], "eta": _eta(NOW, running["pending"])},
        "c-scheduled": {"campaign": "c-scheduled", "type": "promo", "state": "scheduled",
                        "send_at": _iso(NOW + timedelta(days=1)), "valid": 1000, "skipped": 3,
                        "sent": 0, "eta": _eta(NOW + timedelta(days=1), 1000)},
        "d-paused": {"campaign": "d-paused", "type": "transaction", "state": "paused",
                     "send_at": _iso(NOW + timedelta(hours=2)), "valid": 500, "skipped": 0,
                     "sent": 0, "eta": _eta(NOW + timedelta(hours=2), 500)},
        "e-broken": {"campaign": "e-broken", "type": "", "state": "invalid", "send_at": "",
                     "valid": 0, "skipped": 0, "sent": 0, "eta": "run `check` for the errors"},
        "f-expired": {"campaign": "f-expired", "type": "transaction", "state": "expired",
                      "send_at": _iso(NOW - timedelta(hours=2)), "valid": 50, "skipped": 0,
                      "sent": 0, "eta": ""},
    }
    order = [row["campaign"] for row in rows]
    assert order == ["f-expired", "a-done", "b-running", "d-paused", "c-scheduled", "e-broken"]


def test_plan_keeps_a_sent_campaign_whose_file_is_gone(sent: Config, workspace: Workspace) -> None:
    """A campaign known only to the journal (its file was removed) is still listed."""
    (workspace.campaigns / "a-done.toml").unlink()
    row = _by_id(plan_rows(sent, NOW))["a-done"]
    assert (row["state"], row["valid"], row["sent"], row["eta"]) == ("done", 300, 300, "")


def test_plan_json_and_table_cli(
    sent: Config, workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    """`plan --json` prints the rows as a JSON array; `plan` prints a table; both exit 0."""
    assert cli.main(["plan", "--json", "--config", str(workspace.config)]) == 0
    rows = _by_id(json.loads(capsys.readouterr().out))
    assert set(rows) == {"a-done", "b-running", "c-scheduled", "d-paused", "e-broken",
                         "f-expired"}
    assert rows["c-scheduled"]["eta"] == _eta(NOW + timedelta(days=1), 1000)
    assert (rows["c-scheduled"]["valid"], rows["c-scheduled"]["skipped"]) == (1000, 3)
    assert rows["b-running"]["state"] == "running"
    assert cli.main(["plan", "--config", str(workspace.config)]) == 0
    table = capsys.readouterr().out
    for cid, state in (("a-done", "done"), ("d-paused", "paused"), ("e-broken", "invalid")):
        line = next(line for line in table.splitlines() if cid in line)
        assert state in line


def test_plan_without_journal(workspace: Workspace) -> None:
    """Before the daemon ever ran, plan counts the audiences from the files and creates no
    journal."""
    rows = _by_id(plan_rows(load_config(workspace.config), NOW))
    assert (rows["a-done"]["state"], rows["a-done"]["valid"]) == ("scheduled", 300)
    assert rows["a-done"]["eta"] == _eta(NOW, 300)
    assert not workspace.journal_path.exists()
