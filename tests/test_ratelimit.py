"""The send rate limit (issue 23, item 9): never more than ``requests_per_second`` requests in
any one-second window, counted where the API counts them, from the very first second."""

from __future__ import annotations

import asyncio
import bisect
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_helpers import API_KEY, SandboxProcess, Workspace, clean_env, parse_ts

from scheduler.ratelimit import RateLimit
from tests.helpers import run_cli


def busiest_window(times: list[float], span: float = 1.0) -> int:
    """The most of ``times`` that fall in any window [t, t + span)."""
    ordered = sorted(times)
    return max(bisect.bisect_left(ordered, t + span) - i for i, t in enumerate(ordered))


def test_the_api_never_sees_more_than_the_rate_in_a_second(tmp_path: Path) -> None:
    """60 one-message requests at requests_per_second = 20, with room for 8 in flight: the
    sandbox's clock never sees more than 20 of them within any second (a leaky bucket let 40
    through in the first one)."""
    sandbox = SandboxProcess(tmp_path / "record.jsonl")
    try:
        workspace = Workspace(tmp_path / "ws", base_url=sandbox.url, sending={
            "batch_size": 1, "requests_per_second": 20, "concurrency": 8})
        workspace.audience("paced", 60)
        path = workspace.write_campaign("paced", datetime.now(UTC))
        done = run_cli(["send", str(path), "--now", "--config", str(workspace.config)],
                       env=clean_env(CASCADE_API_KEY=API_KEY))
        assert done.returncode == 0, done.stderr
        stamps = [parse_ts(line["ts"]) for line in sandbox.record()]
    finally:
        sandbox.close()
    assert len(stamps) == 60
    first = min(stamps)
    seconds = [(stamp - first) / timedelta(seconds=1) for stamp in stamps]
    # windows of 0.95 s: the sandbox's clock stamps a request when its process gets to it,
    # which on a busy machine can be tens of milliseconds late (the limiter keeps a 20 ms
    # margin for the way); the leaky bucket's 40 in the first second is far beyond that
    assert busiest_window(seconds, 0.95) <= 20
    assert sum(1 for s in seconds if s < 0.95) <= 20  # no burst at the start either


@pytest.mark.parametrize(("rate", "count", "most"), [(2.5, 7, 2), (0.8, 2, 1)])
async def test_fractional_rates_round_down_to_what_a_second_holds(
    rate: float, count: int, most: int,
) -> None:
    """2.5/s: at most 2 in any second; 0.8/s: one at a time, 1.25 s apart."""
    limit = RateLimit(rate)
    loop = asyncio.get_running_loop()
    granted: list[float] = []

    async def one() -> None:
        async with limit:
            granted.append(loop.time())

    await asyncio.gather(*(one() for _ in range(count)))
    assert len(granted) == count
    assert busiest_window(granted) <= most
    assert busiest_window(granted, 1 / rate) <= max(1, int(rate))


def test_a_rate_must_be_positive() -> None:
    """0 (or less) is a programming error, said plainly (the config refuses it earlier)."""
    with pytest.raises(ValueError, match="above 0"):
        RateLimit(0)
