"""A real daemon with a send window: the recipients whose local day it is go, the others are
held; SIGTERM and a restart keep them held (neither sent nor expired), with their zones in the
journal; `plan` says how many are held.

The two zones are UTC+14 and UTC-12: their calendar days always differ, so a window open on
"today and tomorrow" of the first is closed for the second at any hour the test runs.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from daemon_helpers import (
    API_KEY,
    DaemonProcess,
    Workspace,
    poll,
    utc_seconds_from_now,
    write_atomic,
)

from scheduler.window import DAYS, zone
from tests.helpers import run_cli
from tests.journal_helpers import SyncJournal

AHEAD, BEHIND = "Etc/GMT-14", "Etc/GMT+12"  # POSIX signs: UTC+14 and UTC-12
OPEN, HELD = 30, 20


def test_held_recipients_survive_a_restart_and_plan_counts_them(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    rows = [f"+38050{n:07d},Open{n},{AHEAD}" for n in range(OPEN)]
    rows += [f"+38067{n:07d},Held{n},{BEHIND}" for n in range(HELD)]
    (workspace.campaigns / "audiences" / "zoned.csv").write_text(
        "phone,first_name,tz\n" + "\n".join(rows) + "\n")
    today = datetime.now(zone(AHEAD))
    days = [DAYS[today.weekday()], DAYS[(today.weekday() + 1) % 7]]
    text = workspace.campaign_text("zoned", utc_seconds_from_now(1), audience="zoned",
                                   kind="promo", ttl=3 * 86400)
    text = text.replace("[audience]", f'window = "00:00-24:00"\nwindow_days = {days}\n\n'
                        "[audience]").replace('csv = "audiences/zoned.csv"',
                                              'csv = "audiences/zoned.csv"\ntz_column = "tz"')
    write_atomic(workspace.campaigns / "zoned.toml", text.replace("'", '"'))
    env = {"CASCADE_API_KEY": API_KEY}
    first = DaemonProcess(workspace, **env).start()
    try:
        poll(lambda: workspace.events("campaign_held") or None, 20,
             "the open zone to be sent and the other held")
    finally:
        assert first.stop() == 0
    assert sorted(line["toPhone"][:6] for line in workspace.record()) == ["+38050"] * OPEN
    held_event = workspace.events("campaign_held")[0]
    assert held_event["held"] == HELD and held_event["window"].startswith("00:00-24:00")
    with SyncJournal(workspace.journal_path) as journal:
        held = journal.open_batches("zoned")
        assert {batch.zones for batch in held} == {BEHIND}
        assert sum(batch.size for batch in held) == HELD
    planned = run_cli(["plan", "--json", "--config", str(workspace.config)])
    assert planned.returncode == 0, planned.stderr
    assert f'"held":{HELD}' in planned.stdout and '"unreachable":0' in planned.stdout
    second = DaemonProcess(workspace, **env).start()
    try:
        poll(lambda: len(workspace.events("campaign_held")) >= 2 or None, 20,
             "the campaign to hold its held recipients again")
    finally:
        assert second.stop() == 0
    assert len(workspace.record()) == OPEN  # the held ones still wait; nothing sent twice
    counts = workspace.counts("zoned")
    assert (counts["sent"], counts["pending"], counts["expired"]) == (OPEN, HELD, 0)
