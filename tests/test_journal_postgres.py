"""PostgreSQL-only behaviour of the journal, on a real server (tests/pg_helpers.py).

The shared contract (test_journal_contract.py) already runs against PostgreSQL; here is what
only a shared database has: daemons racing for the lease on the database's clock, fencing a
deposed leader, two daemons creating the schema at once, a server restart under a running
journal, group commit on one connection, and no password in any message.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import time_machine
from psycopg import sql

from scheduler.journal import (
    DUMP_TABLES,
    FinalStatus,
    JournalConflict,
    JournalCorrupt,
    JournalFenced,
    JournalUnavailable,
    Result,
    StatusReport,
)
from scheduler.journal.postgres import _SCHEMA, SCHEMA_VERSION, PostgresJournal, PostgresStore
from scheduler.records import Skip
from tests.helpers import run_cli, write_audience, write_campaign, write_config
from tests.journal_helpers import record_status
from tests.pg_helpers import PostgresServer, free_port

SEND_AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
SECRET = "s3cret-pw"


def batches(campaign: str, count: int, size: int) -> Iterator[list[dict[str, Any]]]:
    """``count`` batches of ``size`` messages, numbered across batches."""
    for b in range(count):
        yield [{"id": f"{campaign}-{n}", "toPhone": f"+38050{n:07d}", "text": "hi"}
               for n in range(b * size, (b + 1) * size)]


async def prepare(journal: PostgresJournal, campaign: str, count: int = 4, size: int = 2,
                  skips: list[Skip] | None = None) -> None:
    """Snapshot ``campaign``."""
    await journal.prepare(
        campaign_id=campaign, type="promo", file=f"/c/{campaign}.toml", fingerprint="f1",
        send_at=SEND_AT, deadline=SEND_AT + timedelta(hours=1),
        batches=batches(campaign, count, size), skips=skips or [],
    )


def sent(body: bytes) -> list[Result]:
    """A "sent" result for every message of a batch body."""
    return [Result(m["id"], "sent", f"mid-{m['id']}", 1) for m in orjson.loads(body)]


async def started(url: str, **options: Any) -> PostgresJournal:
    """A started journal on ``url`` (its own connection, as a daemon would have)."""
    journal = PostgresJournal(url, location=url, **options)
    await journal.start(writer=True)
    return journal


@pytest.fixture
async def two(postgres_url: str) -> AsyncIterator[tuple[PostgresJournal, PostgresJournal]]:
    """Two journals on one database: two daemons, two connections."""
    first, second = await started(postgres_url), await started(postgres_url)
    yield first, second
    await first.close()
    await second.close()


async def wait_for_expiry(url: str) -> None:
    """Wait until the lease has expired by the database's clock (not this process's)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
        for _ in range(200):
            row = await (await db.execute(
                "SELECT expires_at <= clock_timestamp() FROM lease WHERE name = 'leader'",
            )).fetchone()
            if row is not None and row[0]:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the lease never expired")


# --- leadership ---------------------------------------------------------------------------


async def test_two_daemons_racing_for_the_lease_one_wins(
    two: tuple[PostgresJournal, PostgresJournal],
) -> None:
    """Racing acquires (the first on an empty lease table): exactly one wins each round, the
    loser keeps getting None while the lease runs, and epochs only grow."""
    a, b = two
    epochs: list[int] = []
    for _ in range(10):
        won = await asyncio.gather(a.acquire_lease("a", 30), b.acquire_lease("b", 30))
        assert sum(epoch is not None for epoch in won) == 1, won
        epoch = won[0] or won[1]
        assert epoch is not None
        winner, name, loser, other = (a, "a", b, "b") if won[0] is not None else (b, "b", a, "a")
        assert await loser.acquire_lease(other, 30) is None
        assert await winner.acquire_lease(name, 30) == epoch  # ours already: same epoch
        epochs.append(epoch)
        await winner.release_lease(name, epoch)
    assert epochs == sorted(epochs) and len(set(epochs)) == len(epochs)


