"""A TCP proxy for partition tests: a daemon talks to PostgreSQL through it, and the test cuts it.

While it flows, it forwards bytes both ways. Cut, it forwards nothing, in either direction,
and closes nothing: every connection stays open (new ones are accepted and held too), so to
both ends the network has gone silent, as when a cable is pulled or a firewall drops packets,
not as when a peer says no. Healed, it forwards what it held and flows again.

It runs its own event loop in a thread, so a synchronous test (daemons are subprocesses) can
cut and heal it between its own steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
_CHUNK = 65_536


class TcpProxy:
    """Forward 127.0.0.1:``port`` (a free port, known once entered) to ``host``:``target``."""

    def __init__(self, host: str, target: int) -> None:
        self.host, self.target = host, target
        self.port = 0
        self.connections = 0  # accepted so far
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy",
                                        daemon=True)
        self._flowing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._call(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def url(self, postgres_url: str) -> str:
        """``postgres_url`` (on ``host``:``target``) through this proxy instead."""
        direct = f"{self.host}:{self.target}"
        assert direct in postgres_url, f"{postgres_url} is not on {direct}"
        return postgres_url.replace(direct, f"127.0.0.1:{self.port}")

    def cut(self) -> None:
        """Forward nothing from now on; hold every connection open."""
        self._call(self._set(flowing=False))

    def heal(self) -> None:
        """Forward again, what was held first."""
        self._call(self._set(flowing=True))

    # --- the event loop's side ---------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _set(self, *, flowing: bool) -> None:
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _start(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for writer in self._writers:
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                self.host, self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(upstream_writer)
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            pump = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy one direction; while cut, hold what was read (the rest waits in the kernel's
        buffers, acknowledged, as on a silent network). An end is passed on once flowing."""
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                data = await source.read(_CHUNK)
                await self._flowing.wait()
                if not data:
                    break
                sink.write(data)
                await sink.drain()
        sink.close()
