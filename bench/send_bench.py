"""Send throughput (SPEC §12): ours vs the seed's client pattern vs a bare aiohttp client.

    python bench/send_bench.py [--rows 1000000] [--only seed,bare,ours] [--repeat N]
                               [--stat median|best]
                               [--journal sqlite|postgres|both]
                               [--sink minimal|sandbox] [--bare-batch 1000] [--keep DIR]
                               [--latency SECONDS] [--rate R] [--concurrency N|auto]

Generates one audience CSV (phone, customer_id, first_name; every row valid and unique, so each
client sends exactly ``--rows`` messages), starts one sink (`sink.py`, a separate process that
parses every body and answers each id) and runs three clients against it, one after the other,
each in its own child process:

- ``seed``: the API doc's ``send_bulk`` pattern: ``csv.DictReader``, ``requests.post(json=...)``
  (module-level, as the doc writes it), sequential batches of 1000, ``raise_for_status`` and
  ``response.json()``. Timed from the first row read to the last answer.
- ``bare``: aiohttp posting pre-built orjson bodies (built before the clock starts), batch
  ``--bare-batch``, concurrency 4, answers parsed. The ceiling for a Python client.
- ``ours``: ``python -m scheduler send FILE --now`` (the ``cascade-scheduler`` console script's
  entry point) with batch 1000, concurrency 4, 1000 requests/s (so the limit never binds),
  journal and delivery log on. Timed from spawn to exit; the delivery log's campaign_started
  and campaign_finished events split it into startup + snapshot, sending, and shutdown.
  ``--journal`` picks its journal: ``sqlite`` (the default, ``[paths] state``), ``postgres``
  (a local PostgreSQL server this script starts in a temporary folder, see `pg_server.py`,
  with fsync and synchronous_commit on; a fresh database per run, named by ``[journal] url``)
  or ``both`` (ours runs once on each, in the same run, and PostgreSQL / SQLite is printed:
  SPEC §12 wants ≥ 0.8×).

CPU seconds per million recipients stand next to every rate: the client's user + system time
over its clocked interval (ours: ``os.wait4``'s rusage, spawn to exit; seed and bare: their own
``getrusage`` around the clocked part, so bare's body building is not in it), the sink's, and
with PostgreSQL the server's (all its processes, from /proc), which does the journal's work
outside our process.
Ours' CPU is also split by part (`procstat.CpuParts`, sampled every 20 ms): its main thread
(the event loop: batches, requests, answers, the delivery log), its other threads (the
journal's writer), its child process (the streamed snapshot's audience reader) and that
child's children (pass one's forked key scan).

With ``--repeat N`` the clients take turns N times and the median run of each is compared
(``--stat best``: the best run, the least disturbed on a shared machine); with ``--journal
both`` the PostgreSQL / SQLite ratio of every turn (the two ran back to back) is printed too,
and the verdict is on their median. Every client's peak RSS comes from
``os.wait4`` on its own pid. The sink's counters confirm each client delivered every message.
Targets (SPEC §12): ours ≥ 1.2 × seed end to end (third version; the second's 1.5× was out of
reach on 2 cores), ours ≤ 8 CPU s per million sent against the zero-latency sink (third
version), ours ≥ 0.6 × bare, ours peak RSS ≤ 150 MB (each journal); PostgreSQL ≥ 0.8 × SQLite
(``both``).

The account's limit (SPEC §12, third version; SPEC §13.5): ``--latency 0.1 --rate 100
--concurrency auto --only ours`` answers every request 100 ms late (a real API's round trip)
and gives ours a config that sets only ``requests_per_second = 100`` (batches of 1000: a limit
of 100,000 messages a second): ours / the limit is printed, target ≥ 0.9 end to end.
``--concurrency N`` sets ``[sending] concurrency`` by hand for comparison (default 4, the
earlier figures' setting; ``--rate`` defaults to 1000, a limit that never binds).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from procstat import CpuParts, as_installed, process_cpu, process_tree_cpu
from sink import SinkProcess

if TYPE_CHECKING:
    from pg_server import DurablePostgres

CAMPAIGN_ID = "bench-send"
FROM_NAME = "YourBrand"
TEXT = "Hi {first_name}, up to 50% off: https://example.com/sale"
ROUTE = "/api/CascadeMessage/send_message/async"
API_KEY = "bench-key"
NAMES = ("Olena", "Taras", "Ann Lee", "Iryna", "Dmytro")


# -- workspace ----------------------------------------------------------------------------------


def write_audience(folder: Path, rows: int) -> Path:
    """The audience CSV: unique valid phones, unique customer ids."""
    audiences = folder / "campaigns" / "audiences"
    audiences.mkdir(parents=True, exist_ok=True)
    path = audiences / "send.csv"
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["phone", "customer_id", "first_name"])
        writer.writerows(
            (f"+38050{n:07d}", f"C{n:08d}", NAMES[n % len(NAMES)]) for n in range(rows)
        )
    return path


def write_campaign(folder: Path) -> Path:
    """The campaign file `send --now` sends (its send_at is replaced by now)."""
    send_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    path = folder / "campaigns" / "send.toml"
    path.write_text(
        f'id = "{CAMPAIGN_ID}"\nfrom_name = "{FROM_NAME}"\ntype = "promo"\n'
        f'send_at = {send_at}\nttl = 86400\ntext = "{TEXT}"\n\n'
        '[audience]\ncsv = "audiences/send.csv"\nid_column = "customer_id"\n',
        encoding="utf-8",
    )
    return path


#: the minimal sink's round trip, s (main() sets it from --latency)
LATENCY = {"seconds": 0.0}
#: ours' ``[sending]`` pacing (main() sets it from --rate and --concurrency; None: the key
#: is left out, so the engine adapts its requests in flight to the round trip)
SENDING: dict[str, float | None] = {"requests_per_second": 1000, "concurrency": 4}


def write_config(folder: Path, base_url: str, run: str = "0",
                 journal_url: str | None = None, lease: float | None = None) -> Path:
    """A config for the sink: batch 1000 and `SENDING` (by default concurrency 4 and a rate
    limit that never binds).

    Each ``run`` gets its own journal and delivery log, so a repeat starts from scratch; with
    ``journal_url`` the journal is that PostgreSQL database (``[journal] url``) instead;
    ``lease`` sets ``[journal] lease`` (None: the default).
    """
    path = folder / f"config-{run}.toml"
    journal = ""
    if journal_url is not None or lease is not None:
        journal = "\n[journal]\n"
        journal += "" if journal_url is None else f'url = "{journal_url}"\n'
        journal += "" if lease is None else f"lease = {lease:g}\n"
    path.write_text(
        f'[api]\nbase_url = "{base_url}"\ntimeout = 30\n\n'
        "[sending]\nbatch_size = 1000\n"
        + "".join(f"{key} = {value:g}\n" for key, value in SENDING.items() if value is not None)
        +
        'max_attempts = 6\ndelivery = "at-least-once"\n\n'
        f'[paths]\ncampaigns = "campaigns"\nstate = "state/journal-{run}.sqlite3"\n'
        f'delivery_log = "logs/delivery-{run}.jsonl"\n\n'
        '[log]\nformat = "json"\nlevel = "warning"\n' + journal,
        encoding="utf-8",
    )
    return path


# -- children -----------------------------------------------------------------------------------


class CascadeMessenger:
    """The seed doc's client class, as written there (only ``base_url`` points at the sink)."""

    def __init__(self, api_key: str, base_url: str) -> None:
        self.base_url = base_url
        self.headers = {"Content-Type": "application/json", "X-Authorization-Key": api_key}

    def send_bulk(self, messages: list[dict[str, Any]]) -> list[dict[str, str]]:
        """Send multiple messages (the doc's ``send_bulk``)."""
        import requests

        response = requests.post(
            f"{self.base_url}{ROUTE}", headers=self.headers, json=messages, timeout=30
        )
        response.raise_for_status()
        result: list[dict[str, str]] = response.json()
        return result


