"""Fire lag of the daemon (SPEC §7, §12): send_at → first request of each campaign at the sink.

    python bench/fire_lag_bench.py [--campaigns 1000] [--rows 5] [--spread 20 40]
                                   [--million 1000000] [--million-delay 30] [--keep DIR]

Two runs, each a fresh workspace and one ``python -m scheduler run`` subprocess (the
``cascade-scheduler run`` entry point) against `sink.py` in its own process, which records the
time each request reached its handler:

- ``many``: ``--campaigns`` campaign files (each its own ``--rows``-row CSV), send times spread
  over ``--spread`` seconds from the daemon's start, on whole seconds (as people write them, so
  ~``campaigns / spread`` campaigns fire at the same instant). Prints the load time (spawn →
  ``READY=1`` on our own ``NOTIFY_SOCKET``) and the fire lag p50 / p99 / max.
- ``million``: one campaign of ``--million`` recipients due ``--million-delay`` s after the
  daemon's start (the snapshot must be ready by then). Prints its load time and fire lag, then
  stops the daemon with SIGTERM once the first requests arrived (it does not send it all).

Targets: load ≤ 5 s, p99 < 1 s with 1,000 campaigns, < 1 s for the million. ``--rps`` is the
daemon's ``requests_per_second`` (default 100, the account's limit): every campaign due in the
same second shares it. ``--skip-many`` / ``--skip-million`` run one half.

``--webhooks N`` instead: the ``many`` run twice, the second while a webhook client pushes N
final statuses to the daemon's receiver, one report a request over 16 connections (a journal
holding N sent messages is built first), and checks none is lost (issue 30: fire lag unchanged
while webhooks come in).

``--pickup N`` instead: N campaign files written one at a time into a running daemon's folder
(each due in an hour), and from each write to its ``campaign_scheduled`` line: SPEC §7's "new
files take effect within 2 s" (a figure here, no longer an assertion in test_daemon.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dlr_bench
import procstat
from sink import SinkProcess

from scheduler.journal import Result
from scheduler.journal.sqlite import SqliteJournal

API_KEY = "bench-key"
TEXT = "Hi {first_name}, your order is on its way"


# -- workspace ----------------------------------------------------------------------------------


def write_config(folder: Path, base_url: str, rps: float, poll_rate: float | None = None,
                 webhooks: int | None = None) -> Path:
    """A daemon config pointing at the sink (with ``poll_rate``: polling statuses there; with
    ``webhooks``: the webhook receiver on that port)."""
    path = folder / "config.toml"
    polling = ("" if poll_rate is None else
               f'\n[delivery_reports]\npoll = true\nstatus_url = "{base_url}"\n'
               f"poll_rate = {poll_rate}\n")
    if webhooks is not None:
        polling = f'\n[delivery_reports]\nlisten = "127.0.0.1:{webhooks}"\n'
    path.write_text(
        f'[api]\nbase_url = "{base_url}"\ntimeout = 30\n\n'
        f"[sending]\nbatch_size = 1000\nrequests_per_second = {rps}\nconcurrency = 4\n"
        'max_attempts = 6\ndelivery = "at-least-once"\n\n'
        '[paths]\ncampaigns = "campaigns"\nstate = "state/journal.sqlite3"\n'
        'delivery_log = "logs/delivery.jsonl"\n\n[log]\nformat = "json"\nlevel = "info"\n'
        + polling,
        encoding="utf-8",
    )
    return path


def write_audience(path: Path, rows: int, first: int) -> None:
    """``rows`` valid, unique recipients, phones numbered from ``first``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["phone", "customer_id", "first_name"])
        writer.writerows(
            (f"+38050{first + n:07d}", f"C{n:08d}", "Olena") for n in range(rows)
        )


