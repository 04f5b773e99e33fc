"""A first-release journal is migrated in place and resumes; a second writer is refused.

The v1 journal in tests/data/v1-journal was written by the first release itself (see its
README): a `send` killed with SIGKILL half way, with batches done, in flight and pending, and
outcomes journaled but not yet in the delivery log.
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from daemon_helpers import DaemonProcess, Workspace, clean_env, json_lines

from scheduler.journal import FinalStatus, JournalBusy, StatusReport
from scheduler.journal.sqlite import (
    _MIGRATIONS,
    SCHEMA_VERSION,
    SqliteConnection,
    SqliteJournal,
)
from tests.journal_helpers import record_status

V1 = Path(__file__).parent / "data" / "v1-journal"
CAMPAIGN = "v1-sale"
CONFIG = """[api]
base_url = "sandbox"

[sending]
batch_size = 100
concurrency = 2
requests_per_second = 200

[paths]
campaigns = "campaigns"
state = "state/journal.sqlite3"
delivery_log = "logs/delivery.jsonl"
"""


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m scheduler ARGS`` in ``cwd`` with a clean environment."""
    return subprocess.run(
        [sys.executable, "-m", "scheduler", *args], cwd=cwd, capture_output=True, text=True,
        timeout=120, check=False, env=clean_env(CASCADE_API_KEY="upgrade-test"),
    )


@pytest.fixture
def v1_workspace(tmp_path: Path) -> Path:
    """A copy of the v1 workspace with a config, its deadline moved to an hour from now."""
    root = tmp_path / "ws"
    shutil.copytree(V1, root)
    (root / "config.toml").write_text(CONFIG, "utf-8")
    journal = root / "state" / "journal.sqlite3"
    with sqlite3.connect(journal) as db:  # the fixture was made on 2026-11-27; keep it alive
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        deadline = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        db.execute("UPDATE campaigns SET deadline = ?", (deadline,))
    db.close()
    return root