def child_seed(csv_path: Path, base_url: str, _batch: int) -> int:
    """The seed pattern: read the CSV, personalise, post sequential batches of 1000."""
    messenger = CascadeMessenger(API_KEY, base_url)
    sent = 0
    batch: list[dict[str, Any]] = []
    with csv_path.open(encoding="utf-8", newline="") as file:
        for row in csv.DictReader(file):
            batch.append({
                "id": f"{CAMPAIGN_ID}-{row['customer_id']}",
                "fromName": FROM_NAME,
                "toPhone": row["phone"],
                "messageType": "promo",
                "text": TEXT.format(first_name=row["first_name"]),
                "ttl": 86400,
            })
            if len(batch) == 1000:
                sent += len(messenger.send_bulk(batch))
                batch = []
    if batch:
        sent += len(messenger.send_bulk(batch))
    return sent


def prebuilt_bodies(csv_path: Path, batch: int) -> list[bytes]:
    """Every request body of the audience, serialised ahead of time."""
    import orjson

    bodies: list[bytes] = []
    messages: list[dict[str, object]] = []
    with csv_path.open(encoding="utf-8", newline="") as file:
        for row in csv.DictReader(file):
            messages.append({
                "id": f"{CAMPAIGN_ID}-{row['customer_id']}", "fromName": FROM_NAME,
                "toPhone": row["phone"], "messageType": "promo",
                "text": TEXT.format(first_name=row["first_name"]), "ttl": 86400,
            })
            if len(messages) == batch:
                bodies.append(orjson.dumps(messages))
                messages = []
    if messages:
        bodies.append(orjson.dumps(messages))
    return bodies


