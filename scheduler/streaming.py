"""A snapshot streamed into the send: a child process reads the audience while this one sends.

`send --now` should not wait for a million rows to be read before its first request. The child
(``python -m scheduler.streaming``) builds the same `Snapshot` a full prepare builds, on its own
core (a thread would share the GIL with the sending), and writes it to its stdout in chunks of
encoded batches and skipped rows; the parent appends each chunk to the journal
(`Journal.extend`) and the engine posts the batches as they land.

A snapshot is deterministic: the same inputs give the same batches and skips in the same order.
So a stream cut short (a crash, a stop) resumes by reading again and dropping the batches and
skips the journal already holds; the caller checks the snapshot key first (same inputs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import struct
import sys
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from pathlib import Path

from scheduler.audience import Skip, Suppression
from scheduler.batching import Snapshot
from scheduler.campaign import Campaign
from scheduler.errors import CampaignError
from scheduler.journal.base import EncodedBatch
from scheduler.journal.codec import encode_batch

#: batches per chunk: the first chunks are small (the first request waits for the first one),
#: then they double up to this (fewer, larger journal transactions; ~2.5 MB of bodies a chunk)
CHUNK_MAX = 16
#: the parent's read buffer: a chunk comes in a few reads, not one per 64 KiB
_READ_LIMIT = 4 << 20
_HEADER = struct.Struct("!Q")  # each frame: its length, then a pickle

Chunk = tuple[list[EncodedBatch], list[Skip]]


class StreamFailed(Exception):
    """The audience could not be read to its end; the message says why (never a traceback)."""


class StreamKilled(StreamFailed):
    """The reader was killed by a signal (the OOM killer, an operator): nothing is wrong with
    the campaign, the stream resumes at the next start."""


@dataclass(frozen=True)
class StreamJob:
    """What the child reads: the campaign, where its inputs are, and where to resume."""

    campaign: Campaign
    suppression: Path | None
    batch_size: int
    after_batches: int = 0  # batches the journal holds already (a resumed stream)
    after_skips: int = 0  # skipped rows it holds already


async def stream_chunks(job: StreamJob) -> AsyncGenerator[Chunk, None]:
    """Run the child and yield its chunks; raises `StreamFailed` when it cannot finish.

    The child is killed when the caller stops early (a cancelled task, a closed generator)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scheduler.streaming",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, limit=_READ_LIMIT,
    )
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    finished = False
    try:
        child.stdin.write(pickle.dumps(job))
        await child.stdin.drain()
        child.stdin.close()
        while True:
            try:  # the child's end (a kill) may cut a frame anywhere: no frame, see below
                header = await child.stdout.readexactly(_HEADER.size)
                data = await child.stdout.readexactly(_HEADER.unpack(header)[0])
            except asyncio.IncompleteReadError:
                break
            # our own child, on a pipe only the two of us hold: nothing untrusted to unpickle
            frame = pickle.loads(data)  # noqa: S301
            if frame[0] == "error":
                raise StreamFailed(frame[1])
            if frame[0] == "done":
                finished = True
                break
            yield frame[1], frame[2]
        if not finished:
            errors = (await child.stderr.read()).decode(errors="replace").strip()
            code = await child.wait()
            if code < 0:
                raise StreamKilled(f"the audience reader was killed by signal {-code}")
            last = errors.splitlines()[-1] if errors else f"exit status {code}"
            raise StreamFailed(f"the audience reader stopped before the end ({last})")
    finally:
        if child.returncode is None:
            if not finished:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
            await child.wait()


def _chunks(job: StreamJob) -> Iterator[Chunk]:
    """The snapshot's new batches (encoded) and skips, a chunk at a time."""
    suppression = Suppression.load(job.suppression)
    snapshot = Snapshot(job.campaign, suppression, job.batch_size)
    batches: list[EncodedBatch] = []
    wanted, skips_seen = 1, 0

    def new_skips() -> list[Skip]:
        nonlocal skips_seen
        drained = snapshot.skips.drain()
        start = max(0, job.after_skips - skips_seen)
        skips_seen += len(drained)
        return drained[start:]

    for seq, batch in enumerate(snapshot.batches()):
        if seq < job.after_batches:
            continue
        batches.append(encode_batch(seq, batch))
        if len(batches) >= wanted:
            yield batches, new_skips()
            batches, wanted = [], min(wanted * 2, CHUNK_MAX)
    skips = new_skips()
    if batches or skips:
        yield batches, skips


def _send(fd: int, frame: tuple[object, ...]) -> None:
    """Write one frame whole. A plain loop of `os.write`: a write to a pipe that a signal
    interrupts part way (SIGSTOP/SIGCONT, a profiler attaching) returns a short count, and
    `sys.stdout.buffer` was seen to lose bytes of a megabyte frame then."""
    data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def main() -> int:
    """The child: a `StreamJob` on stdin, frames on stdout ("chunk", "error" or "done").

    Ctrl-C and systemd's stop reach the whole process group: the parent decides (it stops the
    stream, or lets it finish), so the child ignores them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    job: StreamJob = pickle.load(sys.stdin.buffer)  # noqa: S301 (from the parent, see above)
    out = sys.stdout.fileno()
    try:
        try:
            for batches, skips in _chunks(job):
                _send(out, ("chunk", batches, skips))
        except (CampaignError, OSError) as exc:
            _send(out, ("error", str(exc)))
            return 1
        _send(out, ("done",))
    except BrokenPipeError:
        return 1  # the parent stopped reading: it has gone, or it stopped the stream
    return 0


if __name__ == "__main__":
    sys.exit(main())
