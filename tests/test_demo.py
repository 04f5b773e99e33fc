"""The README's main command: `cascade-scheduler demo` sends every example campaign and reports;
it writes only into a new or empty folder (or its own earlier workspace), and runs again."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scheduler import cli
from tests.journal_helpers import SyncJournal


def _run_demo(workspace: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scheduler", "demo", "--dir", str(workspace)],
        capture_output=True, text=True, timeout=80, check=False,
    )


def _assert_everything_sent(workspace: Path, done: subprocess.CompletedProcess[str]) -> None:
    """Exit 0, every campaign `done`, every recipient one final outcome and one delivery-log
    line, and the embedded sandbox accepted each sent message once."""
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "Campaign outcomes" in done.stdout
    with SyncJournal(workspace / "state" / "journal.sqlite3") as journal:
        records = {r.id: r for r in journal.campaigns()}
        assert set(records) == {"order-updates", "winter-sale", "service-survey", "login-check"}
        assert {r.state for r in records.values()} == {"done"}
        counts = {cid: journal.counts(cid) for cid in records}
    assert counts["winter-sale"]["skipped"] > 0  # invalid, duplicate and opted-out rows
    assert all(c["pending"] == 0 and c["sent"] > 0 for c in counts.values())
    total = sum(c["sent"] + c["skipped"] for c in counts.values())
    assert total == 400 + 5000 + 300 + 60

    lines = [json.loads(line) for line in
             (workspace / "logs" / "delivery.jsonl").read_text().splitlines()]
    messages = [line for line in lines if line["event"] == "message"]
    assert len(messages) == total
    assert len({(m["campaign"], m["tracking_id"]) for m in messages if m["status"] == "sent"}) \
        == sum(c["sent"] for c in counts.values())
    record = [json.loads(line) for line in
              (workspace / "state" / "sandbox.jsonl").read_text().splitlines()]
    assert len(record) == sum(c["sent"] for c in counts.values())
    assert len({r["trackinId"] for r in record}) == len(record)

    # every sent message followed to its final status, one delivery line each, shown at the end
    deliveries = [line for line in lines if line["event"] == "delivery"]
    assert sorted(d["message_id"] for d in deliveries) == sorted(r["messageId"] for r in record)
    assert {d["status"] for d in deliveries} <= {"delivered", "undeliverable", "permanenterror"}
    assert "Delivery status" in done.stdout and "by channel" in done.stdout
    assert "UAH" in done.stdout and "telegram" in done.stdout


@pytest.mark.timeout(180)
@pytest.mark.slow
def test_demo_sends_every_campaign_and_runs_again_in_its_folder(tmp_path: Path) -> None:
    """The demo sends everything; a second run in the same folder starts its workspace
    afresh and sends everything again (it once sent nothing and showed the old table)."""
    workspace = tmp_path / "demo"
    first = _run_demo(workspace)
    _assert_everything_sent(workspace, first)
    # the hints are whole commands even when the output is not a terminal (issue 24, item 17)
    config = workspace / "config.toml"
    hints = [line.removeprefix("try:").strip() for line in first.stdout.splitlines()]
    assert f"cascade-scheduler report --config {config} --status skipped" in hints
    assert f"cascade-scheduler plan --config {config}" in hints
    second = datetime.now(UTC)
    _assert_everything_sent(workspace, _run_demo(workspace))
    with SyncJournal(workspace / "state" / "journal.sqlite3") as journal:
        started = [r.started_at for r in journal.campaigns()]
    assert all(at is not None and at >= second for at in started), started
    finished = [line for line in (workspace / "logs" / "delivery.jsonl").read_text().splitlines()
                if '"campaign_finished"' in line]
    assert len(finished) == 4  # this run's, not the first run's as well


def test_demo_never_writes_into_someone_elses_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A folder holding the user's own config and campaign: exit 1, one sentence, nothing
    touched (the demo once overwrote config.toml and sent the user's campaign)."""
    mine = tmp_path / "work"
    (mine / "campaigns").mkdir(parents=True)
    (mine / "config.toml").write_text("# my config\n", "utf-8")
    (mine / "campaigns" / "mine.toml").write_text('id = "mine"\n', "utf-8")
    before = {p: p.read_bytes() for p in mine.rglob("*") if p.is_file()}
    assert cli.main(["demo", "--dir", str(mine)]) == 1
    err = capsys.readouterr().err
    assert f"{mine}: is not empty" in err and "new or empty folder" in err
    assert {p: p.read_bytes() for p in mine.rglob("*") if p.is_file()} == before
    # an earlier demo's folder that the user added a campaign to is theirs now, too
    demo = tmp_path / "demo"
    (demo / "campaigns").mkdir(parents=True)
    (demo / ".cascade-demo").write_text("", "utf-8")
    (demo / "campaigns" / "mine.toml").write_text('id = "mine"\n', "utf-8")
    assert cli.main(["demo", "--dir", str(demo)]) == 1
    assert (demo / "campaigns" / "mine.toml").exists()
