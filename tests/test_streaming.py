"""A snapshot streamed into the send (`send --now`): a real child process reads the audience
while the engine posts to a real sandbox, with a real SQLite journal.

What must hold: the first request goes before the audience is read to its end; every
recipient is sent exactly once and every skipped row logged once, also when the stream is cut
short and resumed; a stream whose inputs changed in between fails instead of guessing; send
windows and roll-outs keep the whole snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from scheduler import cli, stream_reader, streaming
from scheduler.campaign import Campaign
from scheduler.config import Config, load_config
from scheduler.journal import EncodedBatch
from scheduler.loader import load_campaign
from scheduler.records import Skip
from scheduler.report import campaign_note
from scheduler.sandbox import Sandbox
from scheduler.sandbox_options import SandboxOptions
from scheduler.sender import CampaignRun, Engine, utcnow
from scheduler.service import open_engine, send_campaign
from scheduler.streaming import (
    PIPE_SIZE,
    Reader,
    Resume,
    StreamFailed,
    StreamJob,
    stream_chunks,
)
from scheduler.vocabulary import CampaignState
from tests.engine_helpers import KEY, Setup, make_setup
from tests.helpers import (
    StartSandbox,
    ThreadSandbox,
    clean_env,
    phone,
    read_jsonl,
    run_cli,
    wait_for_event,
    write_audience,
    write_campaign,
    write_config,
)
from tests.journal_helpers import SyncJournal

BAD_ROWS = (("not-a-phone", "Broken"), (phone(5), "Again"))  # an invalid phone, a duplicate

Extend = Callable[[str, Sequence[EncodedBatch], Sequence[Skip]], Awaitable[None]]


def gate_extends(engine: Engine, before: Callable[[int], Awaitable[None]]) -> None:
    """Run ``before(n)`` ahead of the n-th append (from 0) of the engine's real journal."""
    real: Extend = engine.journal.extend
    calls = 0

    async def extend(cid: str, batches: Sequence[EncodedBatch], skips: Sequence[Skip]) -> None:
        nonlocal calls
        calls += 1
        await before(calls - 1)
        await real(cid, batches, skips)

    engine.journal.extend = extend  # type: ignore[method-assign]


#: runs ahead of the n-th append (from 0), with the engine and the run
Gate = Callable[[int, Engine, CampaignRun], Awaitable[None]]


async def send_streamed(
    setup: Setup, gate: Gate | None = None, *, sent: asyncio.Event | None = None,
    clock: Callable[[], datetime] | None = None,
) -> CampaignState:
    """Prepare the campaign streamed and drive it with a fresh engine to its end (or halt);
    ``sent`` is set once outcomes are journaled, ``clock`` replaces the engine's."""
    async with open_engine(setup.config, clock=clock or utcnow) as engine:
        record = await engine.prepare(setup.campaign, stream=True)
        run = engine.open_run(setup.campaign, record,
                              None if sent is None else lambda _: sent.set())
        if gate is not None:
            gate_extends(engine, functools.partial(gate, engine=engine, run=run))
        return await engine.drive(run)


def streamed_setup(root: Path, sandbox: Sandbox, count: int = 2000,
                   bad_rows: bool = True) -> Setup:
    """A ``count``-recipient campaign (with `BAD_ROWS`) in batches of 100, 2 in flight."""
    return make_setup(root, sandbox.base_url, count, extra_rows=BAD_ROWS if bad_rows else (),
                      batch_size=100, concurrency=2, requests_per_second=1000)


@pytest.fixture
def narrow_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux's default 64 KiB pipe for the reader, for tests that catch it at its second chunk:
    a 1 MiB pipe holds a 2,000-row snapshot whole, so the child may have ended already."""
    monkeypatch.setattr(streaming, "PIPE_SIZE", 1 << 16)


#: the audience of the tests that catch the reader at its first chunk (to kill it, signal it,
#: look at it): ~3 MB of snapshot, so the reader is surely still writing then. The parent
#: reads ahead without bound, so a reader caught at its SECOND chunk could have written
#: everything during the first append's commit under load (seen with 20,000 rows), and with
#: 2,000 rows even at the first.
LONG_READ = 20_000


async def kill_reader_at_first(call: int, engine: Engine, run: CampaignRun) -> None:
    """Gate: the OOM killer takes the reader as its first chunk is appended (use an audience
    of `LONG_READ` rows: it is then still reading, surely)."""
    if call == 0:
        os.kill(reader_pid(), signal.SIGKILL)


def message_lines(setup: Setup) -> list[dict[str, Any]]:
    """The delivery log's message lines."""
    return [line for line in setup.log_lines() if line["event"] == "message"]


