"""sd_notify (SPEC §7): the `Notifier` against real AF_UNIX datagram sockets (path and abstract),
and the daemon's whole notify conversation with a fake service manager: READY, STATUS, WATCHDOG,
RELOADING/READY around SIGHUP, STOPPING on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, Workspace, poll, utc_seconds_from_now

from scheduler.sdnotify import Notifier

Datagrams = list[list[str]]


class Manager:
    """The service manager's end: a bound datagram socket that collects what the daemon says."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.received: Datagrams = []

    def drain(self) -> Datagrams:
        """Read every datagram waiting; return all received so far, each split into lines."""
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.received
            self.received.append(data.decode().split("\n"))

    def wait_for(self, check: Callable[[Datagrams], bool], what: str, timeout: float = 10) -> None:
        """Poll until ``check`` holds for what was received."""
        poll(lambda: check(self.drain()), timeout, what)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def _index(datagrams: Datagrams, line: str, start: int = 0) -> int | None:
    """The position of the first datagram at or after ``start`` that carries ``line``."""
    for i in range(start, len(datagrams)):
        if line in datagrams[i]:
            return i
    return None


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short directory for socket paths (AF_UNIX paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="h6sd") as folder:
        yield Path(folder)


@pytest.fixture
def abstract_manager() -> Iterator[tuple[Manager, str]]:
    """A manager on an abstract socket; returns it and the ``@name`` form of NOTIFY_SOCKET."""
    name = f"cascade-test-{uuid.uuid4().hex}"
    manager = Manager("\0" + name)
    try:
        yield manager, "@" + name
    finally:
        manager.close()


# ------------------------------------------------------------------------------------ Notifier


def test_abstract_socket_name_is_used(abstract_manager: tuple[Manager, str]) -> None:
    """``NOTIFY_SOCKET=@name`` addresses the abstract socket ``\\0name``; READY carries STATUS."""
    manager, address = abstract_manager
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    notifier.ready("2 scheduled")
    notifier.stopping()
    notifier.close()
    manager.wait_for(lambda d: len(d) == 2, "two datagrams")
    assert manager.received == [["READY=1", "STATUS=2 scheduled"], ["STOPPING=1"]]


def test_path_socket_and_every_message(socket_dir: Path) -> None:
    """Each call is one datagram in the sd_notify format; STATUS stays on one line; RELOADING
    carries this machine's CLOCK_MONOTONIC in microseconds."""
    path = str(socket_dir / "notify")
    manager = Manager(path)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": path})
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.ready()
        notifier.watchdog()
        notifier.status("1 running,\n2 scheduled")
        notifier.close()
        notifier.close()  # closing twice is harmless
        manager.wait_for(lambda d: len(d) == 4, "four datagrams")
    finally:
        manager.close()
    reloading, ready, watchdog, status = manager.received
    assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
    assert before <= int(reloading[1].removeprefix("MONOTONIC_USEC=")) <= after
    assert (ready, watchdog) == (["READY=1"], ["WATCHDOG=1"])
    assert status == ["STATUS=1 running, 2 scheduled"]


def test_without_notify_socket_everything_is_a_noop() -> None:
    """Outside systemd nothing is sent and nothing fails."""
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready("x")
    notifier.watchdog()
    notifier.close()
    assert notifier.watchdog_interval() is None


def test_manager_gone_is_not_fatal(socket_dir: Path) -> None:
    """A socket path nobody listens on (the manager went away) does not raise."""
    notifier = Notifier({"NOTIFY_SOCKET": str(socket_dir / "nobody")})
    assert notifier.enabled
    notifier.ready("x")
    notifier.stopping()
    notifier.close()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "400000"}, 0.2),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    """Pings every WATCHDOG_USEC/2, only when the watchdog is meant for this process."""
    assert Notifier(env).watchdog_interval() == interval


# ------------------------------------------------------------------------------------ daemon


def test_daemon_notify_conversation(tmp_path: Path, socket_dir: Path) -> None:
    """The daemon says READY=1 with a STATUS after loading, pings WATCHDOG=1 from its loop,
    wraps a SIGHUP reload in RELOADING=1 (with MONOTONIC_USEC) and READY=1, and says STOPPING=1
    on SIGTERM before exiting 0."""
    workspace = Workspace(tmp_path)
    workspace.audience("later", 5)
    workspace.write_campaign("later", utc_seconds_from_now(0) + timedelta(hours=1))
    manager = Manager(str(socket_dir / "notify"))
    daemon = DaemonProcess(workspace, NOTIFY_SOCKET=manager.address, WATCHDOG_USEC="400000")
    try:
        daemon.start(wait=False)
        manager.wait_for(lambda d: _index(d, "READY=1") is not None, "READY=1")
        ready = manager.received[_index(manager.received, "READY=1") or 0]
        assert "STATUS=leader: 1 scheduled" in ready
        assert workspace.events("daemon_started"), "READY=1 came before the first load"
        first_ready = _index(manager.received, "READY=1") or 0
        manager.wait_for(lambda d: sum(g == ["WATCHDOG=1"] for g in d[first_ready:]) >= 3,
                         "three WATCHDOG=1 pings")
        assert (_index(manager.received, "WATCHDOG=1") or 0) > first_ready

        daemon.signal(signal.SIGHUP)
        manager.wait_for(lambda d: _reload_done(d, first_ready), "RELOADING=1 then READY=1")
        reloading = next(g for g in manager.received if "RELOADING=1" in g)
        usec = int(next(x for x in reloading if x.startswith("MONOTONIC_USEC="))[15:])
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert 0 < now - usec < 10_000_000, "MONOTONIC_USEC is not this machine's monotonic clock"
        assert daemon.alive, "SIGHUP killed the daemon"

        assert daemon.stop() == 0
        manager.drain()
        assert _index(manager.received, "STOPPING=1") is not None
    finally:
        daemon.kill()
        manager.close()
    statuses = [line for g in manager.received for line in g if line.startswith("STATUS=")]
    assert statuses and all("\n" not in s for s in statuses)


def _reload_done(datagrams: Datagrams, after: int) -> bool:
    reloading = _index(datagrams, "RELOADING=1", after + 1)
    return reloading is not None and _index(datagrams, "READY=1", reloading + 1) is not None
