"""Send windows and frequency caps on a real engine, sandbox and SQLite journal (SPEC §11.4).

Time is the engine's clock shifted to a chosen Monday in December (Kyiv UTC+2, New York UTC-5),
a few seconds before New York's window opens: the waits are real but short, and nothing
depends on the hour the tests run at.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from scheduler.config import load_config
from scheduler.console import dry_run
from scheduler.journal import JournalReader, open_journal
from scheduler.loader import load_campaign
from scheduler.planning import plan_rows
from scheduler.sandbox import Sandbox
from scheduler.service import open_engine
from scheduler.status import read_status
from tests.engine_helpers import KEY, Setup
from tests.helpers import StartSandbox, read_jsonl, write_campaign, write_config
from tests.journal_helpers import SyncJournal

KYIV = [f"+38050{n:07d}" for n in range(20)]
NEW_YORK = [f"+1212555{n:04d}" for n in range(20)]
WINDOW = 'window = "09:00-20:00"\n'


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def shifted(to: datetime) -> Callable[[], datetime]:
    """A clock that reads ``to`` now and runs at the real pace."""
    offset = to - datetime.now(UTC)
    return lambda: datetime.now(UTC) + offset


def windowed_setup(root: Path, base_url: str, send_at: datetime, *, ttl: int = 86400,
                   policy: str = "", phones: list[str] | None = None, cid: str = "promo",
                   kind: str = "promo", extra: str = WINDOW) -> Setup:
    """A campaign of Kyiv and New York phones, batches of 5."""
    config_path = write_config(root, base_url, batch_size=5, concurrency=2,
                               requests_per_second=1000)
    if policy:
        config_path.write_text(config_path.read_text() + "\n" + policy)
    rows = phones if phones is not None else KYIV + NEW_YORK
    (root / "campaigns" / f"{cid}.csv").write_text(
        "phone,name\n" + "\n".join(f"{p},P{n}" for n, p in enumerate(rows)) + "\n")
    file = write_campaign(root / "campaigns", cid, f"{cid}.csv", type=kind, ttl=ttl,
                          text="Hi {name}", extra=extra)
    config = load_config(config_path, env={"CASCADE_API_KEY": KEY})
    check = load_campaign(file, config, datetime.now(UTC))
    assert check.campaign is not None, check.problems
    return Setup(root, config, check.campaign.model_copy(update={"send_at": send_at}))


class HeldClock:
    """A clock that reads ``start`` until `release`, then runs on from it at the real pace:
    what goes "at once" goes before the next opening, however slow the machine."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.released: datetime | None = None

    def release(self) -> None:
        """Let the time run from ``start`` on."""
        self.released = datetime.now(UTC)

    def __call__(self) -> datetime:
        if self.released is None:
            return self.start
        return self.start + (datetime.now(UTC) - self.released)


async def kyiv_through(sandbox: Sandbox) -> None:
    """Wait (bounded: 30 s) until the sandbox has accepted every Kyiv phone."""
    for _ in range(1500):
        if len(sandbox.accepted) >= len(KYIV):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("Kyiv was not sent within 30 s")


async def stopped_while_new_york_waits(setup: Setup, sandbox: Sandbox, start: datetime) -> None:
    """Drive the campaign from ``start`` (the clock held there however long Kyiv takes), then
    stop it as a shutdown does once Kyiv is through: left running, New York's batches open."""
    async with open_engine(setup.config, clock=HeldClock(start)) as engine:
        prepared = await engine.prepare(setup.campaign)
        run = engine.open_run(setup.campaign, prepared)
        driving = asyncio.create_task(engine.drive(run))
        await kyiv_through(sandbox)
        run.halt(None)  # a shutdown: left running, resumed from the journal
        assert await driving == "running"


def accepted(record: Path, offset_to: Callable[[], datetime]) -> dict[str, dict[str, Any]]:
    """The sandbox's accepted messages by phone, each with ``at``: when, on the test clock."""
    skew = offset_to() - datetime.now(UTC)
    found = {}
    for line in read_jsonl(record):
        line["at"] = datetime.fromisoformat(line["ts"].replace("Z", "+00:00")) + skew
        assert line["toPhone"] not in found, f"{line['toPhone']} sent twice"
        found[line["toPhone"]] = line
    return found


