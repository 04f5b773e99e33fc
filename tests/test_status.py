"""`status` against a real daemon's journal, and with none running (exit 3)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from daemon_helpers import API_KEY, DaemonProcess, Workspace, clean_env, utc_seconds_from_now

from tests.helpers import run_cli


def status(workspace: Workspace, *args: str) -> tuple[int, str]:
    """``status --config WS ARGS``: exit code and stdout (stderr must hold no traceback)."""
    done = run_cli(["status", "--config", str(workspace.config), *args])
    assert "Traceback" not in done.stderr
    return done.returncode, done.stdout


def test_no_journal_yet_means_no_leader(tmp_path: Path) -> None:
    """Before any daemon ran: exit 3 and a sentence saying so."""
    workspace = Workspace(tmp_path)
    done = run_cli(["status", "--config", str(workspace.config)])
    assert done.returncode == 3 and "no daemon has run" in done.stderr


def test_status_while_a_daemon_runs_and_after_it_stops(tmp_path: Path) -> None:
    """While it runs: the daemon as leader (host, pid, since) and the waiting campaign; exit 0.
    After SIGTERM: no daemon, no leader, exit 3, the campaign still listed."""
    workspace = Workspace(tmp_path)
    workspace.audience("tomorrow", 30)
    workspace.write_campaign("tomorrow", utc_seconds_from_now(0) + timedelta(days=1))
    daemon = DaemonProcess(workspace, CASCADE_API_KEY=API_KEY).start()
    try:
        code, out = status(workspace, "--json")
        assert code == 0
        report = json.loads(out)
        assert report["leader"] and report["leader"].split(":")[1] == str(daemon.pid)
        assert [(d["role"], d["pid"]) for d in report["daemons"]] == [("leader", daemon.pid)]
        campaign = report["campaigns"][0]
        assert (campaign["campaign"], campaign["state"], campaign["recipients"],
                campaign["pending"], campaign["awaiting_status"]) == (
            "tomorrow", "scheduled", 30, 30, 0)
        code, table = status(workspace)
        assert code == 0 and "leader" in table and "tomorrow" in table
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    code, out = status(workspace, "--json")
    report = json.loads(out)
    assert code == 3 and report["leader"] is None and report["daemons"] == []
    assert [c["campaign"] for c in report["campaigns"]] == ["tomorrow"]


def test_a_finished_campaign_awaiting_delivery_statuses_is_listed(tmp_path: Path) -> None:
    """Sent messages without a final delivery status keep their campaign in `status`, with the
    count, until the statuses arrive."""
    from scheduler.journal.sqlite import SqliteConnection

    workspace = Workspace(tmp_path)
    workspace.audience("sent-now", 25)
    path = workspace.write_campaign("sent-now", utc_seconds_from_now(0))
    done = run_cli(["send", str(path), "--now", "--config", str(workspace.config)],
                   env=clean_env(CASCADE_API_KEY=API_KEY))
    assert done.returncode == 0, done.stderr
    with SqliteConnection(workspace.journal_path) as journal:
        while journal.index_messages(8):  # what the daemon does off the send path
            pass
    code, out = status(workspace, "--json")
    assert code == 3  # no daemon runs
    rows = {c["campaign"]: c for c in json.loads(out)["campaigns"]}
    assert (rows["sent-now"]["state"], rows["sent-now"]["awaiting_status"]) == ("done", 25)
