"""Triggers in the daemon (SPEC §13.2), through real daemon subprocesses and the embedded sandbox.

``at`` counts in minutes and a day's run spans 26 hours of zones, so these tests set ``at`` to
the coming minute in UTC+14 (Pacific/Kiritimati): its recipients go seconds from now, while at
that same moment UTC−12 (Etc/GMT+12) is a calendar day or two behind: its recipients due two
days ago (its time) went 22 hours ago and are still within their ttl (sent late, now), and those
due on the UTC+14 day are held 26 hours.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import DaemonProcess, Workspace, parse_ts, poll, write_atomic

from scheduler.trigger import day_run_id
from tests.helpers import run_cli
from tests.series_helpers import next_minute

PLUS_14, MINUS_12 = "Pacific/Kiritimati", "Etc/GMT+12"


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """Daemons the test starts (appended), killed at teardown."""
    started: list[DaemonProcess] = []
    yield started
    for process in started:
        process.kill()


def start(workspace: Workspace, daemons: list[DaemonProcess]) -> DaemonProcess:
    process = DaemonProcess(workspace)
    daemons.append(process)
    return process.start()


def trigger_text(at: str, *, kind: str = "promo") -> str:
    return "\n".join([
        'id = "birthday"', 'from_name = "TestShop"', f'type = "{kind}"',
        'text = "Happy birthday, {name}!"', "", "[trigger]", 'column = "birthday"',
        "yearly = true", f'at = "{at}"', "", "[audience]", 'csv = "audiences/people.csv"',
        'id_column = "customer_id"', 'tz_column = "tz"', "",
    ])


def people(workspace: Workspace, rows: list[tuple[str, str, str]]) -> None:
    """``customer_id,phone,name,birthday,tz`` rows from (id, birthday, tz)."""
    lines = ["customer_id,phone,name,birthday,tz"]
    lines += [f"{cid},+38050100{int(cid):04d},Name{cid},{birthday},{tz}"
              for cid, birthday, tz in rows]
    (workspace.campaigns / "audiences" / "people.csv").write_text("\n".join(lines) + "\n")


def born(day: date, year: int = 2000) -> str:  # a leap year: 29 February is a birthday
    return day.replace(year=year).isoformat()


def sent(workspace: Workspace) -> dict[str, datetime]:
    """Tracking id -> when the sandbox accepted it."""
    return {m["trackinId"]: parse_ts(m["ts"]) for m in workspace.record()}


def report(workspace: Workspace, campaign: str) -> list[dict[str, Any]]:
    done = run_cli(["report", "--campaign", campaign, "--format", "json", "--config",
                    str(workspace.config)], cwd=workspace.root)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return sorted(rows, key=lambda r: r["campaign"])


@pytest.mark.slow
def test_each_zone_gets_its_own_day_at_its_own_time_and_a_restart_sends_nobody_twice(
    tmp_path: Path, daemons: list[DaemonProcess],
) -> None:
    fire = next_minute()
    kiritimati_day = (fire + timedelta(hours=14)).date()  # the UTC+14 calendar day at `fire`
    at = (fire + timedelta(hours=14)).strftime("%H:%M")
    workspace = Workspace(tmp_path)
    people(workspace, [
        ("1", born(kiritimati_day), PLUS_14),  # due now, on its day, at `at` there
        ("2", born(kiritimati_day), MINUS_12),  # same date, 26 hours later
        ("3", born(kiritimati_day - timedelta(days=2)), MINUS_12),  # its `at` was 22 h ago
        ("4", "", PLUS_14),  # no date: invalid_date, with its line
        ("5", born(kiritimati_day + timedelta(days=3)), PLUS_14),  # another day
    ])
    write_atomic(workspace.campaigns / "birthday.toml", trigger_text(at))
    first = start(workspace, daemons)
    today = day_run_id("birthday", kiritimati_day)
    before = day_run_id("birthday", kiritimati_day - timedelta(days=2))
    poll(lambda: f"birthday.{kiritimati_day}-1" in sent(workspace), 90,
         "the UTC+14 recipient sent")
    poll(lambda: f"{before.replace('@', '.')}-3" in sent(workspace), 30,
         "the UTC-12 recipient of two days ago sent (late, within its ttl)")
    accepted = sent(workspace)
    assert accepted[f"{today.replace('@', '.')}-1"] >= fire  # never before `at` in its zone
    assert set(accepted) == {f"{today.replace('@', '.')}-1", f"{before.replace('@', '.')}-3"}
    held = poll(lambda: [e for e in workspace.events("campaign_held")
                         if e.get("campaign") == today], 30, "the UTC-12 group held")
    assert parse_ts(held[0]["next_opening"]) == fire + timedelta(hours=26)
    assert workspace.state(today) == "running"
    skips = [e for e in workspace.events("message")
             if e.get("campaign") == today and e.get("status") == "skipped"]
    assert [(e["reason"], e["line"]) for e in skips] == [("invalid_date", 5)]
    following = day_run_id("birthday", kiritimati_day + timedelta(days=1))
    poll(lambda: workspace.state(following) == "scheduled", 30, f"{following} planned")

    first.stop()
    count = len(workspace.record())
    scheduled = len([e for e in workspace.events("campaign_scheduled")
                     if e.get("campaign") == following])
    start(workspace, daemons)
    poll(lambda: len([e for e in workspace.events("campaign_scheduled")
                      if e.get("campaign") == following]) > scheduled, 30,
         "the next day planned again")
    poll(lambda: workspace.state(today) == "running" and any(
        e.get("campaign") == today for e in workspace.events("campaign_held")[1:]), 30,
        "today's run resumed, its UTC-12 group held again")
    assert len(workspace.record()) == count  # nobody twice for one date
    rows = {r["campaign"]: r for r in report(workspace, "birthday")}
    assert rows[before]["sent"] == 1 and rows[before]["state"] == "done"
    assert rows[today]["sent"] == 1 and rows[today]["pending"] == 1
    assert rows[following]["state"] == "scheduled"
    status = run_cli(["status", "--json", "--config", str(workspace.config)],
                     cwd=workspace.root)
    (trigger_row,) = json.loads(status.stdout)["series"]
    assert trigger_row["series"] == "birthday" and trigger_row["running"] == today
    assert trigger_row["next"] == following
    assert trigger_row["next_at"] == (fire + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_changed_date_is_judged_by_the_new_date(
    tmp_path: Path, daemons: list[DaemonProcess],
) -> None:
    """The next day's run is planned from the CSV; a date edited before it starts moves the
    row out of it (and another row in): the run is re-planned from the new dates."""
    fire = next_minute() + timedelta(hours=1)  # the next run is an hour away: not started
    day = (fire + timedelta(hours=14)).date()
    at = (fire + timedelta(hours=14)).strftime("%H:%M")
    workspace = Workspace(tmp_path)
    people(workspace, [("1", born(day), PLUS_14), ("2", born(day + timedelta(days=5)), PLUS_14)])
    write_atomic(workspace.campaigns / "birthday.toml", trigger_text(at))
    start(workspace, daemons)
    run = day_run_id("birthday", day)

    def planned() -> int | None:
        record = workspace.campaign_record(run)
        return None if record is None or record.state != "scheduled" else record.recipients

    poll(lambda: planned() == 1, 30, f"{run} planned with one recipient")
    people(workspace, [("1", born(day + timedelta(days=3)), PLUS_14),
                       ("2", born(day), PLUS_14), ("3", born(day), MINUS_12)])
    poll(lambda: planned() == 2, 30, f"{run} planned again from the new dates")
    assert workspace.record() == []