async def test_an_expired_lease_passes_on_and_fences_the_old_holder(
    two: tuple[PostgresJournal, PostgresJournal], postgres_url: str,
) -> None:
    """After the leader's lease expires by the database's clock, the standby takes it with a
    higher epoch, and the old leader's fenced writes raise JournalFenced, writing nothing."""
    old, new = two
    await prepare(old, "c")
    first = await old.acquire_lease("old", 30)
    assert first is not None
    old.fence("old", first)
    await old.set_state("c", "running")
    await old.mark_in_flight("c", [0])
    assert await new.acquire_lease("new", 15) is None  # it still runs
    assert await old.renew_lease("old", first, 0.5)  # the last renewal before a freeze
    await wait_for_expiry(postgres_url)
    assert not await old.renew_lease("old", first, 15)
    second = await new.acquire_lease("new", 15)
    assert second is not None and second > first
    batch = (await old.open_batches("c", limit=1))[0]
    for write in (old.mark_in_flight("c", [1]), old.record_results("c", 0, sent(batch.body)),
                  old.release("c", [0]), old.set_state("c", "paused")):
        with pytest.raises(JournalFenced):
            await write
    assert [(b.seq, b.state) for b in await new.open_batches("c")][:2] == [
        (0, "in_flight"), (1, "pending")]
    new.fence("new", second)
    assert await new.record_results("c", 0, sent(batch.body)) == 2


# --- the schema -------------------------------------------------------------------------


async def test_two_daemons_create_the_schema_at_once(postgres_url: str) -> None:
    """Two first starts on an empty database: one creates the schema, the other waits."""
    a, b = PostgresJournal(postgres_url, location="a"), PostgresJournal(postgres_url,
                                                                         location="b")
    await asyncio.gather(a.start(writer=True), b.start(writer=True))
    await prepare(a, "c")
    record = await b.campaign("c")
    assert record is not None and record.batches == 4
    await a.close()
    await b.close()


async def test_a_newer_schema_is_refused(postgres_url: str) -> None:
    """A database written by a newer release is refused at start, naming the fix."""
    journal = await started(postgres_url)
    await journal.close()
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as db:
        await db.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(JournalCorrupt, match=r"newer than this program.*upgrade cascade"):
        await started(postgres_url)


async def test_a_v2_database_gains_delivery_polling_in_place(postgres_url: str) -> None:
    """A database of the release before delivery status (schema 2) is migrated at start: its
    sent messages are due for a poll at once, a final one is not; a copy dumps the new
    columns."""
    sent_at = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as db:
        for statement in _SCHEMA:
            await db.execute(statement)
        await db.execute("INSERT INTO schema_version VALUES (2)")
        await db.execute(
            "INSERT INTO campaigns (id, type, file, fingerprint, state, send_at, deadline,"
            " recipients, skipped, batches, snapshot) VALUES ('old', 'promo', '/c/old.toml',"
            " 'f', 'done', %s, %s, 2, 0, 1, 1)", (sent_at, sent_at + timedelta(days=1)))
        for mid, status in (("m-1", None), ("m-2", "delivered")):
            await db.execute(
                "INSERT INTO messages (message_id, campaign, tracking_id, phone, type, sent_at,"
                " status) VALUES (%s, 'old', %s, '+380500000001', 'promo', %s, %s)",
                (mid, f"old-{mid}", sent_at, status))
    journal = await started(postgres_url)
    try:
        due = await journal.messages_awaiting_status(datetime.now(UTC), 10)
        assert [(d.message.message_id, d.polls, d.message.sent_at) for d in due] == [
            ("m-1", 0, sent_at)]
        assert await record_status(journal, "m-1", "undeliverable", "sms")
        assert (await journal.delivery_counts("old")).statuses == {
            "delivered": 1, "undeliverable": 1}
        # a status final since the upgrade can wait for its delivery line
        await journal.record_statuses([StatusReport("m-1", "delivered"),
                                       StatusReport("m-2", "undeliverable")], "call-1")
        later = datetime.now(UTC) + timedelta(hours=1)
        assert await journal.unlogged_statuses(later, 10) == []  # nothing newly final
        # and reaches the leader's brakes (schema 7)
        assert await journal.take_final_statuses(10) == [
            FinalStatus("old", "old-m-1", "undeliverable", "sms")]
        dumped = [rows async for table, rows in journal.dump() if table == "messages"]
        assert {len(row) for rows in dumped for row in rows} == {len(DUMP_TABLES["messages"])}
        # planned before campaigns kept their account (schema 10): the default one
        old = await journal.campaign("old")
        assert old is not None and old.account == "default"
        # and a cap that names the default account counts its messages, another's does not
        assert await journal.capped_phones(["promo"], sent_at, 2, accounts=["default"]) == [
            "+380500000001"]
        assert await journal.capped_phones(["promo"], sent_at, 1, accounts=["brand-a"]) == []
        campaigns = [rows async for table, rows in journal.dump() if table == "campaigns"]
        assert {len(row) for rows in campaigns for row in rows} == {
            len(DUMP_TABLES["campaigns"])}
    finally:
        await journal.close()
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as db:
        row = await (await db.execute("SELECT version FROM schema_version")).fetchone()
    assert row == (SCHEMA_VERSION,) and SCHEMA_VERSION == 10