def assert_all_once(setup: Setup, count: int, accepted: Counter[str] | dict[str, int]) -> None:
    """Every valid recipient sent once and accepted once; each bad row logged once, skipped."""
    assert setup.counts() == {"sent": count, "rejected": 0, "expired": 0, "in_doubt": 0,
                              "skipped": len(BAD_ROWS), "pending": 0, "resent": 0}
    assert len(accepted) == count and set(accepted.values()) == {1}
    lines = message_lines(setup)
    assert Counter(line["status"] for line in lines) == {"sent": count, "skipped": 2}
    assert sorted(line["line"] for line in lines if line["status"] == "skipped") == [
        count + 2, count + 3]
    sent = [line["tracking_id"] for line in lines if line["status"] == "sent"]
    assert len(set(sent)) == count and set(sent) == set(accepted)


# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_the_first_batch_goes_while_the_audience_is_still_read(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """The second chunk is held until the first batch is journaled sent: the campaign can only
    end if sending started while the snapshot was still incomplete."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = make_setup(tmp_path, sandbox.base_url, 3000, extra_rows=BAD_ROWS, batch_size=100,
                       concurrency=4, requests_per_second=1000)
    async with open_engine(setup.config) as engine:
        seen_streaming: list[bool] = []
        sent = asyncio.Event()  # set once outcomes are journaled (and logged)

        async def before(call: int) -> None:
            if call == 1:
                await sent.wait()
                record = await engine.journal.campaign(setup.campaign.id)
                seen_streaming.append(record is not None and record.streaming)

        gate_extends(engine, before)
        record = await engine.prepare(setup.campaign, stream=True)
        assert record.streaming and record.recipients == 0
        run = engine.open_run(setup.campaign, record, lambda _: sent.set())
        assert await engine.drive(run) == "done"
        final = await engine.journal.campaign(setup.campaign.id)
    assert seen_streaming == [True]
    assert final is not None and not final.streaming
    assert (final.recipients, final.skipped, final.batches) == (3000, 2, 30)
    assert_all_once(setup, 3000, sandbox.accepted)
    events = [line["event"] for line in setup.log_lines()]
    first_message = events.index("message")
    assert events.index("campaign_started") < first_message < events.index("snapshot_streamed")
    started = next(line for line in setup.log_lines() if line["event"] == "campaign_started")
    assert started["streaming"] is True


