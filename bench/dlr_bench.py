"""Delivery reports at scale (SPEC §12): webhook ingestion of 1,000,000 reports, and `report`
of a 1,000,000-recipient campaign with statuses.

    python bench/dlr_bench.py [--messages 1000000] [--array 500] [--connections 4]
                              [--client aiohttp|light] [--ids random|sequential]

1. A SQLite journal holding one campaign of ``--messages`` sent messages (snapshot, outcomes
   and per-message index written through the journal's own interface, as the daemon does).
2. The daemon's webhook receiver (`scheduler.webhooks.WebhookServer`, with the journal, the
   delivery log and the metrics) in this process; ``--connections`` clients POST every
   message's final status in arrays of ``--array`` reports (``--array 1``: one object a
   request, as providers commonly push them), each on its own keep-alive connection: aiohttp's
   client in a process a connection, or ``--client light`` (HTTP/1.1 by hand on asyncio
   streams, the connections over 2 processes: several times less CPU, which matters as the
   clients share the receiver's cores). Measured: reports/s from the first POST to the last
   answer, the receiver's and the clients' CPU seconds per million reports, and the ratio to
   SPEC §12's target (10,000/s with one report a request, 20,000/s in arrays). Every answer
   must be 200 and every message final after it.
3. `cascade-scheduler report` (summary with the delivery part) and
   `report --status delivered --format csv` on that journal, as subprocesses: wall and CPU
   seconds, peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import orjson

from scheduler.delivery_log import DeliveryLog
from scheduler.dlr import Deliveries
from scheduler.journal import Result
from scheduler.journal.sqlite import SqliteJournal
from scheduler.metrics import Metrics
from scheduler.sandbox import CHANNELS
from scheduler.webhooks import WebhookServer

TOKEN = "bench-token"
CAMPAIGN = "big"
BATCH = 1000
#: SPEC §12 (v3): reports/s with one report per request (16 connections), and in arrays
TARGET_ONE, TARGET_ARRAYS = 10_000, 20_000


#: how message ids are made: "random" spreads them like the API's UUIDs (its documentation
#: shows random version-4 ones), so index and table pages are hit in no particular order;
#: "sequential" numbers them, the kindest case for every B-tree (the figures before 2026-11-27)
IDS = {"kind": "random"}


def message_id(n: int) -> str:
    """A UUID-shaped message id for message ``n``: random-looking but the same in every
    process (a multiplicative hash of ``n``), or numbered (``--ids sequential``)."""
    if IDS["kind"] == "sequential":
        return f"00000000-0000-4000-8000-{n:012x}"
    x = f"{n * 0x9E3779B97F4A7C15F39CC0605CEDC835 % (1 << 128):032x}"
    return f"{x[:8]}-{x[8:12]}-4{x[13:16]}-8{x[17:20]}-{x[20:]}"


def report(n: int) -> dict[str, object]:
    """Message ``n``'s final status as SMSBAT's webhook sends it (10% undeliverable)."""
    if n % 10 == 0:
        return {"messageId": message_id(n), "deliverystatus": "undeliverable", "cost": 0,
                "extendedStatuses": {"telegram": "undeliverable", "sms": "undeliverable"}}
    channel = CHANNELS["standard"][n % 5]
    return {"messageId": message_id(n), "deliverystatus": "delivered", "partscount": 1,
            "billAmount": 0.55, "billCurrency": "UAH", "timestamp": "2026-12-01T09:00:41Z",
            "extendedStatuses": {channel: "delivered"}}


async def build_journal(path: Path, messages: int) -> float:
    """The sent, indexed campaign; returns the seconds it took."""
    started = time.perf_counter()
    journal = SqliteJournal(path)
    await journal.start(writer=True)
    try:
        bodies = [[{"id": f"{CAMPAIGN}-{n}", "fromName": "Shop", "toPhone": f"+38050{n:07d}",
                    "messageType": "promo", "text": "Sale"}
                   for n in range(b, min(b + BATCH, messages))]
                  for b in range(0, messages, BATCH)]
        now = datetime.now(UTC)
        await journal.prepare(campaign_id=CAMPAIGN, type="promo", file="/c/big.toml",
                              fingerprint="f", send_at=now, deadline=now + timedelta(days=1),
                              batches=bodies, skips=[])
        await journal.set_state(CAMPAIGN, "running")
        for seq, body in enumerate(bodies):
            await journal.record_results(CAMPAIGN, seq, [
                Result(m["id"], "sent", message_id(int(m["id"].rsplit("-", 1)[1])), 1,
                       m["toPhone"]) for m in body])
        await journal.set_state(CAMPAIGN, "done")
        while await journal.index_messages(64, first_poll=86_400):
            pass
    finally:
        await journal.close()
    return time.perf_counter() - started


def post_all(url: str, numbers: list[int], array: int) -> int:
    """A client process: POST the reports of ``numbers`` in arrays; how many were not 200."""

    async def run() -> int:
        bad = 0
        async with aiohttp.ClientSession() as http:
            for start in range(0, len(numbers), array):
                data = orjson.dumps([report(n) for n in numbers[start:start + array]])
                async with http.post(url, data=data,
                                     headers={"Content-Type": "application/json"}) as answer:
                    bad += answer.status != 200
                    await answer.read()
        return bad

    return asyncio.run(run())


def post_light(url: str, shares: list[list[int]], array: int) -> int:
    """A client process of the light client: one keep-alive connection per share, HTTP/1.1
    written by hand on asyncio streams (~25 CPU µs a request where aiohttp's client takes
    ~200, so that on a 2-core machine the receiver, not the client sharing its cores, is what
    is measured); how many answers were not 200. A single report goes as an object."""
    host, _, rest = url.removeprefix("http://").partition("/")
    name, _, port = host.partition(":")
    head = f"POST /{rest} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"

    async def connection(numbers: list[int]) -> int:
        reader, writer = await asyncio.open_connection(name, int(port))
        bad = 0
        for start in range(0, len(numbers), array):
            chunk = numbers[start:start + array]
            data = orjson.dumps(report(chunk[0]) if array == 1 else [report(n) for n in chunk])
            writer.write(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
            answer = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            fields = {k.strip().lower(): v.strip()
                      for k, _, v in (line.partition(":") for line in answer[1:])}
            await reader.readexactly(int(fields["content-length"]))
            bad += answer[0].split()[1] != "200"
        writer.close()
        return bad

    async def run() -> int:
        return sum(await asyncio.gather(*map(connection, shares)))

    return asyncio.run(run())


#: processes of the light client (its connections spread over them)
LIGHT_PROCESSES = 2
CLIENTS = {"aiohttp": post_all, "light": post_light}


async def ingest(path: Path, log_path: Path, messages: int, array: int,
                 connections: int, client: str = "aiohttp") -> dict[str, float]:
    """Run the receiver here, the clients in processes; the figures."""
    journal = SqliteJournal(path)
    await journal.start(writer=True)
    log = DeliveryLog(log_path, phones="masked")
    port = free_port()
    deliveries = Deliveries(journal, log, Metrics())
    server = WebhookServer(deliveries, lambda: TOKEN, "127.0.0.1", port)
    await server.start()
    url = f"http://127.0.0.1:{port}/delivery-reports/{TOKEN}"
    shares = [list(range(i, messages, connections)) for i in range(connections)]
    post = CLIENTS[client]
    children = _children_cpu()
    cpu = time.process_time()
    started = time.perf_counter()
    try:
        pool = multiprocessing.Pool(connections)
        try:
            if post is post_light:  # the connections spread over a few processes
                work = [(url, shares[i::LIGHT_PROCESSES], array)
                        for i in range(min(LIGHT_PROCESSES, connections))]
            else:  # a process a connection
                work = [(url, share, array) for share in shares]
            pending = pool.starmap_async(post, work)
            bad = sum(await asyncio.to_thread(pending.get))
        finally:
            pool.close()
        await deliveries.flush()  # the journal knows every line is written
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
        await asyncio.to_thread(pool.join)
        children = _children_cpu() - children
        counts = await journal.delivery_counts(CAMPAIGN)
    finally:
        await server.stop()
        await journal.close()
        log.close()
    final = sum(n for s, n in counts.statuses.items() if s != "awaiting")
    if bad or final != messages:
        raise SystemExit(f"ingestion failed: {bad} answers not 200, {final} of {messages} final")
    return {"wall_s": wall, "reports_per_s": messages / wall,
            "receiver_cpu_s_per_million": cpu / messages * 1e6,
            "client_cpu_s_per_million": children / messages * 1e6}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


#: runs the command given and prints its CPU seconds and peak RSS (KB) as JSON: measured from
#: a small parent, since a child forked from this big process starts with its pages
_MEASURE = (
    "import json, resource, subprocess, sys\n"
    "subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, check=True)\n"
    "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(json.dumps([u.ru_utime + u.ru_stime, u.ru_maxrss]))\n"
)


def run_report(config: Path, *args: str) -> dict[str, float]:
    """`cascade-scheduler report ARGS` to /dev/null: wall and CPU seconds, peak RSS."""
    started = time.perf_counter()
    measured = subprocess.run(
        [sys.executable, "-c", _MEASURE, sys.executable, "-m", "scheduler", "report",
         "--config", str(config), *args], capture_output=True, check=True, text=True)
    wall = time.perf_counter() - started
    cpu, rss_kb = orjson.loads(measured.stdout)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss_kb / 1024}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    """Build, ingest, report; print the figures as JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--array", type=int, default=500, help="reports per POST")
    parser.add_argument("--connections", type=int, default=4, help="client processes")
    parser.add_argument("--client", choices=tuple(CLIENTS), default="aiohttp",
                        help="the clients: aiohttp's client, a process a connection (as an "
                             "operator pushes them), or a light one: HTTP/1.1 by hand on asyncio "
                             "streams, "
                             f"the connections spread over {LIGHT_PROCESSES} processes (~8x "
                             "less CPU a request)")
    parser.add_argument("--ids", choices=("random", "sequential"), default="random",
                        help="message ids like the API's random UUIDs, or numbered in order")
    args = parser.parse_args()
    IDS["kind"] = args.ids
    with tempfile.TemporaryDirectory(prefix="dlr-bench-") as folder:
        root = Path(folder)
        (root / "campaigns").mkdir()
        journal = root / "state" / "journal.sqlite3"
        config = root / "config.toml"
        config.write_text('[paths]\nstate = "state/journal.sqlite3"\n'
                          '[delivery_reports]\npoll = true\n')
        built = asyncio.run(build_journal(journal, args.messages))
        print(orjson.dumps({"step": "journal", "messages": args.messages, "ids": args.ids,
                            "seconds": round(built, 1)}).decode(), flush=True)
        figures = asyncio.run(ingest(journal, root / "delivery.jsonl", args.messages,
                                     args.array, args.connections, args.client))
        target = TARGET_ONE if args.array == 1 else TARGET_ARRAYS
        print(orjson.dumps({"step": "webhook ingestion", "array": args.array,
                            "connections": args.connections, "client": args.client,
                            **{k: round(v, 2) for k, v in figures.items()},
                            "target_per_s": target,
                            "vs_target": round(figures["reports_per_s"] / target, 2)}).decode(),
              flush=True)
        for label, extra in (("report", ()), ("report --status delivered --format csv",
                                              ("--status", "delivered", "--format", "csv"))):
            timing = run_report(config, *extra)
            print(orjson.dumps({"step": label, **{k: round(v, 2) for k, v in timing.items()}})
                  .decode(), flush=True)
        print(orjson.dumps({"step": "machine", "cpus": os.cpu_count()}).decode())


if __name__ == "__main__":
    main()
