"""The sending engine against a real sandbox on loopback, with a real SQLite journal.

Each test prepares a campaign, drives it to an end state and then checks three records against
each other: what the sandbox accepted, what the journal says, and what the delivery log says.
Faults (5xx, 429 storms, dropped connections, omitted ids, 401, refused connections) are the
sandbox's own fault injection, so every retry path runs over real HTTP.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from scheduler.config import load_config
from scheduler.journal import RecipientRow
from scheduler.loader import load_campaign
from scheduler.sandbox import Sandbox
from scheduler.sandbox_options import SandboxOptions
from scheduler.service import open_engine
from tests.engine_helpers import KEY, Setup, drive, drive_with, make_setup
from tests.helpers import (
    StartSandbox,
    free_port,
    phone,
    read_jsonl,
    write_audience,
    write_campaign,
)
from tests.journal_helpers import SyncJournal


def outcome_ids(rows: list[RecipientRow], outcome: str) -> set[str]:
    """The tracking ids of the rows in ``outcome``."""
    return {row.tracking_id for row in rows if row.outcome == outcome}


def request_of(message_id: str) -> str:
    """The request a sandbox message id came from (its ids share the first 24 characters)."""
    return message_id[:24]


def isolation_requests(size: int, index: int) -> tuple[int, int]:
    """(400s, 200s) the halving search needs to isolate message ``index`` of ``size``."""
    rejected = accepted = 0
    low, high = 0, size
    while True:
        rejected += 1
        if high - low == 1:
            return rejected, accepted
        middle = low + (high - low) // 2
        accepted += 1  # the half without the bad message goes through
        if index < middle:
            high = middle
        else:
            low = middle


# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_ten_thousand_through_failures_and_429_storms(
    tmp_path: Path, start_sandbox: StartSandbox
) -> None:
    """20% 5xx plus a rate limit far below the engine's pace: all 10,000 sent, each accepted once.

    The sandbox allows 15 requests/s (burst 22) while the engine may post 200/s with 4 in flight,
    so 429 answers with Retry-After are certain, mixed with 500/502/503.
    """
    sandbox = await start_sandbox(api_key=KEY, fail_rate=0.2, rate_limit=15, seed=1)
    setup = make_setup(
        tmp_path, sandbox.base_url, 10_000, batch_size=200, requests_per_second=200,
        concurrency=4, max_attempts=30,
    )
    assert await drive(setup) == "done"
    counts = setup.counts()
    # a 5xx may have reached the API (SPEC §6): what was posted again after one is resent
    resent = counts.pop("resent")
    assert counts == {"sent": 10_000, "rejected": 0, "expired": 0, "in_doubt": 0,
                      "skipped": 0, "pending": 0}
    rows = setup.journal_rows()
    assert len(rows) == 10_000
    assert len(sandbox.accepted) == 10_000
    assert set(sandbox.accepted.values()) == {1}
    assert outcome_ids(rows, "sent") == set(sandbox.accepted)
    assert sandbox.statuses[429] >= 3
    assert 0 < resent == sum(row.resent for row in rows) < 10_000
    flagged = {line["tracking_id"] for line in setup.log_lines() if line.get("resent")}
    assert flagged == {row.tracking_id for row in rows if row.resent}
    assert sandbox.statuses[500] + sandbox.statuses[502] + sandbox.statuses[503] > 0
    assert sandbox.statuses[200] == 50  # one successful request per batch, no more
    with SyncJournal(setup.journal_path) as journal:
        record = journal.campaign(setup.campaign.id)
    assert record is not None and record.state == "done" and record.finished_at is not None


async def test_poisoned_phone_is_isolated(tmp_path: Path, start_sandbox: StartSandbox) -> None:
    """One refused phone in a batch of 1000: only it is rejected, the other 999 sent once each."""
    poisoned_index = 637
    sandbox = await start_sandbox(api_key=KEY, reject_phones=frozenset({phone(poisoned_index)}))
    setup = make_setup(tmp_path, sandbox.base_url, 1000, batch_size=1000, concurrency=4,
                       requests_per_second=1000)
    assert await drive(setup) == "done"
    rows = setup.journal_rows()
    rejected = [row for row in rows if row.outcome == "rejected"]
    assert [(r.phone, r.detail) for r in rejected] == [(phone(poisoned_index), "INVALID_PHONE")]
    assert len(outcome_ids(rows, "sent")) == 999
    assert setup.counts()["sent"] == 999 and setup.counts()["rejected"] == 1
    assert len(sandbox.accepted) == 999 and set(sandbox.accepted.values()) == {1}
    assert rejected[0].tracking_id not in sandbox.accepted
    expected_400, expected_200 = isolation_requests(1000, poisoned_index)
    assert sandbox.statuses[400] == expected_400
    assert sandbox.statuses[200] == expected_200


async def test_refused_credentials_stop_then_resume(
    tmp_path: Path, start_sandbox: StartSandbox
) -> None:
    """A 401 fails the campaign with nothing marked; with the right key it resumes, once each."""
    concurrency = 4
    sandbox = await start_sandbox(api_key="right-key")
    setup = make_setup(tmp_path, sandbox.base_url, 2000, key="wrong-key", batch_size=100,
                       concurrency=concurrency, requests_per_second=500)
    assert await drive(setup) == "failed"
    assert 1 <= sandbox.requests <= concurrency
    assert sandbox.statuses == Counter({401: sandbox.requests})
    assert setup.counts() == {"sent": 0, "rejected": 0, "expired": 0, "in_doubt": 0,
                              "skipped": 0, "pending": 2000, "resent": 0}
    with SyncJournal(setup.journal_path) as journal:
        record = journal.campaign(setup.campaign.id)
        assert record is not None and record.state == "failed"
        assert record.error is not None and "wrong-key" not in record.error
        assert journal.open_batches(setup.campaign.id, -1, 100)[0].state == "pending"
    refused = sandbox.requests

    fixed = load_config(setup.config.source, env={"CASCADE_API_KEY": "right-key"})
    assert await drive(setup, fixed) == "done"
    assert setup.counts()["sent"] == 2000 and setup.counts()["pending"] == 0
    assert len(sandbox.accepted) == 2000 and set(sandbox.accepted.values()) == {1}
    assert sandbox.requests == refused + 20  # 20 batches, each posted once
    events = [line["event"] for line in setup.log_lines()]
    assert events.count("campaign_failed") == 1 and events.count("campaign_finished") == 1


async def test_credentials_fixed_on_a_running_engine(
    tmp_path: Path, start_sandbox: StartSandbox
) -> None:
    """The daemon's reload path: the same engine gets the new key and resumes."""
    sandbox = await start_sandbox(api_key="right-key")
    setup = make_setup(tmp_path, sandbox.base_url, 300, key="wrong-key", batch_size=100,
                       concurrency=2, requests_per_second=500)
    async with open_engine(setup.config) as engine:
        assert await drive_with(engine, setup.campaign) == "failed"
        assert await drive_with(engine, setup.campaign) == "failed"  # still refused: no request
        before = sandbox.requests
        assert before <= 2
        engine.use_credentials("default", {"X-Authorization-Key": "right-key"})
        assert await drive_with(engine, setup.campaign) == "done"
    assert sandbox.requests == before + 3
    assert len(sandbox.accepted) == 300 and set(sandbox.accepted.values()) == {1}


