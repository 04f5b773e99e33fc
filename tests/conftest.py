"""Shared fixtures: a clean structlog config per test, in-process sandboxes, and one real
PostgreSQL server per test session (started only by the tests that ask for it), with a fresh
database per test. Under pytest-xdist each worker process is a session of its own: its own
server, port and temporary folders."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, settings

from scheduler.oplog import LibraryHandler
from scheduler.sandbox import Sandbox
from scheduler.sandbox_options import SandboxOptions
from tests.helpers import StartSandbox
from tests.pg_helpers import PostgresServer

# Hypothesis judges examples by speed too (a 200 ms deadline, "input generation is slow"):
# timings that a busy machine misses without anything being wrong. The properties stay.
settings.register_profile("cascade", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("cascade")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with a test marked ``slow`` run first, each file's tests in their own order.

    The suite runs in two processes, a whole file at a time, in this order (pyproject's
    ``-n 2 --dist loadfile --no-loadscope-reorder``): the long files (about half the run)
    start at once and the many short ones fill in after them, so both processes end together
    instead of one finishing a long file alone. Nothing is skipped or deselected: this is the
    order only.
    """
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Each test starts (and leaves) structlog with its default configuration, and `logging`
    without the operational log's handler (`configure_logging` installs it)."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, LibraryHandler)]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


@pytest.fixture
async def start_sandbox() -> AsyncIterator[StartSandbox]:
    """Start in-process sandboxes on free loopback ports; stop them all afterwards."""
    started: list[Sandbox] = []

    async def start(**options: Any) -> Sandbox:
        sandbox = Sandbox(SandboxOptions(**options))
        await sandbox.start()
        started.append(sandbox)
        return sandbox

    yield start
    for sandbox in started:
        await sandbox.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """ONE PostgreSQL server for the whole session (one per xdist worker), in a temporary
    folder, stopped and deleted at the end (its start time, initdb included, is
    ``started_in``)."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server; its URL (trust: no password)."""
    if not postgres_server.running:  # a test stopped it and failed before starting it again
        postgres_server.start()
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    if not postgres_server.running:
        postgres_server.start()
    postgres_server.drop_database(name)
