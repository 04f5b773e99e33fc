"""Failover (SPEC §11.2, §12): how long the standby takes to lead after the leader is stopped.

    python bench/failover_bench.py [--runs 5] [--lease 15] [--only kill,term]
                                   [--recipients 30000] [--stop-after 3000] [--latency-ms 100]
                                   [--batch 100] [--rps 20] [--concurrency 4] [--keep DIR]

One local PostgreSQL server (`pg_server.py`: the tests' server with fsync and
synchronous_commit on), then ``--runs`` runs of each scenario, each on a fresh database and a
fresh workspace:

- two ``python -m scheduler run`` daemons (the ``cascade-scheduler run`` entry point) share the
  journal (``[journal] url``, ``lease`` = ``--lease``, default 15 s as shipped) and one
  campaigns folder; each posts to its own ``python -m scheduler sandbox --record FILE`` process
  (``--latency-ms`` per request), so each record tells who posted what, and when (``ts``);
- A starts first and leads; B starts and stands by; a promo campaign of ``--recipients``
  recipients is dropped into the folder, due 2 s later;
- once A's sandbox has accepted ``--stop-after`` messages (the campaign is mid-send), A gets
  ``kill -9`` (scenario ``kill``) or SIGTERM (``term``);
- takeover time: from the signal to B's ``leadership_acquired`` line in its delivery log
  (UTC ISO timestamps, same machine clock); first request: from the signal to the first
  message B's sandbox accepted (its record's ``ts``, written when the sandbox accepts a
  request, so after its ``--latency-ms``);
- then the campaign must finish under B: every recipient accepted at least once, and
  duplicates (accepted more than once, over both sandboxes) counted: SPEC §6 allows the
  in-flight window after a kill under at-least-once, (2 × concurrency + 2) × batch, and none
  after SIGTERM.

Prints every run, then p50 and max per scenario with the targets (takeover ≤ 20 s after kill -9,
≤ 3 s after SIGTERM) and meets/MISSES. Every wait has a deadline; every process started here
(daemons, sandboxes, the server) is stopped before the script exits, whatever happened.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson
from pg_server import DurablePostgres

T = TypeVar("T")
API_KEY = "bench-failover-key"
CAMPAIGN = "failover"
TARGETS = {"kill": 20.0, "term": 3.0}  # SPEC §12: seconds from the signal to the takeover
SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM}
NAMES = {"kill": "kill -9", "term": "SIGTERM"}
#: the machine's variables that must not reach a daemon (they would change its config)
SCRUBBED = ("CASCADE_CONFIG", "CASCADE_API_KEY", "CASCADE_VIBER_TOKEN", "CASCADE_TG_BOT_KEY",
            "CASCADE_JOURNAL_PASSWORD", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET",
            "WATCHDOG_USEC", "WATCHDOG_PID", "PGPASSFILE")


class Timeout(Exception):
    """A bounded wait ran out."""


def wait_for(check: Callable[[], T | None], seconds: float, what: str, step: float = 0.02) -> T:
    """Call ``check`` until it returns something truthy; `Timeout` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"no {what} within {seconds:g} s")
        time.sleep(step)


def parse_ts(text: str) -> datetime:
    """A UTC ISO-8601 time as the delivery log and the sandbox record write it."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def env(**extra: str) -> dict[str, str]:
    """This environment without the machine's cascade/systemd variables, plus ``extra``."""
    clean = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    return clean | {"PYTHONUNBUFFERED": "1"} | extra


# -- reading files other processes append to ---------------------------------------------------


class Tail:
    """The complete JSON lines appended to a file since the last read (a partial last line
    waits for the next read). ``skip`` drops lines containing it before parsing."""

    def __init__(self, path: Path, skip: bytes | None = None) -> None:
        self.path = path
        self.skip = skip
        self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        """The new complete lines."""
        try:
            with self.path.open("rb") as file:
                file.seek(self.offset)
                data = file.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return [orjson.loads(line) for line in data[:end].splitlines()
                if line.strip() and (self.skip is None or self.skip not in line)]


class DeliveryLog:
    """A daemon's delivery log, lifecycle events only (per-message lines are skipped)."""

    def __init__(self, path: Path) -> None:
        self._tail = Tail(path, skip=b'"event":"message"')
        self.events: list[dict[str, Any]] = []

    def find(self, event: str, **fields: Any) -> dict[str, Any] | None:
        """The latest ``event`` line with these fields, reading what is new first."""
        self.events += self._tail.read()
        for line in reversed(self.events):
            if line.get("event") == event and all(line.get(k) == v for k, v in fields.items()):
                found: dict[str, Any] = line
                return found
        return None


