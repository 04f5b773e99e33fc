"""A cancelled campaign's unsent rows end at send_at + ttl (issue 24, item 5).

Removing a campaign's file cancels it; restoring the file could resume it until its
deadline. After that nothing of it may go, so its rows still pending end ``expired`` with
reason ``cancelled`` (SPEC §6: every row ends in one final outcome), in the journal and in
the delivery log, and the campaign stays "cancelled".
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, Workspace, daemon_fixture, poll, utc_seconds_from_now

TTL = 12  # seconds: the deadline comes soon after the file is removed


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """A staged campaign due now: its first half goes, then it holds past its deadline."""
    ws = Workspace(tmp_path)
    ws.audience("staged", 200)
    send_at = utc_seconds_from_now(0) - timedelta(seconds=1)
    text = ws.campaign_text("staged", send_at, audience="staged", ttl=TTL)
    (ws.campaigns / "staged.toml").write_text(
        text + "\n[rollout]\nstages = [0.5, 1.0]\nhold = 3600\n", "utf-8")
    return ws


@pytest.fixture
def daemon(workspace: Workspace) -> Iterator[DaemonProcess]:
    """The workspace's daemon (not started), killed at teardown."""
    yield from daemon_fixture(workspace)


def test_a_cancelled_campaigns_pending_rows_expire_with_reason_cancelled(
    workspace: Workspace, daemon: DaemonProcess,
) -> None:
    """Half sent, then the file removed: the other half stays pending (a restore could still
    send it) until send_at + ttl, then ends expired, reason cancelled, in the journal and the
    delivery log; the campaign stays cancelled and nothing more is sent."""
    daemon.start()
    poll(lambda: workspace.events("campaign_stage"), 20, "the first stage to be sent")
    (workspace.campaigns / "staged.toml").unlink()
    poll(lambda: workspace.state("staged") == "cancelled", 10, "the cancellation")
    record = workspace.campaign_record("staged")
    assert record is not None
    sent = workspace.counts("staged")["sent"]
    assert sent == 100 and workspace.counts("staged")["pending"] == 100

    poll(lambda: workspace.counts("staged")["pending"] == 0, TTL + 20, "the rows to end")
    counts = workspace.counts("staged")
    assert (counts["sent"], counts["expired"]) == (100, 100)
    assert workspace.state("staged") == "cancelled"
    expired = [e for e in workspace.events("message") if e["status"] == "expired"]
    assert len(expired) == 100 and {e["reason"] for e in expired} == {"cancelled"}
    details = {row.detail for row in workspace.recipients("staged") if row.outcome == "expired"}
    assert details == {"cancelled"}
    assert len(workspace.record()) == 100
    assert daemon.stop() == 0
