"""`journal copy --to URL`: a SQLite journal moves into PostgreSQL whole, or not at all.

Two levels, both against real things. Through the interface: a journal built by the contract
suite's moves (every outcome, partial records, in-flight and pending batches, skipped rows,
the per-message index, a re-planned campaign) is dumped and loaded across backends and reads
back the same in every view; a load that fails or meets a non-empty journal leaves the target
as it was. Through the real CLI: the first release's own journal (killed half way) plus a
campaign sent here with rejections and skipped rows is copied into a fresh database with a
password role, compared view by view, and `send` on PostgreSQL finishes the half-sent campaign
with the same tracking ids; a running daemon, a non-empty target and a wrong password are
refused in one line, never showing the password.
"""

from __future__ import annotations

import itertools
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from daemon_helpers import (
    API_KEY,
    DaemonProcess,
    Workspace,
    clean_env,
    json_lines,
    utc_seconds_from_now,
)
from psycopg import sql

from scheduler.journal import (
    DUMP_TABLES,
    DumpChunk,
    Journal,
    JournalConflict,
    JournalNotEmpty,
    JournalUnavailable,
)
from scheduler.journal.copy import compare, copy_journal
from scheduler.journal.postgres import PostgresJournal
from scheduler.journal.sqlite import SqliteJournal
from scheduler.records import Skip
from scheduler.vocabulary import Outcome
from tests.helpers import REPO, sandbox_process
from tests.journal_helpers import SEND_AT, batches, indexed_message, prepare, results
from tests.pg_helpers import PostgresServer

V1 = Path(__file__).parent / "data" / "v1-journal"
SECRET = "pw-Copy-7Hq2-never-shown"
ROLE = "cascade_copy"
PAIRS = [("sqlite", "postgres"), ("postgres", "sqlite")]

MakeJournal = Callable[[str], Journal]


@pytest.fixture
def make_journal(tmp_path: Path, postgres_server: PostgresServer) -> Iterator[MakeJournal]:
    """Unstarted journals: ``make_journal("sqlite")`` a new file, ``("postgres")`` a new
    database (dropped at the end), each call a fresh, empty one."""
    databases: list[str] = []
    files = itertools.count()

    def make(kind: str) -> Journal:
        if kind == "sqlite":
            return SqliteJournal(tmp_path / f"journal-{next(files)}.sqlite3")
        databases.append(postgres_server.create_database())
        url = postgres_server.url(databases[-1])
        return PostgresJournal(url, location=url)

    yield make
    for name in databases:
        postgres_server.drop_database(name)


async def started(journal: Journal) -> Journal:
    """``journal``, started as the writer."""
    await journal.start(writer=True)
    return journal


# --- a journal with something of everything ----------------------------------------------


async def fill(journal: Journal) -> None:
    """Campaigns in every shape the engine leaves them: done with each outcome and skipped
    rows, running with batches done, partly recorded, in flight and pending, scheduled after
    a re-plan (so snapshot ids have a gap), plus logged marks and the per-message index."""
    skips = [Skip(7, "done-x", "0501", "invalid_phone", "no country code"),
             Skip(3, None, "+1", "invalid_id", ""), Skip(9, "done-y", "+2", "duplicate", "l3")]
    await prepare(journal, "done", count=4, size=5, skips=skips)
    await journal.set_state("done", "running")
    outcomes: tuple[Outcome, ...] = ("sent", "rejected", "expired", "in_doubt")
    for batch, outcome in zip(await journal.open_batches("done"), outcomes, strict=True):
        await journal.mark_in_flight("done", [batch.seq])
        await journal.record_results("done", batch.seq, results(batch.body, outcome))
    await journal.mark_logged("done", [(0, 5), (1, 3)])
    await journal.mark_skips_logged("done")
    await journal.set_state("done", "done")

    await prepare(journal, "half", count=6, size=4, send_at=SEND_AT + timedelta(hours=1),
                  skips=[Skip(2, "half-z", "x", "suppressed", "")])
    await journal.set_state("half", "running")
    opened = await journal.open_batches("half")
    await journal.mark_in_flight("half", [b.seq for b in opened[:4]])
    await journal.record_results("half", 0, results(opened[0].body))
    await journal.record_partial("half", 1, results(opened[1].body, only=2))
    await journal.record_results("half", 2, results(opened[2].body, "rejected"))
    await journal.set_state("half", "paused", "paused by its file")

    await prepare(journal, "later", count=2, size=3)
    await prepare(journal, "later", count=3, size=2, fingerprint="f2")  # a re-plan
    while await journal.index_messages(2):
        pass