def write_campaign(folder: Path, cid: str, send_at: int, audience: str) -> None:
    """A transaction campaign file due at Unix time ``send_at`` (whole seconds)."""
    stamp = datetime.fromtimestamp(send_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    (folder / "campaigns" / f"{cid}.toml").write_text(
        f'id = "{cid}"\nfrom_name = "YourStore"\ntype = "transaction"\nsend_at = {stamp}\n'
        f'ttl = 3600\ntext = "{TEXT}"\n\n[audience]\ncsv = "{audience}"\n'
        'id_column = "customer_id"\n',
        encoding="utf-8",
    )


# -- the daemon and its notify socket -----------------------------------------------------------


class NotifyListener:
    """Our own ``NOTIFY_SOCKET``: records when READY=1 first arrives and keeps draining.

    Draining matters: a datagram socket nobody reads fills up, and the daemon's next
    ``sendto`` would block.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ready_at: float | None = None
        self.ready = threading.Event()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.2)
        self._closed = False
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._closed:
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if self.ready_at is None and b"READY=1" in data.split(b"\n"):
                self.ready_at = time.perf_counter()
                self.ready.set()

    def close(self) -> None:
        """Stop draining and remove the socket file."""
        self._closed = True
        self._thread.join()
        self._socket.close()
        self.path.unlink(missing_ok=True)


@dataclass
class DaemonRun:
    """A running daemon: its process, when it was spawned and when it said READY=1."""

    process: subprocess.Popen[bytes]
    spawned: float
    listener: NotifyListener

    def load_seconds(self, timeout: float = 60) -> float:
        """Seconds from spawn to READY=1 (waits for it)."""
        if not self.listener.ready.wait(timeout) or self.listener.ready_at is None:
            raise SystemExit(f"the daemon sent no READY=1 within {timeout:g} s")
        return self.listener.ready_at - self.spawned


@contextlib.contextmanager
def daemon(folder: Path, config: Path) -> Iterator[DaemonRun]:
    """Start ``run`` with our notify socket; SIGTERM it and check it exits 0 on the way out."""
    listener = NotifyListener(folder / "notify.sock")
    env = {**os.environ, "CASCADE_API_KEY": API_KEY, "NOTIFY_SOCKET": str(listener.path),
           "CASCADE_WEBHOOK_TOKEN": dlr_bench.TOKEN}
    with (folder / "daemon.stderr").open("wb") as err:
        spawned = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "scheduler", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=err, env=env,
        )
        try:
            yield DaemonRun(process, spawned, listener)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            listener.close()
    if code != 0:
        print(f"WARNING: the daemon exited with {code}; see {folder / 'daemon.stderr'}")


# -- the sink's record --------------------------------------------------------------------------


def first_requests(record: Path) -> dict[str, float]:
    """Campaign id → Unix time its first request reached the sink."""
    first: dict[str, float] = {}
    with record.open("rb") as file:
        for line in file:
            request = json.loads(line)
            cid = request["first"].rsplit("-", 1)[0]  # tracking id = {campaign}-{customer id}
            if cid not in first or request["t"] < first[cid]:
                first[cid] = request["t"]
    return first


def wait_for(sink: SinkProcess, messages: int, deadline: float) -> int:
    """Poll the sink until it received ``messages`` or the monotonic ``deadline`` passed."""
    received = 0
    while time.monotonic() < deadline:
        received = sink.stats()["messages"]
        if received >= messages:
            break
        time.sleep(0.25)
    return received


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (``share`` in 0..1) of ``values``."""
    ordered = sorted(values)
    rank = max(1, round(share * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


# -- the two runs -------------------------------------------------------------------------------


def run_many(folder: Path, campaigns: int, rows: int, spread: tuple[float, float],
             rps: float, poll_rate: float | None = None, label: str = "many",
             pushed: int | None = None) -> list[float]:
    """Many small campaigns due within a minute: load time and fire-lag distribution (with
    ``poll_rate``, the daemon polls delivery statuses at the sink meanwhile; with ``pushed``,
    a webhook client pushes that many reports, one a request, from READY=1 on). The lags."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for n in range(campaigns):
        write_audience(folder / "campaigns" / "audiences" / f"lag-{n:04d}.csv", rows, n * rows)
    record = folder / "requests.jsonl"
    with SinkProcess(record) as sink:
        port = dlr_bench.free_port() if pushed else None
        config = write_config(folder, sink.base_url, rps, poll_rate, port)
        base = time.time()
        low, high = spread
        due: dict[str, int] = {}
        for n in range(campaigns):
            cid = f"lag-{n:04d}"
            due[cid] = round(base + low + (high - low) * n / max(campaigns - 1, 1))
            write_campaign(folder, cid, due[cid], f"audiences/{cid}.csv")
        print(f"{label}: wrote {campaigns:,} campaigns of {rows} rows in "
              f"{time.perf_counter() - started:.1f} s, due {low:g}-{high:g} s from now")
        with daemon(folder, config) as run:
            load = run.load_seconds()
            print(f"{label}: load (spawn -> READY=1) {load:.2f} s", flush=True)
            push = None if port is None or not pushed else WebhookPush(port, pushed)
            received = wait_for(sink, campaigns * rows, time.monotonic() + high + 30)
            polls = sink.stats().get("status_requests", 0)  # (flushes the record too)
            if push is not None:
                push.finish(label, time.time() - base)
            cpu = procstat.process_tree_cpu(run.process.pid)
        if push is not None:
            push.check(folder / "state" / "journal.sqlite3", label)
        if poll_rate is not None:
            print(f"{label}: {polls:,} status polls answered; daemon CPU {cpu:.1f} s")
    lags = report_many(record, due, label)
    verdicts = [("load <= 5 s", load <= 5, f"{load:.2f} s")]
    if lags:
        p99 = percentile(lags, 0.99)
        verdicts.append(("fire lag p99 < 1 s", p99 < 1, f"{p99:.3f} s"))
    if received < campaigns * rows:
        print(f"WARNING: the sink received {received:,} of {campaigns * rows:,} messages")
    for name, ok, value in verdicts:
        print(f"target {name}: {'meets' if ok else 'MISSES'} ({value})")
    return lags


def report_many(record: Path, due: dict[str, int], label: str = "many") -> list[float]:
    """Print the fire-lag distribution; return the lags (seconds)."""
    first = first_requests(record)
    lags = [first[cid] - when for cid, when in due.items() if cid in first]
    missing = len(due) - len(lags)
    if not lags:
        print(f"{label}: no campaign reached the sink")
        return lags
    late = sum(1 for lag in lags if lag >= 1)
    print(f"{label}: fire lag over {len(lags):,} campaigns: p50 {statistics.median(lags):.3f} s, "
          f"p99 {percentile(lags, 0.99):.3f} s, max {max(lags):.3f} s, "
          f"min {min(lags):.3f} s; >= 1 s: {late}; never fired: {missing}")
    return lags


def run_million(folder: Path, rows: int, delay: float, rps: float) -> None:
    """One big campaign due ``delay`` s after the daemon starts: load time and fire lag."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    write_audience(folder / "campaigns" / "audiences" / "big.csv", rows, 0)
    print(f"million: wrote {rows:,} rows in {time.perf_counter() - started:.1f} s")
    record = folder / "requests.jsonl"
    with SinkProcess(record) as sink:
        config = write_config(folder, sink.base_url, rps)
        due = round(time.time() + delay)
        write_campaign(folder, "big", due, "audiences/big.csv")
        with daemon(folder, config) as run:
            load = run.load_seconds()
            print(f"million: load (spawn -> READY=1) {load:.2f} s", flush=True)
            wait_for(sink, 10_000, time.monotonic() + delay + 60)
        sink.stats()
    first = first_requests(record).get("big")
    if first is None:
        print("million: the campaign never reached the sink")
        return
    lag = first - due
    prepared = snapshot_seconds(folder / "logs" / "delivery.jsonl")
    print(f"million: fire lag {lag:.3f} s" + (f"; {prepared}" if prepared else ""))
    print(f"target load <= 5 s: {'meets' if load <= 5 else 'MISSES'} ({load:.2f} s)")
    print(f"target fire lag < 1 s: {'meets' if lag < 1 else 'MISSES'} ({lag:.3f} s)")


def snapshot_seconds(log: Path) -> str:
    """From the delivery log: when the daemon started versus when the campaign started."""
    stamps: dict[str, str] = {}
    with log.open("rb") as file:
        for line in file:
            if b'"daemon_started"' in line or b'"campaign_started"' in line:
                event = json.loads(line)
                stamps.setdefault(event["event"], event["timestamp"])
    if len(stamps) < 2:
        return ""
    start, fired = (datetime.fromisoformat(stamps[k].replace("Z", "+00:00"))
                    for k in ("daemon_started", "campaign_started"))
    return f"daemon_started -> campaign_started {(fired - start).total_seconds():.2f} s"


def build_backlog(path: Path, messages: int) -> float:
    """A journal holding one finished campaign of ``messages`` sent, indexed messages, every
    one due for a status poll at once (as if a million waited for their status); the
    seconds it took. Its message ids cannot meet the sink's."""

    async def build() -> None:
        journal = SqliteJournal(path)
        await journal.start(writer=True)
        try:
            now = datetime.now(UTC)
            bodies = [[{"id": f"backlog-{n}", "fromName": "Shop", "toPhone": f"+38067{n:07d}",
                        "messageType": "transaction", "text": "Sale"}
                       for n in range(b, min(b + 1000, messages))]
                      for b in range(0, messages, 1000)]
            await journal.prepare(campaign_id="backlog", type="transaction",
                                  file="/nowhere/backlog.toml", fingerprint="f", send_at=now,
                                  deadline=now + timedelta(days=2), batches=bodies, skips=[])
            await journal.set_state("backlog", "running")
            for seq, body in enumerate(bodies):
                await journal.record_results("backlog", seq, [
                    Result(m["id"], "sent", f"11111111-0000-4000-8000-{seq:06x}{i:06x}", 1,
                           m["toPhone"]) for i, m in enumerate(body)])
            await journal.set_state("backlog", "done")
            while await journal.index_messages(64, first_poll=0):
                pass
        finally:
            await journal.close()

    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(build())
    return time.perf_counter() - started


class WebhookPush:
    """`dlr_bench`'s light client pushing ``count`` final statuses, one report a request over
    16 connections, to a daemon's webhook receiver, in processes started here; the messages
    are those of the journal's campaign built by `dlr_bench.build_journal`."""

    CONNECTIONS = 16

    def __init__(self, port: int, count: int) -> None:
        url = f"http://127.0.0.1:{port}/delivery-reports/{dlr_bench.TOKEN}"
        shares = [list(range(i, count, self.CONNECTIONS)) for i in range(self.CONNECTIONS)]
        processes = dlr_bench.LIGHT_PROCESSES
        self.count, self.started = count, time.time()
        self._pool = multiprocessing.Pool(processes)
        self._pending = self._pool.starmap_async(
            dlr_bench.post_light, [(url, shares[i::processes], 1) for i in range(processes)])

    def finish(self, label: str, window: float) -> None:
        """Wait for every report's answer; print how fast they went in."""
        if not self._pending.ready():
            print(f"{label}: the campaigns are out after {window:.0f} s; "
                  "the webhook push goes on", flush=True)
        bad = sum(self._pending.get())
        took = time.time() - self.started
        self._pool.close()
        self._pool.join()
        print(f"{label}: pushed {self.count:,} reports, one a request, in {took:.1f} s "
              f"({self.count / took:,.0f}/s); answers not 200: {bad}")

    def check(self, journal: Path, label: str) -> None:
        """Every pushed report's message is final in the journal (nothing lost)."""

        async def final() -> int:
            reader = SqliteJournal(journal)
            await reader.start(writer=False)
            try:
                counts = await reader.delivery_counts(dlr_bench.CAMPAIGN)
            finally:
                await reader.close()
            return sum(n for status, n in counts.statuses.items() if status != "awaiting")

        done = asyncio.run(final())
        verdict = "none lost" if done == self.count else f"LOST {self.count - done:,}"
        print(f"{label}: {done:,} of {self.count:,} pushed reports final in the journal: "
              f"{verdict}")


def run_webhooks(root: Path, args: argparse.Namespace) -> None:
    """Fire lag without, then with ``--webhooks`` reports pushed one a request meanwhile."""
    spread = tuple(args.spread)
    quiet = run_many(root / "quiet", args.campaigns, args.rows, spread, args.rps,
                     label="webhooks 0")
    state = root / "pushed" / "state" / "journal.sqlite3"
    state.parent.mkdir(parents=True, exist_ok=True)
    built = asyncio.run(dlr_bench.build_journal(state, args.webhooks))
    print(f"webhooks: built a journal with {args.webhooks:,} sent messages in {built:.0f} s",
          flush=True)
    busy = run_many(root / "pushed", args.campaigns, args.rows, spread, args.rps,
                    label=f"webhooks {args.webhooks:,}", pushed=args.webhooks)
    if quiet and busy:
        print(f"webhooks: fire lag p50 / p99 without reports pushed "
              f"{statistics.median(quiet):.3f} / {percentile(quiet, 0.99):.3f} s; while they "
              f"are pushed {statistics.median(busy):.3f} / {percentile(busy, 0.99):.3f} s")


def run_pickup(folder: Path, files: int, rps: float) -> None:
    """Files added to a running daemon's folder, one at a time: seconds from each write (an
    atomic rename, as careful editors save) to its ``campaign_scheduled`` line."""
    folder.mkdir(parents=True, exist_ok=True)
    write_audience(folder / "campaigns" / "audiences" / "pick.csv", 5, 0)
    log = folder / "logs" / "delivery.jsonl"
    waits: list[float] = []
    with SinkProcess(folder / "requests.jsonl") as sink:
        config = write_config(folder, sink.base_url, rps)
        with daemon(folder, config) as run:
            print(f"pickup: load (spawn -> READY=1) {run.load_seconds():.2f} s", flush=True)
            for n in range(files):
                cid = f"pick-{n:03d}"
                draft = folder / f"{cid}.toml"  # outside the folder, then moved in
                write_campaign(folder, cid, round(time.time()) + 3600, "audiences/pick.csv")
                (folder / "campaigns" / f"{cid}.toml").replace(draft)
                written = time.time()
                draft.replace(folder / "campaigns" / f"{cid}.toml")
                seen = scheduled_at(log, cid, time.monotonic() + 30)
                waits.append(seen - written if seen is not None else float("inf"))
    missed = sum(1 for wait in waits if wait == float("inf"))
    taken = [wait for wait in waits if wait != float("inf")]
    if taken:
        print(f"pickup: write -> campaign_scheduled over {len(taken)} files: p50 "
              f"{statistics.median(taken):.3f} s, max {max(taken):.3f} s; never: {missed}")
    worst = max(waits) if waits else float("inf")
    print(f"target new file takes effect within 2 s: {'meets' if worst <= 2 else 'MISSES'} "
          f"(max {worst:.3f} s)")


def scheduled_at(log: Path, cid: str, deadline: float) -> float | None:
    """The Unix time of ``cid``'s ``campaign_scheduled`` line, polling the log until the
    monotonic ``deadline``."""
    while time.monotonic() < deadline:
        if log.exists():
            with log.open("rb") as file:
                for line in file:
                    if b'"campaign_scheduled"' in line and cid.encode() in line:
                        event = json.loads(line)
                        if event.get("campaign") == cid:
                            stamp = event["timestamp"].replace("Z", "+00:00")
                            return datetime.fromisoformat(stamp).timestamp()
        time.sleep(0.02)
    return None


def run_pending(root: Path, args: argparse.Namespace) -> None:
    """Transactional fire lag with delivery reports polled, without then with ``--pending``
    messages awaiting their status (polled at ``--poll-rate``), in the same run."""
    spread = tuple(args.spread)
    quiet = run_many(root / "no-backlog", args.campaigns, args.rows, spread, args.rps,
                     args.poll_rate, "pending 0")
    built = build_backlog(root / "backlog" / "state" / "journal.sqlite3", args.pending)
    print(f"pending: built a journal with {args.pending:,} messages awaiting a status in "
          f"{built:.0f} s", flush=True)
    busy = run_many(root / "backlog", args.campaigns, args.rows, spread, args.rps,
                    args.poll_rate, f"pending {args.pending:,}")
    if quiet and busy:
        print(f"pending: fire lag p50 / p99 without a backlog {statistics.median(quiet):.3f} / "
              f"{percentile(quiet, 0.99):.3f} s; with {args.pending:,} awaiting a status "
              f"{statistics.median(busy):.3f} / {percentile(busy, 0.99):.3f} s")


def main() -> None:
    """Parse arguments and run the two benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--campaigns", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=5, help="rows per small campaign")
    parser.add_argument("--spread", type=float, nargs=2, default=(20.0, 40.0),
                        metavar=("FROM", "TO"), help="seconds after start the campaigns are due")
    parser.add_argument("--million", type=int, default=1_000_000, help="rows of the big one")
    parser.add_argument("--million-delay", type=float, default=30.0)
    parser.add_argument("--rps", type=float, default=100.0, help="[sending].requests_per_second")
    parser.add_argument("--skip-many", action="store_true")
    parser.add_argument("--skip-million", action="store_true")
    parser.add_argument("--keep", type=Path, help="write the workspaces here and keep them")
    parser.add_argument("--pending", type=int, metavar="N",
                        help="instead: the 'many' run with delivery reports polled, first "
                        "without, then with N messages awaiting their status (1000000)")
    parser.add_argument("--poll-rate", type=float, default=1000.0,
                        help="[delivery_reports].poll_rate with --pending (default: the most)")
    parser.add_argument("--webhooks", type=int, metavar="N",
                        help="instead: the 'many' run first alone, then while a webhook client "
                        "pushes N final statuses, one a request, 16 connections (300000)")
    parser.add_argument("--pickup", type=int, metavar="N",
                        help="instead: N files added one at a time, write -> scheduled (20)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} before the run")
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        if args.pending:
            run_pending(root, args)
            return
        if args.webhooks:
            run_webhooks(root, args)
            return
        if args.pickup:
            run_pickup(root / "pickup", args.pickup, args.rps)
            return
        if not args.skip_many:
            run_many(root / "many", args.campaigns, args.rows, tuple(args.spread), args.rps)
        if not args.skip_million:
            run_million(root / "million", args.million, args.million_delay, args.rps)


if __name__ == "__main__":
    main()