@pytest.mark.timeout(60)
async def test_drops_and_omissions_at_least_once(
    tmp_path: Path, start_sandbox: StartSandbox
) -> None:
    """Dropped and id-less answers are resent: all sent; only omitted ids are accepted twice."""
    record_file = tmp_path / "accepted.jsonl"
    sandbox = await start_sandbox(api_key=KEY, drop_rate=0.1, omit_rate=0.2,
                                  record=record_file, seed=7)
    setup = make_setup(tmp_path, sandbox.base_url, 3000, batch_size=100, concurrency=4,
                       requests_per_second=500, max_attempts=30, delivery="at-least-once")
    assert await drive(setup) == "done"
    rows = setup.journal_rows()
    assert setup.counts()["sent"] == 3000 and setup.counts()["pending"] == 0
    assert sandbox.dropped > 0
    final_id = {row.tracking_id: row.detail for row in rows if row.outcome == "sent"}
    assert len(final_id) == 3000 and set(sandbox.accepted) == set(final_id)
    duplicates = {tid for tid, times in sandbox.accepted.items() if times > 1}
    assert duplicates, "omit_rate=0.2 should have caused resends"

    # Every acceptance the journal does not hold must be an omission: the request's answer
    # arrived (its other ids are in the journal) and it left out exactly that one id.
    answered = {request_of(message_id) for message_id in final_id.values() if message_id}
    recorded = read_jsonl(record_file)
    size = Counter(request_of(line["messageId"]) for line in recorded)
    superseded: Counter[str] = Counter()
    for line in recorded:
        if final_id[line["trackinId"]] != line["messageId"]:
            assert line["trackinId"] in duplicates
            superseded[request_of(line["messageId"])] += 1
    assert max(superseded.values()) == 1
    # a one-message request (an omitted id resent alone) has no other id to show its answer
    assert all(r in answered or size[r] == 1 for r in superseded)
    assert sum(times - 1 for times in sandbox.accepted.values()) == len(superseded)