async def views(journal: Journal) -> dict[str, Any]:
    """Everything the interface shows of a journal, for comparing two of them."""
    shown: dict[str, Any] = {"campaigns": await journal.campaigns()}
    for record in shown["campaigns"]:
        cid = record.id
        shown[cid] = {
            "counts": await journal.counts(cid),
            "recipients": [r async for r in journal.recipients(cid)],
            "sent": [r async for r in journal.recipients(cid, "sent")],
            "skipped": [r async for r in journal.recipients(cid, "skipped")],
            "open": await journal.open_batches(cid, limit=1000),
            "unlogged": await journal.unlogged(cid),
            "skips_logged": await journal.skips_logged(cid),
        }
    sent = shown["done"]["sent"][0]
    shown["message"] = await indexed_message(journal, sent.detail)
    shown["capped"] = await journal.capped_phones(["promo"], SEND_AT, 1)
    return shown


async def rows(journal: Journal) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, sorted (backends dump in different orders) with times in UTC."""
    found: dict[str, list[tuple[Any, ...]]] = {table: [] for table in DUMP_TABLES}
    async for table, chunk in journal.dump():
        found[table].extend(
            tuple(v.astimezone(UTC) if isinstance(v, datetime) else v for v in row)
            for row in chunk)
    return {table: sorted(found[table], key=repr) for table in found}


# --- through the interface ----------------------------------------------------------------


@pytest.mark.parametrize(("source_kind", "target_kind"), PAIRS)
async def test_a_dump_loads_verbatim_into_the_other_backend(
    make_journal: MakeJournal, source_kind: str, target_kind: str,
) -> None:
    """Every row arrives as it was (ids, times, blobs, flags); every view reads the same;
    the copy goes on working: new snapshots and skipped rows get ids past the loaded ones."""
    source = await started(make_journal(source_kind))
    target = await started(make_journal(target_kind))
    try:
        await fill(source)
        report = await copy_journal(source, target)
        assert [c.record.id for c in report.campaigns] == ["done", "later", "half"]
        assert report.rows["campaigns"] == 3 and report.rows["skips"] == 4
        assert report.rows["messages"] == 5 + 4  # sent in "done" and in "half"
        copied = await rows(target)
        assert copied == await rows(source)
        assert await views(target) == await views(source)
        send_at, deadline = copied["campaigns"][0][5:7]  # times are aware datetimes
        assert send_at.tzinfo is not None and deadline.tzinfo is not None

        await prepare(target, "new", count=2, size=2, skips=[Skip(4, None, "y", "duplicate")])
        after = await rows(target)
        snapshot = next(row[14] for row in after["campaigns"] if row[0] == "new")
        assert snapshot > max(row[0] for row in copied["snapshots"])
        new_skips = [row for row in after["skips"] if row[1] == snapshot]
        assert [row[2] for row in new_skips] == [4]
        assert new_skips[0][0] > max(row[0] for row in copied["skips"])

        await target.set_state("half", "running")  # and the half-sent campaign goes on
        opened = await target.open_batches("half")
        assert [(b.seq, b.state, len(b.decided)) for b in opened] == [
            (1, "pending", 2), (3, "in_flight", 0), (4, "pending", 0), (5, "pending", 0)]
        await target.record_results("half", 1, [
            r for r in results(opened[0].body) if r.tracking_id not in opened[0].decided])
        assert (await target.counts("half"))["sent"] == 4 + 4
    finally:
        await source.close()
        await target.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_journal_that_holds_anything_is_refused_and_kept(
    make_journal: MakeJournal, kind: str,
) -> None:
    """`JournalNotEmpty` says how many campaigns it holds; nothing of the load is kept."""
    source = await started(make_journal("sqlite"))
    target = await started(make_journal(kind))
    try:
        await fill(source)
        await prepare(target, "mine", count=1, size=2)
        before = await rows(target)
        with pytest.raises(JournalNotEmpty, match=(
                r"already holds 1 campaign: copy into an empty database")) as caught:
            await target.load(source.dump())
        assert caught.value.campaigns == 1 and isinstance(caught.value, JournalConflict)
        assert await rows(target) == before
    finally:
        await source.close()
        await target.close()


async def broken(
    journal: Journal, after: int, error: Exception,
) -> AsyncIterator[DumpChunk]:
    """``journal``'s dump, raising ``error`` after ``after`` chunks."""
    count = 0
    async for chunk in journal.dump():
        if count == after:
            raise error
        count += 1
        yield chunk


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_failed_load_leaves_the_target_empty(
    make_journal: MakeJournal, kind: str,
) -> None:
    """One transaction: a source that fails half way, or a chunk that does not fit, and the
    target holds nothing (then takes a whole copy)."""
    source = await started(make_journal("sqlite"))
    target = await started(make_journal(kind))
    try:
        await fill(source)
        empty = await rows(target)
        assert not any(empty.values())
        lost = JournalUnavailable(None, "the source went away")
        with pytest.raises(JournalUnavailable, match="the source went away"):
            await target.load(broken(source, 4, lost))
        assert await rows(target) == empty

        async def misfit() -> AsyncIterator[DumpChunk]:
            async for chunk in source.dump():
                yield chunk
            yield "skips", [(1, 2, 3)]

        with pytest.raises(JournalConflict, match="a skips row to load has 3 values, not 7"):
            await target.load(misfit())
        assert await rows(target) == empty

        await target.load(source.dump())
        assert await views(target) == await views(source)
    finally:
        await source.close()
        await target.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_dump_comes_in_bounded_chunks(make_journal: MakeJournal, kind: str) -> None:
    """Big tables come in several chunks, none of them large: memory stays bounded."""
    journal = await started(make_journal(kind))
    try:
        skips = [Skip(n, None, "x", "invalid_phone") for n in range(12_000)]
        await journal.prepare(
            campaign_id="big", type="promo", file="/c/big.toml", fingerprint="f",
            send_at=SEND_AT, deadline=SEND_AT + timedelta(hours=1),
            batches=batches("big", 200, 3), skips=skips)
        sizes: dict[str, list[int]] = {}
        async for table, chunk in journal.dump():
            sizes.setdefault(table, []).append(len(chunk))
        assert sum(sizes["skips"]) == 12_000 and len(sizes["skips"]) >= 3
        assert max(sizes["skips"]) <= 5_000
        assert sum(sizes["bodies"]) == 200 and max(sizes["bodies"]) <= 64
        assert list(sizes) == [t for t in DUMP_TABLES if t in sizes]  # in the fixed order
    finally:
        await journal.close()


