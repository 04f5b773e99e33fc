"""Resends are visible (issue 23): what is posted again after an ambiguous outcome is counted,
flagged in the delivery log, listed by ``report --resent`` and shown by ``status``.

The engine runs against a real sandbox on loopback with a real SQLite journal; the sandbox's
own faults make the ambiguous outcomes (an answer that leaves an id out, a 5xx), and a batch
marked in flight through the journal stands for a process killed after its mark. The
frozen-leader and partition cases, with two daemons on PostgreSQL, are in test_failover.py.
"""

from __future__ import annotations

import asyncio
import csv
import io
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from scheduler import cli
from scheduler.config import load_config
from scheduler.journal import Journal, JournalLocation, Results, Run, open_journal
from scheduler.metrics import Metrics
from scheduler.report import RECIPIENT_COLUMNS
from scheduler.service import open_engine
from scheduler.vocabulary import CampaignState
from tests.engine_helpers import KEY, Setup, drive, make_setup
from tests.helpers import MACHINE_VARIABLES, StartSandbox, write_config
from tests.journal_helpers import SyncJournal


@pytest.fixture(autouse=True)
def _no_machine_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in MACHINE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def report(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str]:
    """Run `report` in-process; returns (exit code, its stdout)."""
    capsys.readouterr()  # what was printed before (the engine's log) is not the report's
    code = cli.main(["report", "--config", str(config), *args])
    return code, capsys.readouterr().out


def flagged_lines(setup: Setup) -> list[dict[str, Any]]:
    """The delivery log's message lines that say ``"resent": true``."""
    return [line for line in setup.log_lines()
            if line["event"] == "message" and line.get("resent") is True]


def resent_ids(setup: Setup) -> set[str]:
    """The tracking ids the journal lists as resent."""
    with SyncJournal(setup.journal_path) as journal:
        return {row.tracking_id for row in journal.recipients(setup.campaign.id, resent=True)}


async def drive_counting(setup: Setup) -> tuple[CampaignState, float]:
    """Drive the campaign with a fresh engine; its end state and its resent counter."""
    metrics = Metrics()
    async with open_engine(setup.config, metrics) as engine:
        record = await engine.prepare(setup.campaign)
        state = await engine.drive(engine.open_run(setup.campaign, record))
    counted = metrics.registry.get_sample_value("cascade_resent_messages_total")
    assert counted is not None
    return state, counted


@pytest.mark.timeout(60)
async def test_ids_left_out_of_answers_are_resent_and_listed_exactly(
    tmp_path: Path, start_sandbox: StartSandbox, capsys: pytest.CaptureFixture[str],
) -> None:
    """Answers that leave an id out (the API may have accepted it): each such message is
    posted again, and exactly the ones the API accepted twice are counted, flagged in the
    delivery log, counted in the metric and listed by ``report --resent``; the rest of their
    batch is not."""
    sandbox = await start_sandbox(api_key=KEY, omit_rate=0.3, seed=11)
    setup = make_setup(tmp_path, sandbox.base_url, 2000, batch_size=100, concurrency=4,
                       requests_per_second=500, max_attempts=30)
    state, counted = await drive_counting(setup)
    assert state == "done"
    twice = {tid for tid, times in sandbox.accepted.items() if times > 1}
    assert twice, "omit_rate=0.3 should have caused resends"
    counts = setup.counts()
    assert (counts["sent"], counts["resent"]) == (2000, len(twice))
    assert resent_ids(setup) == twice
    assert {line["tracking_id"] for line in flagged_lines(setup)} == twice
    assert {line["status"] for line in flagged_lines(setup)} == {"sent"}
    assert counted == len(twice)
    finished = [line for line in setup.log_lines() if line["event"] == "campaign_finished"]
    assert finished[-1]["counts"]["resent"] == len(twice)

    config = setup.config.source
    code, out = await asyncio.to_thread(  # the CLI runs its own event loop
        report, capsys, config, "--campaign", setup.campaign.id, "--resent", "--format", "json")
    listed = orjson.loads(out)
    assert code == 0 and {row["tracking_id"] for row in listed} == twice
    assert {tuple(row) for row in listed} == {RECIPIENT_COLUMNS}
    assert all(row["status"] == "sent" and row["detail"] for row in listed)
    code, out = await asyncio.to_thread(report, capsys, config, "--resent", "--format", "csv")
    assert code == 0 and len(list(csv.DictReader(io.StringIO(out)))) == len(twice)
    code, out = await asyncio.to_thread(report, capsys, config, "--format", "json")
    assert code == 0 and orjson.loads(out)[0]["resent"] == len(twice)


