"""The README's main command: `cascade-scheduler demo` sends every example campaign and reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.journal.sqlite import SqliteConnection


@pytest.mark.timeout(90)
def test_demo_sends_every_campaign_through_the_embedded_sandbox(tmp_path: Path) -> None:
    """The demo exits 0, every campaign ends `done`, every recipient has one final outcome and
    one delivery-log line, and the embedded sandbox accepted each sent message once."""
    workspace = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "scheduler", "demo", "--dir", str(workspace)],
        capture_output=True, text=True, timeout=80, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "Campaign outcomes" in done.stdout
    with SqliteConnection(workspace / "state" / "journal.sqlite3") as journal:
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