async def test_a_copy_that_differs_is_caught(make_journal: MakeJournal) -> None:
    """The final check compares records and counts, and names what differs."""
    source = await started(make_journal("sqlite"))
    target = await started(make_journal("postgres"))
    try:
        await fill(source)
        await target.load(source.dump())
        await target.set_state("later", "paused")
        with pytest.raises(Exception, match=r"campaign 'later'.* differs from the source "
                           r"\(its state\)"):
            await compare(source, target)
    finally:
        await source.close()
        await target.close()


# --- through the real command line -----------------------------------------------------------


def cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m scheduler ARGS`` in ``cwd`` with a clean environment plus ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "scheduler", *args], cwd=cwd, capture_output=True, text=True,
        timeout=120, check=False, env=clean_env(PYTHONPATH=str(REPO), **env),
    )


def password_url(postgres_server: PostgresServer, postgres_url: str) -> str:
    """``postgres_url`` for a role that must give `SECRET` (and owns the database)."""
    postgres_server.add_password_role(ROLE, SECRET)
    database = postgres_url.rsplit("/", 1)[1]
    postgres_server.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
        sql.Identifier(database), sql.Identifier(ROLE)))
    return postgres_url.replace("postgres@", f"{ROLE}@")


def tables(url: str) -> set[str]:
    """The tables in the database at ``url`` (as the trusted superuser)."""
    with psycopg.connect(url.replace(f"{ROLE}@", "postgres@"), connect_timeout=10) as db:
        return {row[0] for row in db.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


@pytest.fixture
def site(tmp_path: Path) -> Workspace:
    """A one-box site: the first release's journal, killed half way through "v1-sale"
    (running: batches done, in flight and pending, outcomes not yet logged), and "spring",
    sent here to done through a sandbox that rejects two phones, with three skipped rows."""
    root = tmp_path / "site"
    shutil.copytree(V1, root)
    with sqlite3.connect(root / "state" / "journal.sqlite3") as db:  # keep it alive
        db.execute("UPDATE campaigns SET deadline = ?",
                   ((datetime.now(UTC) + timedelta(hours=1)).isoformat(),))
    db.close()
    (root / "campaigns" / "v1-sale.toml").rename(root / "v1-sale.toml")
    with sandbox_process("--api-key", API_KEY, "--reject-phone", "+380500000007",
                         "--reject-phone", "+380500000011") as url:
        workspace = Workspace(root, base_url=url)
        workspace.audience("spring", 240, bad_rows=3)
        workspace.write_campaign("spring", utc_seconds_from_now(3600))
        done = cli("send", "campaigns/spring.toml", "--now", "--config", "config.toml",
                   cwd=root, CASCADE_API_KEY=API_KEY)
    assert done.returncode == 0, done.stderr
    (root / "v1-sale.toml").rename(root / "campaigns" / "v1-sale.toml")
    return workspace


async def both(workspace: Workspace, url: str) -> tuple[Journal, Journal]:
    """The site's SQLite journal and the PostgreSQL one, started as readers."""
    source: Journal = SqliteJournal(workspace.journal_path)
    target: Journal = PostgresJournal(url, password=SECRET, location=url)
    await source.start(writer=False)
    await target.start(writer=False)
    return source, target


@pytest.mark.slow
async def test_copy_moves_a_real_journal_and_postgres_finishes_it(
    site: Workspace, postgres_server: PostgresServer, postgres_url: str,
) -> None:
    """The real CLI copies both campaigns; every view of each reads the same on PostgreSQL;
    then `send` against PostgreSQL finishes "v1-sale", sending only what was left, with the
    tracking ids of the snapshot, and keeps every outcome recorded before the copy."""
    url = password_url(postgres_server, postgres_url)
    done = cli("journal", "copy", "--to", url, "--config", "config.toml", cwd=site.root,
               CASCADE_JOURNAL_PASSWORD=SECRET)
    assert done.returncode == 0, done.stderr
    *campaigns, summary = done.stdout.splitlines()
    assert campaigns == [  # by send time: "spring" was sent --now, after the v1 run
        "v1-sale: running (sent 600, skipped 2, pending 600)",
        "spring: done (sent 238, rejected 2, skipped 3)",
    ]
    assert summary.startswith(f"copied 2 campaigns, 1,440 recipients into {url} in ")
    assert summary.endswith("; set [journal] url to it and restart the daemons")
    assert done.stderr == "" and SECRET not in done.stdout

    source, target = await both(site, url)
    try:
        shown = {cid: await target.campaign(cid) for cid in ("spring", "v1-sale")}
        assert await target.campaigns() == await source.campaigns()
        for cid in shown:
            assert await target.counts(cid) == await source.counts(cid)
            for outcome in (None, "sent", "rejected", "skipped"):
                assert ([r async for r in target.recipients(cid, outcome)]
                        == [r async for r in source.recipients(cid, outcome)])
            assert await target.unlogged(cid) == await source.unlogged(cid)
            assert (await target.open_batches(cid, limit=100)
                    == await source.open_batches(cid, limit=100))
        before = {r.tracking_id: r.detail async for r in source.recipients("v1-sale", "sent")}
        left = {m["id"] for b in await source.open_batches("v1-sale", limit=100)
                for m in orjson.loads(b.body)}
    finally:
        await source.close()
        await target.close()
    assert len(before) == 600 and len(left) == 600

    site.journal_url = url
    site.base_url = "sandbox"
    site.write_config()
    finished = cli("send", "campaigns/v1-sale.toml", "--now", "--config", "config.toml",
                   cwd=site.root, CASCADE_JOURNAL_PASSWORD=SECRET)
    assert finished.returncode == 0, finished.stderr
    # the two batches the first release left in flight when it was killed are resent
    assert "v1-sale: done (sent 1,200, skipped 2, resent 200)" in finished.stdout
    resent = [r["trackinId"] for r in json_lines(site.root / "state" / "sandbox.jsonl")]
    assert sorted(resent) == sorted(left)  # each once, the same tracking ids
    _, target = await both(site, url)
    try:
        after = {r.tracking_id: r.detail async for r in target.recipients("v1-sale", "sent")}
        record = await target.campaign("v1-sale")
    finally:
        await target.close()
    assert set(after) == set(before) | left
    assert all(after[tid] == mid for tid, mid in before.items())
    assert record is not None and record.state == "done"
    assert SECRET not in finished.stdout + finished.stderr


def test_copy_into_a_database_with_campaigns_is_refused(
    site: Workspace, postgres_url: str,
) -> None:
    """A second copy into the same database changes nothing and says why in one line."""
    first = cli("journal", "copy", "--to", postgres_url, "--config", "config.toml",
                cwd=site.root)
    assert first.returncode == 0, first.stderr
    with psycopg.connect(postgres_url) as db:
        before = db.execute("SELECT id, state, snapshot FROM campaigns ORDER BY id").fetchall()
        skips = db.execute("SELECT count(*), max(id) FROM skips").fetchone()
    again = cli("journal", "copy", "--to", postgres_url, "--config", "config.toml",
                cwd=site.root)
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr == (f"error: journal: {postgres_url} already holds 2 campaigns: copy "
                            "into an empty database\n")
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT id, state, snapshot FROM campaigns ORDER BY id").fetchall() \
            == before
        assert db.execute("SELECT count(*), max(id) FROM skips").fetchone() == skips


def test_a_running_daemon_makes_the_copy_refuse(tmp_path: Path, postgres_url: str) -> None:
    """The source is taken as the writer: with a daemon on it, the copy stops before it
    touches the target, naming the daemon."""
    workspace = Workspace(tmp_path / "ws")
    workspace.audience("soon", 10)
    workspace.write_campaign("soon", utc_seconds_from_now(3600))
    daemon = DaemonProcess(workspace, PYTHONPATH=str(REPO))  # this checkout, not an install
    try:
        daemon.start()
        refused = cli("journal", "copy", "--to", postgres_url, "--config",
                      str(workspace.config), cwd=tmp_path)
    finally:
        daemon.kill()
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert f"is in use by process {daemon.pid} (cascade-scheduler run)" in refused.stderr
    assert tables(postgres_url) == set()


def test_the_password_is_in_no_output(
    site: Workspace, postgres_server: PostgresServer, postgres_url: str,
) -> None:
    """A wrong password, a password written in the URL, a URL that is not PostgreSQL's:
    one line each, exit 1, never the password; the target is left untouched."""
    url = password_url(postgres_server, postgres_url)
    wrong = cli("journal", "copy", "--to", url, "--config", "config.toml", cwd=site.root,
                CASCADE_JOURNAL_PASSWORD="not-" + SECRET)
    assert wrong.returncode == 1 and wrong.stdout == ""
    assert wrong.stderr.startswith(f"error: journal: cannot connect to {url}")
    assert "password authentication failed" in wrong.stderr
    assert wrong.stderr.count("\n") == 1 and SECRET not in wrong.stderr

    inline = url.replace(f"{ROLE}@", f"{ROLE}:{SECRET}@")
    for given, says in ((inline, "the URL holds a password: remove it"),
                        (inline.replace("postgresql:", "mysql:"), "is not a PostgreSQL URL")):
        refused = cli("journal", "copy", "--to", given, "--config", "config.toml",
                      cwd=site.root, CASCADE_JOURNAL_PASSWORD=SECRET)
        assert refused.returncode == 1 and refused.stdout == ""
        assert refused.stderr.startswith("--to: ") and says in refused.stderr
        assert refused.stderr.count("\n") == 1 and SECRET not in refused.stderr
    assert tables(url) == set()


def test_nothing_to_copy(tmp_path: Path, postgres_url: str) -> None:
    """No journal at [paths].state: one line, and no empty journal made there."""
    workspace = Workspace(tmp_path / "ws")
    refused = cli("journal", "copy", "--to", postgres_url, "--config", str(workspace.config),
                  cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr == (f"[paths].state: no journal at {workspace.journal_path}: "
                              "nothing to copy\n")
    assert not workspace.journal_path.exists()
    assert tables(postgres_url) == set()
