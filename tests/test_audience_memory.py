"""Memory does not grow with the audience: ten times the rows, about the same peak."""

from __future__ import annotations

import random
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scheduler.audience import summarize
from scheduler.campaign import AudienceSpec, Campaign
from scheduler.rows import AudienceSummary

MIB = 1 << 20


def write_audience(path: Path, rows: int) -> None:
    """A realistic audience: 2% bad phones and 1% repeated phones, unique customer ids."""
    rng = random.Random(rows)
    with path.open("w", encoding="utf-8") as file:
        file.write("phone,customer_id,first_name\n")
        for n in range(rows):
            roll = rng.random()
            if roll < 0.02:
                phone = "0501234567"
            elif roll < 0.03:
                phone = f"+38050{rng.randrange(100):07d}"  # a small pool: repeats
            else:
                phone = f"+380{rng.randrange(10**8, 10**9)}"
            file.write(f"{phone},c{n},Name{n % 97}\n")


def campaign_for(path: Path) -> Campaign:
    """A promo campaign personalised from the audience."""
    return Campaign(
        id="mem",
        from_name="Brand",
        type="promo",
        send_at=datetime(2026, 12, 1, 9, tzinfo=UTC),
        ttl=86400,
        text="Hi {first_name}, up to 50% off",
        audience=AudienceSpec(csv=path, id_column="customer_id"),
        file=path.with_suffix(".toml"),
        fingerprint="x",
    )


def peak_while_summarizing(path: Path, *, may_fork: bool) -> tuple[int, AudienceSummary]:
    """Python's peak traced allocation (bytes) in this process while the audience is
    summarized (``may_fork``: with helper processes for the big file)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        summary = summarize(campaign_for(path), may_fork=may_fork)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, summary


@pytest.mark.slow
@pytest.mark.timeout(600)  # a bound for a hang: tracemalloc makes it slow on a busy machine
def test_peak_memory_is_flat_in_the_row_count(tmp_path: Path) -> None:
    """Summarizing 200,000 rows peaks at most 1.2x + 1 MiB above 20,000 rows, whether this
    process reads alone (as the daemon does) or with forked helpers (as `check` does: 200,000
    lines are enough for them, 20,000 are not)."""
    small, big = tmp_path / "small.csv", tmp_path / "big.csv"
    write_audience(small, 20_000)
    write_audience(big, 200_000)
    small_peak, small_summary = peak_while_summarizing(small, may_fork=False)
    assert small_summary.total == 20_000
    summaries = []
    for may_fork in (False, True):
        big_peak, big_summary = peak_while_summarizing(big, may_fork=may_fork)
        assert big_summary.total == 200_000
        assert big_summary.skipped["duplicate"] > 1000  # the repeats really were there
        print(f"peak: {small_peak / MIB:.1f} MiB at 20k rows, {big_peak / MIB:.1f} MiB at 200k"
              f" ({'with' if may_fork else 'without'} helpers)")
        assert big_peak <= 1.2 * small_peak + MIB
        summaries.append(big_summary)
    assert summaries[0] == summaries[1]
