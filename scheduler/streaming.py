"""A snapshot streamed into the send: a child process reads the audience while this one sends.

`send --now` should not wait for a million rows to be read before its first request. The child
(`scheduler.stream_reader`) builds the same `Snapshot` a full prepare builds, on its own core (a
thread would share the GIL with the sending), and writes it to its stdout in chunks of encoded
batches and skipped rows; the parent appends each chunk to the journal (`Journal.extend`) and the
engine posts the batches as they land.

A caller that runs no other thread yet (`send --now`, once its campaign is loaded) *forks* its
reader (`scheduler.stream_reader.fork`): the child starts with the parent's imports done,
instead of a new interpreter's ~0.3 CPU s of them, and its pass 1 overlaps the rest of the
parent's start (aiohttp, the journal). Anyone else (the daemon runs threads: forking it could
leave the child stuck on a lock one of them held) starts a new interpreter (`Reader.start`).

A snapshot is deterministic: the same inputs give the same batches and skips in the same order.
So a stream cut short (a crash, a stop) resumes by reading again and dropping the batches and
skips the journal already holds (`Resume`); the caller checks the snapshot key first (same
inputs).

This module is the parent's side; the child's is `scheduler.stream_reader`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import pickle
import struct
import subprocess
import sys
import tempfile
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from scheduler.campaign import Campaign
    from scheduler.config import Config
    from scheduler.journal.base import EncodedBatch
    from scheduler.records import Skip

#: the parent's read buffer: a chunk comes in a few reads, not one per 64 KiB
_READ_LIMIT = 4 << 20
#: the child's stdout pipe: a chunk (~1.6 MB) passes in two reads instead of 25 (Linux's
#: default pipe is 64 KiB, and 1 MiB the most an unprivileged process may ask for)
PIPE_SIZE = 1 << 20
FRAME_HEADER = struct.Struct("!Q")  # each frame: its length, then a pickle

Chunk = tuple[list["EncodedBatch"], list["Skip"]]


class StreamFailed(Exception):
    """The audience could not be read to its end; the message says why (never a traceback)."""


class StreamKilled(StreamFailed):
    """The reader was killed by a signal (the OOM killer, an operator): nothing is wrong with
    the campaign, the stream resumes at the next start."""


@dataclass(frozen=True)
class StreamJob:
    """What the child reads: the campaign and where its inputs are."""

    campaign: Campaign
    suppression: Path | None
    batch_size: int

    @classmethod
    def of(cls, campaign: Campaign, config: Config) -> StreamJob:
        """``campaign``'s job under ``config``: the one its engine gives (`Engine.stream_job`)."""
        return cls(campaign, config.paths.suppression, config.sending.batch_size)


class Resume(NamedTuple):
    """Where the stream starts: the batches and skipped rows the journal holds already."""

    batches: int = 0
    skips: int = 0


def reader_errors() -> IO[bytes]:
    """A file for a reader child's stderr (a pipe nobody reads while it runs could fill and
    stop it); `Reader.close` closes it."""
    return tempfile.TemporaryFile()


class ReaderChild(Protocol):
    """What a `Reader` needs of its child: `subprocess.Popen`'s pipes and waits, which a
    forked child (`_Forked`) has too."""

    @property
    def stdin(self) -> IO[bytes] | None: ...

    @property
    def stdout(self) -> IO[bytes] | None: ...

    def poll(self) -> int | None: ...

    def wait(self) -> int: ...

    def kill(self) -> None: ...


