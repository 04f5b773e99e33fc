"""`status` against a real daemon's journal, and with none running (exit 3)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from daemon_helpers import (
    API_KEY,
    DaemonProcess,
    Workspace,
    clean_env,
    poll,
    utc_seconds_from_now,
    utc_text,
    write_atomic,
)

from tests.helpers import run_cli
from tests.journal_helpers import SyncJournal


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
            "tomorrow", "scheduled", 30, 30, None)  # no delivery reports: nothing awaited
        code, table = status(workspace)
        assert code == 0 and "leader" in table and "tomorrow" in table
        assert f" {daemon.pid} " in table  # as `kill` takes it
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

    workspace = Workspace(tmp_path, delivery_reports={"poll": True})
    workspace.audience("sent-now", 25)
    path = workspace.write_campaign("sent-now", utc_seconds_from_now(0))
    done = run_cli(["send", str(path), "--now", "--config", str(workspace.config)],
                   env=clean_env(CASCADE_API_KEY=API_KEY))
    assert done.returncode == 0, done.stderr
    with SyncJournal(workspace.journal_path, writer=True) as journal:
        while journal.index_messages(8):  # what the daemon does off the send path
            pass
    code, out = status(workspace, "--json")
    assert code == 3  # no daemon runs
    rows = {c["campaign"]: c for c in json.loads(out)["campaigns"]}
    assert (rows["sent-now"]["state"], rows["sent-now"]["awaiting_status"]) == ("done", 25)


def test_without_delivery_reports_nothing_is_awaited(tmp_path: Path) -> None:
    """With delivery reports off, a sent campaign awaits no status: `status --json` says null
    (as `plan --json` does), and a finished campaign is not listed as if it waited."""

    workspace = Workspace(tmp_path)
    workspace.audience("sent-now", 25)
    path = workspace.write_campaign("sent-now", utc_seconds_from_now(0))
    done = run_cli(["send", str(path), "--now", "--config", str(workspace.config)],
                   env=clean_env(CASCADE_API_KEY=API_KEY))
    assert done.returncode == 0, done.stderr
    with SyncJournal(workspace.journal_path, writer=True) as journal:
        while journal.index_messages(8):  # what a daemon does, reports or not
            pass
    code, out = status(workspace, "--json")
    assert code == 3
    assert [c["campaign"] for c in json.loads(out)["campaigns"]] == []
    planned = run_cli(["plan", "--json", "--config", str(workspace.config)])
    rows = {row["campaign"]: row for row in json.loads(planned.stdout)}
    assert rows["sent-now"]["awaiting_status"] is None


def test_pids_are_printed_as_kill_takes_them() -> None:
    """A pid in the daemons table has no thousands separator; counts keep theirs."""
    import io

    from scheduler.report import write_rows
    from scheduler.status import DAEMON_COLUMNS

    out = io.StringIO()
    write_rows([{"role": "leader", "host": "box", "pid": 13581, "since": ""}], DAEMON_COLUMNS,
               "table", out, "Daemons")
    assert "13581" in out.getvalue() and "13,581" not in out.getvalue()


def test_since_is_when_a_daemon_took_the_lead(tmp_path: Path, postgres_url: str) -> None:
    """After a handover, the new leader's "since" is when it took the lease, not when it
    started: an operator sees that leadership changed."""
    from daemon_helpers import parse_ts

    first = Workspace(tmp_path / "a", journal_url=postgres_url, lease=3.0)
    second = Workspace(tmp_path / "b", journal_url=postgres_url, lease=3.0,
                       shared_campaigns=first.campaigns)
    a = DaemonProcess(first, CASCADE_API_KEY=API_KEY).start()
    b = DaemonProcess(second, CASCADE_API_KEY=API_KEY)
    try:
        poll(lambda: first.events("leadership_acquired"), 10, "A to lead")
        b.start()

        def roles() -> dict[int, tuple[str, datetime]]:
            report = json.loads(status(second, "--json")[1])
            return {d["pid"]: (d["role"], parse_ts(d["since"])) for d in report["daemons"]}

        started = poll(lambda: roles().get(b.pid), 10, "B's presence")
        assert started[0] == "standby"
        # "since" counts whole seconds: let one go by, so taking over shows as a change
        poll(lambda: datetime.now(UTC) >= started[1] + timedelta(seconds=2), 5, "a new second")
        assert a.stop() == 0
        took = parse_ts(poll(lambda: second.events("leadership_acquired"), 10,
                             "B to take over")[-1]["timestamp"])
        leading = poll(lambda: (found := roles().get(b.pid)) and found[0] == "leader"
                       and found[1] > started[1] and found, 10, "B's presence as the leader")
        assert leading[1] == took.replace(microsecond=0)
        assert b.stop() == 0
    finally:
        a.kill()
        b.kill()


def test_a_journal_out_of_reach_is_exit_1(tmp_path: Path) -> None:
    """No database answers at the journal's URL: exit 1 and one sentence, so monitoring tells
    "nobody sends" (3) from "cannot tell" (1)."""
    from tests.helpers import free_port

    workspace = Workspace(tmp_path, journal_url=f"postgresql://cascade@127.0.0.1:{free_port()}/j")
    done = run_cli(["status", "--config", str(workspace.config)])
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_series_shows_its_next_occurrence_the_running_one_and_paused(tmp_path: Path) -> None:
    """A series (SPEC §13.1) is a row of its own: before it fires, its next occurrence (run
    id, UTC, and on its Kyiv wall clock); while an occurrence sends (here: held between its
    roll-out stages), that occurrence as running and the next one after it; paused when its
    file says so. The table says the same."""
    from scheduler.series import local_text, run_id
    from tests.series_helpers import next_minute

    workspace = Workspace(tmp_path)
    workspace.audience("daily", 5)
    fire_at = next_minute()
    local = fire_at.astimezone(ZoneInfo("Europe/Kyiv"))

    def series_file(paused: bool) -> str:
        return "\n".join([
            'id = "daily"', 'from_name = "TestShop"', 'type = "promo"',
            'text = "Hi {first_name}"', f"paused = {'true' if paused else 'false'}", "",
            "[repeat]", f'cron = "{local.minute} {local.hour} * * *"',
            'timezone = "Europe/Kyiv"', "", "[audience]", 'csv = "audiences/daily.csv"', "",
            "[rollout]", "stages = [0.4, 1.0]", "hold = 3600", "",
        ])

    def series_row() -> dict[str, Any] | None:
        code, out = status(workspace, "--json")
        assert code == 0
        rows = json.loads(out)["series"]
        return rows[0] if rows else None

    path = workspace.campaigns / "daily.toml"
    write_atomic(path, series_file(paused=False))
    run, following = run_id("daily", fire_at), run_id("daily", fire_at + timedelta(days=1))
    daemon = DaemonProcess(workspace, CASCADE_API_KEY=API_KEY).start()
    try:
        row = poll(series_row, 30, "the series in status")
        assert row == {
            "series": "daily", "state": "active", "cron": f"{local.minute} {local.hour} * * *",
            "timezone": "Europe/Kyiv", "next": run, "next_at": utc_text(fire_at),
            "next_local": local_text(fire_at, "Europe/Kyiv"), "running": None,
            "running_state": None,
        }
        assert local.strftime("%H:%M") in row["next_local"]
        code, table = status(workspace)
        assert code == 0 and "Series" in table and "Europe/Kyiv" in table
        poll(lambda: (r := workspace.campaign_record(run)) is not None
             and r.stage_at is not None, 120, f"{run} in its roll-out hold")
        row = series_row()
        assert row is not None
        assert (row["state"], row["running"], row["running_state"], row["next"]) == (
            "active", run, "running", following)
        write_atomic(path, series_file(paused=True))
        row = poll(lambda: (r := series_row()) and r["running_state"] == "paused" and r, 30,
                   "the running occurrence paused")
        assert (row["state"], row["running"], row["next"]) == ("paused", run, following)
        assert daemon.stop() == 0
    finally:
        daemon.kill()