async def test_times_are_the_databases_in_utc_and_text_may_hold_nul(postgres_url: str) -> None:
    """Stamps are the database's clock (this process's clock is years off here), as aware
    UTC datetimes; a skipped row's NUL (which PostgreSQL text cannot hold) is stored as
    U+FFFD instead of failing the whole snapshot."""
    journal = await started(postgres_url)
    try:
        await prepare(journal, "c", skips=[Skip(2, None, "+380\x00", "invalid_phone", "x")])
        with time_machine.travel(datetime(2031, 1, 1, tzinfo=UTC)):
            record = await journal.set_state("c", "running")
        assert record.send_at == SEND_AT and record.send_at.tzinfo is UTC
        assert record.started_at is not None and record.started_at.tzinfo is UTC
        assert abs(record.started_at - datetime.now(UTC)) < timedelta(minutes=10)
        skipped = [row async for row in journal.recipients("c", "skipped")]
        assert [row.phone for row in skipped] == ["+380\N{REPLACEMENT CHARACTER}"]
    finally:
        await journal.close()


# --- the connection -----------------------------------------------------------------------


async def test_a_server_restart_is_survived_without_reopening(
    postgres_server: PostgresServer, postgres_url: str,
) -> None:
    """A restart cuts the idle connection: the next call finds it dead at BEGIN (nothing
    sent yet) and runs on a new one; while the server is down calls fail JournalUnavailable;
    once it is back they work again, on the same journal object, and nothing committed was
    lost."""
    journal = await started(postgres_url)
    try:
        await prepare(journal, "c")
        await journal.mark_in_flight("c", [0])
        postgres_server.restart()
        await journal.mark_in_flight("c", [1])
        postgres_server.stop()
        with pytest.raises(JournalUnavailable, match="cannot connect to") as caught:
            await journal.counts("c")
        assert not isinstance(caught.value, psycopg.Error)
        postgres_server.start()
        opened = await journal.open_batches("c")
        assert [b.state for b in opened[:3]] == ["in_flight", "in_flight", "pending"]
        await journal.mark_in_flight("c", [2])
    finally:
        if not postgres_server.running:
            postgres_server.start()
        await journal.close()


async def test_an_unreachable_server_names_the_location_never_the_password() -> None:
    """A failed connection says where, never the password: neither the one given apart
    nor one written in the URL."""
    port = free_port()
    location = f"postgresql://cascade@127.0.0.1:{port}/journal"
    for url, password in ((location, SECRET),
                          (f"postgresql://cascade:{SECRET}@127.0.0.1:{port}/journal", None),
                          (f"postgresql://cascade:{SECRET}@127.0.0.1:{port}/j?sslmode=bad",
                           None),
                          (f"host=127.0.0.1 port={port} password={SECRET} bogus", None)):
        journal = PostgresJournal(url, password=password, location=location)
        with pytest.raises(JournalUnavailable) as caught:
            await journal.start(writer=True)
        assert location in str(caught.value)
        assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)
        assert caught.value.__cause__ is None  # the driver's text is not chained either


async def test_a_refused_password_is_not_shown(
    postgres_server: PostgresServer, postgres_url: str,
) -> None:
    """The server's refusal is shown with the location, the password given is not; the
    right password, given apart from the URL, is used."""
    postgres_server.add_password_role("cascade_pw", "right-pw")
    database = postgres_url.rsplit("/", 1)[1]
    postgres_server.execute(sql.SQL("ALTER DATABASE {} OWNER TO cascade_pw").format(
        sql.Identifier(database)))  # (the owner may create the schema in public)
    url = postgres_url.replace("postgres@", "cascade_pw@")
    journal = PostgresJournal(url, password=SECRET, location=url)
    with pytest.raises(JournalUnavailable, match="password authentication failed") as caught:
        await journal.start(writer=True)
    assert url in str(caught.value) and SECRET not in str(caught.value)
    journal = PostgresJournal(url, password="right-pw", location=url)
    await journal.start(writer=True)
    await journal.close()