@pytest.mark.timeout(60)
async def test_drops_and_omissions_at_most_once(
    tmp_path: Path, start_sandbox: StartSandbox
) -> None:
    """At-most-once: dropped and omitted messages are in doubt; nothing is accepted twice."""
    sandbox = await start_sandbox(api_key=KEY, drop_rate=0.1, omit_rate=0.2, seed=7)
    setup = make_setup(tmp_path, sandbox.base_url, 3000, batch_size=100, concurrency=4,
                       requests_per_second=500, max_attempts=30, delivery="at-most-once")
    assert await drive(setup) == "done"
    counts = setup.counts()
    assert counts["pending"] == 0 and counts["rejected"] == counts["expired"] == 0
    assert counts["sent"] + counts["in_doubt"] == 3000
    assert set(sandbox.accepted.values()) == {1}
    rows = setup.journal_rows()
    sent, doubted = outcome_ids(rows, "sent"), outcome_ids(rows, "in_doubt")
    assert len(sent) + len(doubted) == 3000
    assert sent <= set(sandbox.accepted)
    # a dropped request was never accepted: its whole batch (100) is in doubt
    never_accepted = doubted - set(sandbox.accepted)
    assert sandbox.dropped > 0 and len(never_accepted) == sandbox.dropped * 100
    # an omission leaves out exactly one id of an answered request
    omitted = doubted & set(sandbox.accepted)
    assert 0 < len(omitted) <= sandbox.statuses[200]
    assert sandbox.requests == 30  # each batch posted exactly once


async def test_ttl_expiry_against_a_closed_port(tmp_path: Path) -> None:
    """Connection refused until the deadline: the campaign backs off, then all are expired."""
    setup = make_setup(tmp_path, f"http://127.0.0.1:{free_port()}", 300, ttl=3,
                       batch_size=100, concurrency=2, max_attempts=2, requests_per_second=100)
    state = await drive(setup)
    assert state == "expired"
    assert setup.counts() == {"sent": 0, "rejected": 0, "expired": 300, "in_doubt": 0,
                              "skipped": 0, "pending": 0, "resent": 0}
    assert datetime.now(UTC) >= setup.campaign.deadline
    with SyncJournal(setup.journal_path) as journal:
        record = journal.campaign(setup.campaign.id)
    assert record is not None and record.state == "expired"
    lines = setup.log_lines()
    events = Counter(line["event"] for line in lines)
    assert events["campaign_backing_off"] >= 1 and events["batch_retry"] >= 1
    expired = [line for line in lines if line["event"] == "message"]
    assert len(expired) == 300 and {line["status"] for line in expired} == {"expired"}
    # each expired line says why, and so does the journal (issue 9, item 6)
    assert {line.get("reason") for line in expired} == {"send_at + ttl passed"}
    assert {row.detail for row in setup.journal_rows()} == {"send_at + ttl passed"}
    finished = [line for line in lines if line["event"] == "campaign_finished"]
    assert finished[-1]["state"] == "expired" and finished[-1]["counts"]["expired"] == 300


