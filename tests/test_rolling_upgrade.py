"""Upgrades without surprises (issue 24, item 12): the schema upgrade says what it does, and
on a shared PostgreSQL a daemon of the new release never upgrades the schema under a live
leader of the older one: it waits as a standby, says so, and upgrades when it takes the lead.

The "older release" is the previous schema (version `SCHEMA_VERSION` - 1, built by this
release's own steps) with a leader's lease held from the test, as a running old daemon would
hold it: renewed, then released (its SIGTERM) or left to expire (its death).
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from daemon_helpers import (
    API_KEY,
    DaemonProcess,
    Workspace,
    daemon_fixture,
    poll,
    utc_seconds_from_now,
)
from structlog.testing import capture_logs

from scheduler.journal import JournalUnavailable, SchemaNews
from scheduler.journal.postgres import _MIGRATIONS, _SCHEMA, SCHEMA_VERSION, PostgresJournal
from scheduler.journal.sqlite import SCHEMA_VERSION as SQLITE_VERSION
from scheduler.journal.sqlite import SqliteJournal
from scheduler.service import log_schema

OLD = SCHEMA_VERSION - 1
OLD_LEADER = "old-host:4242:abcdef"


async def build_old_schema(url: str) -> None:
    """The database as the previous release left it: its schema, its version."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
        for statement in _SCHEMA:
            await db.execute(statement)
        for step in range(2, OLD):
            for statement in _MIGRATIONS[step]:
                await db.execute(statement)
        await db.execute("INSERT INTO schema_version VALUES (%s)", (OLD,))


async def hold_lease(url: str, seconds: float = 60) -> None:
    """The old leader takes (or renews) the lease."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
        await db.execute(
            "INSERT INTO lease (name, holder, epoch, expires_at)"
            " VALUES ('leader', %s, 7, clock_timestamp() + %s) ON CONFLICT (name) DO UPDATE"
            " SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at",
            (OLD_LEADER, timedelta(seconds=seconds)),
        )


async def release_lease(url: str) -> None:
    """The old leader stops gracefully (SIGTERM hands the lease over)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
        await db.execute("UPDATE lease SET expires_at = clock_timestamp() WHERE name = 'leader'")


async def version_of(url: str) -> int:
    """The schema version the database says it has."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
        row = await (await db.execute("SELECT max(version) FROM schema_version")).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
async def old_database(postgres_url: str) -> AsyncIterator[str]:
    """A database of the previous release whose leader is alive."""
    await build_old_schema(postgres_url)
    await hold_lease(postgres_url)
    yield postgres_url


async def test_a_new_standby_waits_for_the_old_leader_then_upgrades_when_it_leads(
    old_database: str,
) -> None:
    """Started beside a live old leader, a new writer leaves the schema alone and says so;
    only the lease and presence calls work; once the old leader goes, taking the lease
    upgrades the schema in the same transaction, and says from which version to which."""
    url, news = old_database, []
    journal = PostgresJournal(url, location=url, on_schema=news.append)
    await journal.start(writer=True)
    try:
        assert news == [SchemaNews("journal_upgrade_waiting", url, OLD, SCHEMA_VERSION,
                                   OLD_LEADER)]
        assert await version_of(url) == OLD
        with pytest.raises(JournalUnavailable, match="earlier release"):
            await journal.campaigns()
        assert await journal.leader() == OLD_LEADER
        assert await journal.acquire_lease("new-host:1:aaaaaa", 15) is None
        assert await version_of(url) == OLD  # still the old leader's

        await release_lease(url)
        assert await journal.acquire_lease("new-host:1:aaaaaa", 15) is not None
        assert await version_of(url) == SCHEMA_VERSION
        assert news[1:] == [SchemaNews("journal_upgraded", url, OLD, SCHEMA_VERSION)]
        assert await journal.campaigns() == []
    finally:
        await journal.close()


async def test_a_reader_never_upgrades(old_database: str) -> None:
    """`report`, `plan`, `status` of the new release say they cannot read it yet; the schema
    stays the old leader's."""
    journal = PostgresJournal(old_database, location=old_database)
    with pytest.raises(JournalUnavailable, match="upgrades it when it takes the lead"):
        await journal.start(writer=False)
    assert await version_of(old_database) == OLD


async def test_with_no_live_leader_a_writer_upgrades_at_once(postgres_url: str) -> None:
    """An old database nobody leads on (every daemon stopped: the one-machine upgrade) is
    upgraded at start, and that is said."""
    await build_old_schema(postgres_url)
    await hold_lease(postgres_url, seconds=-1)  # expired
    news: list[SchemaNews] = []
    journal = PostgresJournal(postgres_url, location=postgres_url, on_schema=news.append)
    await journal.start(writer=True)
    await journal.close()
    assert news == [SchemaNews("journal_upgraded", postgres_url, OLD, SCHEMA_VERSION)]
    assert await version_of(postgres_url) == SCHEMA_VERSION


