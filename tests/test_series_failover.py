"""A series on a PostgreSQL journal with two daemons (SPEC §13.1): a change of leader in the
middle of an occurrence never fires it (or the next one) twice. Two `run` subprocesses share
one campaigns folder and one journal, each posting to its own sandbox process."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from daemon_helpers import DaemonPair, write_atomic

from scheduler.series import run_id
from tests.series_helpers import next_minute, series_text

LEASE = 3.0
SENDING = {"batch_size": 50, "requests_per_second": 8, "concurrency": 2, "max_attempts": 3}
COUNT = 2000  # 40 batches at 8/s: about 5 s of sending


@pytest.fixture
def pair(tmp_path: Path, postgres_url: str) -> Iterator[DaemonPair]:
    """Two daemons (not started) on a fresh database."""
    made = DaemonPair(tmp_path, postgres_url, SENDING, lease=LEASE)
    try:
        yield made
    finally:
        made.close()


@pytest.mark.slow
def test_a_takeover_mid_occurrence_never_fires_it_twice(pair: DaemonPair) -> None:
    """A starts the occurrence and is killed (-9); B takes over, finishes it, and plans the
    next one: every tracking id of the occurrence accepted, none of another run, and only the
    batches in flight at the kill may have gone twice (at-least-once)."""
    fire_at = next_minute()
    pair.a.audience("daily", COUNT)
    write_atomic(pair.a.campaigns / "daily.toml", series_text(fire_at))
    run = run_id("daily", fire_at)
    second = pair.take_over_mid_run(run, run_id("daily", fire_at + timedelta(days=1)))
    accepted = pair.accepted()
    prefix = run.replace("@", ".")
    assert set(accepted) == {f"{prefix}-{n}" for n in range(1, COUNT + 1)}
    in_flight = (2 * SENDING["concurrency"] + 2) * SENDING["batch_size"]
    assert sum(n - 1 for n in accepted.values()) <= in_flight
    assert second.stop() == 0