async def test_delivery_log_matches_journal(tmp_path: Path, start_sandbox: StartSandbox) -> None:
    """Every final outcome has exactly one message line agreeing with the journal, plus events."""
    bad = phone(41)
    extra = (("+380-bad", "Broken"), (phone(3), "Twin"), ("12345", "Short"))
    # one request at a time: the seeded faults then fall on the same requests every run
    sandbox = await start_sandbox(api_key=KEY, fail_rate=0.25, reject_phones=frozenset({bad}),
                                  seed=1)
    setup = make_setup(tmp_path, sandbox.base_url, 400, extra_rows=extra, phones="full",
                       batch_size=100, concurrency=1, requests_per_second=500, max_attempts=30)
    assert await drive(setup) == "done"
    counts = setup.counts()
    assert (counts["sent"], counts["rejected"], counts["skipped"]) == (399, 1, 3)

    lines = setup.log_lines()  # read_jsonl fails on any line that is not JSON
    messages = [line for line in lines if line["event"] == "message"]
    logged = Counter((m["tracking_id"], m["phone"], m["status"]) for m in messages)
    rows = setup.journal_rows()
    journaled = Counter((row.tracking_id, row.phone, row.outcome) for row in rows)
    assert len(messages) == len(rows) == 403
    assert logged == journaled
    details = {row.tracking_id: row.detail for row in rows if row.tracking_id}
    for line in messages:
        assert line["campaign"] == setup.campaign.id and line["channel_route"] == "standard"
        if line["status"] == "sent":
            assert line["message_id"] == details[line["tracking_id"]]
        elif line["status"] == "rejected":
            assert line["error_code"] == "INVALID_PHONE" and line["phone"] == bad
    assert sorted(m["reason"] for m in messages if m["status"] == "skipped") == [
        "duplicate", "invalid_phone", "invalid_phone",
    ]
    events = Counter(line["event"] for line in lines)
    assert events["campaign_started"] == 1 and events["campaign_finished"] == 1
    assert events["batch_retry"] >= 1
    retry = next(line for line in lines if line["event"] == "batch_retry")
    assert retry["status"] in (500, 502, 503) and retry["wait"] >= 0
    finished = next(line for line in lines if line["event"] == "campaign_finished")
    # a 5xx may have reached the API: what was posted again after one says so, everywhere
    resent = sum(row.resent for row in rows)
    assert resent == sum(1 for m in messages if m.get("resent") is True) > 0
    assert finished["counts"] == {"sent": 399, "rejected": 1, "expired": 0, "in_doubt": 0,
                                  "skipped": 3, "resent": resent}
    for line in lines:
        assert line["timestamp"].endswith("Z") and "level" in line


class TtlSandbox(Sandbox):
    """The sandbox, also keeping the ``ttl`` of every message it validated."""

    def __init__(self, options: SandboxOptions) -> None:
        super().__init__(options)
        self.ttls: list[int] = []

    def _validate(self, request: Any, body: bytes) -> list[dict[str, Any]]:
        messages = super()._validate(request, body)
        self.ttls.extend(message["ttl"] for message in messages)
        return messages


async def test_ttl_sent_is_the_time_left(tmp_path: Path) -> None:
    """A campaign that started 10 minutes late sends ttl = time left until send_at + ttl."""
    sandbox = TtlSandbox(SandboxOptions(api_key=KEY))
    await sandbox.start()
    try:
        setup = make_setup(tmp_path, sandbox.base_url, 250, ttl=3600, batch_size=100)
        late = setup.campaign.model_copy(
            update={"send_at": datetime.now(UTC) - timedelta(minutes=10)}
        )
        setup = Setup(setup.root, setup.config, late)
        assert await drive(setup) == "done"
    finally:
        await sandbox.stop()
    assert len(sandbox.ttls) == 250
    assert all(3000 - 30 <= ttl <= 3000 for ttl in sandbox.ttls), set(sandbox.ttls)


async def test_429_is_retried_not_doubted_at_most_once(
    tmp_path: Path, start_sandbox: StartSandbox
) -> None:
    """A 429 means "not processed": at-most-once retries it, so nothing ends in doubt."""
    sandbox = await start_sandbox(api_key=KEY, rate_limit=5, seed=2)
    setup = make_setup(tmp_path, sandbox.base_url, 1000, batch_size=100, concurrency=4,
                       requests_per_second=500, max_attempts=30, delivery="at-most-once")
    assert await drive(setup) == "done"
    assert sandbox.statuses[429] > 0
    assert setup.counts()["sent"] == 1000 and setup.counts()["in_doubt"] == 0
    assert set(sandbox.accepted.values()) == {1} and len(sandbox.accepted) == 1000


