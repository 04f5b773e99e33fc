"""A minimal Cascade API sink for the benchmarks, run in its own process.

    python bench/sink.py [--port 0] [--record FILE] [--latency SECONDS]

It answers ``POST /api/CascadeMessage/send_message[/tg-viber]/async`` the way the API does on
success: it parses the JSON body and returns ``[{"messageId", "trackinId"}]`` for every message,
matched by id. It validates nothing, so it costs less per message than the sandbox and the client
under test stays the bottleneck. ``GET /stats`` returns the request and message counters (and
flushes the record file); ``GET /bat/message/{id}`` answers every status poll "processing".
With ``--record`` it appends one JSON line per request: ``t`` (Unix
time when the handler was entered, before the body was read), ``n`` (messages), ``first`` and
``last`` (tracking ids); the fire-lag benchmark reads it. With ``--latency`` every send is
answered that many seconds after it came (a real API's round trip, 50-200 ms), without holding
up the others.

`SinkProcess` starts the script (or, with ``kind="sandbox"``, ``cascade-scheduler sandbox``, which
also validates every message) as a subprocess and stops it; both benchmarks use it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

import orjson
from aiohttp import web

ROUTES = (
    "/api/CascadeMessage/send_message/async",
    "/api/CascadeMessage/send_message/tg-viber/async",
)
READY_PREFIX = "sink listening on "
SANDBOX_READY_PREFIX = "sandbox listening on "


class Counters:
    """What the sink has received so far, and where it records each request."""

    def __init__(self, record: IO[bytes] | None) -> None:
        self.requests = 0
        self.messages = 0
        self.status_requests = 0
        self.record = record
        self._serial = 0

    def message_ids(self, count: int) -> list[str]:
        """``count`` distinct UUID-shaped ids (the sink's own serial number, not random)."""
        start = self._serial
        self._serial += count
        return [f"00000000-0000-4000-8000-{n:012x}" for n in range(start, start + count)]


async def handle_send(request: web.Request) -> web.Response:
    """Answer a batch: one ``{"messageId", "trackinId"}`` per message, by tracking id."""
    entered = time.time()
    counters: Counters = request.app["counters"]
    messages: list[dict[str, Any]] = orjson.loads(await request.read())
    ids = counters.message_ids(len(messages))
    answer = [
        {"messageId": mid, "trackinId": m["id"]} for m, mid in zip(messages, ids, strict=True)
    ]
    if (latency := request.app["latency"]) > 0:
        await asyncio.sleep(latency)
    counters.requests += 1
    counters.messages += len(messages)
    if counters.record is not None and messages:
        line = {"t": entered, "n": len(messages), "first": messages[0]["id"],
                "last": messages[-1]["id"]}
        counters.record.write(orjson.dumps(line) + b"\n")
    return web.Response(body=orjson.dumps(answer), content_type="application/json")


async def handle_status(request: web.Request) -> web.Response:
    """SMSBAT's status API for any message: still ``processing`` (so it stays to be polled)."""
    counters: Counters = request.app["counters"]
    counters.status_requests += 1
    body = {"messageId": request.match_info["message_id"], "deliverystatus": "processing"}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def handle_stats(request: web.Request) -> web.Response:
    """The counters so far; flushes the record file so a reader sees every request."""
    counters: Counters = request.app["counters"]
    if counters.record is not None:
        counters.record.flush()
    body = {"requests": counters.requests, "messages": counters.messages,
            "status_requests": counters.status_requests}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def serve(port: int, record: Path | None, latency: float = 0.0) -> None:
    """Listen on 127.0.0.1:``port`` until SIGTERM/SIGINT; print the URL when ready."""
    handle = record.open("ab") if record is not None else None
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app["counters"] = Counters(handle)
    app["latency"] = latency
    for route in ROUTES:
        app.router.add_post(route, handle_send)
    app.router.add_get("/stats", handle_stats)
    app.router.add_get("/bat/message/{message_id}", handle_status)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    bound = runner.addresses[0][1]
    print(f"{READY_PREFIX}http://127.0.0.1:{bound}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if handle is not None:
            handle.close()


class SinkProcess:
    """The sink in a child process: ``with SinkProcess(record) as sink: sink.base_url``.

    ``kind="sandbox"`` runs the project's sandbox instead (no faults); it has no ``/stats``.
    """

    def __init__(self, record: Path | None = None, kind: str = "minimal",
                 latency: float = 0.0) -> None:
        self.record = record
        self.latency = latency
        self.kind = kind
        self.base_url = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> SinkProcess:
        if self.kind == "sandbox":
            command = [sys.executable, "-m", "scheduler", "sandbox", "--port", "0"]
            prefix = SANDBOX_READY_PREFIX
        else:
            command = [sys.executable, __file__, "--port", "0"]
            prefix = READY_PREFIX
        if self.record is not None:
            command += ["--record", str(self.record)]
        if self.latency:
            command += ["--latency", str(self.latency)]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line.startswith(prefix):
            self._process.kill()
            raise RuntimeError(f"the sink did not start: {line!r}")
        self.base_url = line[len(prefix):].split()[0]
        return self

    @property
    def counts(self) -> bool:
        """True when the sink can say how many messages it received."""
        return self.kind != "sandbox"

    def stats(self) -> dict[str, int]:
        """``{"requests": n, "messages": n}`` received so far."""
        with urllib.request.urlopen(f"{self.base_url}/stats", timeout=10) as answer:
            result: dict[str, int] = json.loads(answer.read())
        return result

    @property
    def pid(self) -> int:
        """The sink's process id."""
        assert self._process is not None
        return self._process.pid

    def __exit__(self, *_: object) -> None:
        if self._process is None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()


def main() -> None:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--record", type=Path)
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds before each send is answered (default 0)")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.record, args.latency))


if __name__ == "__main__":
    main()