async def post_all(bodies: list[bytes], base_url: str, concurrency: int) -> int:
    """Post every body with ``concurrency`` workers on one session; count the answered ids."""
    import aiohttp
    import orjson

    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"Content-Type": "application/json", "X-Authorization-Key": API_KEY}
    answered = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal answered
        while not queue.empty():
            body = queue.get_nowait()
            async with session.post(f"{base_url}{ROUTE}", data=body, headers=headers) as resp:
                resp.raise_for_status()
                answered += len(orjson.loads(await resp.read()))

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return answered


def cpu_now() -> float:
    """User + system CPU seconds of this process so far (every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_child(variant: str, csv_path: Path, base_url: str, batch: int) -> None:
    """Run one client here; print its count, seconds and CPU seconds (both over the clocked
    part only) as one JSON line."""
    if variant == "seed":
        cpu, started = cpu_now(), time.perf_counter()
        sent = child_seed(csv_path, base_url, batch)
    else:
        bodies = prebuilt_bodies(csv_path, batch)
        cpu, started = cpu_now(), time.perf_counter()
        sent = asyncio.run(post_all(bodies, base_url, 4))
    seconds = time.perf_counter() - started
    print(json.dumps({"sent": sent, "seconds": seconds, "cpu": cpu_now() - cpu}))


# -- parent -------------------------------------------------------------------------------------


@dataclass
class Measured:
    """One client's numbers."""

    label: str
    sent: int
    seconds: float
    peak_mib: float
    received: int | None  # None: the sink (the sandbox) does not count
    notes: dict[str, float] = field(default_factory=dict)
    cpu: float = 0.0  # the client's user + system seconds over its clocked interval
    sink_cpu: float = 0.0  # the sink's, over the same client's turn
    server_cpu: float | None = None  # PostgreSQL's (every server process), ours on PG only

    @property
    def rate(self) -> float:
        """Recipients per second."""
        return self.sent / self.seconds

    def per_million(self, seconds: float | None) -> str:
        """CPU seconds per million recipients sent, as printed."""
        if seconds is None or not self.sent:
            return "-"
        return f"{seconds * 1_000_000 / self.sent:.2f}"