async def test_key_revoked_mid_campaign_then_fixed(
    tmp_path: Path, start_sandbox: StartSandbox
) -> None:
    """The key stops working halfway: outcomes so far stay, the rest waits; fixed, all once."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = make_setup(tmp_path, sandbox.base_url, 3000, batch_size=100, concurrency=4,
                       requests_per_second=1000)
    done = 0

    def revoke_after_a_third(count: int) -> None:
        nonlocal done
        done += count
        if done >= 1000:
            sandbox.api_key = "rotated-key"

    async with open_engine(setup.config) as engine:
        record = await engine.prepare(setup.campaign)
        run = engine.open_run(setup.campaign, record, revoke_after_a_third)
        assert await engine.drive(run) == "failed"
    counts = setup.counts()
    accepted = len(sandbox.accepted)
    assert counts["sent"] == accepted and 1000 <= accepted < 3000
    assert counts["pending"] == 3000 - accepted
    assert sandbox.statuses[401] <= 4

    fixed = load_config(setup.config.source, env={"CASCADE_API_KEY": "rotated-key"})
    assert await drive(setup, fixed) == "done"
    assert setup.counts()["sent"] == 3000
    assert len(sandbox.accepted) == 3000 and set(sandbox.accepted.values()) == {1}


@pytest.mark.timeout(60)
async def test_outage_backs_off_then_recovers(
    tmp_path: Path, start_sandbox: StartSandbox
) -> None:
    """Every request failing: the campaign backs off as a whole, then finishes when the API is back.

    No recipient is lost or expired while the deadline is still ahead (SPEC §6).
    """
    sandbox = await start_sandbox(api_key=KEY, fail_rate=1.0)
    setup = make_setup(tmp_path, sandbox.base_url, 500, batch_size=100, concurrency=2,
                       requests_per_second=1000, max_attempts=2)
    async with open_engine(setup.config) as engine:
        record = await engine.prepare(setup.campaign)
        run = engine.open_run(setup.campaign, record)
        sending = asyncio.create_task(engine.drive(run))
        while not any(line["event"] == "campaign_backing_off" for line in setup.log_lines()):
            assert not sending.done()
            await asyncio.sleep(0.05)
        with SyncJournal(setup.journal_path) as journal:
            backing = journal.campaign(setup.campaign.id)
            counts = journal.counts(setup.campaign.id)
        assert backing is not None and backing.state == "backing_off"
        assert counts["pending"] == 500 and counts["expired"] == 0
        failed_requests = sandbox.requests
        sandbox.options = replace(sandbox.options, fail_rate=0.0)
        assert await asyncio.wait_for(sending, 30) == "done"
    assert failed_requests >= 2 and not sandbox.accepted.keys() - outcome_ids(
        setup.journal_rows(), "sent")
    assert setup.counts()["sent"] == 500
    assert len(sandbox.accepted) == 500 and set(sandbox.accepted.values()) == {1}


async def test_transactional_batches_go_ahead_of_queued_promo(
    tmp_path: Path, start_sandbox: StartSandbox
) -> None:
    """One rate limit for all: once a transaction campaign starts while a promo campaign is
    sending, its batches go ahead of the promo's queued ones (SPEC §7): no promo batch gets in
    between, where a first-come queue would alternate them."""
    record_file = tmp_path / "accepted.jsonl"
    sandbox = await start_sandbox(api_key=KEY, record=record_file)
    setup = make_setup(tmp_path, sandbox.base_url, 50, batch_size=10, concurrency=1,
                       requests_per_second=20)
    folder = tmp_path / "campaigns"
    write_audience(folder / "promo.csv", 400, start=1000)
    now = datetime.now(UTC)
    promo_file = write_campaign(folder, "promo-blast", "promo.csv", send_at=now,
                                type="promo", ttl=86400)
    check = load_campaign(promo_file, setup.config, now)
    assert check.campaign is not None, check.problems
    promo = check.campaign
    async with open_engine(setup.config) as engine:
        under_way = asyncio.Event()
        promo_sent: list[int] = []

        def progress(count: int) -> None:
            promo_sent.append(count)
            if sum(promo_sent) >= 30:  # the promo is under way, its window queued
                under_way.set()

        promo_run = engine.open_run(promo, await engine.prepare(promo), progress)
        promo_task = asyncio.create_task(engine.drive(promo_run))
        await under_way.wait()
        urgent = engine.open_run(setup.campaign, await engine.prepare(setup.campaign))
        assert await engine.drive(urgent) == "done"
        assert await promo_task == "done"
    order = [line["trackinId"] for line in read_jsonl(record_file)]
    urgent_at = [i for i, tid in enumerate(order) if tid.startswith("engine-test")]
    assert len(urgent_at) == 50 and len(order) == 450
    between = order[urgent_at[0]:urgent_at[-1] + 1]
    # a first-come queue would alternate them (4-5 promo batches in between)
    assert sum(1 for tid in between if tid.startswith("promo-blast")) <= 10
    assert urgent_at[-1] < 300  # sent while most of the promo still waited
