"""Staged roll-out on a real engine, sandbox and journal: stages in snapshot order with holds
between them, journaled, continued (never repeated) after a stop inside a hold."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from scheduler.campaign import Rollout
from scheduler.config import load_config
from scheduler.journal import CampaignRecord, JournalReader, open_journal
from scheduler.loader import load_campaign
from scheduler.planning import plan_rows
from scheduler.service import open_engine
from scheduler.status import read_status
from tests.engine_helpers import KEY, Setup
from tests.helpers import (
    StartSandbox,
    clean_env,
    read_jsonl,
    run_cli,
    write_audience,
    write_campaign,
    write_config,
)
from tests.journal_helpers import SyncJournal

COUNT, BATCH = 200, 10  # 20 batches: stages of 10%, 50%, 100% are batches 0-1, 2-9, 10-19
ROLLOUT = "[rollout]\nstages = [0.1, 0.5, 1.0]\nhold = 1\n"


def staged_setup(root: Path, base_url: str, *, hold: int = 1,
                 send_at: datetime | None = None) -> Setup:
    """A 200-recipient transaction campaign in three stages ``hold`` s apart, due now."""
    # no concurrency: the in-flight requests adapt, so `plan`'s ETA is the rate's (300/s:
    # what 64 in flight reach at the 200 ms round trip `plan` assumes, SPEC §13.5)
    config_path = write_config(root, base_url, batch_size=BATCH, requests_per_second=300)
    write_audience(root / "campaigns" / "people.csv", COUNT)
    now = datetime.now(UTC)
    file = write_campaign(root / "campaigns", "staged", "people.csv", send_at=send_at or now,
                          extra=ROLLOUT.replace("hold = 1", f"hold = {hold}"))
    config = load_config(config_path, env={"CASCADE_API_KEY": KEY})
    check = load_campaign(file, config, now)
    assert check.campaign is not None, check.problems
    assert check.campaign.rollout is not None
    return Setup(root, config, check.campaign.model_copy(update={"send_at": send_at or now}))


def arrivals(record: Path) -> dict[str, datetime]:
    """When the sandbox accepted each tracking id."""
    return {line["trackinId"]: datetime.fromisoformat(line["ts"].replace("Z", "+00:00"))
            for line in read_jsonl(record)}


async def test_three_stages_with_holds_in_snapshot_order(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """Every stage waits for the one before plus the hold; the journal ends on the last."""
    record = tmp_path / "accepted.jsonl"
    sandbox = await start_sandbox(api_key=KEY, record=record)
    setup = staged_setup(tmp_path, sandbox.base_url)
    async with open_engine(setup.config) as engine:
        prepared = await engine.prepare(setup.campaign)
        assert await engine.drive(engine.open_run(setup.campaign, prepared)) == "done"
        final = await engine.journal.campaign("staged")
    assert final is not None and final.stage == 2
    at = arrivals(record)
    stage = {1: range(1, 21), 2: range(21, 101), 3: range(101, 201)}
    for earlier, later in ((1, 2), (2, 3)):
        last = max(at[f"staged-{row}"] for row in stage[earlier])
        first = min(at[f"staged-{row}"] for row in stage[later])
        assert (first - last).total_seconds() >= 0.9, (earlier, later)
    events = [e for e in setup.log_lines() if e["event"] == "campaign_stage"]
    assert [(e["stage"], e["share"]) for e in events] == [(2, 0.5), (3, 1.0)]


async def test_a_stop_inside_a_hold_continues_the_stage_and_repeats_none(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """Stopped while holding before stage 2: the journal keeps stage and start time; the next
    run waits for it, sends stage 2 onwards, and resends nothing of stage 1."""
    record = tmp_path / "accepted.jsonl"
    sandbox = await start_sandbox(api_key=KEY, record=record)
    setup = staged_setup(tmp_path, sandbox.base_url)
    held = await stopped_in_first_hold(setup)
    assert len(read_jsonl(record)) == 20  # stage 1 only
    rows = await asyncio.to_thread(plan_rows, setup.config, datetime.now(UTC))  # (sync: own loop)
    row = next(r for r in rows if r["campaign"] == "staged")
    assert "stage 2/3, starts " in row["note"]
    async with open_engine(setup.config) as engine:
        resumed = await engine.prepare(setup.campaign)
        assert await engine.drive(engine.open_run(setup.campaign, resumed)) == "done"
    accepted = Counter(line["trackinId"] for line in read_jsonl(record))
    assert len(accepted) == COUNT and set(accepted.values()) == {1}
    second = min(t for tid, t in arrivals(record).items() if int(tid.split("-")[1]) > 20)
    assert second >= held.stage_at


async def test_stages_are_cut_at_the_share_asked_for_across_zone_groups(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """1,000 Kyiv and New York phones in batches of 100 with a window: zone groups make 11
    batches, and "1%" used to be a whole batch (100 messages). Now stage 1 is exactly 10
    messages, stage 2 exactly 100, and each stage is the first ones in snapshot order."""
    record = tmp_path / "accepted.jsonl"
    sandbox = await start_sandbox(api_key=KEY, record=record)
    config_path = write_config(tmp_path, sandbox.base_url, batch_size=100, concurrency=2,
                               requests_per_second=1000)
    phones = [f"+38050{n:07d}" if n % 2 else f"+1212555{n:04d}" for n in range(1000)]
    (tmp_path / "campaigns" / "zones.csv").write_text(
        "phone,name\n" + "".join(f"{p},P{n}\n" for n, p in enumerate(phones)))
    now = datetime.now(UTC)
    file = write_campaign(tmp_path / "campaigns", "zoned", "zones.csv", send_at=now,
                          type="promo", ttl=86400, extra='window = "00:00-24:00"\n'
                          "[rollout]\nstages = [0.01, 0.1, 1.0]\nhold = 0\n")
    config = load_config(config_path, env={"CASCADE_API_KEY": KEY})
    check = load_campaign(file, config, now)
    assert check.campaign is not None, check.problems
    campaign = check.campaign.model_copy(update={"send_at": now})
    sent_before_stage: list[int] = []
    async with open_engine(config) as engine:
        real_set_stage = engine.journal.set_stage

        async def set_stage(cid: str, stage: int, stage_at: datetime) -> None:
            sent_before_stage.append((await engine.journal.counts(cid))["sent"])
            await real_set_stage(cid, stage, stage_at)

        engine.journal.set_stage = set_stage  # type: ignore[method-assign]
        prepared = await engine.prepare(campaign)
        assert prepared.recipients == 1000
        assert await engine.drive(engine.open_run(campaign, prepared)) == "done"
    assert sent_before_stage == [10, 100]
    order = [line["trackinId"] for line in read_jsonl(record)]
    assert len(order) == 1000 == len(set(order))
    with SyncJournal(config.paths.state) as journal:
        in_snapshot_order = [row.tracking_id for row in journal.recipients("zoned")]
    assert set(order[:10]) == set(in_snapshot_order[:10])
    assert set(order[10:100]) == set(in_snapshot_order[10:100])


def test_a_stage_is_the_share_rounded_up() -> None:
    rollout = Rollout(stages=(0.01, 0.1, 0.5, 1.0), hold=0)
    assert rollout.ends(48_879) == [489, 4_888, 24_440, 48_879]
    assert rollout.ends(200) == [2, 20, 100, 200]  # 0.1 x 200 is 20.000000000000004
    assert rollout.ends(2) == [1, 2, 2, 2]  # at least one a stage, never past the total


def parse_utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def stopped_in_first_hold(setup: Setup) -> CampaignRecord:
    """Drive the campaign and stop it as stage 2 is journaled, inside the hold before it
    (however slow the machine, nothing of stage 2 has gone by then)."""
    async with open_engine(setup.config) as engine:
        prepared = await engine.prepare(setup.campaign)
        run = engine.open_run(setup.campaign, prepared)
        real_set_stage = engine.journal.set_stage

        async def set_stage(cid: str, stage: int, stage_at: datetime) -> None:
            await real_set_stage(cid, stage, stage_at)
            run.halt()

        engine.journal.set_stage = set_stage  # type: ignore[method-assign]
        assert await engine.drive(run) == "running"
        held = await engine.journal.campaign("staged")
    assert held is not None and held.stage == 1 and held.stage_at is not None
    return held


async def test_status_and_plan_count_the_holds_still_ahead(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """Stopped in the 600 s hold before stage 2 of 3: `status` measures the rate while
    sending (the hold left out) and adds the rest of this hold and the next one; `plan` (a
    daemon leading) ends the campaign a hold after stage 2 starts. Both used to spread the
    messages over the hold instead: hours late."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = staged_setup(tmp_path, sandbox.base_url, hold=600)
    rollout = setup.campaign.rollout
    assert rollout is not None
    held = await stopped_in_first_hold(setup)
    assert held.stage_at is not None and held.started_at is not None
    now = held.stage_at - timedelta(seconds=300)  # half way through the hold

    def status_now() -> list[dict[str, Any]]:  # (sync: the reader runs its own loop)
        with JournalReader(open_journal(setup.config.journal_location())) as journal:
            return read_status(journal, now, lambda record: setup.campaign).campaigns

    (row,) = await asyncio.to_thread(status_now)
    assert (row["stage"], row["stages"], row["pending"]) == (2, 3, 180)
    sending = (held.stage_at - timedelta(seconds=600) - held.started_at).total_seconds()
    expected = now + timedelta(seconds=180 / (20 / sending) + 300 + 600)
    assert abs((parse_utc(row["eta"]) - expected).total_seconds()) <= 1
    assert parse_utc(row["eta"]) >= held.stage_at.replace(microsecond=0) + timedelta(
        seconds=600)

    async with open_engine(setup.config) as engine:  # a daemon leads: plan gives an ETA
        assert await engine.journal.acquire_lease("test:1", 60) is not None
        rows = await asyncio.to_thread(plan_rows, setup.config, now)
    (planned,) = (r for r in rows if r["campaign"] == "staged")
    # stage 2's 80 and stage 3's 100 messages take 60 ms at 3,000 a second (the ETA is
    # written in whole seconds, so it may round down)
    ends = held.stage_at + timedelta(seconds=600)
    assert abs((parse_utc(planned["eta"]) - ends).total_seconds()) <= 1