class Record:
    """A sandbox's record (one line per accepted message): ids and times so far."""

    def __init__(self, path: Path) -> None:
        self._tail = Tail(path)
        self.ids: list[str] = []
        self.first: datetime | None = None

    def update(self) -> int:
        """Read what is new; the number of messages accepted so far."""
        for line in self._tail.read():
            self.ids.append(line["trackinId"])
            stamp = parse_ts(line["ts"])
            if self.first is None or stamp < self.first:
                self.first = stamp
        return len(self.ids)


# -- processes ----------------------------------------------------------------------------------


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


class Sandbox:
    """``python -m scheduler sandbox --port 0 --record FILE`` (as tests/daemon_helpers.py's
    `SandboxProcess`)."""

    def __init__(self, record: Path, latency_ms: int) -> None:
        self.record_path = record
        command = [sys.executable, "-m", "scheduler", "sandbox", "--port", "0", "--api-key",
                   API_KEY, "--record", str(record)]
        if latency_ms:
            command += ["--latency-ms", str(latency_ms)]
        self.proc = subprocess.Popen(command, env=env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("sandbox listening on "):
            self.close()
            raise RuntimeError(f"the sandbox did not start: {line!r}")
        self.url = line.split()[3]
        self.record = Record(record)

    def close(self) -> None:
        """Stop it (SIGTERM, then SIGKILL if it lingers)."""
        stop_process(self.proc, 10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class Daemon:
    """One ``run`` daemon with its own config, delivery log and stderr file."""

    root: Path
    name: str
    proc: subprocess.Popen[bytes] | None = None
    log: DeliveryLog = field(init=False)

    def __post_init__(self) -> None:
        self.log = DeliveryLog(self.root / "logs" / "delivery.jsonl")

    def configure(self, base_url: str, journal_url: str, lease: float | None, campaigns: Path,
                  sending: dict[str, Any]) -> None:
        """Write its config.toml."""
        lines = ["[api]", f'base_url = "{base_url}"', "timeout = 10", "", "[sending]"]
        lines += [f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}"
                  for k, v in sending.items()]
        lines += ["", "[paths]", f'campaigns = "{campaigns}"', 'state = "state/journal.sqlite3"',
                  'delivery_log = "logs/delivery.jsonl"', "", "[log]", 'format = "json"',
                  'level = "info"', "", "[journal]", f'url = "{journal_url}"']
        if lease is not None:
            lines.append(f"lease = {lease:g}")
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "config.toml").write_text("\n".join(lines) + "\n", "utf-8")

    def start(self) -> None:
        """Spawn ``python -m scheduler run``; its operational log goes to a file."""
        with (self.root / "daemon.stderr").open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scheduler", "run", "--config",
                 str(self.root / "config.toml")],
                cwd=self.root, env=env(CASCADE_API_KEY=API_KEY), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr,
            )

    def event(self, event: str, seconds: float, **fields: Any) -> dict[str, Any]:
        """Wait for ``event`` in its delivery log (failing early if the daemon exits)."""
        def seen() -> dict[str, Any] | None:
            found = self.log.find(event, **fields)
            if found is None and self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"daemon {self.name} exited ({self.proc.returncode}) before "
                                   f"{event}: see {self.root / 'daemon.stderr'}")
            return found

        return wait_for(seen, seconds, f"{event} from daemon {self.name}")

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); None if it never started."""
        return None if self.proc is None else stop_process(self.proc, timeout)


# -- one run ------------------------------------------------------------------------------------


@dataclass
class Run:
    """What one run measured."""

    scenario: str
    number: int
    takeover_s: float
    first_request_s: float | None
    accepted_by_a: int
    duplicates: int
    allowance: int
    missing: int
    counts: dict[str, int]
    leader_exit: int | None


@dataclass(frozen=True)
class Settings:
    """The knobs of every run."""

    lease: float | None  # None: the config default (15 s)
    recipients: int
    stop_after: int
    latency_ms: int
    sending: dict[str, Any]

    @property
    def lease_s(self) -> float:
        """The lease in effect."""
        return 15.0 if self.lease is None else self.lease

    @property
    def window(self) -> int:
        """SPEC §6's in-flight window: what a kill may resend under at-least-once."""
        return (2 * int(self.sending["concurrency"]) + 2) * int(self.sending["batch_size"])


