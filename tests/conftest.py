"""Shared fixtures: a clean structlog config per test, and a fresh workspace factory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Each test starts (and leaves) structlog with its default configuration."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