# --- group commit -------------------------------------------------------------------------


async def hold_writer(journal: PostgresJournal) -> tuple[asyncio.Event, asyncio.Task[Any]]:
    """Park the writer task on an event, so the next operations queue up behind it."""
    release, parked = asyncio.Event(), asyncio.Event()

    async def park(_: PostgresStore) -> None:
        parked.set()
        await release.wait()

    task = asyncio.ensure_future(journal.executor.run(park))
    await parked.wait()
    return release, task


async def test_group_commit_one_commit_and_one_failure_fails_alone(postgres_url: str) -> None:
    """Operations queued while the writer is busy share ONE commit; a failing one fails its
    own caller only, and every other one takes effect."""
    journal = await started(postgres_url)
    try:
        await prepare(journal, "c", count=8)
        release, parked = await hold_writer(journal)
        before = journal.executor.commits
        marks = [asyncio.ensure_future(journal.mark_in_flight("c", [seq])) for seq in range(8)]
        bad = asyncio.ensure_future(journal.mark_in_flight("c", [99]))
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(parked, *marks)
        with pytest.raises(JournalConflict, match="open"):
            await bad
        assert journal.executor.commits - before <= 2  # the parked op's group, then everything else
        assert [b.state for b in await journal.open_batches("c")] == ["in_flight"] * 8
    finally:
        await journal.close()


async def test_a_deposed_leaders_group_commits_only_its_unfenced_writes(
    postgres_url: str,
) -> None:
    """One group, sent in one round trip: writes fenced by a lease that has passed on fail
    JournalFenced and write nothing; the unfenced write of the same group, and the writes
    fenced by the new lease, are committed (and one needing `record`'s whole way, a batch
    that already holds outcomes, gets it)."""
    journal = await started(postgres_url)
    try:
        await prepare(journal, "c", count=4)
        old = await journal.acquire_lease("old", 15)
        assert old is not None
        journal.fence("old", old)
        await journal.set_state("c", "running")
        await journal.mark_in_flight("c", [0, 1])
        first, second = (await journal.open_batches("c", limit=2))
        await journal.record_partial("c", 1, sent(second.body)[:1])
        await journal.release_lease("old", old)
        new = await journal.acquire_lease("new", 15)
        assert new is not None
        release, parked = await hold_writer(journal)
        before = journal.executor.commits
        stale = [journal.mark_in_flight("c", [2]), journal.record_results("c", 0, sent(
            first.body))]
        stale_calls = [asyncio.ensure_future(call) for call in stale]
        await asyncio.sleep(0)  # queued, under the fence of their time
        journal.fence("new", new)
        fresh = [asyncio.ensure_future(call) for call in (
            journal.mark_logged("c", [(1, 1)]), journal.mark_in_flight("c", [3]),
            journal.record_results("c", 1, sent(second.body)[1:]))]
        await asyncio.sleep(0)
        release.set()
        await parked
        for call in stale_calls:
            with pytest.raises(JournalFenced):
                await call
        assert await asyncio.gather(*fresh) == [None, None, 2]
        assert journal.executor.commits - before <= 3  # the parked op's, this group's, record's
        states = {b.seq: (b.state, b.attempts) for b in await journal.open_batches("c")}
        assert states == {0: ("in_flight", 1), 2: ("pending", 0), 3: ("in_flight", 1)}
        assert (await journal.counts("c"))["sent"] == 2
        assert [u.seq for u in await journal.unlogged("c")] == [1]
    finally:
        await journal.close()


