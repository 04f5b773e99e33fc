"""What send windows and frequency caps cost (SPEC §11.4, §12): the same `send --now` with and
without them, in one run, against the minimal sink; and `check` with and without a window.

    python bench/policy_bench.py [--rows 200000] [--index 1000000] [--repeat 3]

Variants of one promo campaign of ``--rows`` Ukrainian numbers (batch 1000, concurrency 4, a
rate limit that never binds, SQLite journal, delivery log on):

- ``plain``: no window, no cap: the send path as before.
- ``window``: ``window = "00:00-24:00"`` (open now, so the same messages go): each recipient's
  zone found from the phone (libphonenumber, cached by prefix), batches cut by zone group, each
  batch's window looked up before it is queued.
- ``caps``: ``[[policy.caps]] types = ["promo"], max = 1, days = 7`` against a journal whose
  per-message index already holds ``--index`` promo messages sent yesterday to as many phones
  outside this audience (so the same messages go): the campaign reads the ``--index`` capped
  phones from the index once at its start, and checks each message against them.
- ``both``: window and caps together.

Each variant starts from a copy of the same journal file. Printed per variant: wall seconds
(spawn to exit), recipients/s, CPU seconds per million recipients, peak RSS, and the ratio to
``plain`` in the same run (best of ``--repeat``). Then `check` of the campaign with and without
the window (zone look-ups for every row): wall seconds, rows/s and CPU seconds per million rows
(`check`'s own and its forked helpers', from ``os.wait4``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sink import SinkProcess

API_KEY = "bench-key"
VARIANTS = ("plain", "window", "caps", "both")
WINDOW = 'window = "00:00-24:00"\n'
CAPS = '\n[policy]\n[[policy.caps]]\ntypes = ["promo"]\nmax = 1\ndays = 7\n'


def write_workspace(folder: Path, rows: int) -> None:
    """The audience and one campaign file per window choice."""
    campaigns = folder / "campaigns"
    campaigns.mkdir(parents=True)
    with (campaigns / "people.csv").open("w") as file:
        file.write("phone,first_name\n")
        file.writelines(f"+38050{n:07d},Name{n % 97}\n" for n in range(rows))
    send_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for name, window in (("plain", ""), ("window", WINDOW)):
        (campaigns / f"{name}.toml").write_text(
            f'id = "bench-{name}"\nfrom_name = "Shop"\ntype = "promo"\nsend_at = {send_at}\n'
            f'ttl = 86400\ntext = "Hi {{first_name}}, 20% off today"\n{window}\n'
            '[audience]\ncsv = "people.csv"\n')


def write_config(folder: Path, base_url: str, name: str, caps: bool) -> Path:
    path = folder / f"config-{name}.toml"
    path.write_text(
        f'[api]\nbase_url = "{base_url}"\ntimeout = 30\n\n'
        "[sending]\nbatch_size = 1000\nrequests_per_second = 1000\nconcurrency = 4\n\n"
        f'[paths]\ncampaigns = "campaigns"\nstate = "state/{name}.sqlite3"\n'
        f'delivery_log = "logs/{name}.jsonl"\n\n[log]\nformat = "json"\nlevel = "warning"\n'
        + (CAPS if caps else ""))
    return path


def seeded_journal(folder: Path, index: int) -> Path:
    """A journal whose per-message index holds ``index`` promo messages sent yesterday, one
    to each of as many phones outside the audience."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from scheduler.journal.sqlite import SqliteConnection

    path = folder / "seed.sqlite3"
    with SqliteConnection(path):
        pass  # the schema, at its current version
    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    phones = (f"+38067{n:07d}" for n in range(index))
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO messages (message_id, campaign, tracking_id, phone, type, sent_at)"
            " VALUES (?, 'earlier', ?, ?, 'promo', ?)",
            ((f"m{n}", f"earlier-{n}", phone, yesterday) for n, phone in enumerate(phones)))
    return path


def run_send(folder: Path, sink: SinkProcess, variant: str, seed: Path) -> dict[str, float]:
    """`send --now` of one variant from a fresh copy of the seeded journal."""
    caps = variant in ("caps", "both")
    campaign = folder / "campaigns" / ("window.toml" if variant in ("window", "both")
                                       else "plain.toml")
    name = f"{variant}-{time.monotonic_ns()}"
    config = write_config(folder, sink.base_url, name, caps)
    (folder / "state").mkdir(exist_ok=True)
    shutil.copy(seed, folder / "state" / f"{name}.sqlite3")
    env = {**os.environ, "CASCADE_API_KEY": API_KEY}
    env.pop("CASCADE_CONFIG", None)
    before = sink.stats()["messages"]
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "scheduler", "send", str(campaign), "--now", "--config",
         str(config)], cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    assert process.stderr is not None
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{variant} failed:\n{process.stderr.read()}")
    return {"seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime,
            "rss": usage.ru_maxrss / 1024, "sent": sink.stats()["messages"] - before}


def run_check(folder: Path, campaign: str) -> tuple[float, float]:
    """`check` of one campaign as a subprocess: wall seconds and CPU seconds (its own and its
    helpers', which it waits for: ``os.wait4`` counts them)."""
    config = write_config(folder, "sandbox", "check", caps=False)
    log = folder / "check.out"
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "scheduler", "check", str(folder / "campaigns" / campaign),
             "--config", str(config)], cwd=folder, stdout=out, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"check failed:\n{log.read_text()}")
    return seconds, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--index", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="policy-bench-") as temp:
        folder = Path(temp)
        write_workspace(folder, args.rows)
        seed = seeded_journal(folder, args.index)
        best: dict[str, dict[str, float]] = {}
        with SinkProcess() as sink:
            for _ in range(args.repeat):
                for variant in VARIANTS:
                    result = run_send(folder, sink, variant, seed)
                    if result["sent"] != args.rows:
                        raise SystemExit(f"{variant} sent {result['sent']} of {args.rows}")
                    if variant not in best or result["seconds"] < best[variant]["seconds"]:
                        best[variant] = result
        per_million = 1_000_000 / args.rows
        print(f"send --now, {args.rows:,} recipients, index of {args.index:,} sent messages, "
              f"best of {args.repeat}")
        print(f"{'variant':<8}{'seconds':>9}{'recipients/s':>14}{'CPU s/M':>9}{'RSS MB':>8}"
              f"{'vs plain':>10}")
        plain = best["plain"]["seconds"]
        for variant in VARIANTS:
            run = best[variant]
            print(f"{variant:<8}{run['seconds']:>9.2f}{args.rows / run['seconds']:>14,.0f}"
                  f"{run['cpu'] * per_million:>9.1f}{run['rss']:>8.0f}"
                  f"{plain / run['seconds']:>9.2f}x")
        plain_check, plain_cpu = min(run_check(folder, "plain.toml") for _ in range(args.repeat))
        window_check, window_cpu = min(
            run_check(folder, "window.toml") for _ in range(args.repeat)
        )
        print(f"check, {args.rows:,} rows: {plain_check:.2f} s plain "
              f"({args.rows / plain_check:,.0f} rows/s, CPU {plain_cpu * per_million:.2f} s/M), "
              f"{window_check:.2f} s with a window (zone per row; {args.rows / window_check:,.0f} "
              f"rows/s, CPU {window_cpu * per_million:.2f} s/M), "
              f"{window_check / plain_check:.2f}x")


if __name__ == "__main__":
    main()
