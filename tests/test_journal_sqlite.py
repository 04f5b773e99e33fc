"""The SQLite journal on real files: WAL readers, group commit, schema versions, crashes.

What every backend must do is in test_journal_contract.py; this file keeps what is SQLite's own
(and the first version's finer checks of the synchronous core)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from scheduler.journal import JournalError, JournalUnavailable, Result
from scheduler.journal.sqlite import (
    SCHEMA_VERSION,
    SqliteConnection,
    SqliteJournal,
    encode_batches,
)
from scheduler.records import Skip
from scheduler.vocabulary import OUTCOMES

SEND_AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
DEADLINE = SEND_AT + timedelta(hours=1)
REPO = Path(__file__).resolve().parents[1]


def message(campaign: str, n: int) -> dict[str, Any]:
    """One API body element, as the sending engine builds it."""
    return {
        "id": f"{campaign}-{n}", "fromName": "Brand", "toPhone": f"+38050{n:07d}",
        "messageType": "promo", "text": f"Hello {n}",
    }


def batches(campaign: str, count: int, size: int, start: int = 0) -> Iterator[list[dict[str, Any]]]:
    """``count`` batches of ``size`` messages, numbered from ``start``."""
    for b in range(count):
        first = start + b * size
        yield [message(campaign, n) for n in range(first, first + size)]


def prepare(journal: SqliteConnection, campaign: str, count: int = 4, size: int = 5,
            skips: Sequence[Skip] = (), **kwargs: Any) -> None:
    """Prepare ``campaign`` with ``count`` batches of ``size`` (keywords override the rest)."""
    arguments: dict[str, Any] = {
        "campaign_id": campaign, "type": "promo", "file": f"/c/{campaign}.toml",
        "fingerprint": "f1", "send_at": SEND_AT, "deadline": DEADLINE,
        "batches": batches(campaign, count, size), "skips": skips,
    }
    journal.prepare(**(arguments | kwargs))


def results_for(body: bytes, outcome: Any = "sent") -> list[Result]:
    """A result for every message of a batch body."""
    detail = "mid" if outcome == "sent" else None
    return [Result(m["id"], outcome, detail, 1) for m in orjson.loads(body)]


def table_count(path: Path, table: str) -> int:
    """Rows in a table, read through a separate plain connection."""
    with sqlite3.connect(path) as db:
        count: int = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    db.close()
    return count


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """Where the journal lives (in a folder that does not exist yet)."""
    return tmp_path / "state" / "journal.sqlite3"


@pytest.fixture
def journal(path: Path) -> Iterator[SqliteConnection]:
    """A fresh journal, closed afterwards."""
    with SqliteConnection(path) as j:
        yield j


# --- snapshot ---------------------------------------------------------------------------------


def test_prepare_records_the_snapshot(journal: SqliteConnection) -> None:
    """prepare stores batches and skips and a scheduled record with the sizes."""
    skips = [Skip(3, "c-x", "123", "invalid_phone", "not E.164"), Skip(9, None, "+1", "invalid_id")]
    prepare(journal, "c", count=3, size=4, skips=skips)
    record = journal.campaign("c")
    assert record is not None
    assert (record.state, record.recipients, record.skipped, record.batches) == (
        "scheduled", 12, 2, 3)
    assert record.send_at == SEND_AT and record.deadline == DEADLINE
    assert record.prepared_at is not None and record.prepared_at.utcoffset() == timedelta(0)
    assert record.started_at is None and record.finished_at is None
    assert list(journal.skips("c")) == skips
    assert journal.counts("c") == {
        "sent": 0, "rejected": 0, "expired": 0, "in_doubt": 0, "skipped": 2, "pending": 12,
        "resent": 0}
    assert [m["id"] for m in orjson.loads(journal.open_batches("c")[1].body)] == [
        f"c-{n}" for n in range(4, 8)]


def test_prepare_replaces_an_unstarted_snapshot(journal: SqliteConnection, path: Path) -> None:
    """A second prepare before the start replaces the first entirely, leaving no rows behind."""
    prepare(journal, "c", count=5, size=3, skips=[Skip(2, None, "x", "invalid_phone")])
    prepare(journal, "c", count=2, size=7)
    record = journal.campaign("c")
    assert record is not None and (record.recipients, record.skipped, record.batches) == (14, 0, 2)
    assert len(journal.open_batches("c")) == 2
    assert table_count(path, "snapshots") == 1
    assert table_count(path, "bodies") == 2
    assert table_count(path, "skips") == 0


@pytest.mark.parametrize("state", ["running", "paused", "done", "failed"])
def test_prepare_refused_once_started(journal: SqliteConnection, path: Path, state: str) -> None:
    """A started campaign's snapshot is frozen: prepare raises and changes nothing."""
    prepare(journal, "c", count=2, size=3)
    journal.set_state("c", "running")
    journal.set_state("c", state)  # type: ignore[arg-type]
    with pytest.raises(JournalError, match="started"):
        prepare(journal, "c", count=9, size=9)
    record = journal.campaign("c")
    assert record is not None and record.recipients == 6
    assert table_count(path, "snapshots") == 1


