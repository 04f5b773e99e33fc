"""A real daemon through failures of its own storage: it pauses, says why, and carries on.

The delivery log's folder is replaced by a file mid-campaign (as a rotation with the wrong
owner would leave it; chmod would not stop root, which runs these tests): sending must stop
(no outcome may go unlogged), the operational log must say `delivery_log_unwritable` and
`campaign_interrupted` in one line each, SIGTERM must still work, and once the folder is back
the campaign finishes with every recipient logged exactly once across the old and new files.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import (
    API_KEY,
    DaemonProcess,
    SandboxProcess,
    Workspace,
    expected_ids,
    json_lines,
    poll,
    utc_seconds_from_now,
)

COUNT = 3000


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[SandboxProcess]:
    """An external sandbox with some latency, so the campaign takes a few seconds."""
    process = SandboxProcess(tmp_path / "record.jsonl", "--latency-ms", "100")
    try:
        yield process
    finally:
        process.close()


def message_lines(*paths: Path) -> Counter[str]:
    """How many message lines each tracking id has across the files."""
    return Counter(line["tracking_id"] for path in paths for line in json_lines(path)
                   if line["event"] == "message")


def test_an_unwritable_delivery_log_pauses_sending_until_it_is_back(
    tmp_path: Path, sandbox: SandboxProcess,
) -> None:
    """Pause, one clear line each, resume, nothing lost or doubled."""
    workspace = Workspace(tmp_path / "ws", base_url=sandbox.url, sending={
        "batch_size": 50, "requests_per_second": 10, "concurrency": 2})
    workspace.audience("logged", COUNT)
    workspace.write_campaign("logged", utc_seconds_from_now(2))
    daemon = DaemonProcess(workspace, CASCADE_API_KEY=API_KEY).start()
    try:
        poll(lambda: len(sandbox.record()) >= 300, 20, "sending to begin")
        logs = workspace.delivery_log.parent
        rotated = tmp_path / "rotated"
        logs.rename(rotated)
        logs.write_text("not a folder")  # the reopen after the rotation now fails: ENOTDIR
        poll(lambda: "campaign_interrupted" in daemon.stderr(), 30, "campaign_interrupted")
        stderr = daemon.stderr()
        assert "delivery_log_unwritable" in stderr and "Traceback" not in stderr
        paused_at = len(sandbox.record())
        time.sleep(1.5)
        assert len(sandbox.record()) == paused_at, "it kept sending with nowhere to log"
        assert paused_at < COUNT

        logs.unlink()
        logs.mkdir()
        poll(lambda: workspace.state("logged") == "done", 60, "the campaign to finish")
        assert set(Counter(r["trackinId"] for r in sandbox.record())) == expected_ids(
            "logged", COUNT)
        lines = message_lines(rotated / "delivery.jsonl", workspace.delivery_log)
        assert set(lines) == expected_ids("logged", COUNT) and set(lines.values()) == {1}
        assert daemon.stop() == 0
    finally:
        daemon.kill()
