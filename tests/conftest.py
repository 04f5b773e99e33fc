"""Shared fixtures: a clean structlog config per test, and in-process sandboxes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import structlog

from scheduler.sandbox import Sandbox, SandboxOptions
from tests.helpers import StartSandbox


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Each test starts (and leaves) structlog with its default configuration."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


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