def test_prepare_refused_after_a_started_campaign_was_cancelled(journal: SqliteConnection) -> None:
    """Cancelling a started campaign keeps its progress: restoring must resume, not re-send."""
    prepare(journal, "c")
    journal.set_state("c", "running")
    journal.set_state("c", "cancelled")
    with pytest.raises(JournalError):
        prepare(journal, "c")
    journal.set_state("c", "scheduled")
    with pytest.raises(JournalError):
        prepare(journal, "c")


def test_prepare_allowed_again_when_invalid_or_cancelled_before_start(
    journal: SqliteConnection,
) -> None:
    """A campaign that never started can be re-planned from any state it may be in."""
    prepare(journal, "c")
    for state in ("invalid", "cancelled"):
        journal.set_state("c", state)  # type: ignore[arg-type]
        prepare(journal, "c", count=1, size=2)
        record = journal.campaign("c")
        assert record is not None and (record.state, record.recipients) == ("scheduled", 2)


def test_prepare_streams_in_chunks(journal: SqliteConnection, path: Path) -> None:
    """Earlier batches are written (committed) while later ones are still being produced."""
    seen_while_producing: list[int] = []

    def produce() -> Iterator[list[dict[str, Any]]]:
        for n, batch in enumerate(batches("c", 200, 2)):
            if n == 150:
                seen_while_producing.append(table_count(path, "bodies"))
            yield batch

    prepare(journal, "c", batches=produce())
    assert seen_while_producing[0] >= 128
    record = journal.campaign("c")
    assert record is not None and record.batches == 200


def test_a_failing_audience_keeps_the_old_snapshot(journal: SqliteConnection, path: Path) -> None:
    """An error while producing the new snapshot leaves the previous one whole, no leftovers."""
    prepare(journal, "c", count=2, size=3)

    def broken() -> Iterator[list[dict[str, Any]]]:
        yield from batches("c", 100, 2)
        raise ValueError("the CSV changed under us")

    with pytest.raises(ValueError, match="CSV"):
        prepare(journal, "c", batches=broken())
    record = journal.campaign("c")
    assert record is not None and record.recipients == 6
    assert table_count(path, "snapshots") == 1
    assert table_count(path, "bodies") == 2


def test_naive_times_are_refused(journal: SqliteConnection) -> None:
    """Times without a timezone are a programming error, not silently local time."""
    with pytest.raises(ValueError, match="timezone"):
        prepare(journal, "c", send_at=datetime(2026, 12, 1, 9, 0))


def test_encode_batches_numbers_and_drops_empty() -> None:
    """Bodies are orjson arrays of the messages; empty batches get no sequence number."""
    encoded = list(encode_batches([[message("c", 1)], [], ({"id": "c-2"},)]))
    assert [(batch.seq, batch.size) for batch in encoded] == [(0, 1), (1, 1)]
    assert orjson.loads(encoded[1].body) == [{"id": "c-2"}]
    # keys: ids and phones beside the body; None when a message lacks one (or holds a
    # separator), so the send path decodes that body instead
    assert encoded[0].keys == f"c-1\x1f{message('c', 1)['toPhone']}".encode()
    assert encoded[1].keys is None
    assert encode_batches([[{"id": "a\nb", "toPhone": "+1"}]]).__next__().keys is None


# --- batches and outcomes -------------------------------------------------------------------