@pytest.mark.timeout(60)
async def test_a_stream_cut_short_resumes_after_what_the_journal_holds(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """Stopped after its first chunk (the child is killed), the next run reads on from the
    batches and skips stored: nothing is sent or logged twice, nothing is missed."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = streamed_setup(tmp_path, sandbox)
    sent = asyncio.Event()

    async def halt_at_second(call: int, engine: Engine, run: CampaignRun) -> None:
        if call == 1:
            await sent.wait()
            run.halt()  # as SIGTERM does: in-flight batches finish, nothing new starts
            await asyncio.Event().wait()  # this chunk never lands

    assert await send_streamed(setup, halt_at_second, sent=sent) == "running"
    cut = setup.counts()
    assert cut["sent"] > 0 and cut["pending"] == 0  # one chunk stored, and sent
    with sqlite3.connect(setup.journal_path) as db:
        stored = db.execute("SELECT streaming, batches FROM campaigns").fetchone()
    assert stored[0] == 1 and 0 < stored[1] < 20
    with SyncJournal(setup.journal_path) as reader:
        cut_record = reader.campaign(setup.campaign.id)
    assert cut_record is not None and cut_record.state == "running"
    # `report` and `plan` while a sender leads: the count so far is not the audience
    assert campaign_note(cut_record, 0, leading=True) == (
        f"still reading its audience: {cut_record.recipients:,} recipients so far")
    assert await send_streamed(setup) == "done"
    assert_all_once(setup, 2000, sandbox.accepted)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("narrow_pipe")
async def test_a_stream_whose_audience_changed_fails_with_the_reason(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """The rest of a cut-short stream would come from another file: the campaign fails and
    says why, and nothing more is sent."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = streamed_setup(tmp_path, sandbox, LONG_READ, bad_rows=False)
    assert await send_streamed(setup, kill_reader_at_first) == "running"
    sent = setup.counts()["sent"]
    write_audience(setup.root / "campaigns" / "people.csv", LONG_READ + 500)
    assert await send_streamed(setup) == "failed"
    with SyncJournal(setup.journal_path) as reader:
        final = reader.campaign(setup.campaign.id)
    assert final is not None and final.error is not None
    assert "audience CSV or the suppression list changed while its snapshot" in final.error
    assert setup.counts()["sent"] == sent == len(sandbox.accepted)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("narrow_pipe")
async def test_an_append_that_lands_after_the_reader_died_is_sent_in_the_same_run(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """The reader dies while a chunk's append is with the journal, which commits it a moment
    later: the run sends that chunk too before it halts, so nothing stored is left pending
    for a later run (which, if the audience changed meanwhile, would send it after all).
    Before, the pump cancelled the append and ended at once: the sender looked, found
    nothing new, and halted with the chunk committed behind it."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = streamed_setup(tmp_path, sandbox, LONG_READ, bad_rows=False)
    async with open_engine(setup.config) as engine:
        record = await engine.prepare(setup.campaign, stream=True)
        run = engine.open_run(setup.campaign, record, None)
        real: Extend = engine.journal.extend
        calls, committed = 0, asyncio.Event()

        async def late_commit(cid: str, batches: Sequence[EncodedBatch],
                              skips: Sequence[Skip]) -> None:
            pid = reader_pid()
            os.kill(pid, signal.SIGKILL)
            # the pump sees the reader's end first (another process: nothing to wait on) ...
            while is_reader(pid):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # (a slow disk's commit)
            await real(cid, batches, skips)  # ... then the journal's writer commits
            committed.set()

        async def extend(cid: str, batches: Sequence[EncodedBatch],
                         skips: Sequence[Skip]) -> None:
            nonlocal calls
            calls += 1
            if calls != 1:
                await real(cid, batches, skips)
                return
            # the writer thread goes on with the append whatever happens to its caller
            await asyncio.shield(asyncio.ensure_future(late_commit(cid, batches, skips)))

        engine.journal.extend = extend  # type: ignore[method-assign]
        assert await engine.drive(run) == "running"
        await committed.wait()
    counts = setup.counts()
    assert counts["pending"] == 0 and counts["sent"] == len(sandbox.accepted) > 0


def reader_pid() -> int:
    """The pid of this process's audience reader child."""
    for pid in children_of(os.getpid()):
        if is_reader(pid):
            return pid
    raise AssertionError("no audience reader is running")


def loaded_campaign(
    root: Path, base_url: str, rows: int, name: str, extra: str = "", **sending: Any,
) -> tuple[Config, Campaign]:
    """A config and a promo campaign of ``rows`` recipients, written under ``root`` and
    loaded (the CSV is ``campaigns/people.csv``)."""
    config_path = write_config(root, base_url, **sending)
    write_audience(root / "campaigns" / "people.csv", rows)
    file = write_campaign(root / "campaigns", name, "people.csv", type="promo", extra=extra)
    config = load_config(config_path, env={"CASCADE_API_KEY": KEY})
    check = load_campaign(file, config, datetime.now(UTC))
    assert check.campaign is not None, check.problems
    return config, check.campaign


def is_reader(pid: int) -> bool:
    """The process is a running audience reader."""
    with contextlib.suppress(OSError):
        return b"scheduler.stream_reader" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("narrow_pipe")
async def test_the_reader_ignores_ctrl_c_and_sigterm(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """Ctrl-C and systemd's stop reach the whole process group; the parent decides what
    stops, so the reader reads on and the campaign ends done."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = streamed_setup(tmp_path, sandbox, LONG_READ)

    async def interrupt_reader(call: int, engine: Engine, run: CampaignRun) -> None:
        if call == 0:
            pid = reader_pid()
            os.kill(pid, signal.SIGINT)
            os.kill(pid, signal.SIGTERM)

    assert await send_streamed(setup, interrupt_reader) == "done"
    assert_all_once(setup, LONG_READ, sandbox.accepted)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("narrow_pipe")
async def test_a_killed_reader_leaves_the_campaign_running_to_resume(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """The OOM killer takes the reader: the campaign stays running (not failed), says why,
    and the next run reads on."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = streamed_setup(tmp_path, sandbox, LONG_READ)
    assert await send_streamed(setup, kill_reader_at_first) == "running"
    stopped = [line for line in setup.log_lines() if line["event"] == "snapshot_stream_stopped"]
    assert len(stopped) == 1 and "killed by signal 9" in stopped[0]["reason"]
    assert await send_streamed(setup) == "done"
    assert_all_once(setup, LONG_READ, sandbox.accepted)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("narrow_pipe")
async def test_closing_the_engine_ends_its_reader(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """A sender that stops between two chunks (SIGTERM) leaves no reader behind: it is
    killed and reaped before the engine's close returns."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = streamed_setup(tmp_path, sandbox, LONG_READ)
    readers: list[int] = []

    async def halt_at_second(call: int, engine: Engine, run: CampaignRun) -> None:
        if call == 0:
            readers.append(reader_pid())
            run.halt()
            await asyncio.Event().wait()

    assert await send_streamed(setup, halt_at_second) == "running"
    (pid,) = readers
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(pid, 0)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("narrow_pipe")
async def test_a_stream_cut_short_past_its_deadline_expires_whole(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """Resumed after send_at + ttl: the rest of the audience is read first, so every
    recipient not sent is recorded expired (none is left out of the journal)."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = streamed_setup(tmp_path, sandbox, LONG_READ)
    assert await send_streamed(setup, kill_reader_at_first) == "running"
    sent = setup.counts()["sent"]
    past_ttl = lambda: datetime.now(UTC) + timedelta(hours=2)  # noqa: E731 (the ttl is 1 h)
    assert await send_streamed(setup, clock=past_ttl) == "expired"
    assert setup.counts() == {"sent": sent, "rejected": 0, "expired": LONG_READ - sent,
                              "in_doubt": 0, "skipped": 2, "pending": 0, "resent": 0}
    lines = message_lines(setup)
    assert Counter(line["status"] for line in lines) == Counter(  # sent may be 0: killed early
        {"sent": sent, "expired": LONG_READ - sent, "skipped": 2})


@pytest.mark.timeout(60)
async def test_a_stream_that_breaks_never_looks_finished(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """An unexpected error while appending (a bug) stops the campaign as failed, with the
    reason: it must never end "done" with part of its audience unread."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = streamed_setup(tmp_path, sandbox, bad_rows=False)

    async def bug_at_third(call: int, engine: Engine, run: CampaignRun) -> None:
        if call == 2:
            raise RuntimeError("a bug")

    assert await send_streamed(setup, bug_at_third) == "failed"
    with SyncJournal(setup.journal_path) as reader:
        final = reader.campaign(setup.campaign.id)
    assert final is not None and final.streaming and final.batches == 3
    assert final.error == "internal error while reading the audience: RuntimeError('a bug')"
    assert len(sandbox.accepted) == setup.counts()["sent"] <= 300


@pytest.mark.timeout(60)
async def test_the_next_chunk_is_read_while_one_is_appended(
    tmp_path: Path, start_sandbox: StartSandbox, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The child never waits for the journal's commit: the first append does not end until
    the second chunk has come through the pipe (a pump that read only after appending would
    wait here forever). Appends still go one at a time and in order, so every batch lands
    once."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = streamed_setup(tmp_path, sandbox, bad_rows=False)
    appending, appended, reads = 0, list[int](), 0
    second_read = asyncio.Event()
    real_chunks = Reader.chunks

    async def chunks(reader: Reader, resume: Resume) -> AsyncGenerator[Any, None]:
        nonlocal reads
        async with contextlib.aclosing(real_chunks(reader, resume)) as inner:
            async for chunk in inner:
                reads += 1
                if reads == 2:
                    second_read.set()
                yield chunk

    monkeypatch.setattr(Reader, "chunks", chunks)
    async with open_engine(setup.config) as engine:
        real: Extend = engine.journal.extend

        async def extend(cid: str, batches: Sequence[EncodedBatch],
                         skips: Sequence[Skip]) -> None:
            nonlocal appending
            appending += 1
            assert appending == 1  # never two at once
            appended.extend(batch.seq for batch in batches)
            try:
                if len(appended) == 1:  # the first chunk holds one batch
                    await wait_for_event(second_read, "the second chunk, during the append")
                await real(cid, batches, skips)
            finally:
                appending -= 1

        engine.journal.extend = extend  # type: ignore[method-assign]
        record = await engine.prepare(setup.campaign, stream=True)
        assert await engine.drive(engine.open_run(setup.campaign, record)) == "done"
    assert appended == list(range(20)) and reads == 5  # chunks of 1, 2, 4, 8 and 5 batches
    assert setup.counts()["sent"] == 2000 == len(sandbox.accepted)


@pytest.mark.timeout(60)
@pytest.mark.usefixtures("narrow_pipe")
async def test_the_reader_steps_back_once_its_first_chunk_is_out(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """The first chunk is read at the sender's own priority; then the reader, which runs
    ahead of the sending, is `NICENESS` nicer, so the sending comes first on a busy machine."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = streamed_setup(tmp_path, sandbox, LONG_READ)
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    seen: list[int] = []

    async def look_at_first(call: int, engine: Engine, run: CampaignRun) -> None:
        if call == 0:  # the reader steps back right after its first write: wait for it
            pid, priority = reader_pid(), ours
            for _ in range(1000):
                priority = os.getpriority(os.PRIO_PROCESS, pid)
                if priority != ours:
                    break
                await asyncio.sleep(0.01)
            seen.append(priority)

    assert await send_streamed(setup, look_at_first) == "done"
    assert seen == [min(ours + stream_reader.NICENESS, 19)]
    assert os.getpriority(os.PRIO_PROCESS, 0) == ours  # the sender's own is untouched


def test_the_reader_pipe_holds_a_chunk() -> None:
    """The child's stdout is a 1 MiB pipe (Linux's default, 64 KiB, would take the parent's
    busy event loop ~25 reads a chunk, with the child waiting in between)."""
    reader = Reader.start()
    try:
        stdout = reader._child.stdout
        assert stdout is not None
        assert fcntl.fcntl(stdout.fileno(), fcntl.F_GETPIPE_SZ) >= PIPE_SIZE
    finally:
        reader.close()


@pytest.mark.parametrize("extra", [
    'window = "00:00-23:59"\n',
    "[rollout]\nstages = [0.5, 1.0]\nhold = 1\n",
])
async def test_windows_and_rollouts_are_snapshotted_whole(tmp_path: Path, extra: str) -> None:
    """A window cuts batches by zone group at the end, a roll-out needs the total: both are
    prepared whole even when asked to stream."""
    config, campaign = loaded_campaign(tmp_path, "http://127.0.0.1:9", 300, "whole", extra)
    async with open_engine(config) as engine:
        record = await engine.prepare(campaign, stream=True)
    assert not record.streaming and record.recipients == 300


async def test_a_reader_slow_to_end_still_ends_the_campaign(
    tmp_path: Path, start_sandbox: StartSandbox, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stream ends (its reader reaped) after its last append: a sender that has sent
    everything by then and waits for more must see the end, not wait for an append that
    never comes (it did, with a reader slow to reap: `send --now` never exited)."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = streamed_setup(tmp_path, sandbox, bad_rows=False)
    real_close = Reader.close

    def slow_close(reader: Reader) -> None:
        time.sleep(0.5)
        real_close(reader)

    monkeypatch.setattr(Reader, "close", slow_close)
    assert await asyncio.wait_for(send_streamed(setup), 30) == "done"
    assert setup.counts()["sent"] == 2000 == len(sandbox.accepted)


@pytest.mark.parametrize(("extra", "streamed"), [
    ("", True),
    ('window = "00:00-23:59"\n', False),  # prepared whole: the reader started ahead is unused
])
async def test_a_reader_started_ahead_is_the_one_read(
    tmp_path: Path, start_sandbox: StartSandbox, monkeypatch: pytest.MonkeyPatch, extra: str,
    streamed: bool,
) -> None:
    """`send --now` starts its reader (`StreamJob.of`) before the engine prepares the campaign;
    the engine reads from that one, not from a second. Unused, it ends once the campaign is
    prepared, not with the send."""
    sandbox = await start_sandbox(api_key=KEY)
    config, campaign = loaded_campaign(tmp_path, sandbox.base_url, 700, "ahead", extra,
                                       batch_size=100)
    started = Reader.start
    readers: list[Reader] = []

    def start() -> Reader:
        readers.append(started())
        return readers[-1]

    reader = start()
    reader.begin(StreamJob.of(campaign, config))
    monkeypatch.setattr(Reader, "start", start)
    try:
        outcome = await send_campaign(config, campaign, stop=asyncio.Event(), reader=reader)
        assert reader.ended  # read to its end, or, unused, ended as soon as that was known
    finally:
        await asyncio.to_thread(reader.close)
    assert outcome.state == "done" and outcome.counts["sent"] == len(sandbox.accepted) == 700
    assert readers == [reader] and reader.used is streamed
    assert not [pid for pid in children_of(os.getpid()) if is_reader(pid)]


async def test_a_stream_read_whole_before_the_run_starts_is_not_read_again(
    tmp_path: Path, start_sandbox: StartSandbox, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The record a run starts from may be older than its stream's end (a small audience, a
    reader started with the imports done): it says "streaming" still, yet the stream is
    whole. The run must not start a second reader (it did: its appends found the stream
    closed, and `send --now` of 5 rows failed with "its snapshot is not being streamed")."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = streamed_setup(tmp_path, sandbox, 50, bad_rows=False)
    started = Reader.start
    readers: list[Reader] = []

    def start(*args: Any, **kwargs: Any) -> Reader:
        readers.append(started(*args, **kwargs))
        return readers[-1]

    monkeypatch.setattr(Reader, "start", start)
    async with open_engine(setup.config) as engine:
        record = await engine.prepare(setup.campaign, stream=True)
        run = engine.open_run(setup.campaign, record, None)
        real_move = engine.lifecycle.move

        async def move_once_whole(cid: str, state: CampaignState, **fields: Any) -> Any:
            if state == "running":  # after the run read its record, before it resumes
                await engine.wait_whole(cid)
            return await real_move(cid, state, **fields)

        monkeypatch.setattr(engine.lifecycle, "move", move_once_whole)
        assert await engine.drive(run) == "done"
    assert len(readers) == 1
    assert setup.counts()["sent"] == 50 == len(sandbox.accepted)


PROBE = Path(__file__).with_name("reader_probe.py")


def probe_reader(root: Path, mode: str, *extra: str) -> dict[str, Any]:
    """`tests/reader_probe.py` on the campaign ``root`` holds (`probe_workspace`): a process
    that starts a ``mode`` ("fork" or "spawn") reader with no other thread running, as
    `send --now` does, and says what came through it."""
    done = subprocess.run(
        [sys.executable, str(PROBE), str(root / "config.toml"),
         str(root / "campaigns" / "probe.toml"), mode, *extra],
        capture_output=True, text=True, timeout=60, check=False, env=clean_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["threads_at_start"] == 1 and result["ended"]
    return result


def probe_workspace(root: Path, rows: int) -> Path:
    """A config and a campaign of ``rows`` recipients and `BAD_ROWS`, in batches of 100."""
    write_config(root, "http://127.0.0.1:9", batch_size=100)
    write_audience(root / "campaigns" / "people.csv", rows, extra_rows=BAD_ROWS)
    write_campaign(root / "campaigns", "probe", "people.csv", type="promo")
    return root


def test_a_forked_reader_streams_what_a_new_interpreter_streams(tmp_path: Path) -> None:
    """`send --now` forks its reader (`stream_reader.fork`: no thread runs yet, and the child
    starts with the imports done): the same batches and skipped rows, in the same chunks, as
    the ``python -m scheduler.stream_reader`` the daemon starts."""
    root = probe_workspace(tmp_path, 3000)
    forked, spawned = probe_reader(root, "fork"), probe_reader(root, "spawn")
    assert (forked["child"], spawned["child"]) == ("_Forked", "Popen")
    assert forked["failure"] is None and forked["batches"] == 30 and forked["skips"] == 2
    assert forked["digest"] == spawned["digest"]


def test_a_forked_reader_says_why_it_cannot_finish(tmp_path: Path) -> None:
    """The forked child's errors come back as one sentence, never a traceback."""
    result = probe_reader(probe_workspace(tmp_path, 50), "fork", "--remove-audience")
    assert "people.csv" in result["failure"] and "Traceback" not in result["failure"]


def test_a_killed_forked_reader_is_said_killed_and_reaped(tmp_path: Path) -> None:
    """A forked reader killed before its stream ends: `StreamKilled` (the campaign resumes at
    the next start), and the child is reaped, not left a zombie. (Killed before the parent
    reads: once it reads, a fast reader may have written all 3 MB while it was descheduled.)"""
    result = probe_reader(probe_workspace(tmp_path, LONG_READ), "fork", "--kill")
    assert result["killed"] and "signal 9" in result["failure"] and result["batches"] == 0


def test_send_now_of_an_invalid_campaign_leaves_no_reader(tmp_path: Path) -> None:
    """The reader starts before the campaign is checked: an invalid campaign ends it too."""
    config_path = write_config(tmp_path, "http://127.0.0.1:9")
    write_audience(tmp_path / "campaigns" / "people.csv", 10)
    file = write_campaign(tmp_path / "campaigns", "bad", "people.csv", ttl=-5)
    assert cli.main(["--config", str(config_path), "send", "--now", str(file)]) == 1
    assert not [pid for pid in children_of(os.getpid()) if is_reader(pid)]


async def test_a_reader_that_cannot_finish_says_why(tmp_path: Path) -> None:
    """The child's own errors come back as one sentence, never a traceback."""
    config_path = write_config(tmp_path, "http://127.0.0.1:9")
    csv = tmp_path / "campaigns" / "people.csv"
    write_audience(csv, 50)
    file = write_campaign(tmp_path / "campaigns", "gone", "people.csv")
    config = load_config(config_path, env={"CASCADE_API_KEY": KEY})
    check = load_campaign(file, config, datetime.now(UTC))
    assert check.campaign is not None
    csv.unlink()
    with pytest.raises(StreamFailed) as failed:
        async for _ in stream_chunks(StreamJob(check.campaign, None, 10)):
            pass
    assert "people.csv" in str(failed.value) and "Traceback" not in str(failed.value)


@pytest.mark.timeout(60)
async def test_frames_survive_a_reader_stopped_and_continued(tmp_path: Path) -> None:
    """SIGSTOP/SIGCONT (a profiler attaching, a debugger) interrupt the reader's big pipe
    writes part way: every frame still arrives whole. Through `sys.stdout.buffer` this lost
    bytes of a 2.5 MB frame (an UnpicklingError), so the reader writes with its own loop."""
    config_path = write_config(tmp_path, "http://127.0.0.1:9")
    write_audience(tmp_path / "campaigns" / "people.csv", 60_000)
    file = write_campaign(tmp_path / "campaigns", "stopped", "people.csv")
    config = load_config(config_path, env={"CASCADE_API_KEY": KEY})
    check = load_campaign(file, config, datetime.now(UTC))
    assert check.campaign is not None
    interrupts = 0

    async def stop_and_continue() -> None:
        nonlocal interrupts
        while True:
            with contextlib.suppress(AssertionError, ProcessLookupError):
                pid = reader_pid()
                os.kill(pid, signal.SIGSTOP)
                await asyncio.sleep(0.001)
                os.kill(pid, signal.SIGCONT)
                interrupts += 1
            await asyncio.sleep(0.002)

    hammer = asyncio.create_task(stop_and_continue())
    seqs: list[int] = []
    try:
        async for batches, _ in stream_chunks(StreamJob(check.campaign, None, 1000)):
            seqs.extend(batch.seq for batch in batches)
    finally:
        hammer.cancel()
    assert seqs == list(range(60)) and interrupts > 10


# --------------------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """The pids of a process's children (Linux /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        found.extend(int(child) for child in text.split())
    return found


def journal_row(path: Path) -> tuple[int, int, int] | None:
    """(streaming, batches stored, sent) of the one campaign, or None before it exists."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute(
                "SELECT c.streaming, c.batches, COALESCE(SUM(s.sent), 0) FROM campaigns c"
                " LEFT JOIN batch_state s ON s.snapshot = c.snapshot GROUP BY c.id",
            ).fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else (row[0], row[1], row[2])


@pytest.mark.timeout(120)
def test_sigkill_mid_stream_then_send_again(tmp_path: Path) -> None:
    """A real `send --now` and its reader frozen while the snapshot is half read and sending
    has begun, then killed together: the rerun reads on and every recipient ends once."""
    count, batch_size, concurrency = 60_000, 200, 4
    in_flight_bound = (2 * concurrency + 2) * batch_size
    config = write_config(tmp_path, "http://127.0.0.1:9", batch_size=batch_size,
                          concurrency=concurrency, requests_per_second=100)
    write_audience(tmp_path / "campaigns" / "people.csv", count, extra_rows=BAD_ROWS)
    campaign = write_campaign(tmp_path / "campaigns", "mid-stream", "people.csv")
    journal = tmp_path / "state" / "journal.sqlite3"
    with ThreadSandbox(SandboxOptions(api_key="stream-key", latency_ms=20)) as server:
        text = config.read_text().replace("http://127.0.0.1:9", server.base_url)
        config.write_text(text)
        env = clean_env(CASCADE_API_KEY="stream-key")
        args = [sys.executable, "-m", "scheduler", "send", str(campaign), "--now",
                "--config", str(config)]
        first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            caught = None
            while caught is None and time.monotonic() < deadline:
                row = journal_row(journal)
                if row is not None and row[0] == 1 and row[2] > 0:
                    os.killpg(first.pid, signal.SIGSTOP)  # the sender and its reader at once
                    row = journal_row(journal)
                    if row is not None and row[0] == 1:
                        caught = row
                    else:
                        os.killpg(first.pid, signal.SIGCONT)
                time.sleep(0.002)
            assert caught is not None, "the stream ended before the test could catch it"
            assert children_of(first.pid), "no reader child while the snapshot streams"
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(10)
        _, stored, sent = caught
        assert 0 < stored < count // batch_size and sent > 0
        second = run_cli(["send", str(campaign), "--now", "--config", str(config)], env=env,
                         timeout=90)
        assert second.returncode == 0, second.stderr
        accepted = Counter(server.sandbox.accepted)
    row = journal_row(journal)
    assert row is not None and row[0] == 0 and row[1] == count // batch_size
    lines = [line for line in read_jsonl(tmp_path / "logs" / "delivery.jsonl")
             if line["event"] == "message"]
    finals = Counter(line["tracking_id"] for line in lines if line["status"] == "sent")
    assert len(finals) == count and set(finals.values()) == {1}
    assert Counter(line["status"] for line in lines)["skipped"] == len(BAD_ROWS)
    assert set(accepted) == set(finals)
    assert sum(accepted.values()) - count <= in_flight_bound  # only in-flight ones twice
