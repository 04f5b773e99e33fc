"""The reader child of a streamed snapshot: ``python -m scheduler.stream_reader``, or a fork of
the sender (`fork`, for `send --now`).

It gets a `StreamJob` on stdin and starts at once: the file checks and pass 1 (the Bloom filters)
run while the parent opens its journal. Once the first batch is ready it reads the `Resume`
point (how much of the snapshot the journal holds already), then writes the snapshot's new
batches (encoded) and skipped rows to stdout as frames (`scheduler.streaming`): chunks of 1, 2,
4, … up to `CHUNK_MAX` batches, then "done" (or one "error" frame with a sentence).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import IO, BinaryIO

from scheduler.batching import Snapshot
from scheduler.errors import CampaignError
from scheduler.journal.base import EncodedBatch
from scheduler.journal.codec import encode_batch
from scheduler.records import Skip
from scheduler.streaming import FRAME_HEADER, Chunk, Reader, Resume, StreamJob, reader_errors
from scheduler.suppression import Suppression

#: batches per chunk: the first chunks are small (the first request waits for the first one),
#: then they double up to this (fewer, larger journal transactions; ~2.5 MB of bodies a chunk)
CHUNK_MAX = 16
#: how much nicer the child makes itself once its first chunk is out: it runs ahead of the
#: sending, which is the run's critical path on a busy machine (the sender, its journal, the
#: API's answers), so it takes the CPU the others leave (measured: ~6% off a 1M `send --now`)
NICENESS = 10


def chunks(job: StreamJob, resume_point: Callable[[], Resume]) -> Iterator[Chunk]:
    """The snapshot's new batches (encoded) and skips, a chunk at a time. ``resume_point``
    is asked once, when the first batch is ready (or the audience has none)."""
    suppression = Suppression.load(job.suppression)
    # this child runs no other thread: pass 1 may run in a forked helper (`scheduler.passes`)
    snapshot = Snapshot(job.campaign, suppression, job.batch_size, may_fork=True)
    resume: Resume | None = None
    batches: list[EncodedBatch] = []
    wanted, skips_seen = 1, 0

    def new_skips(after: Resume) -> list[Skip]:
        nonlocal skips_seen
        drained = snapshot.skips.drain()
        start = max(0, after.skips - skips_seen)
        skips_seen += len(drained)
        return drained[start:]

    for seq, batch in enumerate(snapshot.batches()):
        resume = resume or resume_point()
        if seq < resume.batches:
            continue
        batches.append(encode_batch(seq, batch))
        if len(batches) >= wanted:
            yield batches, new_skips(resume)
            batches, wanted = [], min(wanted * 2, CHUNK_MAX)
    skips = new_skips(resume or resume_point())
    if batches or skips:
        yield batches, skips


def _send(fd: int, frame: tuple[object, ...]) -> None:
    """Write one frame whole. A plain loop of `os.write`: a write to a pipe that a signal
    interrupts part way (SIGSTOP/SIGCONT, a profiler attaching) returns a short count, and
    `sys.stdout.buffer` was seen to lose bytes of a megabyte frame then."""
    data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(FRAME_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _step_back() -> None:
    """`NICENESS` more (the first batch went at the parent's priority; pass 1's helper, forked
    before it, keeps that priority too: the first batches wait for its suspects)."""
    with contextlib.suppress(OSError):
        os.nice(NICENESS)


def _resume_from(source: BinaryIO) -> Callable[[], Resume]:
    def read() -> Resume:
        resume: Resume = pickle.load(source)  # noqa: S301 (from the parent, see main)
        return resume

    return read


def main(source: BinaryIO | None = None, out: int | None = None) -> int:
    """The child: a `StreamJob` then a `Resume` on stdin (or ``source``), frames on stdout (or
    the descriptor ``out``): "chunk", "error" or "done". Its stdin closed before the `Resume`
    came: not wanted after all, it exits.

    Ctrl-C and systemd's stop reach the whole process group: the parent decides (it stops the
    stream, or lets it finish), so the child ignores them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    source = sys.stdin.buffer if source is None else source
    try:
        # our own parent, on a pipe only the two of us hold: nothing untrusted to unpickle
        job: StreamJob = pickle.load(source)  # noqa: S301
    except EOFError:
        return 0
    out = sys.stdout.fileno() if out is None else out
    try:
        try:
            for sent, (batches, skips) in enumerate(chunks(job, _resume_from(source))):
                _send(out, ("chunk", batches, skips))
                if sent == 0:
                    _step_back()
        except (CampaignError, OSError) as exc:
            _send(out, ("error", str(exc)))
            return 1
        except EOFError:
            return 0  # the parent did not want the stream after all
        _send(out, ("done",))
    except BrokenPipeError:
        return 1  # the parent stopped reading: it has gone, or it stopped the stream
    return 0