@pytest.mark.parametrize("delivery", ["at-least-once", "at-most-once"])
async def test_batches_in_flight_at_a_crash(
    tmp_path: Path, start_sandbox: StartSandbox, delivery: str,
) -> None:
    """Two batches marked in flight by a process that then died: at-least-once posts them
    again and they (only they) are resent; at-most-once posts nothing of them and leaves
    them in doubt, with nothing resent."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = make_setup(tmp_path, sandbox.base_url, 500, batch_size=100, concurrency=2,
                       requests_per_second=500, delivery=delivery)
    async with open_engine(setup.config) as engine:
        await engine.prepare(setup.campaign)
        await engine.journal.mark_in_flight(setup.campaign.id, [1, 3])
    marked = {f"{setup.campaign.id}-{n}" for n in (*range(101, 201), *range(301, 401))}
    state, counted = await drive_counting(setup)
    assert state == "done"
    counts = setup.counts()
    if delivery == "at-least-once":
        assert (counts["sent"], counts["resent"], counted) == (500, 200, 200)
        logged = {line["tracking_id"] for line in flagged_lines(setup)}
        assert resent_ids(setup) == marked == logged
    else:
        assert (counts["sent"], counts["in_doubt"], counts["resent"], counted) == (
            300, 200, 0, 0)
        assert marked.isdisjoint(sandbox.accepted) and not flagged_lines(setup)
        with SyncJournal(setup.journal_path) as stored:
            doubted = {r.tracking_id for r in stored.recipients(setup.campaign.id, "in_doubt")}
        assert doubted == marked


@pytest.mark.parametrize("delivery", ["at-least-once", "at-most-once"])
async def test_a_batch_given_back_after_a_5xx_is_a_resend_later(
    tmp_path: Path, start_sandbox: StartSandbox, delivery: str,
) -> None:
    """A 5xx may have reached the API: the batch goes back to pending marked doubtful (the
    campaign backs off, and here it is stopped then). The next run posts it again as a
    resend (at-least-once), or leaves it in doubt without posting it (at-most-once, as when
    the config changed in between)."""
    sandbox = await start_sandbox(api_key=KEY, fail_rate=1.0, seed=3)
    setup = make_setup(tmp_path, sandbox.base_url, 400, batch_size=100, concurrency=2,
                       requests_per_second=500, max_attempts=1)
    async with open_engine(setup.config) as engine:
        record = await engine.prepare(setup.campaign)
        run = engine.open_run(setup.campaign, record)
        driving = asyncio.create_task(engine.drive(run))
        while await state_of(engine.journal, setup.campaign.id) != "backing_off":
            done, _ = await asyncio.wait([driving], timeout=0.05)
            assert not done, "the campaign ended before it backed off"
        run.halt()
        assert await driving == "running"
    posted = sandbox.requests  # each got a 5xx: these batches are doubtful now
    assert posted >= 1 and not sandbox.accepted
    sandbox.options = replace(sandbox.options, fail_rate=0.0)
    config = load_config(write_config(tmp_path, sandbox.base_url, batch_size=100,
                                      concurrency=2, requests_per_second=500,
                                      delivery=delivery),
                         env={"CASCADE_API_KEY": KEY})
    assert await drive(setup, config) == "done"
    counts = setup.counts()
    if delivery == "at-least-once":
        assert (counts["sent"], counts["resent"]) == (400, posted * 100)
        assert len(flagged_lines(setup)) == posted * 100
    else:
        assert (counts["sent"], counts["in_doubt"], counts["resent"]) == (
            400 - posted * 100, posted * 100, 0)
        assert sandbox.requests == 4  # the doubtful ones once (a 5xx), the others once


async def state_of(journal: Journal, campaign_id: str) -> str | None:
    """The campaign's state in the journal (None before it is prepared)."""
    record = await journal.campaign(campaign_id)
    return None if record is None else record.state


