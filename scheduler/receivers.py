"""Webhook receiver processes: the HTTP of delivery reports on more than one core.

One process answers ~10,000 HTTP requests a second at most, less with the journal's work
beside it; providers push one report per request. With ``[delivery_reports] receivers = N``
(N ≥ 2) the daemon binds the webhook's port and starts N processes
(``python -m scheduler.receivers``) that accept on that one socket. A receiver only speaks
HTTP: it hands each request's token and body to the daemon over its own Unix socket pair, the
requests of one event-loop turn in one frame, and answers each request with what the daemon
sends back. The daemon (`WebhookServer.answer`) checks the token, parses, journals (durable
before it answers: a 200 means what it means with one process) and counts, as it does for the
requests it takes itself. A receiver that dies is started again (a second later); its requests
in flight get no answer and are retried by the sender; reports are idempotent. A receiver
whose daemon is gone (its socket pair closes) exits at once.

Frames, both ways: a 4-byte big-endian length, then a pickle of ``(frame id, items)``: items
are ``(token, body)`` pairs to the daemon, ``(status, body)`` answers back, in the same order.
Pickle is safe here: both ends are this program, over a socket pair no one else holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from aiohttp import web

from scheduler.oplog import get_logger
from scheduler.webhooks import Answer, Posted, low_level_server, posted, read_body, response

_HEADER: Final = struct.Struct(">I")
#: seconds before a receiver that died is started again
RESTART_AFTER: Final = 1.0
#: seconds a stopping receiver gets to answer the requests it holds before it is killed
STOP_TIMEOUT: Final = 10.0

_INTERNAL: Final = b'{"error":{"code":"INTERNAL","message":"the receiver failed"}}'
Answering = Callable[[Sequence[Posted]], Awaitable[list[Answer]]]


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, list[object]] | None:
    """The next frame, or None at the end of the stream."""
    try:
        size = _HEADER.unpack(await reader.readexactly(_HEADER.size))[0]
        frame: tuple[int, list[object]] = pickle.loads(  # noqa: S301 (our own process)
            await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        return None
    return frame


def _frame(frame_id: int, items: Sequence[object]) -> bytes:
    data = pickle.dumps((frame_id, items), protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


# --------------------------------------------------------------------------------------------
# the daemon's side


class Receivers:
    """``count`` receiver processes taking webhook requests on ``host:port``; ``answer`` is
    the daemon's (`WebhookServer.answer`)."""

    def __init__(self, answer: Answering, host: str, port: int, count: int) -> None:
        self._answer = answer
        self.host, self.port = host, port
        self.count = count
        self._listening: socket.socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._processes: list[asyncio.subprocess.Process | None] = [None] * count
        self._stopping = False
        self.started = 0  # processes started, restarts included
        self._oplog = get_logger("webhooks")

    @property
    def pids(self) -> list[int]:
        """The running receivers' process ids."""
        return [p.pid for p in self._processes if p is not None and p.returncode is None]

    async def start(self) -> None:
        """Bind the port (in use: OSError) and start the receivers; they accept on it."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listening = socket.create_server((self.host, self.port), family=family, backlog=1024)
        listening.setblocking(False)
        self._listening = listening
        for slot in range(self.count):
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._tasks.append(asyncio.create_task(self._keep(slot, ready)))
            await ready

    async def stop(self) -> None:
        """Ask every receiver to stop (each answers what it holds first), then close the port."""
        self._stopping = True
        for process in self._processes:
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for process in self._processes:
            if process is None:
                continue
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._listening is not None:
            self._listening.close()
            self._listening = None

    async def _keep(self, slot: int, ready: asyncio.Future[None]) -> None:
        """Run receiver ``slot``, and again whenever it dies, until the daemon stops."""
        assert self._listening is not None
        while not self._stopping:
            ours, theirs = socket.socketpair()
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "scheduler.receivers",
                    str(self._listening.fileno()), str(theirs.fileno()),
                    pass_fds=(self._listening.fileno(), theirs.fileno()),
                    stdin=asyncio.subprocess.DEVNULL)
            except OSError as exc:
                ours.close()
                if not ready.done():
                    ready.set_exception(exc)
                    return
                self._oplog.error("webhook_receiver_not_started", error=str(exc))
                await asyncio.sleep(RESTART_AFTER)
                continue
            finally:
                theirs.close()
            self._processes[slot] = process
            self.started += 1
            if not ready.done():
                ready.set_result(None)
            await self._serve(ours)
            code = await process.wait()
            if not self._stopping:
                self._oplog.error("webhook_receiver_died", pid=process.pid, exit_code=code,
                                  restart_in=RESTART_AFTER)
                await asyncio.sleep(RESTART_AFTER)

    async def _serve(self, ours: socket.socket) -> None:
        """Answer one receiver's frames until its socket pair closes."""
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        pending: set[asyncio.Task[None]] = set()

        async def one(frame_id: int, items: list[Posted]) -> None:
            try:
                answers = await self._answer(items)
            # the receiver's requests must get an answer (aiohttp's own would be a 500)
            except Exception as exc:  # noqa: BLE001
                self._oplog.error("webhook_failed", requests=len(items),
                                  error=f"{type(exc).__name__}: {exc}")
                answers = [(500, _INTERNAL)] * len(items)
            if not writer.is_closing():
                writer.write(_frame(frame_id, answers))

        try:
            while (frame := await _read_frame(reader)) is not None:
                task = asyncio.create_task(one(frame[0], frame[1]))  # type: ignore[arg-type]
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            writer.close()
            for task in pending:
                task.cancel()


