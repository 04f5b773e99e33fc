"""Benchmark `plan` with a series among many one-off campaigns (SPEC §12, third version).

    python bench/plan_bench.py [--campaigns 1000] [--rows 100] [--repeat 3] [--keep DIR]

Writes a config, a weekly series whose ``until`` is 52 weeks ahead (52 occurrences; `plan`
lists those within 30 days, UTC and local) and ``--campaigns`` one-off promo campaigns of
``--rows`` recipients each, then times ``cascade-scheduler plan --json`` as a user runs it
(a child process: imports, config, every file loaded and checked, every audience counted).
Prints the median wall time of ``--repeat`` runs against the target: ≤ 2 s, and for scale the
same without the one-off campaigns (the series alone) and without the series (one-offs alone).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from procstat import as_installed

TARGET_S = 2.0
REPO = Path(__file__).resolve().parent.parent


def write_workspace(folder: Path, campaigns: int, rows: int, *, series: bool = True) -> Path:
    """Config, audience, the series and the one-off campaigns; returns the config path."""
    audiences = folder / "campaigns" / "audiences"
    audiences.mkdir(parents=True, exist_ok=True)
    lines = ["phone,customer_id,name", *(f"+38050{n:07d},C{n},Name{n}" for n in range(rows))]
    (audiences / "people.csv").write_text("\n".join(lines) + "\n", "utf-8")
    now = datetime.now(UTC).replace(microsecond=0)
    until = (now + timedelta(weeks=52)).isoformat().replace("+00:00", "Z")
    weekly = "\n".join([
        'id = "weekly"', 'from_name = "Brand"', 'type = "promo"', 'text = "Hi {name}"',
        "[repeat]", 'cron = "0 10 * * MON"', 'timezone = "Europe/Kyiv"', f"until = {until}",
        'audience = "new"', "[audience]", 'csv = "audiences/people.csv"',
        'id_column = "customer_id"', "",
    ])
    if series:
        (folder / "campaigns" / "weekly.toml").write_text(weekly, "utf-8")
    for n in range(campaigns):
        send_at = (now + timedelta(days=1, minutes=n)).isoformat().replace("+00:00", "Z")
        (folder / "campaigns" / f"c{n:04d}.toml").write_text("\n".join([
            f'id = "c{n:04d}"', 'from_name = "Brand"', 'type = "promo"',
            f"send_at = {send_at}", 'text = "Hi {name}"', "[audience]",
            'csv = "audiences/people.csv"', "",
        ]), "utf-8")
    config = folder / "config.toml"
    config.write_text('[paths]\ncampaigns = "campaigns"\nstate = "state/journal.sqlite3"\n',
                      "utf-8")
    return config


def run_plan(config: Path) -> tuple[float, list[dict[str, object]]]:
    """One `plan --json` in a child process: wall seconds and its rows."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "scheduler", "plan", "--json", "--config",
                           str(config)], capture_output=True, text=True, check=True, env=env)
    return time.perf_counter() - start, json.loads(done.stdout)


def timed(config: Path, repeat: int) -> tuple[list[float], list[dict[str, object]]]:
    """``repeat`` runs of `plan --json`: their wall seconds, and the last one's rows."""
    times, rows = [], []
    for _ in range(repeat):
        seconds, rows = run_plan(config)
        times.append(seconds)
    return times, rows


def main() -> None:
    """Write the workspace, time `plan`, print the figures and the verdict."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaigns", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.keep or Path(temporary)
        as_installed(Path(temporary) / "pycache")
        config = write_workspace(folder, args.campaigns, args.rows)
        times, rows = timed(config, args.repeat)
        alone = timed(write_workspace(folder / "series", 0, args.rows), args.repeat)[0]
        one_offs = timed(write_workspace(folder / "one-offs", args.campaigns, args.rows,
                                         series=False), args.repeat)[0]
    series = next(r for r in rows if r["campaign"] == "weekly")
    occurrences = series["occurrences"]
    assert isinstance(occurrences, list)
    median = statistics.median(times)
    print(f"plan --json: 1 weekly series (52 occurrences, {len(occurrences)} within 30 days) + "
          f"{args.campaigns:,} one-off campaigns of {args.rows} rows; {len(rows)} rows out")
    print(f"runs: {', '.join(f'{t:.2f} s' for t in times)}; median {median:.2f} s; load "
          f"average {os.getloadavg()[0]:.2f}")
    print(f"for scale: the series alone {statistics.median(alone):.2f} s; the one-off "
          f"campaigns alone {statistics.median(one_offs):.2f} s")
    print(f"target ≤ {TARGET_S:.0f} s: {'meets' if median <= TARGET_S else 'MISSES'}")


if __name__ == "__main__":
    main()