def write_audience(path: Path, rows: int) -> None:
    """``rows`` valid, unique recipients."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["phone", "customer_id", "first_name"])
        writer.writerows((f"+38050{n:07d}", f"C{n:08d}", "Olena") for n in range(rows))


def write_campaign(campaigns: Path, send_at: datetime) -> None:
    """The promo campaign file, written atomically (the watcher never sees half of it)."""
    text = (f'id = "{CAMPAIGN}"\nfrom_name = "YourBrand"\ntype = "promo"\n'
            f'send_at = {send_at.strftime("%Y-%m-%dT%H:%M:%SZ")}\nttl = 3600\n'
            'text = "Hi {first_name}, up to 50% off"\n\n'
            '[audience]\ncsv = "audiences/failover.csv"\nid_column = "customer_id"\n')
    draft = campaigns / ".failover.toml.tmp"
    draft.write_text(text, "utf-8")
    draft.replace(campaigns / "failover.toml")


def one_run(server: DurablePostgres, root: Path, scenario: str, number: int,
            settings: Settings) -> Run:
    """Two daemons, a campaign, the leader stopped mid-send: what the standby did."""
    database = server.create_database(f"failover_{scenario}_{number}")
    try:
        with contextlib.ExitStack() as stack:
            return _measure(stack, server.url(database), root, scenario, number, settings)
    finally:
        with contextlib.suppress(Exception):
            server.drop_database(database)


def _measure(stack: contextlib.ExitStack, url: str, root: Path, scenario: str, number: int,
             settings: Settings) -> Run:
    campaigns = root / "campaigns"
    write_audience(campaigns / "audiences" / "failover.csv", settings.recipients)
    sandboxes = [stack.enter_context(contextlib.closing(
        Sandbox(root / f"record-{name}.jsonl", settings.latency_ms))) for name in "ab"]
    a, b = Daemon(root / "a", "A"), Daemon(root / "b", "B")
    for daemon, sandbox in ((a, sandboxes[0]), (b, sandboxes[1])):
        daemon.configure(sandbox.url, url, settings.lease, campaigns, settings.sending)
        stack.callback(daemon.stop)  # runs even when a wait below times out
    a.start()
    a.event("leadership_acquired", 30)
    b.start()
    b.event("daemon_started", 30)
    moment = datetime.now(UTC) + timedelta(seconds=2)
    write_campaign(campaigns, datetime.fromtimestamp(math.ceil(moment.timestamp()), UTC))
    wait_for(lambda: sandboxes[0].record.update() >= settings.stop_after, 60,
             f"{settings.stop_after} messages from the leader", step=0.01)
    assert a.proc is not None
    signalled = datetime.now(UTC)
    a.proc.send_signal(SIGNALS[scenario])
    acquired = b.event("leadership_acquired", settings.lease_s + 30)
    takeover = (parse_ts(acquired["timestamp"]) - signalled).total_seconds()
    leader_exit = a.proc.wait(60)
    first = None
    with contextlib.suppress(Timeout):
        wait_for(lambda: sandboxes[1].record.update(), 30, "a request from B", step=0.01)
        assert sandboxes[1].record.first is not None
        first = (sandboxes[1].record.first - signalled).total_seconds()
    rest = settings.recipients / (settings.sending["requests_per_second"]
                                  * settings.sending["batch_size"])
    finished = b.event("campaign_finished", rest + 60, campaign=CAMPAIGN)
    for sandbox in sandboxes:
        sandbox.record.update()
    accepted = Counter(sandboxes[0].record.ids + sandboxes[1].record.ids)
    expected = {f"{CAMPAIGN}-C{n:08d}" for n in range(settings.recipients)}
    b_exit = b.stop()
    if b_exit != 0:
        print(f"WARNING: daemon B exited with {b_exit}; see {b.root / 'daemon.stderr'}")
    return Run(
        scenario, number, takeover, first, len(sandboxes[0].record.ids),
        duplicates=sum(n - 1 for n in accepted.values()),
        allowance=settings.window if scenario == "kill" else 0,
        missing=len(expected - set(accepted)),
        counts={k: int(v) for k, v in (finished.get("counts") or {}).items()},
        leader_exit=leader_exit,
    )


# -- report -------------------------------------------------------------------------------------


def show(run: Run) -> None:
    """One run's line."""
    first = "-" if run.first_request_s is None else f"{run.first_request_s:.2f} s"
    counts = ", ".join(f"{k} {v:,}" for k, v in sorted(run.counts.items()) if v)
    print(f"  {NAMES[run.scenario]:<8} run {run.number}: takeover {run.takeover_s:6.2f} s, "
          f"first request {first:>8}; A's sandbox accepted {run.accepted_by_a:,}; duplicates "
          f"{run.duplicates:,} (allowed {run.allowance:,}), missing {run.missing:,}; "
          f"leader exit {run.leader_exit}; journal: {counts}", flush=True)