def fork(job: StreamJob) -> Reader:
    """A `Reader` of ``job`` whose child is a fork of this process, which must run no other
    thread (forking one that does may leave the child stuck on a lock another thread held):
    the caller says so, as for `scheduler.passes`' helpers. The child starts with this
    process's imports done, instead of a new interpreter's ~0.3 CPU s of them (`send --now`)."""
    errors = reader_errors()
    return Reader.of(_Forked.start(errors), errors, job)


class _Forked:
    """The reader child as a fork of this process, with the pipes and waits of
    `subprocess.Popen` (what `Reader` uses of it): the child runs `main` on them, its stderr in
    the reader's ``errors`` file, and leaves with ``os._exit``, never returning into the
    caller's code."""

    def __init__(self, pid: int, stdin: IO[bytes], stdout: IO[bytes]) -> None:
        self.pid, self._stdin, self._stdout = pid, stdin, stdout
        self._code: int | None = None
        self._reaping = threading.Lock()  # `close` and `chunks` may wait from two threads

    @property
    def stdin(self) -> IO[bytes]:
        return self._stdin

    @property
    def stdout(self) -> IO[bytes]:
        return self._stdout

    @classmethod
    def start(cls, errors: IO[bytes]) -> _Forked:
        """Fork the reader (this process runs no other thread: the caller's word)."""
        job_read, job_write = os.pipe()
        frames_read, frames_write = os.pipe()
        for stream in (sys.stdout, sys.stderr):  # nothing of ours is written twice
            with contextlib.suppress(AttributeError, OSError, ValueError):
                stream.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child; its work is seen through the pipes)
            os.close(job_write)  # or the child would never see its stdin end
            os.close(frames_read)
            _forked_child(job_read, frames_write, errors.fileno())
        os.close(job_read)
        os.close(frames_write)
        return cls(pid, os.fdopen(job_write, "wb"), os.fdopen(frames_read, "rb"))

    def poll(self) -> int | None:
        """The exit code (negative: the signal), or None while it runs (or while another
        thread waits for it: never blocks, as `subprocess.Popen.poll`)."""
        if not self._reaping.acquire(blocking=False):
            return self._code
        try:
            if self._code is None:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self._code = os.waitstatus_to_exitcode(status)
            return self._code
        finally:
            self._reaping.release()

    def wait(self) -> int:
        """Wait for the child to end; its exit code (negative: the signal)."""
        with self._reaping:
            if self._code is None:
                _, status = os.waitpid(self.pid, 0)
                self._code = os.waitstatus_to_exitcode(status)
            return self._code

    def kill(self) -> None:
        """SIGKILL (`Reader.close` reaps it)."""
        os.kill(self.pid, signal.SIGKILL)


def _forked_child(job_read: int, frames_write: int, errors: int) -> None:
    """The forked reader: its stderr is the errors file; it runs and exits without running
    the parent's exit handlers or flushing its buffers."""
    code = 1
    try:
        os.dup2(errors, 2)
        code = main(os.fdopen(job_read, "rb"), frames_write)
    except BaseException:  # noqa: BLE001 (anything: said on stderr, as a spawned child would)
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        os._exit(code)



if __name__ == "__main__":
    sys.exit(main())