async def test_a_schema_a_newer_release_upgraded_is_never_led_on(postgres_url: str) -> None:
    """A standby of this release, once a newer release has upgraded the schema, never takes
    the lead (it would write an older release's rows into it), and says so once."""
    news: list[SchemaNews] = []
    journal = PostgresJournal(postgres_url, location=postgres_url, on_schema=news.append)
    await journal.start(writer=True)
    try:
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as db:
            await db.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
        assert await journal.acquire_lease("this:1:aaaaaa", 15) is None
        assert await journal.acquire_lease("this:1:aaaaaa", 15) is None
        assert news == [SchemaNews("journal_newer", postgres_url, SCHEMA_VERSION + 1,
                                   SCHEMA_VERSION)]
    finally:
        await journal.close()


def test_the_upgrade_news_reach_the_operational_log() -> None:
    """Each piece of news is one line with the location and both versions."""
    with capture_logs() as logs:
        log_schema(SchemaNews("journal_upgraded", "/s/j.sqlite3", 7, 8))
        log_schema(SchemaNews("journal_upgrade_waiting", "pg", 7, 8, "h:1:t"))
    assert [(e["event"], e["from_version"], e["to_version"]) for e in logs] == [
        ("journal_upgraded", 7, 8), ("journal_upgrade_waiting", 7, 8)]
    assert logs[1]["leader"] == "h:1:t" and logs[1]["log_level"] == "warning"


async def test_a_sqlite_upgrade_is_told(tmp_path: Path) -> None:
    """A SQLite journal of an older release is upgraded by the writer that opens it, and the
    listener hears from which version to which; a new file is no news."""
    source = Path(__file__).parent / "data" / "v1-journal" / "state" / "journal.sqlite3"
    path = tmp_path / "journal.sqlite3"
    shutil.copy(source, path)
    news: list[SchemaNews] = []
    journal = SqliteJournal(path, on_schema=news.append)
    await journal.start(writer=True)
    await journal.close()
    assert news == [SchemaNews("journal_upgraded", str(path), 1, SQLITE_VERSION)]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SQLITE_VERSION
    db.close()
    fresh: list[SchemaNews] = []
    new = SqliteJournal(tmp_path / "new.sqlite3", on_schema=fresh.append)
    await new.start(writer=True)
    await new.close()
    assert fresh == []


# ---------------------------------------------------------------------- a real daemon, end to end


@pytest.fixture
def workspace(tmp_path: Path, postgres_url: str) -> Workspace:
    """A workspace on the database, with a campaign due now."""
    ws = Workspace(tmp_path, journal_url=postgres_url, lease=3.0)
    ws.audience("after", 50)
    ws.write_campaign("after", utc_seconds_from_now(0) - timedelta(seconds=1))
    return ws


@pytest.fixture
def daemon(workspace: Workspace) -> Iterator[DaemonProcess]:
    """The workspace's daemon (not started), killed at teardown."""
    yield from daemon_fixture(workspace, CASCADE_API_KEY=API_KEY)


def test_a_new_daemon_stays_standby_beside_an_old_leader_and_upgrades_when_it_goes(
    workspace: Workspace, daemon: DaemonProcess, postgres_url: str,
) -> None:
    """The rolling upgrade: the new daemon starts beside a live old leader, logs that it
    waits, leaves the schema alone and sends nothing; when the old leader stops, it takes the
    lead, logs the upgrade (from, to) and sends the campaign."""
    asyncio.run(build_old_schema(postgres_url))
    asyncio.run(hold_lease(postgres_url, seconds=600))
    daemon.start()
    waiting = poll(lambda: _oplog(daemon, "journal_upgrade_waiting"), 10, "the wait")
    assert (waiting[0]["from_version"], waiting[0]["to_version"]) == (OLD, SCHEMA_VERSION)
    assert waiting[0]["leader"] == OLD_LEADER
    assert asyncio.run(version_of(postgres_url)) == OLD
    assert not workspace.record()

    asyncio.run(release_lease(postgres_url))
    upgraded = poll(lambda: _oplog(daemon, "journal_upgraded"), 15, "the upgrade")
    assert (upgraded[0]["from_version"], upgraded[0]["to_version"]) == (OLD, SCHEMA_VERSION)
    poll(lambda: len(workspace.record()) == 50, 20, "the campaign to be sent")
    assert asyncio.run(version_of(postgres_url)) == SCHEMA_VERSION
    assert daemon.stop() == 0


def _oplog(daemon: DaemonProcess, event: str) -> list[dict[str, Any]]:
    """The daemon's operational-log lines of one event."""
    lines = [orjson.loads(line) for line in daemon.stderr().splitlines()
             if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]
