"""Delivery reports at scale (SPEC §12): webhook ingestion of 1,000,000 reports, and `report`
of a 1,000,000-recipient campaign with statuses.

    python bench/dlr_bench.py [--messages 1000000] [--array 500] [--connections 4]
                              [--ids random|sequential]

1. A SQLite journal holding one campaign of ``--messages`` sent messages (snapshot, outcomes
   and per-message index written through the journal's own interface, as the daemon does).
2. The daemon's webhook receiver (`scheduler.webhooks.WebhookServer`, with the journal, the
   delivery log and the metrics) in this process; ``--connections`` client processes POST
   every message's final status in arrays of ``--array`` reports, as SMSBAT's webhook may.
   Measured: reports/s from the first POST to the last answer, and the receiver's CPU
   seconds per million reports. Every answer must be 200 and every message final after it.
3. `cascade-scheduler report` (summary with the delivery part) and
   `report --status delivered --format csv` on that journal, as subprocesses: wall and CPU
   seconds, peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
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


async def ingest(path: Path, log_path: Path, messages: int, array: int,
                 connections: int) -> dict[str, float]:
    """Run the receiver here, the clients in processes; the figures."""
    journal = SqliteJournal(path)
    await journal.start(writer=True)
    log = DeliveryLog(log_path, phones="masked")
    port = _free_port()
    deliveries = Deliveries(journal, log, Metrics())
    server = WebhookServer(deliveries, lambda: TOKEN, "127.0.0.1", port)
    await server.start()
    url = f"http://127.0.0.1:{port}/delivery-reports/{TOKEN}"
    shares = [list(range(i, messages, connections)) for i in range(connections)]
    cpu = time.process_time()
    started = time.perf_counter()
    try:
        with multiprocessing.Pool(connections) as pool:
            pending = pool.starmap_async(post_all, [(url, share, array) for share in shares])
            bad = sum(await asyncio.to_thread(pending.get))
        await deliveries.flush()  # the journal knows every line is written
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu
        counts = await journal.delivery_counts(CAMPAIGN)
    finally:
        await server.stop()
        await journal.close()
        log.close()
    final = sum(n for s, n in counts.statuses.items() if s != "awaiting")
    if bad or final != messages:
        raise SystemExit(f"ingestion failed: {bad} answers not 200, {final} of {messages} final")
    return {"wall_s": wall, "reports_per_s": messages / wall,
            "receiver_cpu_s_per_million": cpu / messages * 1e6}


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


def _free_port() -> int:
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
                                     args.array, args.connections))
        print(orjson.dumps({"step": "webhook ingestion", "array": args.array,
                            "connections": args.connections,
                            **{k: round(v, 2) for k, v in figures.items()}}).decode(),
              flush=True)
        for label, extra in (("report", ()), ("report --status delivered --format csv",
                                              ("--status", "delivered", "--format", "csv"))):
            timing = run_report(config, *extra)
            print(orjson.dumps({"step": label, **{k: round(v, 2) for k, v in timing.items()}})
                  .decode(), flush=True)
        print(orjson.dumps({"step": "machine", "cpus": os.cpu_count()}).decode())


if __name__ == "__main__":
    main()