def sink_messages(sink: SinkProcess) -> int | None:
    """Messages the sink received so far (None when it cannot say)."""
    return sink.stats()["messages"] if sink.counts else None


def delta(after: int | None, before: int | None) -> int | None:
    """``after - before`` when both are known."""
    return None if after is None or before is None else after - before


def wait_rusage(process: subprocess.Popen[str]) -> tuple[int, float, float]:
    """Reap ``process`` with ``wait4``: its exit code, its own peak RSS in MiB and its user +
    system CPU seconds (its own, plus any children it waited for)."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def measure_client(
    variant: str, csv_path: Path, sink: SinkProcess, batch: int
) -> Measured:
    """One of the baseline clients in a fresh interpreter."""
    before = sink_messages(sink)
    sink_before = process_tree_cpu(sink.pid)
    command = [sys.executable, __file__, "--child", variant, "--csv", str(csv_path),
               "--url", sink.base_url, "--bare-batch", str(batch)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    output = process.stdout.read()
    code, peak, _ = wait_rusage(process)
    sink_cpu = process_tree_cpu(sink.pid) - sink_before
    if code != 0:
        raise SystemExit(f"{variant} client failed with exit code {code}")
    result = json.loads(output.strip().splitlines()[-1])
    received = delta(sink_messages(sink), before)
    return Measured(variant, result["sent"], result["seconds"], peak, received,
                    cpu=result["cpu"], sink_cpu=sink_cpu)


def measure_ours(
    folder: Path, sink: SinkProcess, run: int, server: DurablePostgres | None = None,
    lease: float | None = None,
) -> Measured:
    """`send FILE --now` as a subprocess, timed from spawn to exit; on SQLite, or on a fresh
    database of ``server`` when one is given (dropped afterwards)."""
    journal = "sqlite" if server is None else "pg"
    name = f"{journal}-{run}"
    database = None if server is None else server.create_database(f"bench_send_{run}")
    campaign = write_campaign(folder)
    config = write_config(folder, sink.base_url, name,
                          None if server is None else server.url(str(database)), lease)
    env = {**os.environ, "CASCADE_API_KEY": API_KEY}
    for variable in ("CASCADE_CONFIG", "CASCADE_JOURNAL_PASSWORD", "PGPASSFILE"):
        env.pop(variable, None)
    before = sink_messages(sink)
    sink_before = process_tree_cpu(sink.pid)
    server_before = None if server is None else server.cpu_seconds()
    spawned = time.time()
    started = time.perf_counter()
    out_path, err_path = folder / f"send-{name}.stdout", folder / f"send-{name}.stderr"
    with out_path.open("w") as out, err_path.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "scheduler", "send", str(campaign), "--now", "--config",
             str(config)],
            stdout=out, stderr=err, text=True, env=env,
        )
    phases = PhaseCpu(process.pid, folder / "logs" / f"delivery-{name}.jsonl")
    code, peak, cpu = wait_rusage(process)
    phases.stop()
    seconds = time.perf_counter() - started
    sink_cpu = process_tree_cpu(sink.pid) - sink_before
    server_cpu = None if server is None or server_before is None \
        else server.cpu_seconds() - server_before
    if code != 0:
        hint = ""
        if "interrupted" in err_path.read_text() + out_path.read_text():
            hint = ("\n(an `interrupted` send with no signal is the lease running out during "
                    "a long snapshot: see bench/README.md; --lease 60 avoids it)")
        raise SystemExit(f"ours/{journal} failed with exit code {code}:\n"
                         f"{out_path.read_text()}\n{err_path.read_text()}{hint}")
    received = delta(sink_messages(sink), before)
    if server is not None and database is not None:
        server.drop_database(database)  # ~0.4 GB a run; the next client gets a clean disk
    events = lifecycle(folder / "logs" / f"delivery-{name}.jsonl")
    sent = events["campaign_finished"]["counts"].get("sent", 0)
    started_at = parse_ts(events["campaign_started"]["timestamp"])
    finished_at = parse_ts(events["campaign_finished"]["timestamp"])
    notes = {
        "startup_and_snapshot_s": started_at - spawned,
        "sending_s": float(events["campaign_finished"]["duration_s"]),
        "shutdown_s": spawned + seconds - finished_at,
    }
    if phases.at_start is not None and phases.at_finish is not None:
        notes["startup_and_snapshot_cpu"] = phases.at_start
        notes["sending_cpu"] = phases.at_finish - phases.at_start
    notes.update({f"cpu: {part}": seconds for part, seconds in phases.parts.parts().items()})
    return Measured(f"ours/{journal}", sent, seconds, peak, received, notes, cpu=cpu,
                    sink_cpu=sink_cpu, server_cpu=server_cpu)


class PhaseCpu:
    """Samples a running `send`'s CPU seconds (every 20 ms, from /proc: the process and its
    children, so a streamed snapshot's reader counts) and notes them when its delivery log
    first shows ``campaign_started`` and ``campaign_finished``: the CPU of the startup (+ the
    snapshot, unless streamed) and of the sending phase, to ±20 ms each."""

    POLL = 0.02

    def __init__(self, pid: int, log: Path) -> None:
        self.pid, self.log = pid, log
        self.at_start: float | None = None
        self.at_finish: float | None = None
        self.parts = CpuParts(pid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    #: once the start is seen, only the log's last bytes are read for the finish: reading all
    #: of a 1M run's ~250 MB log as it grows took ~0.4 CPU s of the 2 cores the run is on
    TAIL = 1 << 16

    def _run(self) -> None:
        offset, pending = 0, b""
        while not self._done.is_set() and self.at_finish is None:
            if process_cpu(self.pid) is None:
                return
            cpu = process_tree_cpu(self.pid)
            self.parts.sample()
            try:
                with self.log.open("rb") as file:
                    if self.at_start is not None:  # campaign_finished comes last
                        end = file.seek(0, os.SEEK_END)
                        if end - offset > self.TAIL:
                            offset, pending = end - self.TAIL, b""
                    file.seek(offset)
                    data = file.read()
            except FileNotFoundError:
                data = b""
            offset += len(data)
            pending += data
            if self.at_start is None and b'"event":"campaign_started"' in pending:
                self.at_start = cpu
            if self.at_start is not None and b'"event":"campaign_finished"' in pending:
                self.at_finish = cpu
            pending = pending[pending.rfind(b"\n") + 1:]
            self._done.wait(self.POLL)

    def stop(self) -> None:
        """Stop sampling (the process has exited)."""
        self._done.set()
        self._thread.join()


def lifecycle(path: Path) -> dict[str, dict[str, Any]]:
    """The last campaign_started and campaign_finished events of the delivery log."""
    wanted = {b'"event":"campaign_started"', b'"event":"campaign_finished"'}
    found: dict[str, dict[str, Any]] = {}
    with path.open("rb") as file:
        for line in file:
            if any(marker in line for marker in wanted):
                event = json.loads(line)
                found[event["event"]] = event
    return found


def parse_ts(value: object) -> float:
    """A log timestamp (ISO 8601 UTC) as Unix time."""
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def report(runs: list[Measured], rows: int,
           turns: list[tuple[float, float]] | None = None) -> None:
    """The table, the ratios and the verdicts; with ``turns`` (PostgreSQL / SQLite of each
    turn), the PostgreSQL verdict is on their median."""
    print(f"{'client':<12}{'sent':>10}{'received':>11}{'seconds':>9}{'recipients/s':>14}"
          f"{'CPU s/M':>9}{'PG CPU s/M':>12}{'sink CPU s/M':>14}{'peak RSS MiB':>14}")
    for r in runs:
        received = "-" if r.received is None else f"{r.received:,}"
        print(f"{r.label:<12}{r.sent:>10,}{received:>11}{r.seconds:>9.2f}{r.rate:>14,.0f}"
              f"{r.per_million(r.cpu):>9}{r.per_million(r.server_cpu):>12}"
              f"{r.per_million(r.sink_cpu):>14}{r.peak_mib:>14.1f}")
    by = {r.label: r for r in runs}
    for r in runs:
        if r.sent != rows:
            print(f"WARNING: {r.label} got {r.sent:,} ids answered, not {rows:,}")
        if r.received is not None and r.received != rows:
            print(f"WARNING: the sink received {r.received:,} messages from {r.label}, "
                  f"not {rows:,}")
    verdicts: list[tuple[str, bool, str]] = []
    sending: dict[str, float] = {}
    for ours in (r for r in runs if r.label.startswith("ours")):
        split = ours.notes
        sending[ours.label] = rate = ours.sent / split["sending_s"]
        snapshot_cpu, sending_cpu = "", ""
        if "sending_cpu" in split:
            snapshot_cpu = f", {split['startup_and_snapshot_cpu']:.2f} CPU s"
            sending_cpu = f", CPU {ours.per_million(split['sending_cpu'])} s/M"
        print(f"{ours.label}, split: startup (+ snapshot unless streamed) "
              f"{split['startup_and_snapshot_s']:.2f} s"
              f"{snapshot_cpu}, sending {split['sending_s']:.2f} s ({rate:,.0f}/s{sending_cpu}), "
              f"shutdown {split['shutdown_s']:.2f} s")
        parts = {key[5:]: value for key, value in split.items() if key.startswith("cpu: ")}
        if parts:
            print(f"{ours.label}, CPU s/M by part (sampled every {PhaseCpu.POLL * 1000:.0f} ms): "
                  + ", ".join(f"{part} {ours.per_million(seconds)}"
                              for part, seconds in parts.items()))
    for ours in (r for r in runs if r.label.startswith("ours")):
        rate = sending[ours.label]
        if (limit := SENDING["requests_per_second"]) is not None and limit * 1000 < 1_000_000:
            share = ours.rate / (limit * 1000)
            how = ("concurrency auto" if SENDING["concurrency"] is None
                   else f"concurrency = {SENDING['concurrency']:g}")
            print(f"{ours.label} / the account limit ({limit * 1000:,.0f}/s, {how}, "
                  f"round trip {LATENCY['seconds']:g} s): {share:.2f} end to end, "
                  f"{rate / (limit * 1000):.2f} sending only")
            verdicts.append((f"{ours.label} >= 0.9 x the account limit ({how})", share >= 0.9,
                             f"{share:.2f} end to end"))
        mb = ours.peak_mib * 1.048576
        verdicts.append((f"{ours.label} peak RSS <= 150 MB", mb <= 150, f"{mb:.1f} MB"))
        if LATENCY["seconds"] == 0 and ours.sent:
            per_million = ours.cpu * 1_000_000 / ours.sent
            verdicts.append((f"{ours.label} CPU <= 8 s per million sent", per_million <= 8,
                             f"{per_million:.2f} s"))
        if "seed" in by:
            ratio = ours.rate / by["seed"].rate
            print(f"{ours.label} / seed: {ratio:.2f}x end to end, "
                  f"{rate / by['seed'].rate:.2f}x sending only")
            verdicts.append((f"{ours.label} >= 1.2 x seed", ratio >= 1.2,
                             f"{ratio:.2f}x end to end"))
        if "bare" in by:
            ratio = ours.rate / by["bare"].rate
            print(f"{ours.label} / bare: {ratio:.2f}x end to end, "
                  f"{rate / by['bare'].rate:.2f}x sending only")
            verdicts.append((f"{ours.label} >= 0.6 x bare", ratio >= 0.6,
                             f"{ratio:.2f}x end to end"))
    lite, pg = by.get("ours/sqlite"), by.get("ours/pg")
    if lite is not None and pg is not None:
        whole = pg.rate / lite.rate
        phase = sending[pg.label] / sending[lite.label]
        which = " (the runs above, maybe of different turns)" if turns and len(turns) > 1 else ""
        print(f"ours/pg / ours/sqlite{which}: {whole:.2f}x end to end, "
              f"{phase:.2f}x sending only; "
              f"CPU s/M ours {pg.per_million(pg.cpu)} vs {lite.per_million(lite.cpu)}, "
              f"ours + server {pg.per_million(pg.cpu + (pg.server_cpu or 0.0))} vs "
              f"{lite.per_million(lite.cpu)}")
        if turns and len(turns) > 1:
            print("PostgreSQL / SQLite per turn: " + ", ".join(
                f"{w:.2f}x ({p:.2f}x sending)" for w, p in turns))
            whole = statistics.median(w for w, _ in turns)
            phase = statistics.median(p for _, p in turns)
            print(f"median of the turns: {whole:.2f}x end to end, {phase:.2f}x sending only "
                  "(the verdict's)")
        verdicts.append(("PostgreSQL >= 0.8 x SQLite", whole >= 0.8, f"{whole:.2f}x end to end"))
        verdicts.append(("PostgreSQL >= 0.8 x SQLite, sending phase", phase >= 0.8,
                         f"{phase:.2f}x sending only"))
    for name, ok, value in verdicts:
        print(f"target {name}: {'meets' if ok else 'MISSES'} ({value})")


def journals_of(choice: str) -> list[str]:
    """The journals ``--journal`` asks ours to run on, in the order they take turns."""
    return ["sqlite", "postgres"] if choice == "both" else [choice]


def run_all(
    folder: Path, rows: int, only: list[str], bare_batch: int, sink_kind: str, repeat: int,
    journal: str = "sqlite", lease: float | None = None, stat: str = "median",
) -> None:
    """Generate the audience, start the sink (and PostgreSQL), run each client, compare."""
    started = time.perf_counter()
    csv_path = write_audience(folder, rows)
    sink_name = "bench/sink.py" if sink_kind == "minimal" else "cascade-scheduler sandbox"
    print(f"generated {rows:,} rows in {time.perf_counter() - started:.1f} s; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"sink: {sink_name} in its own process")
    server = None
    if "ours" in only and "postgres" in journals_of(journal):
        from pg_server import DurablePostgres

        server = DurablePostgres()
    try:
        if server is not None:
            server.start()
            print(f"journal: {server.describe()}; a fresh database per run "
                  "([journal] url), dropped after it")
        if "ours" in only and "sqlite" in journals_of(journal):
            print(f"journal: SQLite in {folder}, WAL, synchronous=FULL, a fresh file per run")
        if "ours" in only:
            print("ours' [journal] lease: " + ("the default (15 s)" if lease is None
                                               else f"{lease:g} s (--lease)"))
        runs = run_clients(folder, csv_path, only, bare_batch, sink_kind, repeat,
                           journals_of(journal), server, lease)
    finally:
        if server is not None:
            server.remove()
    chosen = pick(runs, stat)
    if repeat > 1:
        print(f"{'median' if stat == 'median' else 'best'} of {repeat} runs each "
              "(by recipients/s end to end):")
    report(chosen, rows, turn_ratios(runs))


def pick(runs: list[Measured], stat: str) -> list[Measured]:
    """Per client, the run with the median rate (of an even count, the lower middle one) or
    the best one, in the order the clients first ran."""
    by: dict[str, list[Measured]] = {}
    for measured in runs:
        by.setdefault(measured.label, []).append(measured)
    if stat == "best":
        return [max(group, key=lambda m: m.rate) for group in by.values()]
    return [sorted(group, key=lambda m: m.rate)[(len(group) - 1) // 2] for group in by.values()]


def turn_ratios(runs: list[Measured]) -> list[tuple[float, float]]:
    """PostgreSQL / SQLite of each turn (the two ran back to back): end to end, sending."""
    lite = [r for r in runs if r.label == "ours/sqlite"]
    pg = [r for r in runs if r.label == "ours/pg"]
    return [(p.rate / s.rate, s.notes["sending_s"] / p.notes["sending_s"])
            for s, p in zip(lite, pg, strict=False)]


def run_clients(
    folder: Path, csv_path: Path, only: list[str], bare_batch: int, sink_kind: str,
    repeat: int, journals: list[str], server: DurablePostgres | None,
    lease: float | None = None,
) -> list[Measured]:
    """Every client, ``repeat`` times in turn, against one sink."""
    runs: list[Measured] = []
    with SinkProcess(kind=sink_kind, latency=LATENCY["seconds"]) as sink:
        for run in range(repeat):
            for variant in only:
                for kind in journals if variant == "ours" else [""]:
                    if variant == "ours":
                        last = measure_ours(folder, sink, run,
                                            server if kind == "postgres" else None, lease)
                    else:
                        last = measure_client(variant, csv_path, sink, bare_batch)
                    runs.append(last)
                    print(f"  run {run + 1}, {last.label}: {last.rate:,.0f} recipients/s "
                          f"({last.seconds:.2f} s, CPU {last.per_million(last.cpu)} s/M)",
                          flush=True)
    return runs


def main() -> None:
    """Parse arguments; as the parent, run the whole comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--only", default="seed,bare,ours",
                        help="comma-separated clients to run, in order (seed, bare, ours)")
    parser.add_argument("--journal", choices=("sqlite", "postgres", "both"), default="sqlite",
                        help="ours' journal: SQLite, a local PostgreSQL server this script "
                        "starts (fsync on), or both in turn (prints PostgreSQL / SQLite)")
    parser.add_argument("--lease", type=float,
                        help="[journal] lease for ours, s (default: the config's, 15 s). "
                        "A send --now whose snapshot takes longer than ~0.47 x lease (7 s) "
                        "stops itself as 'interrupted' (see bench/README.md)")
    parser.add_argument("--bare-batch", type=int, default=1000, choices=(500, 1000))
    parser.add_argument("--sink", choices=("minimal", "sandbox"), default="minimal",
                        help="minimal: bench/sink.py (parses, answers ids); sandbox: "
                        "`cascade-scheduler sandbox` (also validates every message)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run every client this many times (interleaved); report the "
                        "median run of each (--stat)")
    parser.add_argument("--stat", choices=("median", "best"), default="median",
                        help="with --repeat: report each client's median run (default) or "
                        "its best")
    parser.add_argument("--keep", type=Path, help="write the files here and keep them")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="the minimal sink answers each send this many seconds late")
    parser.add_argument("--rate", type=float, default=1000,
                        help="ours' [sending] requests_per_second (default 1000: never binds)")
    parser.add_argument("--concurrency", default="4",
                        help="ours' [sending] concurrency, or 'auto' to leave the key out "
                        "(requests in flight follow the round trip)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.csv, args.url, args.bare_batch)
        return
    LATENCY["seconds"] = args.latency
    SENDING["requests_per_second"] = args.rate
    SENDING["concurrency"] = None if args.concurrency == "auto" else int(args.concurrency)
    only = [v.strip() for v in args.only.split(",") if v.strip()]
    unknown = set(only) - {"seed", "bare", "ours"}
    if unknown:
        parser.error(f"unknown client(s): {', '.join(sorted(unknown))}")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        as_installed(args.keep / "pycache")
        run_all(args.keep, args.rows, only, args.bare_batch, args.sink, args.repeat,
                args.journal, args.lease, args.stat)
        return
    with tempfile.TemporaryDirectory() as scratch:
        as_installed(Path(scratch) / "pycache")
        run_all(Path(scratch), args.rows, only, args.bare_batch, args.sink, args.repeat,
                args.journal, args.lease, args.stat)


if __name__ == "__main__":
    main()
