"""Staged roll-out on a real engine, sandbox and journal: stages in snapshot order with holds
between them, journaled, continued (never repeated) after a stop inside a hold."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from scheduler.campaign import Rollout
from scheduler.config import load_config
from scheduler.journal.sqlite import SqliteConnection
from scheduler.loader import load_campaign
from scheduler.planning import plan_rows
from scheduler.service import open_engine
from tests.engine_helpers import KEY, Setup
from tests.helpers import StartSandbox, read_jsonl, write_audience, write_campaign, write_config

COUNT, BATCH = 200, 10  # 20 batches: stages of 10%, 50%, 100% are batches 0-1, 2-9, 10-19
ROLLOUT = "[rollout]\nstages = [0.1, 0.5, 1.0]\nhold = 1\n"


def staged_setup(root: Path, base_url: str) -> Setup:
    """A 200-recipient transaction campaign in three stages, due now."""
    config_path = write_config(root, base_url, batch_size=BATCH, concurrency=2,
                               requests_per_second=1000)
    write_audience(root / "campaigns" / "people.csv", COUNT)
    now = datetime.now(UTC)
    file = write_campaign(root / "campaigns", "staged", "people.csv", send_at=now,
                          extra=ROLLOUT)
    config = load_config(config_path, env={"CASCADE_API_KEY": KEY})
    check = load_campaign(file, config, now)
    assert check.campaign is not None, check.problems
    assert check.campaign.rollout is not None
    return Setup(root, config, check.campaign.model_copy(update={"send_at": now}))


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
    async with open_engine(setup.config) as engine:
        prepared = await engine.prepare(setup.campaign)
        run = engine.open_run(setup.campaign, prepared)
        driving = asyncio.create_task(engine.drive(run))
        for _ in range(500):  # bounded: 10 s for stage 1 to end and its hold to begin
            if [e for e in setup.log_lines() if e["event"] == "campaign_stage"]:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("stage 2 was never announced")
        run.halt()
        assert await asyncio.wait_for(driving, 10) == "running"
        held = await engine.journal.campaign("staged")
    assert held is not None and held.stage == 1 and held.stage_at is not None
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
    with SqliteConnection(config.paths.state) as journal:
        in_snapshot_order = [row.tracking_id for row in journal.recipients("zoned")]
    assert set(order[:10]) == set(in_snapshot_order[:10])
    assert set(order[10:100]) == set(in_snapshot_order[10:100])


def test_a_stage_is_the_share_rounded_up() -> None:
    rollout = Rollout(stages=(0.01, 0.1, 0.5, 1.0), hold=0)
    assert rollout.ends(48_879) == [489, 4_888, 24_440, 48_879]
    assert rollout.ends(200) == [2, 20, 100, 200]  # 0.1 x 200 is 20.000000000000004
    assert rollout.ends(2) == [1, 2, 2, 2]  # at least one a stage, never past the total


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
