"""CPU seconds of running processes from /proc, for the benchmarks (Linux). Not a benchmark.

`os.wait4` gives a child's CPU once it has exited; a server that keeps running (the sink,
PostgreSQL) is measured by reading ``/proc/PID/stat`` before and after a client's turn.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (None: the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text("ascii", "replace")
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, every thread) of ``pid`` alone so far; None once it is gone."""
    own = _stat(pid)
    return None if own is None else sum(int(v) for v in own[11:13]) / _TICKS


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid``, of its reaped children, and of its live
    children (one level: enough for PostgreSQL's postmaster and for the sink)."""
    own = _stat(pid)
    if own is None:
        return 0.0
    # after the name: [0] state, [1] ppid, ..., [11] utime, [12] stime, [13] cutime, [14] cstime
    ticks = sum(int(v) for v in own[11:15])
    for child in _children(pid):
        fields = _stat(child)
        if fields is not None:
            ticks += sum(int(v) for v in fields[11:15])
    return ticks / _TICKS


def _children(pid: int) -> list[int]:
    """The live children of ``pid`` (every thread's ``children`` file): a few small reads, not
    a scan of /proc, so sampling every 20 ms costs the machine next to nothing."""
    found: list[int] = []
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            text = Path(task.path, "children").read_text("ascii")
            found.extend(int(child) for child in text.split())
    except OSError:
        pass  # the process (or a thread) is gone
    return found


class CpuParts:
    """Where a process's CPU goes, by part: its main thread (the event loop), its other threads
    (the journal's writer, the to_thread pool), its child processes and their children (the
    audience reader and its pass-one helper). `sample` it often; each thread's and process's
    last reading stands (one that ended in between is missed, a short-lived helper's is
    partly: its parent's reaped-children time is not counted here)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._last: dict[tuple[str, int], float] = {}

    def sample(self) -> None:
        """Read every thread of the process and every process below it."""
        self._threads(self.pid, "main thread", "other threads")
        for child in _children(self.pid):
            self._tree(child, "child processes", 1)

    def parts(self) -> dict[str, float]:
        """CPU seconds by part, as last read."""
        totals: dict[str, float] = {}
        for (part, _), seconds in self._last.items():
            totals[part] = totals.get(part, 0.0) + seconds
        return totals

    def _tree(self, pid: int, part: str, depth: int) -> None:
        own = _stat(pid)
        if own is not None:
            self._last[(part, pid)] = sum(int(v) for v in own[11:13]) / _TICKS
        if depth < 3:
            for child in _children(pid):
                self._tree(child, "their children", depth + 1)

    def _threads(self, pid: int, main: str, others: str) -> None:
        try:
            tasks = [int(task.name) for task in os.scandir(f"/proc/{pid}/task")]
        except OSError:
            return
        for tid in tasks:
            fields = _stat_task(pid, tid)
            if fields is not None:
                self._last[(main if tid == pid else others, tid)] = (
                    sum(int(v) for v in fields[11:13]) / _TICKS)


def _stat_task(pid: int, tid: int) -> list[str] | None:
    """The fields of one thread's stat after its name (None: it is gone)."""
    try:
        text = Path(f"/proc/{pid}/task/{tid}/stat").read_text("ascii", "replace")
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def as_installed(cache: Path) -> None:
    """Let this process's children run Python as an installed package does: with the bytecode
    cache (pip compiles it at install), kept under ``cache`` so the checkout stays clean, and
    filled here once before anything is timed. Without it (``PYTHONDONTWRITEBYTECODE``, as
    some machines set), each of our processes compiled ~70 modules every start: ~0.1 s each,
    counted in every `send`, `plan` and audience reader, and in no real install."""
    import subprocess
    import sys

    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(cache)
    subprocess.run([sys.executable, "-c", "import scheduler.cli, scheduler.console, "
                    "scheduler.service, scheduler.stream_reader, scheduler.daemon"],
                   check=True, cwd=Path(__file__).resolve().parent.parent)