async def test_a_closed_zone_waits_for_its_window_while_an_open_one_goes(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """Due at 13:59:57Z: Kyiv (15:59) goes at once with a ttl ending at 20:00 Kyiv; New York
    (08:59) waits for 09:00 and then goes with a ttl ending at 20:00 New York."""
    record = tmp_path / "accepted.jsonl"
    sandbox = await start_sandbox(api_key=KEY, record=record)
    start = at("2026-12-07T13:59:57Z")
    setup = windowed_setup(tmp_path, sandbox.base_url, start)
    clock = HeldClock(start)
    async with open_engine(setup.config, clock=clock) as engine:
        prepared = await engine.prepare(setup.campaign)
        driving = asyncio.create_task(engine.drive(engine.open_run(setup.campaign, prepared)))
        await kyiv_through(sandbox)
        clock.release()  # from 13:59:57: New York's window opens 3 s later
        assert await driving == "done"
    sent = accepted(record, clock)
    assert set(sent) == set(KYIV + NEW_YORK)
    kyiv_close, new_york_opens = at("2026-12-07T18:00:00Z"), at("2026-12-07T14:00:00Z")
    for phone in KYIV:
        assert sent[phone]["at"] < new_york_opens
        assert 0 < sent[phone]["ttl"] <= (kyiv_close - start).total_seconds()
    for phone in NEW_YORK:
        assert sent[phone]["at"] >= new_york_opens
        assert 39_000 < sent[phone]["ttl"] <= 11 * 3600  # until 20:00 in New York
    assert setup.counts()["sent"] == 40


async def test_a_window_that_never_opens_in_the_ttl_expires_at_once(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """Due 10:00Z with a one-hour ttl: New York opens at 14:00Z, after send_at + ttl, so its
    recipients end expired (outside_window) at once; Kyiv's are sent; the campaign is done."""
    record = tmp_path / "accepted.jsonl"
    sandbox = await start_sandbox(api_key=KEY, record=record)
    start = at("2026-12-07T10:00:00Z")
    setup = windowed_setup(tmp_path, sandbox.base_url, start, ttl=3600)
    async with open_engine(setup.config, clock=shifted(start)) as engine:
        prepared = await engine.prepare(setup.campaign)
        assert await engine.drive(engine.open_run(setup.campaign, prepared)) == "done"
    assert {line["toPhone"] for line in read_jsonl(record)} == set(KYIV)
    counts = setup.counts()
    assert (counts["sent"], counts["expired"], counts["pending"]) == (20, 20, 0)
    expired = [line for line in setup.log_lines()
               if line["event"] == "message" and line["status"] == "expired"]
    assert sorted(line["tracking_id"] for line in expired) == sorted(
        f"promo-{n}" for n in range(21, 41))
    assert {line["reason"] for line in expired} == {"outside_window"}


async def test_a_restart_while_held_keeps_the_due_time_and_sends_each_once(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """Stopped while New York waits for its window: the journal keeps its batches (and their
    zones); the next engine sends them when the window opens, and nothing twice."""
    record = tmp_path / "accepted.jsonl"
    sandbox = await start_sandbox(api_key=KEY, record=record)
    start = at("2026-12-07T13:59:55Z")
    setup = windowed_setup(tmp_path, sandbox.base_url, start)
    await stopped_while_new_york_waits(setup, sandbox, start)
    clock = shifted(at("2026-12-07T13:59:57Z"))
    with SyncJournal(setup.journal_path) as journal:
        held = journal.open_batches("promo")
        assert {batch.zones for batch in held} == {"America/New_York"}
        assert sum(batch.size for batch in held) == len(NEW_YORK)
    async with open_engine(setup.config, clock=clock) as engine:
        prepared = await engine.prepare(setup.campaign)
        assert await engine.drive(engine.open_run(setup.campaign, prepared)) == "done"
    sent = accepted(record, clock)  # raises if any phone was sent twice
    assert set(sent) == set(KYIV + NEW_YORK)
    assert all(sent[p]["at"] >= at("2026-12-07T14:00:00Z") for p in NEW_YORK)


async def test_status_times_a_held_zone_from_its_opening_not_from_the_rate_so_far(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """Started at 10:00Z, Kyiv sent at once, New York held for its 14:00Z opening: at 13:00Z
    `status` says 20 wait until 14:00Z and ends the campaign then. It used to time what is
    left by the rate since the start, which counts the wait (20 sent in 3 h: 16:00Z)."""
    sandbox = await start_sandbox(api_key=KEY)
    start = at("2026-12-07T10:00:00Z")
    setup = windowed_setup(tmp_path, sandbox.base_url, start)
    await stopped_while_new_york_waits(setup, sandbox, start)

    def status_at(now: datetime, with_file: bool = True) -> dict[str, Any]:
        with JournalReader(open_journal(setup.config.journal_location())) as journal:
            (row,) = read_status(journal, now, lambda record: setup.campaign if with_file
                                 else None).campaigns
        return row

    row = await asyncio.to_thread(status_at, at("2026-12-07T13:00:00Z"))
    assert (row["sent"], row["pending"], row["waiting"]) == (20, 20, 20)
    assert row["waiting_until"] == row["eta"] == "2026-12-07T14:00:00Z"
    # without the file on this machine nothing says what waits
    blind = await asyncio.to_thread(status_at, at("2026-12-07T13:00:00Z"), False)
    assert (blind["pending"], blind["waiting"], blind["waiting_until"]) == (20, None, None)


CAPS = '[policy]\n[[policy.caps]]\ntypes = ["promo"]\nmax = 1\ndays = 7\n'


async def test_caps_count_across_campaigns_and_spare_transactional(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """At most one promo per phone a week: a second promo skips the phones the first reached
    (frequency_cap, in the journal and the delivery log); a transactional one reaches all."""
    record = tmp_path / "accepted.jsonl"
    sandbox = await start_sandbox(api_key=KEY, record=record)
    now = datetime.now(UTC)
    phones = [f"+38050{n:07d}" for n in range(15)]
    first = windowed_setup(tmp_path, sandbox.base_url, now, policy=CAPS, phones=phones[:10],
                           cid="first", extra="")
    second = windowed_setup(tmp_path, sandbox.base_url, now, policy=CAPS, phones=phones[5:],
                            cid="second", extra="")
    receipt = windowed_setup(tmp_path, sandbox.base_url, now, policy=CAPS, phones=phones[:5],
                             cid="receipt", kind="transaction", extra="")
    async with open_engine(first.config) as engine:
        for setup in (first, second, receipt):
            prepared = await engine.prepare(setup.campaign)
            assert await engine.drive(engine.open_run(setup.campaign, prepared)) == "done"
        while await engine.journal.index_messages():
            pass  # as the daemon's indexing loop does
    assert first.counts()["sent"] == 10
    assert (second.counts()["sent"], second.counts()["skipped"]) == (5, 5)
    assert receipt.counts()["sent"] == 5
    by_phone = Counter(line["toPhone"] for line in read_jsonl(record))
    assert by_phone == Counter(phones[:10] * 1 + phones[10:] + phones[:5])
    capped = [line for line in second.log_lines() if line["event"] == "message"
              and line["campaign"] == "second" and line["status"] == "skipped"]
    assert sorted(line["tracking_id"] for line in capped) == [f"second-{n}" for n in range(1, 6)]
    assert {line["reason"] for line in capped} == {"frequency_cap"}
    # plan forecasts what the caps would skip for a campaign not started yet
    windowed_setup(tmp_path, sandbox.base_url, now, policy=CAPS, phones=phones, cid="third",
                   extra="")
    planned = await asyncio.to_thread(plan_rows, first.config, datetime.now(UTC))
    rows = {row["campaign"]: row for row in planned}
    assert rows["third"]["capped"] == 15
    assert "caps would skip 15 now" in rows["third"]["note"]
    # and so does `send --dry-run` (issue 24, item 11)
    third = load_campaign(tmp_path / "campaigns" / "third.toml", first.config, now).campaign
    assert third is not None
    shown = await asyncio.to_thread(dry_run, third, first.config, datetime.now(UTC))
    assert "frequency caps would skip 15 now" in shown.splitlines()



@pytest.mark.parametrize(("most", "capped"), [(1, 10), (2, 5)])
async def test_plan_counts_sends_the_index_has_not_reached(
    tmp_path: Path, start_sandbox: StartSandbox, most: int, capped: int,
) -> None:
    """`plan` right after promos went out, before anything indexed them (a `send` has no
    daemon to): at most 1 a week, the 10 phones just sent to are capped; at most 2, the 5
    that had one indexed send and now one more are."""
    sandbox = await start_sandbox(api_key=KEY)
    now = datetime.now(UTC)
    phones = [f"+38050{n:07d}" for n in range(20)]
    caps = CAPS.replace("max = 1", f"max = {most}")
    first = windowed_setup(tmp_path, sandbox.base_url, now, policy=caps, phones=phones[:10],
                           cid="first", extra="")
    second = windowed_setup(tmp_path, sandbox.base_url, now, policy=caps, phones=phones[:5],
                            cid="second", extra="")
    async with open_engine(first.config) as engine:
        prepared = await engine.prepare(first.campaign)
        assert await engine.drive(engine.open_run(first.campaign, prepared)) == "done"
        if most == 2:  # the first indexed, the second not yet
            while await engine.journal.index_messages():
                pass
            prepared = await engine.prepare(second.campaign)
            assert await engine.drive(engine.open_run(second.campaign, prepared)) == "done"
            assert second.counts()["sent"] == 5
    windowed_setup(tmp_path, sandbox.base_url, now, policy=caps, phones=phones, cid="third",
                   extra="")
    planned = await asyncio.to_thread(plan_rows, first.config, datetime.now(UTC))
    assert {row["campaign"]: row for row in planned}["third"]["capped"] == capped


async def test_a_sending_campaign_rereads_the_caps_and_skips_what_others_sent_meanwhile(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """A staged promo holds between its stages; meanwhile another promo reaches the phones of
    its second stage. The first campaign's cap summary is rebuilt (every caps_refresh s, the
    index caught up first), so its second stage skips them (frequency_cap)."""
    record = tmp_path / "accepted.jsonl"
    sandbox = await start_sandbox(api_key=KEY, record=record)
    now = datetime.now(UTC)
    phones = [f"+38050{n:07d}" for n in range(10)]
    staged = windowed_setup(tmp_path, sandbox.base_url, now, policy=CAPS, phones=phones,
                            cid="staged", extra="[rollout]\nstages = [0.5, 1.0]\nhold = 2\n")
    other = windowed_setup(tmp_path, sandbox.base_url, now, policy=CAPS, phones=phones[5:],
                           cid="other", extra="")
    async with open_engine(staged.config) as engine:
        engine.driver.caps_refresh = 0.05
        prepared = await engine.prepare(staged.campaign)
        driving = asyncio.create_task(engine.drive(engine.open_run(staged.campaign, prepared)))
        for _ in range(500):  # bounded: 10 s for the first stage to end and the hold to begin
            if [e for e in staged.log_lines() if e["event"] == "campaign_stage"]:
                break
            await asyncio.sleep(0.02)
        prepared = await engine.prepare(other.campaign)
        assert await engine.drive(engine.open_run(other.campaign, prepared)) == "done"
        assert await driving == "done"
    assert staged.counts()["sent"] == 5 and staged.counts()["skipped"] == 5
    assert Counter(line["toPhone"] for line in read_jsonl(record)) == Counter(phones)


def test_dry_run_shows_the_window_and_the_ttl_each_message_would_carry(tmp_path: Path) -> None:
    """`send --dry-run` at 06:00Z on a Monday, 09:00-20:00 local: nobody may go at once; the
    first (Kyiv) messages would go when Kyiv's window opens, 07:00Z, with a ttl that ends when
    it closes (18:00Z: 39,600 s), not the file's 86,400; a send time an hour past sends with
    the ttl left (issue 24, item 11: dry runs ignored windows and caps and showed the full
    ttl)."""
    now = at("2026-12-07T06:00:00Z")
    setup = windowed_setup(tmp_path, "sandbox", now)
    shown = dry_run(setup.campaign, setup.config, now).splitlines()
    assert any(line.startswith("window 09:00-20:00 local (the file's own window): 0 may go "
                               "at once, 40 held")
               for line in shown), shown
    messages = [line for line in shown if line.startswith("  at ")]
    assert len(messages) == 3
    assert all(line.startswith("  at 2026-12-07T07:00:00Z: ") and '"ttl":39600' in line
               for line in messages), messages
    late = windowed_setup(tmp_path / "late", "sandbox", now - timedelta(hours=1), extra="")
    (first, *_) = [line for line in dry_run(late.campaign, late.config, now).splitlines()
                   if line.startswith("  at ")]
    assert first.startswith("  at 2026-12-07T06:00:00Z: ") and '"ttl":82800' in first