def test_open_batches_pages(journal: SqliteConnection) -> None:
    """open_batches pages by seq and leaves out done batches but keeps in-flight ones."""
    prepare(journal, "c", count=10, size=2)
    first = journal.open_batches("c", limit=3)
    assert [b.seq for b in first] == [0, 1, 2]
    assert [b.seq for b in journal.open_batches("c", after_seq=first[-1].seq, limit=3)] == [3, 4, 5]
    journal.mark_in_flight("c", [3, 4])
    fourth = journal.open_batches("c", after_seq=3, limit=1)[0]
    journal.record_results("c", 4, results_for(fourth.body))
    page = journal.open_batches("c", after_seq=2, limit=3)
    assert [(b.seq, b.state, b.attempts) for b in page] == [
        (3, "in_flight", 1), (5, "pending", 0), (6, "pending", 0)]


def test_in_flight_marks_survive_reopening(path: Path) -> None:
    """A mark is durable on return: a new connection after close sees it; release undoes it."""
    with SqliteConnection(path) as journal:
        prepare(journal, "c", count=3, size=2)
        journal.mark_in_flight("c", [0, 2])
    with SqliteConnection(path) as journal:
        states = [(b.seq, b.state, b.attempts) for b in journal.open_batches("c")]
        assert states == [(0, "in_flight", 1), (1, "pending", 0), (2, "in_flight", 1)]
        journal.release("c", [0])
        journal.mark_in_flight("c", [0])
        assert journal.open_batches("c", limit=1)[0].attempts == 2


def test_mark_in_flight_refuses_done_batches_atomically(journal: SqliteConnection) -> None:
    """Marking a closed batch is an engine bug: nothing of that call is written."""
    prepare(journal, "c", count=2, size=2)
    body = journal.open_batches("c")[0].body
    journal.mark_in_flight("c", [0])
    journal.record_results("c", 0, results_for(body))
    with pytest.raises(JournalError, match="open"):
        journal.mark_in_flight("c", [1, 0])
    assert journal.open_batches("c")[0].state == "pending"


def test_results_counts_and_recipients(journal: SqliteConnection) -> None:
    """Outcomes are matched by tracking id; counts add up; recipients carry phones."""
    prepare(journal, "c", count=3, size=4)
    open_ = journal.open_batches("c")
    ids = [m["id"] for m in orjson.loads(open_[0].body)]
    mixed = [
        Result(ids[3], "sent", "uuid-3", 1), Result(ids[0], "rejected", "INVALID_PHONE", 2),
        Result(ids[1], "in_doubt", "timeout", 1), Result(ids[2], "expired", None, 3),
    ]
    journal.mark_in_flight("c", [0, 1])
    journal.record_results("c", 0, mixed)
    journal.record_results("c", 1, results_for(open_[1].body))
    assert journal.counts("c") == {
        "sent": 5, "rejected": 1, "expired": 1, "in_doubt": 1, "skipped": 0, "pending": 4,
        "resent": 0}
    rejected = list(journal.recipients("c", "rejected"))
    assert [(r.tracking_id, r.phone, r.detail, r.attempts) for r in rejected] == [
        ("c-0", "+380500000000", "INVALID_PHONE", 2)]
    sent = list(journal.recipients("c", "sent"))
    assert [r.tracking_id for r in sent] == ["c-3", "c-4", "c-5", "c-6", "c-7"]
    assert sent[0].detail == "uuid-3" and sent[0].phone == "+380500000003"
    assert len(list(journal.recipients("c"))) == 8  # pending rows have no outcome yet


def test_record_results_guards(journal: SqliteConnection) -> None:
    """Results must cover the open batch one to one."""
    prepare(journal, "c", count=2, size=3)
    body = journal.open_batches("c")[0].body
    good = results_for(body)
    with pytest.raises(JournalError, match="3 messages"):
        journal.record_results("c", 0, good[:2])
    with pytest.raises(JournalError, match="distinct"):
        journal.record_results("c", 0, [good[0], good[0], good[1]])
    with pytest.raises(JournalError, match="not open"):
        journal.record_results("c", 7, good)
    journal.record_results("c", 0, good)
    assert journal.record_results("c", 0, good) == 3  # done again after it landed: a no-op
    with pytest.raises(JournalError, match="not open"):
        journal.record_results("c", 0, results_for(body, "rejected"))
    assert journal.counts("c")["sent"] == 3


def test_skipped_recipients(journal: SqliteConnection) -> None:
    """Skipped rows come from their own table, with the reason as detail."""
    skips = [Skip(4, None, "abc", "invalid_phone"), Skip(7, "c-7", "+380500000001", "duplicate")]
    prepare(journal, "c", count=1, size=1, skips=skips)
    rows = list(journal.recipients("c", "skipped"))
    assert [(r.tracking_id, r.phone, r.outcome, r.detail) for r in rows] == [
        ("", "abc", "skipped", "invalid_phone"), ("c-7", "+380500000001", "skipped", "duplicate")]
    assert {r.outcome for r in journal.recipients("c")} == {"skipped"}


def test_every_outcome_is_filterable(journal: SqliteConnection) -> None:
    """recipients(outcome) never mixes outcomes, for each one in OUTCOMES."""
    prepare(journal, "c", count=4, size=1, skips=[Skip(2, None, "x", "invalid_phone")])
    for seq, outcome in enumerate(("sent", "rejected", "expired", "in_doubt")):
        body = journal.open_batches("c", after_seq=seq - 1, limit=1)[0].body
        journal.record_results("c", seq, results_for(body, outcome))
    for outcome in OUTCOMES:
        assert [r.outcome for r in journal.recipients("c", outcome)] == [outcome]


def test_unknown_campaign(journal: SqliteConnection) -> None:
    """Operations on a campaign the journal does not know raise a clear JournalError."""
    assert journal.campaign("nope") is None
    for call in (lambda: journal.counts("nope"), lambda: journal.open_batches("nope"),
                 lambda: journal.set_state("nope", "running")):
        with pytest.raises(JournalError, match="no such campaign"):
            call()


# --- states -------------------------------------------------------------------------------------


def test_state_timestamps(journal: SqliteConnection) -> None:
    """started_at is set once, at the first running; finished_at only in a finished state."""
    prepare(journal, "c")
    journal.set_state("c", "running")
    started = journal.campaign("c")
    assert started is not None and started.started_at is not None
    journal.set_state("c", "backing_off", "HTTP 503 six times")
    journal.set_state("c", "running")
    again = journal.campaign("c")
    assert again is not None and again.started_at == started.started_at and again.error is None
    journal.set_state("c", "failed", "credentials refused (401)")
    failed = journal.campaign("c")
    assert failed is not None and failed.finished_at is None
    assert failed.error == "credentials refused (401)"
    with pytest.raises(JournalError, match="failed campaign cannot become done"):
        journal.set_state("c", "done")  # only a running campaign finishes
    journal.set_state("c", "running")
    journal.set_state("c", "done")
    done = journal.campaign("c")
    assert done is not None and done.finished_at is not None
    assert done.finished_at >= started.started_at  # type: ignore[operator]
    with pytest.raises(ValueError, match="state"):
        journal.set_state("c", "finished")  # type: ignore[arg-type]


def test_campaigns_listed_by_send_time(journal: SqliteConnection) -> None:
    """campaigns() lists every campaign, earliest send time first."""
    prepare(journal, "late", send_at=SEND_AT + timedelta(days=1))
    prepare(journal, "early")
    assert [c.id for c in journal.campaigns()] == ["early", "late"]


# --- durability -----------------------------------------------------------------------------


def test_wal_reader_beside_a_writer(path: Path) -> None:
    """A second connection reads the committed state while the first is mid-transaction."""
    with SqliteConnection(path) as writer:
        prepare(writer, "c", count=2, size=2)
        with writer.transaction():
            writer.mark_in_flight("c", [0])
            with SqliteConnection(path) as reader:  # e.g. `report` in another process
                assert reader.open_batches("c")[0].state == "pending"
                assert reader.counts("c")["pending"] == 4
        with SqliteConnection(path) as reader:
            assert reader.open_batches("c")[0].state == "in_flight"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


def test_newer_schema_is_refused(path: Path) -> None:
    """A journal written by a newer version is not touched."""
    SqliteConnection(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(JournalError, match="newer"):
        SqliteConnection(path)


CRASH_CHILD = textwrap.dedent("""
    import sys
    from datetime import UTC, datetime, timedelta
    from pathlib import Path
    import orjson
    from scheduler.journal import Result
    from scheduler.journal.sqlite import SqliteConnection

    def batches(campaign, count, size):
        for b in range(count):
            yield [{"id": f"{campaign}-{b * size + i}", "toPhone": "+380500000000"}
                   for i in range(size)]

    now = datetime.now(UTC)
    journal = SqliteConnection(Path(sys.argv[1]))
    def prepare(campaign, count):
        journal.prepare(campaign_id=campaign, type="promo", file="f", fingerprint="x",
                        send_at=now, deadline=now + timedelta(hours=1),
                        batches=batches(campaign, count, 50), skips=[])
    prepare("a", 400)
    journal.set_state("a", "running")
    outcomes = ("sent", "rejected", "in_doubt")
    for batch in journal.open_batches("a", limit=400):
        journal.mark_in_flight("a", [batch.seq])
        results = [Result(m["id"], outcomes[batch.seq % 3], None, 1)
                   for m in orjson.loads(batch.body)]
        journal.record_results("a", batch.seq, results)
        if batch.seq % 5 == 0:
            prepare("b", 300)  # a big staged write that the kill may interrupt
        print(batch.seq, flush=True)
""")


def test_sigkill_leaves_a_consistent_journal(path: Path) -> None:
    """A process killed mid-write leaves valid states and counts that add up."""
    path.parent.mkdir(parents=True)
    child = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, str(path)], stdout=subprocess.PIPE, text=True,
        cwd=REPO,
    )
    assert child.stdout is not None
    for _ in range(23):
        assert child.stdout.readline(), "the child died before the kill"
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    with SqliteConnection(path) as journal:
        assert journal._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        record = journal.campaign("a")
        assert record is not None and record.state == "running"
        counts = journal.counts("a")
        assert counts["sent"] + counts["rejected"] + counts["in_doubt"] + counts["pending"] == (
            record.recipients) == 20_000
        assert counts["sent"] >= 8 * 50  # the first 23 batches were acknowledged
        finals = sum(1 for _ in journal.recipients("a"))
        assert finals == record.recipients - counts["pending"]
        states = {row[0] for row in journal._db.execute("SELECT DISTINCT state FROM batch_state")}
        assert states <= {"pending", "in_flight", "done"}
        b = journal.campaign("b")
        assert b is not None and b.recipients == 300 * 50
        assert sum(batch.size for batch in journal.open_batches("b", limit=1000)) == b.recipients
        prepare(journal, "b", count=1, size=1)  # a fresh prepare clears any half-staged one
        orphans = journal._db.execute(
            "SELECT COUNT(*) FROM snapshots WHERE id NOT IN (SELECT snapshot FROM campaigns)"
        ).fetchone()[0]
        assert orphans == 0


# --- SqliteJournal ---------------------------------------------------------------------------


@pytest.fixture
async def ajournal(path: Path) -> Any:
    """A started SqliteJournal with campaign "c" prepared (8 batches of 3)."""
    with SqliteConnection(path) as journal:
        prepare(journal, "c", count=8, size=3)
    aj = SqliteJournal(path)
    await aj.start(writer=True)
    yield aj
    await aj.close()


async def hold_writer(aj: SqliteJournal) -> tuple[threading.Event, asyncio.Task[Any]]:
    """Park the writer thread on an event, so the next operations queue up behind it."""
    release = threading.Event()
    parked = threading.Event()

    def park(_: SqliteConnection) -> None:
        parked.set()
        release.wait(30)

    task = asyncio.ensure_future(aj.executor.run(park))
    await asyncio.to_thread(parked.wait, 30)
    return release, task


async def test_group_commit_groups(ajournal: SqliteJournal) -> None:
    """Operations queued while the writer is busy share ONE commit, and all take effect."""
    release, parked = await hold_writer(ajournal)
    before = ajournal.executor.commits
    marks = [asyncio.ensure_future(ajournal.mark_in_flight("c", [seq])) for seq in range(8)]
    await asyncio.sleep(0)  # let every mark reach the queue
    release.set()
    await asyncio.gather(parked, *marks)
    assert ajournal.executor.commits - before <= 2  # the parked op's group, then the eight marks
    assert [b.state for b in await ajournal.open_batches("c")] == ["in_flight"] * 8


async def test_one_failing_op_fails_only_itself(ajournal: SqliteJournal) -> None:
    """In a group, a failing operation's error reaches its caller; the others commit."""
    release, parked = await hold_writer(ajournal)
    good = asyncio.ensure_future(ajournal.mark_in_flight("c", [0]))
    bad = asyncio.ensure_future(ajournal.mark_in_flight("c", [99]))
    also_good = asyncio.ensure_future(ajournal.set_state("c", "running"))
    await asyncio.sleep(0)
    release.set()
    done = await asyncio.gather(parked, good, bad, also_good, return_exceptions=True)
    assert isinstance(done[2], JournalError)
    assert done[1] is None and done[3].state == "running"
    assert (await ajournal.open_batches("c"))[0].state == "in_flight"
    record = await ajournal.campaign("c")
    assert record is not None and record.state == "running"