# --------------------------------------------------------------------------------------------
# a receiver process


class _Relay:
    """A receiver's link to its daemon: the requests of one loop turn go in one frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._next_id = 0
        self._batch: list[Posted] = []
        self._waiting: list[asyncio.Future[Answer]] = []
        self._frames: dict[int, list[asyncio.Future[Answer]]] = {}

    def ask(self, token: str, body: bytes | None) -> asyncio.Future[Answer]:
        """The daemon's answer to one request, once it comes."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        if not self._batch:
            loop.call_soon(self._send)
        self._batch.append((token, body))
        self._waiting.append(future)
        return future

    def _send(self) -> None:
        batch, self._batch = self._batch, []
        waiting, self._waiting = self._waiting, []
        self._next_id += 1
        self._frames[self._next_id] = waiting
        self._writer.write(_frame(self._next_id, batch))

    async def listen(self) -> None:
        """Hand the daemon's answers to their requests; return when the daemon is gone."""
        while (frame := await _read_frame(self._reader)) is not None:
            frame_id, answers = frame
            for future, answer in zip(self._frames.pop(frame_id), answers, strict=True):
                if not future.done():
                    future.set_result(answer)  # type: ignore[arg-type]


async def _receive(listening: int, link: int) -> None:
    """Take webhook requests on the inherited socket ``listening``, hand them over ``link``;
    until SIGTERM (answer what is held, then exit) or the daemon is gone (exit at once)."""
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=link))
    relay = _Relay(reader, writer)

    async def handle(request: web.BaseRequest) -> web.Response:
        token = posted(request)
        if token is None:
            return response((404, b'{"error":{"code":"NOT_FOUND","message":"No such endpoint"}}'))
        body = await read_body(request)
        return response(await relay.ask(token, body))

    runner = web.ServerRunner(low_level_server(handle), access_log=None, handle_signals=False,
                              shutdown_timeout=STOP_TIMEOUT)
    await runner.setup()
    sock = socket.socket(fileno=listening)
    await web.SockSite(runner, sock).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    daemon_gone = asyncio.create_task(relay.listen())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait((daemon_gone, stopping), return_when=asyncio.FIRST_COMPLETED)
    if daemon_gone.done():
        os._exit(0)  # nothing held can be answered now: the sender retries
    await runner.cleanup()  # stops accepting, answers what it holds (the daemon still listens)
    writer.close()


def main() -> None:
    """``python -m scheduler.receivers LISTENING_FD LINK_FD`` (the daemon starts it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C at the terminal is the daemon's
    asyncio.run(_receive(int(sys.argv[1]), int(sys.argv[2])))


if __name__ == "__main__":
    main()