def summary(runs: list[Run], failures: Counter[str]) -> None:
    """p50 / max per scenario, with the targets (a failed run misses them)."""
    print(f"{'scenario':<10}{'runs':>5}{'takeover p50':>14}{'max':>8}{'first request p50':>19}"
          f"{'max':>8}{'duplicates per run':>26}{'missing':>9}")
    verdicts = []
    for scenario in ("kill", "term"):
        mine = [r for r in runs if r.scenario == scenario]
        if failures[scenario]:
            verdicts.append((f"every {NAMES[scenario]} run completes", False,
                             f"{failures[scenario]} failed"))
        if not mine:
            continue
        takeovers = [r.takeover_s for r in mine]
        firsts = [r.first_request_s for r in mine if r.first_request_s is not None]
        p50f = f"{statistics.median(firsts):.2f} s" if firsts else "-"
        maxf = f"{max(firsts):.2f} s" if firsts else "-"
        dups = " ".join(str(r.duplicates) for r in mine)
        print(f"{NAMES[scenario]:<10}{len(mine):>5}{statistics.median(takeovers):>12.2f} s"
              f"{max(takeovers):>6.2f} s{p50f:>19}{maxf:>8}{dups:>26}"
              f"{sum(r.missing for r in mine):>9}")
        limit = TARGETS[scenario]
        worst = max(takeovers)
        verdicts.append((f"takeover <= {limit:g} s after {NAMES[scenario]}", worst <= limit,
                         f"max {worst:.2f} s, p50 {statistics.median(takeovers):.2f} s"))
        allowance = mine[0].allowance
        over = [r.duplicates for r in mine if r.duplicates > allowance]
        verdicts.append((f"duplicates <= {allowance:,} per run after {NAMES[scenario]}",
                         not over, f"max {max(r.duplicates for r in mine):,}"))
        verdicts.append((f"nothing missing after {NAMES[scenario]}",
                         all(r.missing == 0 for r in mine),
                         f"{sum(r.missing for r in mine):,} missing"))
    for name, ok, value in verdicts:
        print(f"target {name}: {'meets' if ok else 'MISSES'} ({value})")


def main() -> None:
    """Parse arguments; start the server; run every scenario; print the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each scenario")
    parser.add_argument("--only", default="kill,term", help="scenarios: kill, term")
    parser.add_argument("--lease", type=float, help="[journal] lease, s (default: as shipped)")
    parser.add_argument("--recipients", type=int, default=30_000)
    parser.add_argument("--stop-after", type=int, default=3_000,
                        help="messages the leader's sandbox accepted before the signal")
    parser.add_argument("--latency-ms", type=int, default=100, help="each sandbox's latency")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rps", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--keep", type=Path, help="write the workspaces here and keep them")
    args = parser.parse_args()
    scenarios = [s.strip() for s in args.only.split(",") if s.strip()]
    if set(scenarios) - set(SIGNALS):
        parser.error(f"unknown scenario(s): {', '.join(sorted(set(scenarios) - set(SIGNALS)))}")
    if not 0 < args.stop_after < args.recipients:
        parser.error("--stop-after must be between 0 and --recipients")
    sending = {"batch_size": args.batch, "requests_per_second": args.rps,
               "concurrency": args.concurrency, "max_attempts": 6, "delivery": "at-least-once"}
    settings = Settings(args.lease, args.recipients, args.stop_after, args.latency_ms, sending)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} before the run")
    with tempfile.TemporaryDirectory() as scratch:
        run_all(args.keep or Path(scratch), scenarios, args.runs, settings)


def run_all(root: Path, scenarios: list[str], runs: int, settings: Settings) -> None:
    """The server, then every run of every scenario (interleaved), then the summary."""
    server = DurablePostgres()
    results: list[Run] = []
    failures: Counter[str] = Counter()
    try:
        server.start()
        print(f"journal: {server.describe()}; a fresh database per run")
        rate = settings.sending["requests_per_second"] * settings.sending["batch_size"]
        lease = f"{settings.lease_s:g} s" + (" (default)" if settings.lease is None else "")
        print(f"two `run` daemons, lease {lease}, batch {settings.sending['batch_size']}, "
              f"{settings.sending['requests_per_second']:g} requests/s (~{rate:,.0f} "
              f"messages/s), concurrency {settings.sending['concurrency']}, sandboxes with "
              f"{settings.latency_ms} ms latency; {settings.recipients:,} recipients, the "
              f"leader is stopped after {settings.stop_after:,}", flush=True)
        for number in range(1, runs + 1):
            for scenario in scenarios:
                try:
                    results.append(one_run(server, root / f"{scenario}-{number}", scenario,
                                           number, settings))
                except (Timeout, RuntimeError) as exc:  # a bounded wait ran out: say so
                    failures[scenario] += 1
                    print(f"  {NAMES[scenario]:<8} run {number}: FAILED: {exc}", flush=True)
                else:
                    show(results[-1])
    finally:
        server.remove()
    summary(results, failures)


if __name__ == "__main__":
    main()
