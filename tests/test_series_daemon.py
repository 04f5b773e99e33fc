"""Series in the daemon (SPEC §13.1), through a real daemon subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, Workspace, poll, write_atomic

SERIES = "\n".join([
    'id = "weekly"', 'from_name = "TestShop"', 'type = "promo"', 'text = "Hi {first_name}"',
    "", "[repeat]", 'cron = "0 10 * * MON"', 'timezone = "Europe/Kyiv"', "", "[audience]",
    'csv = "audiences/weekly.csv"', "",
])


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Workspace, DaemonProcess]]:
    """A workspace with a weekly series file, and its daemon (killed at teardown)."""
    workspace = Workspace(tmp_path)
    workspace.audience("weekly", 3)
    write_atomic(workspace.campaigns / "weekly.toml", SERIES)
    process = DaemonProcess(workspace)
    try:
        yield workspace, process.start()
    finally:
        process.kill()


def test_a_daemon_that_cannot_fire_series_says_so(
    daemon: tuple[Workspace, DaemonProcess],
) -> None:
    """Never silently ignored: the series file is reported invalid, loudly, and nothing sent."""
    workspace, _ = daemon
    invalid = poll(lambda: [e for e in workspace.events("campaign_invalid")
                            if e.get("campaign") == "weekly"], 30, "campaign_invalid")
    assert "does not send series yet" in " ".join(invalid[0]["errors"])
    assert workspace.record() == []
