"""The systemd notify protocol (sd_notify(3)): READY, RELOADING, STOPPING, WATCHDOG and STATUS.

A few lines over an AF_UNIX datagram socket; without ``$NOTIFY_SOCKET`` every call is a no-op, so
the daemon runs the same under systemd, in a terminal and in tests.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    """Sends state changes to the service manager named by ``$NOTIFY_SOCKET``."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self._address = address or None
        self._socket: socket.socket | None = None
        self._watchdog_usec = _watchdog_usec(env)

    @property
    def enabled(self) -> bool:
        """True when a service manager is listening."""
        return self._address is not None

    def send(self, *assignments: str) -> None:
        """Send ``KEY=VALUE`` lines as one datagram; errors are ignored (never fatal)."""
        if self._address is None:
            return
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # like sd_notify(3)'s MSG_DONTWAIT: a manager that stops reading must never stall
            # the event loop (a full queue just drops the message)
            self._socket.setblocking(False)
        payload = "\n".join(assignments).encode()
        with contextlib.suppress(OSError):  # the manager went away; the daemon keeps working
            self._socket.sendto(payload, self._address)

    def ready(self, status: str | None = None) -> None:
        """Startup (or a reload) finished."""
        self.send("READY=1", *(() if status is None else (f"STATUS={status}",)))

    def reloading(self) -> None:
        """A reload starts; systemd 253+ wants the monotonic time with it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        """Shutdown begins."""
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        """Keep-alive ping; sent from the event loop so a stuck loop gets the service restarted."""
        self.send("WATCHDOG=1")

    def status(self, text: str) -> None:
        """A one-line human summary shown by ``systemctl status``."""
        self.send("STATUS=" + text.replace("\n", " "))

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of ``WatchdogSec``), or None when no watchdog is set."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec
