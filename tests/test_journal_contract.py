"""The storage contract: what every journal backend must do, run against each one unchanged.

Only the `Journal` interface is used here (no SQL, no driver), so a new backend joins by adding
itself to `BACKENDS` and passing this file as it is. SQLite-only behaviour (WAL readers, the
writer lock, group commit) is in test_journal_sqlite.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from scheduler.journal import (
    EncodedBatch,
    FinalStatus,
    Journal,
    JournalBusy,
    JournalConflict,
    JournalFenced,
    Result,
    Results,
    Run,
    StatusReport,
)
from scheduler.journal.codec import encode_batch, split_keys
from scheduler.journal.postgres import PostgresJournal
from scheduler.journal.sqlite import SqliteJournal
from scheduler.records import Skip
from scheduler.vocabulary import OUTCOMES, Outcome
from tests.journal_helpers import (
    DEADLINE,
    SEND_AT,
    batches,
    indexed_message,
    message,
    prepare,
    record_status,
    results,
)

BACKENDS = ["sqlite", "postgres"]

MakeJournal = Callable[[], Journal]


async def expire_rest(journal: Journal, campaign: str) -> int:
    """Close every open batch as expired, as the engine does past the deadline."""
    expired = 0
    while page := await journal.open_batches(campaign):
        for batch in page:
            closing = [r for r in results(batch.body, "expired")
                       if r.tracking_id not in batch.decided]
            await journal.record_results(campaign, batch.seq, closing)
            expired += len(closing)
    return expired


async def rows(journal: Journal, campaign: str, outcome: Outcome | None = None) -> list[Any]:
    """(tracking_id, outcome) of every listed recipient, in listing order."""
    return [(r.tracking_id, r.outcome) async for r in journal.recipients(campaign, outcome)]


@pytest.fixture(params=BACKENDS)
def make_journal(request: pytest.FixtureRequest, tmp_path: Path) -> MakeJournal:
    """A factory of (unstarted) journals that all open the same store."""
    if request.param == "sqlite":
        return lambda: SqliteJournal(tmp_path / "state" / "journal.sqlite3")
    if request.param == "postgres":  # the server starts with the first test that needs it
        url: str = request.getfixturevalue("postgres_url")
        return lambda: PostgresJournal(url, location=url)
    raise AssertionError(f"unknown backend {request.param}")


@pytest.fixture
async def journal(make_journal: MakeJournal) -> AsyncIterator[Journal]:
    """A started writer journal, closed at the end."""
    started = make_journal()
    await started.start(writer=True)
    yield started
    await started.close()


# --- snapshots ----------------------------------------------------------------------------


async def test_prepare_records_the_snapshot(journal: Journal) -> None:
    """A snapshot lands "scheduled" with its sizes, times, batches and skipped rows."""
    skips = [Skip(3, "c-x", "123", "invalid_phone", "not E.164"),
             Skip(9, None, "+1", "invalid_id")]
    await prepare(journal, "c", count=3, size=4, skips=skips)
    record = await journal.campaign("c")
    assert record is not None
    assert (record.state, record.recipients, record.skipped, record.batches) == (
        "scheduled", 12, 2, 3)
    assert (record.send_at, record.deadline) == (SEND_AT, DEADLINE)
    assert record.started_at is None and record.finished_at is None and record.stage == 0
    opened = await journal.open_batches("c")
    assert [b.seq for b in opened] == [0, 1, 2]
    assert [m["id"] for m in orjson.loads(opened[1].body)] == [f"c-{n}" for n in range(4, 8)]
    assert {(b.state, b.attempts, b.size) for b in opened} == {("pending", 0, 4)}
    assert await rows(journal, "c", "skipped") == [("c-x", "skipped"), ("", "skipped")]
    assert [r.detail async for r in journal.recipients("c", "skipped")] == [
        "invalid_phone", "invalid_id"]
    # a skipped row is found again by its CSV line (issue 9, item 6)
    assert [r.line async for r in journal.recipients("c", "skipped")] == [3, 9]


async def test_a_campaign_keeps_the_account_it_was_planned_for(journal: Journal) -> None:
    """The account is kept with the snapshot (schema 10, SPEC §13.3): a whole snapshot, a
    streamed one, and "default" when none is given; an unstarted campaign planned again
    takes the new one, a started one keeps its own."""
    await prepare(journal, "a", account="brand-a")
    await prepare(journal, "d")
    await journal.open_stream(campaign_id="s", type="promo", file="/c/s.toml", fingerprint="f",
                              send_at=SEND_AT, deadline=DEADLINE, account="brand-b")
    accounts = {record.id: record.account for record in await journal.campaigns()}
    assert accounts == {"a": "brand-a", "d": "default", "s": "brand-b"}
    await prepare(journal, "a", account="brand-c")
    started = await journal.set_state("a", "running")
    assert started.account == "brand-c"
    with pytest.raises(JournalConflict):
        await prepare(journal, "a", account="brand-a")
    record = await journal.campaign("a")
    assert record is not None and record.account == "brand-c"


async def test_a_new_snapshot_replaces_an_unstarted_one_whole(journal: Journal) -> None:
    """Re-preparing swaps in the new batches and skips; nothing of the old one is left."""
    await prepare(journal, "c", count=4, size=5, skips=[Skip(1, None, "x", "duplicate")])
    await prepare(journal, "c", count=2, size=3, fingerprint="f2")
    record = await journal.campaign("c")
    assert record is not None and (record.fingerprint, record.recipients, record.skipped) == (
        "f2", 6, 0)
    assert len(await journal.open_batches("c")) == 2
    assert await rows(journal, "c", "skipped") == []


async def test_a_failing_snapshot_leaves_the_old_one(journal: Journal) -> None:
    """An audience that breaks half way (a CSV gone bad) never replaces the snapshot."""
    await prepare(journal, "c", count=2, size=5)

    def broken() -> Iterator[list[dict[str, Any]]]:
        yield [message("c", 100)]
        raise OSError("the CSV vanished")

    with pytest.raises(OSError, match="vanished"):
        await prepare(journal, "c", batches=broken(), fingerprint="f2")
    record = await journal.campaign("c")
    assert record is not None and (record.fingerprint, record.recipients) == ("f1", 10)
    assert [b.seq for b in await journal.open_batches("c")] == [0, 1]


async def test_a_started_snapshot_is_frozen(journal: Journal) -> None:
    """Once running, prepare is refused and the snapshot stays as it was."""
    await prepare(journal, "c")
    await journal.set_state("c", "running")
    with pytest.raises(JournalConflict, match="started"):
        await prepare(journal, "c", count=1, fingerprint="f2")
    record = await journal.campaign("c")
    assert record is not None and record.fingerprint == "f1" and record.batches == 4


def encoded(campaign: str, first: int, count: int, size: int = 5) -> list[EncodedBatch]:
    """Batches ``first`` .. ``first + count - 1`` as `Journal.extend` takes them."""
    every = list(batches(campaign, first + count, size))
    return [encode_batch(seq, every[seq]) for seq in range(first, first + count)]


async def open_stream(journal: Journal, campaign: str, fingerprint: str = "s1") -> None:
    """Swap in an empty streaming snapshot for ``campaign``."""
    await journal.open_stream(
        campaign_id=campaign, type="promo", file=f"/c/{campaign}.toml",
        fingerprint=fingerprint, send_at=SEND_AT, deadline=DEADLINE,
    )


async def test_a_streamed_snapshot_grows_while_the_campaign_sends(journal: Journal) -> None:
    """`send --now`: an empty snapshot swapped in, appended to after the start, then whole."""
    await prepare(journal, "c", count=3)
    await open_stream(journal, "c")
    record = await journal.campaign("c")
    assert record is not None and record.streaming and record.fingerprint == "s1"
    assert (record.state, record.recipients, record.skipped, record.batches) == (
        "scheduled", 0, 0, 0)
    assert await journal.open_batches("c") == []  # nothing of the old snapshot is left
    await journal.extend("c", encoded("c", 0, 2), [Skip(4, None, "x", "invalid_phone")])
    await journal.set_state("c", "running")  # sending starts with what is there
    batch = (await journal.open_batches("c"))[0]
    await journal.mark_in_flight("c", [batch.seq])
    await journal.record_results("c", batch.seq, results(batch.body))
    await journal.extend("c", encoded("c", 2, 1), [])
    record = await journal.campaign("c")
    assert record is not None and record.streaming
    assert (record.recipients, record.skipped, record.batches) == (15, 1, 3)
    assert [b.seq for b in await journal.open_batches("c")] == [1, 2]
    assert (await journal.counts("c"))["pending"] == 10
    await journal.close_stream("c")
    record = await journal.campaign("c")
    assert record is not None and not record.streaming and record.batches == 3
    assert await rows(journal, "c", "skipped") == [("", "skipped")]
    with pytest.raises(JournalConflict, match="not being streamed"):
        await journal.extend("c", encoded("c", 3, 1), [])
    with pytest.raises(JournalConflict, match="not being streamed"):
        await journal.close_stream("c")


async def test_a_batch_keeps_its_ids_and_phones_beside_its_body(journal: Journal) -> None:
    """The send path reads a batch's tracking ids and phones without decoding its body; a
    batch stored without them (an older snapshot) reads back None."""
    await prepare(journal, "c", count=2, size=3)
    first = (await journal.open_batches("c"))[0]
    assert first.keys is not None
    assert split_keys(first.keys) == (["c-0", "c-1", "c-2"],
                                      ["+380500000000", "+380500000001", "+380500000002"])
    await open_stream(journal, "d")
    body = orjson.dumps([message("d", 0)])
    await journal.extend("d", [EncodedBatch(0, body, 1, None)], [])
    (stored,) = await journal.open_batches("d")
    assert stored.keys is None and stored.body == body


async def test_a_streamed_batch_must_follow_on(journal: Journal) -> None:
    """A resumed stream that lost its place is refused whole: no batch is stored twice."""
    await open_stream(journal, "c")
    await journal.extend("c", encoded("c", 0, 2), [])
    for wrong in (encoded("c", 1, 2), encoded("c", 3, 1)):
        with pytest.raises(JournalConflict, match="does not follow on"):
            await journal.extend("c", wrong, [Skip(9, None, "x", "duplicate")])
    record = await journal.campaign("c")
    assert record is not None and (record.batches, record.recipients, record.skipped) == (
        2, 10, 0)


async def test_a_started_campaign_cannot_open_a_stream(journal: Journal) -> None:
    """A started snapshot is frozen: open_stream is refused like prepare."""
    await prepare(journal, "c")
    await journal.set_state("c", "running")
    with pytest.raises(JournalConflict, match="started"):
        await open_stream(journal, "c", fingerprint="s2")
    record = await journal.campaign("c")
    assert record is not None and not record.streaming and record.batches == 4


async def test_campaigns_by_send_time_then_id(journal: Journal) -> None:
    """The listing is ordered by send time, then id."""
    await prepare(journal, "late", send_at=SEND_AT + timedelta(hours=2))
    await prepare(journal, "b")
    await prepare(journal, "a")
    assert [r.id for r in await journal.campaigns()] == ["a", "b", "late"]


# --- states -------------------------------------------------------------------------------


async def test_states_stamp_their_times(journal: Journal) -> None:
    """started_at once, at the first "running"; finished_at only when it finished."""
    await prepare(journal, "c")
    first = await journal.set_state("c", "running")
    assert first.state == "running" and first.started_at is not None
    await journal.set_state("c", "backing_off", "HTTP 503 six times")
    again = await journal.set_state("c", "running")
    assert again.started_at == first.started_at and again.error is None
    failed = await journal.set_state("c", "failed", "credentials refused")
    assert failed.error == "credentials refused" and failed.finished_at is None
    await journal.set_state("c", "running")
    done = await journal.set_state("c", "done")
    assert done.finished_at is not None and done.finished_at >= first.started_at  # type: ignore[operator]


async def test_illegal_moves_are_refused(journal: Journal) -> None:
    """A finished campaign never moves; only a running one finishes; unknown ids are refused."""
    await prepare(journal, "c")
    with pytest.raises(JournalConflict, match="scheduled campaign cannot become done"):
        await journal.set_state("c", "done")
    await journal.set_state("c", "running")
    await journal.set_state("c", "expired")
    for target in ("running", "scheduled", "paused", "cancelled"):
        with pytest.raises(JournalConflict, match="expired campaign cannot become"):
            await journal.set_state("c", target)  # type: ignore[arg-type]
    record = await journal.campaign("c")
    assert record is not None and record.state == "expired"
    with pytest.raises(JournalConflict, match="no such campaign"):
        await journal.set_state("nope", "running")


# --- batches: in flight, partial and final outcomes ---------------------------------------


async def test_in_flight_marks_and_release(journal: Journal) -> None:
    """A mark counts an attempt and survives as "in_flight"; release puts it back."""
    await prepare(journal, "c")
    await journal.mark_in_flight("c", [0, 2])
    opened = {b.seq: b for b in await journal.open_batches("c")}
    assert (opened[0].state, opened[0].attempts) == ("in_flight", 1)
    assert (opened[1].state, opened[1].attempts) == ("pending", 0)
    await journal.release("c", [0])
    opened = {b.seq: b for b in await journal.open_batches("c")}
    assert (opened[0].state, opened[0].attempts) == ("pending", 1)
    assert opened[2].state == "in_flight"


async def test_marking_a_closed_batch_marks_nothing(journal: Journal) -> None:
    """Marking [open, closed] fails whole: the open one is not marked either."""
    await prepare(journal, "c")
    first = (await journal.open_batches("c", limit=1))[0]
    await journal.mark_in_flight("c", [0])
    await journal.record_results("c", 0, results(first.body))
    with pytest.raises(JournalConflict, match="open"):
        await journal.mark_in_flight("c", [1, 0])
    batch = (await journal.open_batches("c", limit=1))[0]
    assert (batch.seq, batch.state, batch.attempts) == (1, "pending", 0)


async def test_open_batches_pages_after_a_seq(journal: Journal) -> None:
    """Paging by ``after_seq`` and ``limit`` walks the open batches in order."""
    await prepare(journal, "c", count=5, size=1)
    assert [b.seq for b in await journal.open_batches("c", -1, 2)] == [0, 1]
    assert [b.seq for b in await journal.open_batches("c", 1, 2)] == [2, 3]
    assert [b.seq for b in await journal.open_batches("c", 3, 10)] == [4]


async def test_partial_then_final_outcomes(journal: Journal) -> None:
    """Outcomes decided half way are kept (never resent); the rest close the batch later."""
    await prepare(journal, "c", count=2, size=4)
    batch = (await journal.open_batches("c", limit=1))[0]
    await journal.mark_in_flight("c", [0])
    decided = results(batch.body, "rejected", only=1)
    assert await journal.record_partial("c", 0, decided) == 1
    again = (await journal.open_batches("c", limit=1))[0]
    assert again.state == "pending" and again.decided == frozenset({"c-0"})
    partly = await journal.counts("c")  # the decided one is not pending any more
    assert (partly["rejected"], partly["pending"]) == (1, 7)
    rest = [r for r in results(batch.body) if r.tracking_id != "c-0"]
    assert await journal.record_results("c", 0, rest) == 4
    assert [b.seq for b in await journal.open_batches("c")] == [1]
    counts = await journal.counts("c")
    assert (counts["sent"], counts["rejected"], counts["pending"]) == (3, 1, 4)
    assert await rows(journal, "c") == [("c-0", "rejected"), ("c-1", "sent"),
                                        ("c-2", "sent"), ("c-3", "sent")]


async def test_runs_are_stored_as_their_rows(journal: Journal) -> None:
    """`Results` as the engine builds them (a run per answer, split half or expiry) count and
    list exactly as the same outcomes given a `Result` per message; a doubled id across runs
    is refused."""
    await prepare(journal, "c", count=2, size=4)
    second = (await journal.open_batches("c", limit=2))[1]
    ids = [f"c-{n}" for n in range(4)]
    phones = ["+380500000000"] * 4
    doubled = Results([Run("sent", 1, ids[:2], ["m0", "m1"], phones[:2]),
                       Run("rejected", 2, ids[1:], ["E1"] * 3, phones[1:])])
    with pytest.raises(JournalConflict, match="distinct"):
        await journal.record_results("c", 0, doubled)
    runs = Results([Run("sent", 1, ids[:2], ["m0", "m1"], phones[:2]),
                    Run("rejected", 2, ids[2:3], ["E1"], phones[2:3]),
                    Run("sent", 3, ids[3:], ["m3"], phones[3:])])
    assert list(runs) == [Result("c-0", "sent", "m0", 1, phones[0]),
                          Result("c-1", "sent", "m1", 1, phones[0]),
                          Result("c-2", "rejected", "E1", 2, phones[0]),
                          Result("c-3", "sent", "m3", 3, phones[0])]
    assert Results.of(list(runs)).stored() == runs.stored()
    with pytest.raises(ValueError, match="2 details"):  # a column short: a bug, never stored
        Results([Run("sent", 1, ids[:1], ["m0", "m1"], phones[:1])])
    assert await journal.record_results("c", 0, runs) == 4
    await journal.record_results("c", 1, list(Results.of(results(second.body))))
    counts = await journal.counts("c")
    assert (counts["sent"], counts["rejected"], counts["pending"]) == (7, 1, 0)
    listed = [(r.tracking_id, r.outcome, r.detail, r.attempts)
              async for r in journal.recipients("c")]
    assert listed[:4] == [("c-0", "sent", "m0", 1), ("c-1", "sent", "m1", 1),
                          ("c-2", "rejected", "E1", 2), ("c-3", "sent", "m3", 3)]


async def test_each_listed_outcome_has_its_time_and_skips_have_none(journal: Journal) -> None:
    """`recipients` gives each final outcome the time its batch was done (an aware UTC
    moment, for `report --status sent`); skipped rows never went out: no time (issue 24,
    item 15)."""
    await prepare(journal, "c", count=1, size=3, skips=[Skip(7, "c-x", "+1", "invalid_id")])
    (batch,) = await journal.open_batches("c")
    before = datetime.now(UTC) - timedelta(seconds=5)  # the database's clock, near ours
    await journal.record_results("c", batch.seq, results(batch.body))
    listed = [r async for r in journal.recipients("c")]
    assert [r.outcome for r in listed] == ["sent", "sent", "sent", "skipped"]
    times = {r.at for r in listed[:3]}
    (at,) = times
    assert at is not None and at.utcoffset() == timedelta(0)
    assert before <= at <= datetime.now(UTC) + timedelta(seconds=5)
    assert listed[3].at is None


async def test_a_batch_posted_before_is_doubtful_until_closed(journal: Journal) -> None:
    """In flight (left so by a stopped process) means doubtful; released after an ambiguous
    answer stays doubtful, whatever later releases say, partial records too; a clean release
    of a batch never doubted leaves it clean (issue 23: a resend must be known as one)."""
    await prepare(journal, "c", count=3, size=2)
    assert {b.doubtful for b in await journal.open_batches("c")} == {False}
    await journal.mark_in_flight("c", [0, 1, 2])
    assert {b.doubtful for b in await journal.open_batches("c")} == {True}
    await journal.release("c", [0], doubtful=True)
    await journal.release("c", [1])
    third = (await journal.open_batches("c"))[2]
    await journal.record_partial("c", 2, results(third.body, only=1), doubtful=True)
    opened = {b.seq: b for b in await journal.open_batches("c")}
    assert {seq: (b.state, b.doubtful) for seq, b in opened.items()} == {
        0: ("pending", True), 1: ("pending", False), 2: ("pending", True)}
    await journal.mark_in_flight("c", [0])
    await journal.release("c", [0])  # a later, certain failure does not clear the doubt
    assert (await journal.open_batches("c", limit=1))[0].doubtful


async def test_resent_messages_are_counted_listed_and_logged(journal: Journal) -> None:
    """Outcomes of messages posted again after an ambiguous outcome keep that mark: counted
    as ``resent`` (and in their outcome), listed alone with ``resent=True``, carried to the
    unlogged rows, across partial records (issue 23)."""
    await prepare(journal, "c", count=2, size=4)
    ids = [f"c-{n}" for n in range(4)]
    phones = [f"+38050{n:07d}" for n in range(4)]
    await journal.record_partial("c", 0, Results([
        Run("sent", 1, ids[:1], ["m0"], phones[:1]),
        Run("sent", 2, ids[1:2], ["m1"], phones[1:2], resent=True),
    ]), doubtful=True)
    await journal.record_results("c", 0, [
        Result("c-2", "rejected", "E1", 3, phones[2], resent=True),
        Result("c-3", "sent", "m3", 3, phones[3]),
    ])
    counts = await journal.counts("c")
    assert (counts["sent"], counts["rejected"], counts["resent"], counts["pending"]) == (
        3, 1, 2, 4)
    again = [(r.tracking_id, r.outcome, r.detail, r.attempts, r.phone, r.resent)
             async for r in journal.recipients("c", resent=True)]
    assert again == [("c-1", "sent", "m1", 2, phones[1], True),
                     ("c-2", "rejected", "E1", 3, phones[2], True)]
    assert [r.tracking_id async for r in journal.recipients("c", "sent", resent=True)] == [
        "c-1"]
    assert [r.resent async for r in journal.recipients("c")] == [False, True, True, False]
    unlogged = await journal.unlogged("c")
    assert [(r.tracking_id, r.resent) for r in unlogged[0].rows] == [
        ("c-0", False), ("c-1", True), ("c-2", True), ("c-3", False)]
    await journal.record_results("c", 1, results(
        (await journal.open_batches("c", limit=1))[0].body))
    assert (await journal.counts("c"))["resent"] == 2


async def test_a_wrong_result_set_keeps_nothing(journal: Journal) -> None:
    """Too few results, a doubled id, or a closed batch: refused, and nothing is recorded."""
    await prepare(journal, "c", count=2, size=3)
    batch = (await journal.open_batches("c", limit=1))[0]
    full = results(batch.body)
    with pytest.raises(JournalConflict, match="3 messages"):
        await journal.record_results("c", 0, full[:2])
    with pytest.raises(JournalConflict, match="distinct"):
        await journal.record_results("c", 0, [full[0], full[0], full[1]])
    assert (await journal.counts("c"))["sent"] == 0
    assert (await journal.open_batches("c", limit=1))[0].decided == frozenset()
    await journal.record_results("c", 0, full)
    with pytest.raises(JournalConflict, match="not open"):
        await journal.record_results("c", 0, results(batch.body, "rejected"))
    assert (await journal.counts("c"))["sent"] == 3


async def test_a_record_done_again_after_it_landed_changes_nothing(journal: Journal) -> None:
    """Issue 23 item 7: a write whose commit's answer was lost is done again on a new
    connection; finding its own results there, it returns the same count instead of
    "batch N is not open" (partial records alike), and nothing is counted twice."""
    await prepare(journal, "c", count=2, size=4)
    first, second = await journal.open_batches("c", limit=2)
    await journal.mark_in_flight("c", [0, 1])
    whole = results(first.body)
    assert await journal.record_results("c", 0, whole) == 4
    assert await journal.record_results("c", 0, whole) == 4
    decided = results(second.body, "rejected", only=1)
    assert await journal.record_partial("c", 1, decided) == 1
    assert await journal.record_partial("c", 1, decided) == 1
    rest = [r for r in results(second.body) if r.tracking_id != "c-4"]
    assert await journal.record_results("c", 1, rest) == 4
    assert await journal.record_results("c", 1, rest) == 4
    with pytest.raises(JournalConflict, match="not open"):
        await journal.record_results("c", 1, rest[:2])  # the same ids, not the same write
    counts = await journal.counts("c")
    assert (counts["sent"], counts["rejected"], counts["pending"]) == (7, 1, 0)
    assert [r[0] for r in await rows(journal, "c")] == [f"c-{n}" for n in range(8)]


async def test_expiring_what_is_left(journal: Journal) -> None:
    """Past the deadline every open message is expired; decided ones keep their outcome."""
    await prepare(journal, "c", count=3, size=2)
    batch = (await journal.open_batches("c", limit=1))[0]
    await journal.record_partial("c", 0, results(batch.body, only=1))
    assert await expire_rest(journal, "c") == 5
    counts = await journal.counts("c")
    assert (counts["sent"], counts["expired"], counts["pending"]) == (1, 5, 0)
    assert await journal.open_batches("c") == []
    expired = [r.tracking_id async for r in journal.recipients("c", "expired")]
    assert expired == ["c-1", "c-2", "c-3", "c-4", "c-5"]


async def test_counts_and_filters_cover_every_outcome(journal: Journal) -> None:
    """Each outcome is counted and listed on its own; the full listing has every recipient."""
    skipped = [Skip(7, "c-s", "+380", "suppressed")]
    await prepare(journal, "c", count=4, size=2, skips=skipped)
    for seq, outcome in enumerate(("sent", "rejected", "in_doubt")):
        batch = (await journal.open_batches("c", seq - 1, 1))[0]
        await journal.record_results("c", seq, results(batch.body, outcome))  # type: ignore[arg-type]
    await expire_rest(journal, "c")
    counts = await journal.counts("c")
    assert {k: counts[k] for k in OUTCOMES} == {
        "sent": 2, "rejected": 2, "in_doubt": 2, "expired": 2, "skipped": 1}
    assert counts["pending"] == 0
    for outcome in OUTCOMES:
        listed = await rows(journal, "c", outcome)
        assert len(listed) == counts[outcome] and {o for _, o in listed} == {outcome}
    everyone = await rows(journal, "c")
    assert len(everyone) == 9 and everyone[-1] == ("c-s", "skipped")


async def test_recipients_stream_a_large_campaign_in_order(journal: Journal) -> None:
    """Hundreds of batches and thousands of skips come back whole and in order."""
    skips = [Skip(n, f"s-{n}", "x", "duplicate") for n in range(25_000)]
    await prepare(journal, "c", count=300, size=3, skips=skips)
    await journal.set_state("c", "running")
    await expire_rest(journal, "c")
    listed = await rows(journal, "c")
    assert len(listed) == 900 + 25_000
    assert [t for t, _ in listed[:900]] == [f"c-{n}" for n in range(900)]
    assert [t for t, _ in listed[900:]] == [f"s-{n}" for n in range(25_000)]


# --- the delivery log's bookkeeping -------------------------------------------------------


async def test_unlogged_outcomes_until_marked(journal: Journal) -> None:
    """What was journaled but not marked logged comes back once, then no more."""
    await prepare(journal, "c", count=2, size=2)
    assert not await journal.skips_logged("c")
    await journal.mark_skips_logged("c")
    assert await journal.skips_logged("c")
    batch = (await journal.open_batches("c", limit=1))[0]
    held = await journal.record_results("c", 0, results(batch.body))
    pending = await journal.unlogged("c")
    assert [(b.seq, b.held) for b in pending] == [(0, held)]
    assert [(r.tracking_id, r.phone, r.outcome) for r in pending[0].rows] == [
        ("c-0", "+380500000000", "sent"), ("c-1", "+380500000001", "sent")]
    await journal.mark_logged("c", [(0, held)])
    assert await journal.unlogged("c") == []


# --- durability ---------------------------------------------------------------------------


async def test_everything_survives_reopening(make_journal: MakeJournal) -> None:
    """What a call returned is there after the journal is closed and opened again."""
    first = make_journal()
    await first.start(writer=True)
    await prepare(first, "c", count=2, size=2)
    await first.set_state("c", "running")
    batch = (await first.open_batches("c", limit=1))[0]
    await first.mark_in_flight("c", [0, 1])
    await first.record_results("c", 0, results(batch.body))
    await first.close()

    second = make_journal()
    await second.start(writer=True)
    try:
        record = await second.campaign("c")
        assert record is not None and record.state == "running"
        assert [(b.seq, b.state) for b in await second.open_batches("c")] == [(1, "in_flight")]
        assert (await second.counts("c"))["sent"] == 2
    finally:
        await second.close()


async def test_a_reader_sees_the_writer(make_journal: MakeJournal, journal: Journal) -> None:
    """A reader (report, plan, status) opens beside a running writer and sees its commits."""
    await prepare(journal, "c")
    reader = make_journal()
    await reader.start(writer=False)
    try:
        record = await reader.campaign("c")
        assert record is not None and record.recipients == 20
        await journal.set_state("c", "running")
        fresh = await reader.campaign("c")
        assert fresh is not None and fresh.state == "running"
    finally:
        await reader.close()


# --- send windows and frequency caps (SPEC §11.4) ------------------------------------------


async def test_batches_keep_their_zones(journal: Journal) -> None:
    """A windowed snapshot's zones come back with each open batch; others have none."""
    await prepare(journal, "w", count=3, size=2, zones=["Europe/Kyiv", None, "America/New_York"])
    assert [b.zones for b in await journal.open_batches("w")] == [
        "Europe/Kyiv", None, "America/New_York"]
    await prepare(journal, "plain", count=1, size=2)
    assert [b.zones for b in await journal.open_batches("plain")] == [None]