def test_a_v1_journal_is_migrated_in_place(v1_workspace: Path) -> None:
    """Opening it upgrades the schema and keeps every record, count and in-flight mark."""
    with SqliteConnection(v1_workspace / "state" / "journal.sqlite3") as journal:
        record = journal.campaign(CAMPAIGN)
        counts = journal.counts(CAMPAIGN)
        opened = journal.open_batches(CAMPAIGN, -1, 100)
        states = Counter(b.state for b in opened)
        unlogged = journal.unlogged(CAMPAIGN)
    assert record is not None and (record.state, record.stage) == ("running", 0)
    assert (record.recipients, record.skipped, record.batches) == (1200, 2, 12)
    assert counts == {"sent": 600, "rejected": 0, "expired": 0, "in_doubt": 0, "skipped": 2,
                      "pending": 600, "resent": 0}
    assert states == {"pending": 4, "in_flight": 2}
    # what the killed process left in flight may have reached the API (schema 8)
    assert all(b.doubtful == (b.state == "in_flight") for b in opened)
    assert sum(len(batch.rows) for batch in unlogged) == 100
    with sqlite3.connect(v1_workspace / "state" / "journal.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    db.close()
    assert {"messages", "lease", "messages_by_phone"} <= tables


def test_a_v1_journal_resumes_where_it_stopped(v1_workspace: Path) -> None:
    """`send` on the old journal sends only what was left, logs each outcome once, and the
    per-message index then covers every sent message."""
    before = {line["tracking_id"]: line["message_id"]
              for line in json_lines(v1_workspace / "logs" / "delivery.jsonl")
              if line["event"] == "message" and line["status"] == "sent"}
    with SqliteConnection(v1_workspace / "state" / "journal.sqlite3") as journal:
        in_flight = {m["id"] for b in journal.open_batches(CAMPAIGN, -1, 100)
                     if b.state == "in_flight" for m in orjson.loads(b.body)}
    done = cli("send", f"campaigns/{CAMPAIGN}.toml", "--now", "--config", "config.toml",
               cwd=v1_workspace)
    assert done.returncode == 0, done.stderr
    assert f"{CAMPAIGN}: done" in done.stdout

    with SqliteConnection(v1_workspace / "state" / "journal.sqlite3") as journal:
        counts = journal.counts(CAMPAIGN)
        sent = {row.tracking_id: row.detail for row in journal.recipients(CAMPAIGN, "sent")}
        resent_ids = {row.tracking_id for row in journal.recipients(CAMPAIGN, resent=True)}
    assert counts["sent"] == 1200 and counts["pending"] == 0 and counts["skipped"] == 2
    # the batches the killed send left in flight were posted again: resent, and only they
    assert counts["resent"] == len(in_flight) == 200
    assert resent_ids == in_flight
    assert all(sent[tid] == mid for tid, mid in before.items())  # old outcomes kept
    resent = [line["trackinId"] for line in json_lines(v1_workspace / "state" / "sandbox.jsonl")]
    assert len(resent) == len(set(resent)) == 600  # only what the first run left open
    assert set(resent) == set(sent) - set(before)
    lines = Counter(line["tracking_id"]
                    for line in json_lines(v1_workspace / "logs" / "delivery.jsonl")
                    if line["event"] == "message" and line["status"] != "skipped")
    assert len(lines) == 1200 and set(lines.values()) == {1}
    flagged = {line["tracking_id"]
               for line in json_lines(v1_workspace / "logs" / "delivery.jsonl")
               if line["event"] == "message" and line.get("resent")}
    assert flagged == in_flight
    with SqliteConnection(v1_workspace / "state" / "journal.sqlite3") as journal:
        while journal.index_messages(4):
            pass
    with sqlite3.connect(v1_workspace / "state" / "journal.sqlite3") as db:
        first = db.execute(  # a batch closed by the first release
            "SELECT tracking_id, phone FROM messages WHERE message_id = ?",
            (before["v1-sale-1"],)).fetchone()
    db.close()
    assert first is not None and first[0] == "v1-sale-1"
    yesterday = datetime.now(UTC) - timedelta(days=1)
    with SqliteConnection(v1_workspace / "state" / "journal.sqlite3") as journal:
        assert first[1] in journal.capped_phones(["promo"], yesterday, 1)


async def test_a_v2_journal_gains_delivery_polling_in_place(tmp_path: Path) -> None:
    """A journal of the release before delivery status (schema 2) is migrated in one step: its
    sent messages are due for a poll at once, a final one is not, and statuses record."""
    path = tmp_path / "state" / "journal.sqlite3"
    path.parent.mkdir()
    sent_at = "2026-11-27T08:00:00+00:00"
    with sqlite3.connect(path) as db:
        for statement in (*_MIGRATIONS[0], *_MIGRATIONS[1]):
            db.execute(statement)
        db.execute(
            "INSERT INTO campaigns (id, type, file, fingerprint, state, send_at, deadline,"
            " recipients, skipped, batches, snapshot) VALUES ('old', 'promo', '/c/old.toml',"
            " 'f', 'done', ?, '2026-11-28T08:00:00+00:00', 2, 0, 1, 1)", (sent_at,))
        db.executemany(
            "INSERT INTO messages (message_id, campaign, tracking_id, phone, type, sent_at,"
            " status) VALUES (?, 'old', ?, ?, 'promo', ?, ?)",
            [("m-1", "old-1", "+380500000001", sent_at, None),
             ("m-2", "old-2", "+380500000002", sent_at, "delivered")])
        db.execute("PRAGMA user_version=2")
    db.close()
    journal = SqliteJournal(path)
    await journal.start(writer=True)
    try:
        due = await journal.messages_awaiting_status(datetime.now(UTC), 10)
        assert [(d.message.message_id, d.polls, d.message.sent_at.isoformat()) for d in due] == [
            ("m-1", 0, sent_at)]
        assert await record_status(journal, "m-1", "undeliverable", "sms")
        assert not await record_status(journal, "m-2", "undeliverable")
        counts = await journal.delivery_counts("old")
        assert counts.statuses == {"delivered": 1, "undeliverable": 1}
        # a status final since the upgrade can wait for its delivery line
        await journal.record_statuses([StatusReport("m-1", "delivered"),
                                       StatusReport("m-2", "undeliverable")], "call-1")
        later = datetime.now(UTC) + timedelta(hours=1)
        assert await journal.unlogged_statuses(later, 10) == []  # nothing newly final
        # and reaches the leader's brakes (schema 7)
        assert await journal.take_final_statuses(10) == [
            FinalStatus("old", "old-1", "undeliverable", "sms")]
        # planned before campaigns kept their account (schema 10): the default one
        old = await journal.campaign("old")
        assert old is not None and old.account == "default"
        # and a cap that names the default account counts its messages, another's does not
        assert await journal.capped_phones(["promo"], datetime.fromisoformat(sent_at), 1,
                                           accounts=["default"]) == [
            "+380500000001", "+380500000002"]
        assert await journal.capped_phones(["promo"], datetime.fromisoformat(sent_at), 1,
                                           accounts=["brand-a"]) == []
    finally:
        await journal.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 10
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    db.close()
    assert {"messages_due", "messages_by_campaign"} <= indexes


async def test_a_second_writer_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    """The lock names the holder; readers are not writers; closing lets the next one in."""
    path = tmp_path / "state" / "journal.sqlite3"
    first = SqliteJournal(path)
    await first.start(writer=True)
    second = SqliteJournal(path)
    with pytest.raises(JournalBusy, match=r"journal\.sqlite3 is in use by process \d+"):
        await second.start(writer=True)
    reader = SqliteJournal(path)
    await reader.start(writer=False)
    assert await reader.campaigns() == []
    await reader.close()
    await first.close()
    await second.start(writer=True)
    await second.close()


def test_a_second_daemon_and_send_are_refused_while_reports_work(tmp_path: Path) -> None:
    """With a daemon running: `run` and `send` exit 1 naming the journal and the daemon's pid;
    `report`, `plan` and `check` work; after SIGKILL nothing stale is left behind."""
    workspace = Workspace(tmp_path)
    workspace.audience("later", 10)
    later = datetime.now(UTC) + timedelta(hours=1)
    workspace.write_campaign("later", later)
    daemon = DaemonProcess(workspace).start()
    try:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        for args in (["run"], ["send", "campaigns/later.toml", "--now"]):
            refused = cli(*args, "--config", str(workspace.config), cwd=workspace.root)
            assert refused.returncode == 1, refused.stderr
            assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
            assert str(workspace.journal_path) in refused.stderr
            assert f"process {pid} (cascade-scheduler run)" in refused.stderr
        for args in (["report"], ["plan"], ["check"]):
            works = cli(*args, "--config", str(workspace.config), cwd=workspace.root)
            assert works.returncode == 0, (args, works.stderr)
        assert "later" in cli("plan", "--config", str(workspace.config),
                              cwd=workspace.root).stdout
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(10)
        again = DaemonProcess(workspace).start()  # the kernel dropped the lock with the process
        again.stop()
    finally:
        daemon.kill()