async def record_with_resends(journal: Journal, campaign_id: str, seq: int, resent: int) -> None:
    """Close batch ``seq`` as sent, its first ``resent`` messages as resent (not logged yet)."""
    batch = next(b for b in await journal.open_batches(campaign_id) if b.seq == seq)
    messages = orjson.loads(batch.body)
    ids, phones = [m["id"] for m in messages], [m["toPhone"] for m in messages]
    await journal.record_results(campaign_id, seq, Results([
        Run("sent", 2, ids[:resent], ["m-again"] * resent, phones[:resent], resent=True),
        Run("sent", 1, ids[resent:], ["m"] * (len(ids) - resent), phones[resent:]),
    ]))


async def _fill_running(path: Path) -> None:
    """"half": running, 2 of 4 batches recorded, 3 of its messages resent; no daemon."""
    journal = open_journal(JournalLocation(path))
    await journal.start(writer=True)
    try:
        messages = [[{"id": f"half-{n}", "fromName": "B", "toPhone": f"+38050{n:07d}",
                      "messageType": "promo", "text": "Hi"} for n in range(b * 5, b * 5 + 5)]
                    for b in range(4)]
        now = datetime.now(UTC)
        await journal.prepare(campaign_id="half", type="promo", file="/c/half.toml",
                              fingerprint="f", send_at=now, deadline=now + timedelta(hours=1),
                              batches=iter(messages), skips=[])
        await journal.set_state("half", "running")
        await record_with_resends(journal, "half", 0, 0)
        await record_with_resends(journal, "half", 1, 3)
    finally:
        await journal.close()


def test_status_and_report_show_resends_of_a_running_campaign(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """`status` (JSON and table) and the `report` summary show a campaign's resent count
    while it runs; `--resent` is one listing or the other with `--status`, never both."""
    config = write_config(tmp_path)
    asyncio.run(_fill_running(load_config(config).paths.state))
    assert cli.main(["status", "--json", "--config", str(config)]) == 3  # nobody leads
    shown = orjson.loads(capsys.readouterr().out)["campaigns"]
    assert [(c["campaign"], c["sent"], c["pending"], c["resent"]) for c in shown] == [
        ("half", 10, 10, 3)]
    cli.main(["status", "--config", str(config)])
    assert "resent" in capsys.readouterr().out
    code, out = report(capsys, config, "--format", "csv")
    assert code == 0 and next(csv.DictReader(io.StringIO(out)))["resent"] == "3"
    code, out = report(capsys, config, "--resent", "--campaign", "half")
    assert code == 0 and [f"half-{n}" in out for n in range(5, 9)] == [True] * 3 + [False]
    assert cli.main(["report", "--config", str(config), "--resent", "--status", "sent"]) == 2
    assert "--status: not allowed with argument --resent" in capsys.readouterr().err


async def test_resent_lines_are_written_after_a_crash_too(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """Resent outcomes journaled just before a crash, whose lines never reached the delivery
    log, are written at the next start with ``"resent": true``, and only they."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = make_setup(tmp_path, sandbox.base_url, 300, batch_size=100, concurrency=2,
                       requests_per_second=500)
    async with open_engine(setup.config) as engine:
        await engine.prepare(setup.campaign)
        await engine.journal.set_state(setup.campaign.id, "running")
        await record_with_resends(engine.journal, setup.campaign.id, 0, 7)
    assert await drive(setup) == "done"
    assert [line["tracking_id"] for line in flagged_lines(setup)] == [
        f"{setup.campaign.id}-{n}" for n in range(1, 8)]
    assert setup.counts()["resent"] == 7 and len(sandbox.accepted) == 200