def test_plan_of_an_unstarted_staged_campaign_includes_the_holds(tmp_path: Path) -> None:
    """Three stages 600 s apart: the ETA is two holds after send_at, not a second after it;
    `status` shows a prepared staged campaign in stage 1 of 3."""
    setup = staged_setup(tmp_path, "sandbox", hold=600,
                         send_at=datetime.now(UTC) + timedelta(hours=1))
    now = datetime.now(UTC)
    (row,) = (r for r in plan_rows(setup.config, now) if r["campaign"] == "staged")
    send_at = parse_utc(row["send_at"])
    assert send_at + timedelta(seconds=1200) <= parse_utc(row["eta"])
    assert parse_utc(row["eta"]) <= send_at + timedelta(seconds=1201)


async def test_status_json_shows_stage_1_of_a_staged_campaign(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """The journal holds no stage before stage 2 starts: `status` reads the stages from the
    campaign file, so stage 1 shows as 1 of 3 (it was null)."""
    sandbox = await start_sandbox(api_key=KEY)
    setup = staged_setup(tmp_path, sandbox.base_url, hold=600,
                         send_at=datetime.now(UTC) + timedelta(hours=1))
    async with open_engine(setup.config) as engine:
        await engine.prepare(setup.campaign)
    done = await asyncio.to_thread(
        run_cli, ["status", "--json", "--config", str(tmp_path / "config.toml")],
        env=clean_env(CASCADE_API_KEY=KEY))
    assert done.returncode == 3, done.stderr  # no daemon leads
    (row,) = json.loads(done.stdout)["campaigns"]
    assert (row["campaign"], row["stage"], row["stages"]) == ("staged", 1, 3)


def test_check_explains_a_wrong_rollout_table(tmp_path: Path) -> None:
    """Shares that do not grow to 1.0, a bad hold and an unknown key: one line each, located."""
    config_path = write_config(tmp_path, "sandbox")
    write_audience(tmp_path / "campaigns" / "people.csv", 5)
    file = write_campaign(tmp_path / "campaigns", "staged", "people.csv",
                          extra="[rollout]\nstages = [0.5, 0.2]\nhold = -1\nholds = 3\n")
    check = load_campaign(file, load_config(config_path, env={}), datetime.now(UTC))
    assert check.campaign is None
    rendered = {p.field: p.render() for p in check.problems if p.is_error}
    assert "must grow from above 0 to exactly 1.0" in rendered["rollout.stages"]
    assert "whole number of seconds" in rendered["rollout.hold"]
    assert 'did you mean "hold"' in rendered["rollout.holds"]
    assert all(f"{file}:" in line for line in rendered.values())