class Reader:
    """One reader child: started (`start`), given its job (`begin`: pass 1 starts), then read
    (`chunks`, given the `Resume` point). `close` kills it unless it has ended: a reader that is
    started is closed, by `chunks` or by its owner."""

    def __init__(self, child: ReaderChild, errors: IO[bytes]) -> None:
        self._child, self._errors = child, errors
        self.job: StreamJob | None = None
        self.used = False  # an engine took it to read its job (`Engine.prepare`)

    @classmethod
    def start(cls, job: StreamJob | None = None) -> Reader:
        """Start the child, a new interpreter (``python -m scheduler.stream_reader``), and
        `begin` ``job`` if given; without one it waits for it. (`stream_reader.fork` starts
        one as a fork of this process instead.)"""
        errors = reader_errors()
        child = subprocess.Popen(
            [sys.executable, "-m", "scheduler.stream_reader"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
        )
        return cls.of(child, errors, job)

    @classmethod
    def of(cls, child: ReaderChild, errors: IO[bytes], job: StreamJob | None = None) -> Reader:
        """The reader of a started ``child`` whose stderr goes to ``errors``, given ``job``."""
        _widen(child.stdout)
        reader = cls(child, errors)
        if job is not None:
            reader.begin(job)
        return reader

    def begin(self, job: StreamJob) -> None:
        """Give the child its job: it checks the file and runs pass 1 while the caller goes on."""
        self.job = job
        self._tell(job)

    def _tell(self, message: object) -> None:
        assert self._child.stdin is not None
        # a child that died already says so in `chunks`
        with contextlib.suppress(BrokenPipeError):
            self._child.stdin.write(pickle.dumps(message))
            self._child.stdin.flush()

    async def chunks(self, resume: Resume) -> AsyncGenerator[Chunk, None]:
        """The new batches and skips after ``resume``, a chunk at a time; raises
        `StreamFailed` when the audience cannot be read to its end. A caller that stops early
        (a cancelled task, a closed generator) ends the child with `close`, as owner."""
        child = self._child
        assert child.stdin is not None and child.stdout is not None
        self._tell(resume)
        with contextlib.suppress(BrokenPipeError):
            child.stdin.close()
        loop = asyncio.get_running_loop()
        stdout = asyncio.StreamReader(limit=_READ_LIMIT, loop=loop)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stdout, loop=loop), child.stdout)
        finished = False
        try:
            while True:
                try:  # the child's end (a kill) may cut a frame anywhere: no frame, see below
                    header = await stdout.readexactly(FRAME_HEADER.size)
                    data = await stdout.readexactly(FRAME_HEADER.unpack(header)[0])
                except asyncio.IncompleteReadError:
                    break
                # our own child, on a pipe only the two of us hold: nothing untrusted
                frame = pickle.loads(data)  # noqa: S301
                if frame[0] == "error":
                    raise StreamFailed(frame[1])
                if frame[0] == "done":
                    finished = True
                    break
                yield frame[1], frame[2]
            if not finished:
                code = await asyncio.to_thread(child.wait)
                if code < 0:
                    raise StreamKilled(f"the audience reader was killed by signal {-code}")
                errors = self._stderr()
                last = errors.splitlines()[-1] if errors else f"exit status {code}"
                raise StreamFailed(f"the audience reader stopped before the end ({last})")
        finally:
            transport.close()

    @property
    def ended(self) -> bool:
        """The child has exited (or was killed)."""
        return self._child.poll() is not None

    def _stderr(self) -> str:
        self._errors.seek(0)
        return self._errors.read().decode(errors="replace").strip()

    def close(self) -> None:
        """Kill the child unless it has ended, and reap it (blocks for as long as that takes:
        from a coroutine, call it in a thread)."""
        if self._child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._child.kill()
        self._child.wait()
        for pipe in (self._child.stdin, self._child.stdout, self._errors):
            if pipe is not None:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()


def _widen(pipe: IO[bytes] | None) -> None:
    """Ask for a `PIPE_SIZE` pipe: each read of the parent's event loop then takes up to a
    megabyte, and the child rarely waits on a loop busy sending. Where the system says no (not
    Linux, a lower limit), the pipe stays as it is: slower, never wrong."""
    size = getattr(fcntl, "F_SETPIPE_SZ", None)
    if pipe is not None and size is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), size, PIPE_SIZE)


async def stream_chunks(
    job: StreamJob, resume: Resume | None = None,
) -> AsyncGenerator[Chunk, None]:
    """A fresh `Reader` for ``job``, read after ``resume`` (see `Reader.chunks`)."""
    reader = Reader.start(job)
    try:
        async for chunk in reader.chunks(resume or Resume()):
            yield chunk
    finally:
        await asyncio.to_thread(reader.close)