async def test_await_returns_after_the_commit(ajournal: SqliteJournal, path: Path) -> None:
    """When a write's await returns, another connection already sees it (it is durable)."""
    await ajournal.mark_in_flight("c", [5])
    with SqliteConnection(path) as other:
        assert [b.seq for b in other.open_batches("c") if b.state == "in_flight"] == [5]


async def test_writes_run_off_the_event_loop_thread(ajournal: SqliteJournal) -> None:
    """SQLite commits happen on the writer thread, never on the loop's thread."""
    writer = await ajournal.executor.run(lambda _: threading.get_ident())
    assert writer != threading.get_ident()
    name = await ajournal.executor.run(lambda _: threading.current_thread().name)
    assert name == "journal-writer"


async def test_async_prepare_lets_other_operations_through(ajournal: SqliteJournal) -> None:
    """While a big snapshot is produced, other campaigns' writes still complete."""
    loop = asyncio.get_running_loop()
    answered: list[int] = []

    def produce() -> Iterator[list[dict[str, Any]]]:
        for n, batch in enumerate(batches("big", 300, 2)):
            if n == 200:  # from the producer thread, ask the writer for something else
                ask = asyncio.run_coroutine_threadsafe(ajournal.counts("c"), loop)
                answered.append(ask.result(timeout=30)["pending"])
            yield batch

    await ajournal.prepare(
        campaign_id="big", type="promo", file="f", fingerprint="x", send_at=SEND_AT,
        deadline=DEADLINE, batches=produce(), skips=[Skip(1, None, "x", "invalid_phone")],
    )
    assert answered == [24]
    record = await ajournal.campaign("big")
    assert record is not None and (record.recipients, record.skipped) == (600, 1)
    skipped = [row async for row in ajournal.recipients("big", "skipped")]
    assert [(row.outcome, row.detail) for row in skipped] == [("skipped", "invalid_phone")]


async def test_async_round_trip(ajournal: SqliteJournal) -> None:
    """The coroutine API covers the whole life of a campaign."""
    await ajournal.set_state("c", "running")
    first = (await ajournal.open_batches("c", limit=1))[0]
    await ajournal.mark_in_flight("c", [first.seq])
    await ajournal.release("c", [first.seq])
    await ajournal.mark_in_flight("c", [first.seq])
    await ajournal.record_results("c", first.seq, results_for(first.body))
    for batch in await ajournal.open_batches("c"):
        await ajournal.record_results("c", batch.seq, results_for(batch.body, "expired"))
    counts = await ajournal.counts("c")
    assert (counts["sent"], counts["expired"], counts["pending"]) == (3, 21, 0)
    assert [r.attempts async for r in ajournal.recipients("c", "sent")] == [1, 1, 1]
    await ajournal.set_state("c", "expired")
    assert [c.state for c in await ajournal.campaigns()] == ["expired"]


async def test_close_finishes_queued_work(path: Path) -> None:
    """close() runs what was queued before it; nothing is accepted afterwards."""
    aj = SqliteJournal(path)
    await aj.start(writer=True)
    pending = asyncio.ensure_future(aj.prepare(
        campaign_id="c", type="promo", file="f", fingerprint="x", send_at=SEND_AT,
        deadline=DEADLINE, batches=batches("c", 2, 2), skips=[],
    ))
    await pending
    write = asyncio.ensure_future(aj.mark_in_flight("c", [0]))
    await asyncio.sleep(0)
    await aj.close()
    await write
    with pytest.raises(RuntimeError, match="not running"):
        await aj.counts("c")
    with SqliteConnection(path) as journal:
        assert journal.open_batches("c")[0].state == "in_flight"


async def test_start_reports_an_unusable_path(tmp_path: Path) -> None:
    """A journal path that cannot be opened fails start() itself, with the interface's error
    (never the driver's) naming the path and the real cause."""
    (tmp_path / "dir.sqlite3").mkdir()
    aj = SqliteJournal(tmp_path / "dir.sqlite3")
    with pytest.raises(JournalUnavailable, match=r"dir\.sqlite3: unable to open") as caught:
        await aj.start(writer=True)
    assert not isinstance(caught.value, sqlite3.Error)
    await aj.close()  # nothing to close: returns at once