async def test_a_frequency_cap_skips_inside_a_batch(journal: Journal) -> None:
    """Messages skipped when about to go count as skipped (never pending), are listed with
    the skipped rows, and reach the delivery log once like every other outcome."""
    skip = Skip(3, None, "+1", "invalid_phone", "bad")
    await prepare(journal, "c", count=1, size=3, skips=[skip])
    body = (await journal.open_batches("c"))[0].body
    sent = results(body, only=2)
    capped = [r._replace(outcome="skipped", detail="frequency_cap")
              for r in results(body)[2:]]
    await journal.record_results("c", 0, sent + capped)
    assert await journal.counts("c") == {
        "sent": 2, "rejected": 0, "expired": 0, "in_doubt": 0, "skipped": 2, "pending": 0,
        "resent": 0}
    listed = [(r.tracking_id, r.detail) async for r in journal.recipients("c", "skipped")]
    assert listed == [(capped[0].tracking_id, "frequency_cap"), ("", "invalid_phone")]
    assert [len(b.rows) for b in await journal.unlogged("c")] == [3]
    await journal.mark_logged("c", [(0, 3)])
    assert await journal.unlogged("c") == []


# --- per-message rows, off the hot path ---------------------------------------------------


async def test_index_messages_by_message_id_and_phone(journal: Journal) -> None:
    """Sent messages become findable by messageId and countable by phone, type and time."""
    await prepare(journal, "a", count=2, size=2)
    await prepare(journal, "t", count=1, size=2, type="transaction")
    before = datetime.now(UTC) - timedelta(seconds=1)
    for campaign in ("a", "t"):
        batch = (await journal.open_batches(campaign, limit=1))[0]
        await journal.record_results(campaign, 0, results(batch.body))
    batch = (await journal.open_batches("a", limit=1))[0]
    await journal.record_results("a", 1, results(batch.body, "rejected"))
    indexed = 0
    while count := await journal.index_messages(max_batches=1):
        indexed += count
    assert indexed == 3  # every closed batch once, the rejected one included (nothing in it)
    found = await indexed_message(journal, "mid-a-1")
    assert found is not None
    assert (found.campaign, found.tracking_id, found.phone, found.type) == (
        "a", "a-1", "+380500000001", "promo")
    assert found.sent_at >= before
    assert await indexed_message(journal, "mid-a-2") is None  # rejected: never sent
    # frequency caps: the phones with at least N sends of some types since a moment, in order
    assert await journal.capped_phones(["promo"], before, 1) == ["+380500000000",
                                                                "+380500000001"]
    assert await journal.capped_phones(["promo"], before, 2) == []
    assert await journal.capped_phones(["promo", "transaction"], before, 2) == [
        "+380500000000", "+380500000001"]
    assert await journal.capped_phones(["promo"], before, 1, after="+380500000000") == [
        "+380500000001"]
    assert await journal.capped_phones(["promo"], before, 1, limit=1) == ["+380500000000"]
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert await journal.capped_phones(["promo"], later, 1) == []
    assert await journal.index_messages() == 0