async def test_a_connection_cut_mid_transaction_fails_the_whole_group(
    postgres_server: PostgresServer, postgres_url: str,
) -> None:
    """The connection dies inside a group's transaction: every call of the group fails
    JournalUnavailable and nothing of it is kept; the next call reconnects and works."""
    journal = await started(postgres_url)
    try:
        await prepare(journal, "c")
        release, parked = asyncio.Event(), asyncio.Event()

        async def write_then_wait(store: PostgresStore) -> int:
            await store.mark_in_flight("c", [0])
            parked.set()
            await release.wait()
            return 1

        first = asyncio.ensure_future(journal.executor.run(write_then_wait))
        await parked.wait()
        postgres_server.execute(sql.SQL(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'cascade-scheduler'"))
        release.set()
        with pytest.raises(JournalUnavailable):
            await first
        opened = await journal.open_batches("c")  # on a new connection
        assert {b.state for b in opened} == {"pending"}
        await journal.mark_in_flight("c", [0])
    finally:
        await journal.close()


async def test_a_statement_failing_on_a_cut_connection_is_unavailable_not_a_driver_error(
    postgres_server: PostgresServer, postgres_url: str,
) -> None:
    """Issue 23 (found by the restart test): the connection dies inside a group and its next
    statement fails; rolling back on the dead connection fails too, and psycopg then lets
    its ``Rollback`` out of the block. The caller still gets JournalUnavailable, never a
    driver exception, and the next call reconnects."""
    journal = await started(postgres_url)
    try:
        await prepare(journal, "c")
        release, parked = asyncio.Event(), asyncio.Event()

        async def wait_then_write(store: PostgresStore) -> int:
            await store.counts("c")  # the transaction has begun
            parked.set()
            await release.wait()
            await store.mark_in_flight("c", [0])  # on a connection that is gone
            return 1

        first = asyncio.ensure_future(journal.executor.run(wait_then_write))
        await parked.wait()
        postgres_server.execute(sql.SQL(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'cascade-scheduler'"))
        release.set()
        with pytest.raises(JournalUnavailable):
            await first
        assert {b.state for b in await journal.open_batches("c")} == {"pending"}
    finally:
        await journal.close()


async def test_a_call_whose_connection_is_cut_while_it_runs_fails_as_a_journal_error(
    postgres_url: str,
) -> None:
    """The server cuts the connection during a call: its caller gets JournalUnavailable, never
    the driver's Rollback (the block's rollback cannot reach the server then: psycopg warns
    and lets the Rollback through); the next call reconnects and works."""
    journal = await started(postgres_url)
    try:
        await prepare(journal, "c")

        async def cut_off(store: PostgresStore) -> None:
            await store.db.execute("SELECT pg_terminate_backend(pg_backend_pid())")

        with pytest.raises(JournalUnavailable, match="terminating connection"):
            await journal.executor.run(cut_off)
        await journal.mark_in_flight("c", [0])
    finally:
        await journal.close()


async def test_close_finishes_queued_work(postgres_url: str) -> None:
    """close() runs what was queued before it; nothing is accepted afterwards."""
    journal = await started(postgres_url)
    await prepare(journal, "c")
    write = asyncio.ensure_future(journal.mark_in_flight("c", [0]))
    await asyncio.sleep(0)
    await journal.close()
    await write
    with pytest.raises(RuntimeError, match="not running"):
        await journal.counts("c")
    again = await started(postgres_url)
    try:
        assert (await again.open_batches("c"))[0].state == "in_flight"
    finally:
        await again.close()


async def test_send_while_a_daemon_leads_says_what_to_do_instead(
    postgres_url: str, tmp_path: Path,
) -> None:
    """`send --now` on a PostgreSQL journal a daemon leads: exit 1 and one sentence that says
    how to send it now (through the daemon's folder), never "give it its own [paths].state",
    which a PostgreSQL journal does not use (issue 24, items 11 and 14)."""
    leader = await started(postgres_url)
    try:
        assert await leader.acquire_lease("db-1:4242:daemon", 60) is not None
        config = write_config(tmp_path)
        with config.open("a", encoding="utf-8") as out:
            out.write(f'[journal]\nurl = "{postgres_url}"\n')
        write_audience(tmp_path / "campaigns" / "people.csv", 5)
        campaign = write_campaign(tmp_path / "campaigns", "now-please", "people.csv")
        done = await asyncio.to_thread(
            run_cli, ["send", str(campaign), "--now", "--config", str(config)])
    finally:
        await leader.close()
    assert done.returncode == 1, done.stdout + done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"{postgres_url} is in use by the daemon that leads it")
    assert "[paths].state" not in line and "Traceback" not in line
    assert f"its campaigns folder ({tmp_path / 'campaigns'}) with send_at = " in line
