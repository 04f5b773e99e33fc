"""A trigger on a PostgreSQL journal with two daemons (SPEC §13.2): a change of leader in the
middle of a day's run never sends a recipient twice for that date (beyond the batches in
flight at a kill -9, at-least-once) nor runs the day again. Two `run` subprocesses share one
campaigns folder and one journal, each posting to its own sandbox process."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from daemon_helpers import DaemonPair, write_atomic

from scheduler.trigger import day_run_id
from tests.series_helpers import next_minute

LEASE = 3.0
SENDING = {"batch_size": 50, "requests_per_second": 8, "concurrency": 2, "max_attempts": 3}
COUNT = 2000  # 40 batches at 8/s: about 5 s of sending
PLUS_14 = "Pacific/Kiritimati"


@pytest.fixture
def pair(tmp_path: Path, postgres_url: str) -> Iterator[DaemonPair]:
    made = DaemonPair(tmp_path, postgres_url, SENDING, lease=LEASE)
    try:
        yield made
    finally:
        made.close()


@pytest.mark.slow
def test_a_takeover_mid_day_run_never_sends_a_recipient_twice(pair: DaemonPair) -> None:
    fire = next_minute()
    day = (fire + timedelta(hours=14)).date()
    at = (fire + timedelta(hours=14)).strftime("%H:%M")
    lines = ["phone,first_name,birthday,tz"]
    lines += [f"+38050{n:07d},Name{n},{day.replace(year=2000).isoformat()},{PLUS_14}"
              for n in range(1, COUNT + 1)]
    (pair.a.campaigns / "audiences" / "people.csv").write_text("\n".join(lines) + "\n")
    write_atomic(pair.a.campaigns / "birthday.toml", "\n".join([
        'id = "birthday"', 'from_name = "TestShop"', 'type = "promo"', 'text = "Hi {first_name}"',
        "[trigger]", 'column = "birthday"', "yearly = true", f'at = "{at}"', "[audience]",
        'csv = "audiences/people.csv"', 'tz_column = "tz"', ""]))
    run = day_run_id("birthday", day)
    second = pair.take_over_mid_run(run, day_run_id("birthday", day + timedelta(days=1)))
    accepted = pair.accepted()
    prefix = run.replace("@", ".")
    assert set(accepted) == {f"{prefix}-{n}" for n in range(1, COUNT + 1)}
    in_flight = (2 * SENDING["concurrency"] + 2) * SENDING["batch_size"]
    assert sum(n - 1 for n in accepted.values()) <= in_flight
    assert second.stop() == 0
