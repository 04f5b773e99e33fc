"""`report` and `plan` against the journal a daemon holds (issue 9, items 7 and 17): they read
beside it without writing anything, say when a "running" campaign is only waiting for the next
start, and leave no file owned by another user (root) beside the service's journal.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from daemon_helpers import DaemonProcess, Workspace, daemon_fixture, poll

from tests.helpers import clean_env, run_cli


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """A slow campaign (100 messages a second, 3,000 recipients): long enough to read it
    while it runs."""
    ws = Workspace(tmp_path, sending={"batch_size": 50, "requests_per_second": 2,
                                      "concurrency": 1})
    ws.audience("slow", 3000)
    ws.write_campaign("slow", datetime.now(UTC) - timedelta(seconds=1))
    return ws


@pytest.fixture
def daemon(workspace: Workspace) -> Iterator[DaemonProcess]:
    """The daemon of the workspace (not started), killed at teardown."""
    yield from daemon_fixture(workspace)


def _read(workspace: Workspace, *command: str) -> Any:
    result = run_cli([*command, "--config", str(workspace.config)])
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


def _sent(workspace: Workspace) -> int:
    if workspace.campaign_record("slow") is None:
        return 0
    return workspace.counts("slow").get("sent", 0)


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file of ``folder``: name -> (owner uid, gid)."""
    return {p.name: (p.stat().st_uid, p.stat().st_gid) for p in folder.iterdir()}


def test_reading_beside_a_running_daemon_and_after_sigterm(
    workspace: Workspace, daemon: DaemonProcess,
) -> None:
    """While the daemon sends, `report` and `plan` read its journal (no new file beside it)
    and show the campaign running with an ETA; after SIGTERM the journal still says
    "running", and both say it resumes when the daemon starts instead of pretending it runs."""
    daemon.start()
    poll(lambda: _sent(workspace) >= 100 or None, 20, "the first batches of the campaign")
    state = workspace.journal_path.parent
    before = _files(state)
    (row,) = [r for r in _read(workspace, "report", "--format", "json")
              if r["campaign"] == "slow"]
    assert (row["state"], row["note"]) == ("running", "")
    (planned,) = [r for r in _read(workspace, "plan", "--json") if r["campaign"] == "slow"]
    assert planned["state"] == "running" and planned["eta"] is not None
    assert _files(state) == before

    assert daemon.stop() == 0
    (row,) = _read(workspace, "report", "--format", "json", "--campaign", "slow")
    assert row["state"] == "running" and 0 < row["pending"] < 3000
    assert row["note"] == "not running now: resumes where it stopped when the daemon starts"
    (planned,) = [r for r in _read(workspace, "plan", "--json") if r["campaign"] == "slow"]
    assert planned["eta"] is None and "resumes" in planned["note"]


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_reading_commands_never_write_the_journal(workspace: Workspace) -> None:
    """A writer killed with its last commits still in the WAL: `report` and `plan` read them
    and write nothing (a read-write reader would checkpoint the WAL into the journal and
    delete it on close)."""
    script = (
        "import asyncio, os, sys\n"
        "from pathlib import Path\n"
        "from datetime import UTC, datetime, timedelta\n"
        "from scheduler.journal import JournalLocation, open_journal\n"
        "async def main():\n"
        "    journal = open_journal(JournalLocation(Path(sys.argv[1])))\n"
        "    await journal.start(writer=True)\n"
        "    now = datetime.now(UTC)\n"
        "    batches = [[{'id': f'k-{n}', 'fromName': 'B', 'toPhone': f'+38050{n:07d}',\n"
        "                 'messageType': 'promo', 'text': 'Hi'} for n in range(20)]]\n"
        "    await journal.prepare(campaign_id='k', type='promo', file='/c/k.toml',\n"
        "        fingerprint='f', send_at=now, deadline=now + timedelta(hours=1),\n"
        "        batches=batches, skips=[])\n"
        "    os._exit(0)  # a SIGKILL: no close, no checkpoint\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", script, str(workspace.journal_path)], check=True,
                   env=clean_env(), timeout=60)
    wal = workspace.journal_path.with_name("journal.sqlite3-wal")
    assert wal.stat().st_size > 0, "the killed writer left nothing in the WAL"
    journal, logged = _hash(workspace.journal_path), _hash(wal)
    (row,) = [r for r in _read(workspace, "report", "--format", "json") if r["campaign"] == "k"]
    assert (row["state"], row["recipients"]) == ("scheduled", 20)
    _read(workspace, "plan", "--json")
    assert _hash(workspace.journal_path) == journal
    assert wal.exists() and _hash(wal) == logged


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as an operator's sudo")
def test_root_reading_the_services_journal_leaves_no_root_owned_file(
    workspace: Workspace, daemon: DaemonProcess,
) -> None:
    """The journal belongs to the service's user ("nobody" here); root runs `report` and
    `plan` on it, daemon stopped: every file beside the journal still belongs to that user."""
    daemon.start()
    poll(lambda: _sent(workspace) >= 50 or None, 20, "a first batch")
    assert daemon.stop() == 0
    nobody = pwd.getpwnam("nobody")
    for path in [workspace.journal_path.parent, *workspace.journal_path.parent.iterdir()]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    _read(workspace, "report", "--format", "json")
    _read(workspace, "plan", "--json")
    owners = _files(workspace.journal_path.parent)
    assert set(owners.values()) == {(nobody.pw_uid, nobody.pw_gid)}, owners
