"""CPU per message of the send path's own work, step by step, without HTTP (SPEC §12).

    python bench/send_path_bench.py [--batches 100] [--repeat 5] [--size 1000]

`send_bench.py` times whole clients against a sink on a shared 2-core machine, where another
process on the second core moves CPU seconds by ±30%. This one runs the engine's per-batch
steps in one process, on stored batches and answers shaped as the sink's, and prints the
process CPU time of each step per message (best of ``--repeat`` passes):

- ``body``: decoding the stored request body (`outcomes.open_messages`);
- ``answer``: reading the API's answer (`cascade.parse_accepted`);
- ``match``: matching it to the batch's messages (`outcomes.Outcomes.accept`);
- ``journal``: marking the batch in flight and recording its outcomes in a SQLite journal
  (synchronous=FULL; a commit each, where the engine's group commit often shares one);
- ``log``: the delivery-log lines, masked phones, written (`Recorder.log_results`);
- ``brake``: the error brake's look at the outcomes.

It calls the engine's private steps directly (a probe, not an API): when they change shape,
change it with them. What it leaves out (aiohttp, the event loop, the journal's thread
hand-offs) is in `send_bench.py`'s figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import types
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from scheduler import outcomes as outcomes_module
from scheduler.brake import Brake
from scheduler.cascade import parse_accepted
from scheduler.delivery_log import DeliveryLog
from scheduler.journal.sqlite import SqliteConnection
from scheduler.metrics import Metrics
from scheduler.recorder import Recorder

STEPS = ("body", "answer", "match", "journal", "log", "brake")


def message(n: int) -> dict[str, Any]:
    """One stored message, as `send_bench.py`'s audience makes them."""
    return {"id": f"bench-send-C{n:08d}", "fromName": "YourBrand", "toPhone": f"+38050{n:07d}",
            "messageType": "promo", "text": "Hi Olena, up to 50% off: https://example.com/sale"}


def answer(body: bytes, first: int) -> bytes:
    """The sink's answer to ``body``: a messageId per message, in the request's order."""
    return orjson.dumps([
        {"messageId": f"00000000-0000-4000-8000-{first + i:012x}", "trackinId": m["id"]}
        for i, m in enumerate(orjson.loads(body))
    ])


def one_pass(connection: SqliteConnection, log: DeliveryLog, campaign: str, batches: int,
             size: int) -> dict[str, float]:
    """Send ``batches`` stored batches of ``size`` through the steps; CPU seconds per step."""
    now = datetime.now(UTC)
    connection.prepare(
        campaign_id=campaign, type="promo", file="/bench.toml", fingerprint="f", send_at=now,
        deadline=now + timedelta(days=1), skips=(),
        batches=([message(b * size + i) for i in range(size)] for b in range(batches)),
    )
    records = connection.open_batches(campaign, -1, batches)
    answers = [answer(record.body, record.seq * size) for record in records]
    recorder = Recorder(connection, log, Metrics(), None)  # type: ignore[arg-type]
    run = types.SimpleNamespace(campaign=types.SimpleNamespace(id=campaign, type="promo"),
                                route="standard", progressed=lambda count: None)
    brake = Brake(0.05, 500)
    spent = dict.fromkeys(STEPS, 0.0)
    clock = time.process_time
    for record, reply in zip(records, answers, strict=True):
        t0 = clock()
        messages = outcomes_module.open_messages(record)  # a probe: private steps
        t1 = clock()
        accepted = parse_accepted(reply)
        assert accepted is not None
        t2 = clock()
        outcomes = outcomes_module.Outcomes()
        left = outcomes.accept(messages, accepted.message_ids, 1)
        assert not left
        t3 = clock()
        with connection.transaction():
            connection.mark_in_flight(campaign, [record.seq])
        with connection.transaction():
            connection.record_results(campaign, record.seq, outcomes.results)
        t4 = clock()
        recorder.log_results(run, outcomes.results)  # type: ignore[arg-type]
        t5 = clock()
        brake.observe(outcomes.results)
        t6 = clock()
        for step, seconds in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5),
                                 strict=True):
            spent[step] += seconds
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        connection = SqliteConnection(folder / "journal.sqlite3")
        log = DeliveryLog(folder / "delivery.jsonl", phones="masked", secrets=["bench-key"])
        messages = args.batches * args.size
        best: dict[str, float] = {}
        for turn in range(args.repeat):
            spent = one_pass(connection, log, f"c{turn}", args.batches, args.size)
            for step, seconds in spent.items():
                best[step] = min(best.get(step, seconds), seconds)
        log.close()
        connection.close()
    print(f"{messages:,} messages a pass ({args.batches} batches of {args.size}), best of "
          f"{args.repeat} passes, CPU µs per message:")
    for step in STEPS:
        print(f"  {step:8s} {best[step] * 1e6 / messages:6.3f}")
    print(f"  {'total':8s} {sum(best.values()) * 1e6 / messages:6.3f}")


if __name__ == "__main__":
    main()