async def test_sent_messages_not_yet_indexed_are_listed_by_phone(journal: Journal) -> None:
    """Until `index_messages` copies a closed batch, its sent messages' phones are what
    `unindexed_phones` lists (types and time as `capped_phones` counts them, pages of batches
    included); once indexed, `capped_phones` counts them and they are listed no more."""
    await prepare(journal, "a", count=20, size=2)
    await prepare(journal, "t", count=1, size=2, type="transaction")
    before = datetime.now(UTC) - timedelta(seconds=1)

    async def listed(types: list[str], since: datetime = before) -> list[str]:
        return [phone async for phone in journal.unindexed_phones(types, since)]

    assert await listed(["promo"]) == []
    for batch in await journal.open_batches("a", limit=20):
        if batch.seq != 3:  # one batch stays open: nothing of it was sent yet
            await journal.record_results("a", batch.seq, results(
                batch.body, "rejected" if batch.seq == 1 else "sent"))
    batch = (await journal.open_batches("t", limit=1))[0]
    await journal.record_partial("t", 0, results(batch.body, only=1))
    promo = [f"+38050{n:07d}" for n in range(40) if n // 2 not in (1, 3)]
    assert sorted(await listed(["promo"])) == promo
    assert await listed(["transaction"]) == []  # its batch is still open
    assert await listed(["promo"], datetime.now(UTC) + timedelta(seconds=1)) == []
    assert await journal.capped_phones(["promo"], before, 1) == []
    while await journal.index_messages(max_batches=4):
        pass
    assert await listed(["promo"]) == []
    assert await journal.capped_phones(["promo"], before, 1) == promo


async def test_caps_that_name_accounts_count_only_those_accounts_messages(
    journal: Journal,
) -> None:
    """``accounts`` (a cap that names accounts, SPEC §13.3): only the messages of campaigns
    kept with one of them are listed unindexed and counted indexed; None counts them all."""
    for campaign, account in (("a", "brand-a"), ("b", "brand-b"), ("d", "default")):
        await prepare(journal, campaign, count=1, size=2, account=account)
    before = datetime.now(UTC) - timedelta(seconds=1)
    for campaign in ("a", "b", "d"):
        batch = (await journal.open_batches(campaign, limit=1))[0]
        await journal.record_results(campaign, 0, results(batch.body))
    phones = ["+380500000000", "+380500000001"]

    async def unindexed(accounts: list[str] | None) -> list[str]:
        return sorted([phone async for phone in journal.unindexed_phones(
            ["promo"], before, accounts=accounts)])

    assert await unindexed(["brand-a"]) == phones
    assert await unindexed(["brand-a", "default"]) == sorted(phones * 2)
    assert await unindexed(None) == sorted(phones * 3)
    assert await unindexed(["brand-c"]) == []
    while await journal.index_messages():
        pass

    async def capped(at_least: int, accounts: list[str] | None) -> list[str]:
        return await journal.capped_phones(["promo"], before, at_least, accounts=accounts)

    assert await capped(1, ["brand-a"]) == phones
    assert await capped(2, ["brand-a"]) == []
    assert await capped(2, ["brand-a", "brand-b"]) == phones
    assert await capped(3, ["brand-a", "brand-b"]) == []
    assert await capped(3, None) == phones
    assert await capped(1, ["brand-c"]) == []
    assert await journal.capped_phones(["promo"], before, 1, "+380500000000", 10,
                                       accounts=["default"]) == phones[1:]


# --- delivery status (SPEC §11.3) -----------------------------------------------------------


async def send_and_index(
    journal: Journal, campaign: str, count: int = 2, size: int = 3, first_poll: float = 0.0,
) -> list[str]:
    """Prepare, send (every message "sent", messageId ``mid-<tracking id>``) and index a
    campaign; its message ids in order."""
    await prepare(journal, campaign, count=count, size=size)
    sent = []
    for batch in await journal.open_batches(campaign):
        outcomes = results(batch.body)
        await journal.record_results(campaign, batch.seq, outcomes)
        sent += [str(r.detail) for r in outcomes]
    while await journal.index_messages(max_batches=1, first_poll=first_poll):
        pass
    return sent


@contextlib.asynccontextmanager
async def second_writer(make_journal: MakeJournal, journal: Journal) -> AsyncIterator[Journal]:
    """Another daemon's journal on the same store, started as a writer; ``journal`` itself on
    a backend with one writer per journal (its calls queue up behind ours anyway)."""
    other = make_journal()
    try:
        await other.start(writer=True)
    except JournalBusy:
        other = journal
    try:
        yield other
    finally:
        if other is not journal:
            await other.close()


async def test_statuses_only_move_forward(journal: Journal) -> None:
    """scheduled -> processing -> final; duplicates, older statuses and a second final one
    change nothing; the first final status is reported as such exactly once."""
    mid = (await send_and_index(journal, "c"))[0]
    at = datetime(2026, 12, 1, 9, 0, 40, tzinfo=UTC)
    assert not await record_status(journal, mid, "processing")
    assert not await record_status(journal, mid, "scheduled")
    assert await record_status(journal, mid, "delivered", "viber", 1, 0.55, "UAH", at)
    for late in ("delivered", "undeliverable", "processing", "unknown"):
        assert not await record_status(journal, mid, late, "sms", 2, 9.0, "EUR")
    rows = [r async for r in journal.delivery_recipients("c", "delivered")]
    assert [(r.message_id, r.tracking_id, r.phone, r.channel, r.parts, r.cost, r.currency,
             r.status_at) for r in rows] == [
        (mid, "c-0", "+380500000000", "viber", 1, 0.55, "UAH", at)]
    assert [r async for r in journal.delivery_recipients("c", "undeliverable")] == []
    changes = await journal.record_statuses([
        StatusReport("mid-c-1", "processing"), StatusReport("mid-c-1", "undeliverable", "sms"),
        StatusReport("mid-c-1", "delivered"), StatusReport("nobody", "delivered"),
        StatusReport(mid, "delivered"),
    ])
    assert [c.result for c in changes] == ["moved", "final", "unchanged", "unknown", "unchanged"]
    record = changes[1].message
    assert record is not None and (record.campaign, record.tracking_id, record.phone) == (
        "c", "c-1", "+380500000001")
    assert changes[3].message is None


async def test_a_final_status_is_final_once_among_concurrent_reports(
    make_journal: MakeJournal, journal: Journal,
) -> None:
    """Two journals (two daemons: one polling, one taking webhooks) report the same final
    status at once: exactly one of them is told "final"."""
    ids = await send_and_index(journal, "c", count=1, size=50)
    async with second_writer(make_journal, journal) as other:
        first, second = await asyncio.gather(
            journal.record_statuses([StatusReport(m, "delivered", "sms") for m in ids]),
            other.record_statuses([StatusReport(m, "undeliverable") for m in reversed(ids)]),
        )
    finals = [c.result for c in first].count("final") + [c.result for c in second].count("final")
    assert finals == 50
    counts = await journal.delivery_counts("c")
    assert sum(counts.statuses.values()) == 50


async def test_first_final_statuses_wait_for_their_delivery_line(
    make_journal: MakeJournal,
) -> None:
    """A call with a ``log_key`` keeps its first final statuses unlogged, in its own
    transaction: listed (oldest call first, with what their lines need) until its key is
    marked, across reopening; moves that are not final, duplicates, later final reports and
    calls without a key keep nothing."""
    journal = make_journal()
    await journal.start(writer=True)
    ids = await send_and_index(journal, "c", count=1, size=5)
    at = datetime(2026, 12, 1, 9, 0, 40, tzinfo=UTC)
    before = datetime.now(UTC)
    await journal.record_statuses([StatusReport(ids[0], "processing")], "nothing-final")
    await journal.record_statuses([
        StatusReport(ids[0], "delivered", "viber", 2, 1.1, "UAH", at),
        StatusReport(ids[1], "undeliverable", "sms"), StatusReport(ids[1], "delivered"),
        StatusReport(ids[2], "processing"), StatusReport("nobody", "delivered"),
    ], "first")
    await journal.record_statuses([StatusReport(ids[3], "permanenterror"),
                                   StatusReport(ids[0], "undeliverable")], "second")
    assert await record_status(journal, ids[4], "delivered")  # no key: nothing kept
    assert await journal.unlogged_statuses(before, 10) == []  # nothing taken before then
    await journal.close()

    journal = make_journal()
    await journal.start(writer=True)
    try:
        later = datetime.now(UTC) + timedelta(seconds=1)
        waiting = await journal.unlogged_statuses(later, 10)
        assert [(u.key, u.message.message_id, u.message.tracking_id, u.report.status,
                 u.report.channel, u.report.parts, u.report.cost, u.report.currency)
                for u in waiting] == [
            ("first", ids[0], "c-0", "delivered", "viber", 2, 1.1, "UAH"),
            ("first", ids[1], "c-1", "undeliverable", "sms", None, None, None),
            ("second", ids[3], "c-3", "permanenterror", None, None, None, None)]
        assert waiting[0].report.at == at and before <= waiting[0].recorded_at <= later
        assert waiting[0].recorded_at <= waiting[2].recorded_at
        assert {u.key for u in await journal.unlogged_statuses(later, 1)} == {"first"}
        await journal.mark_statuses_logged(["first"])
        assert [u.message.message_id for u in await journal.unlogged_statuses(later, 10)] == [
            ids[3]]
        await journal.mark_statuses_logged(["second", "no-such-key"])
        assert await journal.unlogged_statuses(later + timedelta(hours=1), 10) == []
    finally:
        await journal.close()


async def test_first_final_statuses_reach_the_brakes_once_whoever_journals_them(
    make_journal: MakeJournal, journal: Journal,
) -> None:
    """Every first final status, journaled by this daemon or another (a webhook that reached
    a standby), is kept for `take_final_statuses`: oldest call first, each taken once, in calls
    with a log key or without; moves that are not final, a second final status and unknown
    ids keep nothing; a deposed leader takes nothing and leaves them for the new one."""
    ids = await send_and_index(journal, "c", count=1, size=5)
    async with second_writer(make_journal, journal) as other:
        await journal.record_statuses([StatusReport(ids[0], "processing")])
        await journal.record_statuses([
            StatusReport(ids[0], "undeliverable", "sms"), StatusReport(ids[0], "delivered"),
            StatusReport("nobody", "delivered"), StatusReport(ids[1], "processing"),
        ], "with-a-key")
        await other.record_statuses([StatusReport(ids[1], "delivered", "viber"),
                                     StatusReport(ids[0], "permanenterror")])
        assert await record_status(journal, ids[2], "permanenterror")
        assert not await record_status(journal, ids[2], "undeliverable")
    assert await journal.take_final_statuses(2) == [
        FinalStatus("c", "c-0", "undeliverable", "sms"),
        FinalStatus("c", "c-1", "delivered", "viber")]
    epoch = await journal.acquire_lease("old", 15)
    assert epoch is not None
    journal.fence("old", epoch)
    await journal.release_lease("old", epoch)
    newer = await journal.acquire_lease("new", 15)
    assert newer is not None
    with pytest.raises(JournalFenced):
        await journal.take_final_statuses(10)
    journal.fence("new", newer)
    assert await journal.take_final_statuses(10) == [
        FinalStatus("c", "c-2", "permanenterror", None)]
    assert await journal.take_final_statuses(10) == []


async def test_polls_are_due_from_the_journal_and_resume(make_journal: MakeJournal) -> None:
    """A message is due ``first_poll`` s after sending, the most overdue first; each poll moves
    its next time and counts; a final status ends polling; due times survive reopening."""
    journal = make_journal()
    await journal.start(writer=True)
    ids = await send_and_index(journal, "c", count=2, size=3, first_poll=30)
    now = datetime.now(UTC)
    assert await journal.messages_awaiting_status(now, 100) == []
    due = await journal.messages_awaiting_status(now + timedelta(seconds=31), 100)
    assert {d.message.message_id for d in due} == set(ids)
    assert {(d.deadline, d.polls, d.message.campaign) for d in due} == {(DEADLINE, 0, "c")}
    assert [d.message.message_id for d in
            await journal.messages_awaiting_status(now + timedelta(seconds=31), 2)] == [
        d.message.message_id for d in due[:2]]
    later = now + timedelta(minutes=5)
    await journal.schedule_polls([(ids[0], later), (ids[1], later - timedelta(minutes=1))])
    assert await record_status(journal, ids[2], "delivered", "telegram")
    await journal.schedule_polls([(ids[2], later)])  # final meanwhile: stays unpolled
    await journal.close()

    journal = make_journal()
    await journal.start(writer=True)
    try:
        soon = await journal.messages_awaiting_status(now + timedelta(seconds=31), 100)
        assert {d.message.message_id for d in soon} == set(ids[3:])
        after = await journal.messages_awaiting_status(later, 100)
        assert [d.message.message_id for d in after][-2:] == [ids[1], ids[0]]
        assert {d.polls for d in after if d.message.message_id in ids[:2]} == {1}
        assert ids[2] not in {d.message.message_id for d in after}
    finally:
        await journal.close()


async def test_delivery_counts_by_status_channel_and_currency(journal: Journal) -> None:
    """Per campaign: counts per final status and "awaiting", delivered ones per channel, the
    cost per currency and the median seconds to delivery; other campaigns apart."""
    ids = await send_and_index(journal, "c", count=2, size=4)
    await send_and_index(journal, "other", count=1, size=2)
    found = await indexed_message(journal, ids[0])
    assert found is not None
    sent = found.sent_at
    reports = [
        StatusReport(ids[0], "delivered", "viber", 1, 0.55, "UAH", sent + timedelta(seconds=4)),
        StatusReport(ids[1], "delivered", "viber", 1, 0.55, "UAH", sent + timedelta(seconds=8)),
        StatusReport(ids[2], "delivered", "sms", 2, 2.3, "UAH", sent + timedelta(seconds=60)),
        StatusReport(ids[3], "delivered", "telegram", 1, 0.01, "EUR",
                     sent + timedelta(seconds=6)),
        StatusReport(ids[4], "undeliverable", "sms", 1, 0.0, "UAH"),
        StatusReport(ids[5], "permanenterror"),
        StatusReport(ids[6], "processing"),
        StatusReport("mid-other-0", "delivered", "rcs", 1, 100.0, "UAH"),
    ]
    await journal.record_statuses(reports)
    await record_status(journal, ids[7], "unknown")
    counts = await journal.delivery_counts("c")
    assert counts.statuses == {"delivered": 4, "undeliverable": 1, "permanenterror": 1,
                               "unknown": 1, "awaiting": 1}
    assert counts.delivered_by_channel == {"viber": 2, "sms": 1, "telegram": 1}
    assert counts.cost == {"UAH": pytest.approx(3.4), "EUR": pytest.approx(0.01)}
    assert counts.delivery_seconds == pytest.approx(6, abs=0.01)
    empty = await journal.delivery_counts("nothing-sent")
    assert (empty.statuses, empty.cost, empty.delivery_seconds) == ({}, {}, None)
    assert [r.tracking_id async for r in journal.delivery_recipients("c", "unknown")] == ["c-7"]


async def test_a_long_listing_and_many_reports_at_once(journal: Journal) -> None:
    """Thousands of reports in one call, and a listing that spans several pages, in order."""
    ids = await send_and_index(journal, "c", count=5, size=1000)
    changes = await journal.record_statuses(
        [StatusReport(m, "delivered", "sms", 1, 1.15, "UAH") for m in ids])
    assert {c.result for c in changes} == {"final"}
    listed = [r.message_id async for r in journal.delivery_recipients("c", "delivered")]
    assert listed == sorted(ids)
    assert await journal.messages_awaiting_status(datetime.now(UTC) + timedelta(days=9), 10) == []


# --- leadership ---------------------------------------------------------------------------


async def test_leader_names_the_holder_of_a_live_lease(journal: Journal) -> None:
    """`leader` names whoever holds an unexpired lease, and None once it is released, so the
    reading commands can tell a running campaign from one waiting for the next start."""
    assert await journal.leader() is None
    epoch = await journal.acquire_lease("host:1:a", 15)
    assert epoch is not None
    assert await journal.leader() == "host:1:a"
    await journal.release_lease("host:1:a", epoch)
    assert await journal.leader() is None


async def test_lease_epochs_grow_and_only_the_holder_renews(journal: Journal) -> None:
    """Each grant has a higher epoch; a released lease cannot be renewed; a stranger cannot."""
    first = await journal.acquire_lease("a", 15)
    assert first is not None
    assert await journal.renew_lease("a", first, 15)
    assert not await journal.renew_lease("b", first, 15)
    await journal.release_lease("a", first)
    assert not await journal.renew_lease("a", first, 15)
    second = await journal.acquire_lease("b", 15)
    assert second is not None and second > first
    assert not await journal.renew_lease("a", first, 15)


async def test_a_fenced_writer_writes_nothing_once_deposed(journal: Journal) -> None:
    """After another daemon took the lease, the old leader's marks, outcomes and state
    changes are refused in their own transaction; unfenced reads still work."""
    await prepare(journal, "c", count=2, size=2)
    epoch = await journal.acquire_lease("old", 15)
    assert epoch is not None
    journal.fence("old", epoch)
    await journal.set_state("c", "running")
    await journal.mark_in_flight("c", [0])
    await journal.release_lease("old", epoch)  # (a graceful handover, or an expiry)
    newer = await journal.acquire_lease("new", 15)
    assert newer is not None and newer > epoch
    batch = (await journal.open_batches("c", limit=1))[0]
    for write in (journal.mark_in_flight("c", [1]), journal.release("c", [0]),
                  journal.record_results("c", 0, results(batch.body)),
                  journal.record_partial("c", 0, results(batch.body, only=1)),
                  journal.set_state("c", "paused")):
        with pytest.raises(JournalFenced):
            await write
    record = await journal.campaign("c")
    assert record is not None and record.state == "running"
    assert [(b.seq, b.state) for b in await journal.open_batches("c")] == [
        (0, "in_flight"), (1, "pending")]
    journal.fence("new", newer)
    await journal.record_results("c", 0, results(batch.body))
    assert (await journal.counts("c"))["sent"] == 2


async def test_presence_lists_live_daemons_and_is_not_the_lease(journal: Journal) -> None:
    """Heartbeats make a daemon present until they stop; leaving drops it at once; presence
    never counts as the leadership lease."""
    since = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
    await journal.heartbeat("host-a:11:aa", since, 30)
    await journal.heartbeat("host-b:22:bb", since + timedelta(seconds=5), 30)
    await journal.heartbeat("host-c:33:cc", since, 0.05)
    await asyncio.sleep(0.2)  # host-c's presence runs out (on the journal's clock)
    present = await journal.daemons()
    assert [(d.holder, d.host, d.pid) for d in present] == [
        ("host-a:11:aa", "host-a", 11), ("host-b:22:bb", "host-b", 22)]
    assert present[0].since == since
    assert await journal.leader() is None
    await journal.heartbeat("host-a:11:aa", since, 30)  # renewing keeps one row
    await journal.leave("host-a:11:aa")
    assert [d.holder for d in await journal.daemons()] == ["host-b:22:bb"]


async def test_the_rollout_stage_is_journaled_and_fenced(journal: Journal) -> None:
    """set_stage keeps the stage and its start time; a deposed writer cannot move it."""
    await prepare(journal, "c")
    starts = datetime(2026, 12, 1, 9, 15, tzinfo=UTC)
    await journal.set_stage("c", 1, starts)
    record = await journal.campaign("c")
    assert record is not None and (record.stage, record.stage_at) == (1, starts)
    with pytest.raises(JournalConflict, match="no such campaign"):
        await journal.set_stage("nope", 1, starts)
    epoch = await journal.acquire_lease("old", 15)
    assert epoch is not None
    journal.fence("old", epoch)
    await journal.release_lease("old", epoch)
    await journal.acquire_lease("new", 15)
    with pytest.raises(JournalFenced):
        await journal.set_stage("c", 2, starts)
