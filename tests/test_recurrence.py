"""Which occurrences of a series run now (`scheduler.recurrence.decide`): the journal's records,
not APScheduler's memory, decide; missed ones never make a burst; edits apply ahead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scheduler.campaign import AudienceSpec, Campaign
from scheduler.config import load_config
from scheduler.journal import CampaignRecord
from scheduler.loader import load_campaign
from scheduler.recurrence import MISSED, NO_LONGER, decide
from scheduler.series import Repeat, run_id
from scheduler.service import open_engine
from scheduler.vocabulary import CampaignState
from tests.engine_helpers import KEY, drive_with
from tests.helpers import StartSandbox, phone, read_jsonl, write_config

MONDAY = datetime(2026, 12, 14, 8, tzinfo=UTC)  # 10:00 in Kyiv
WEEK = timedelta(days=7)


def series(cron: str = "0 10 * * MON", ttl: int = 86400) -> Campaign:
    """A weekly promo series at 10:00 Kyiv."""
    return Campaign(
        id="weekly", from_name="B", type="promo", send_at=MONDAY, ttl=ttl, text="Hi",
        audience=AudienceSpec(csv=Path("/x.csv")), file=Path("/w.toml"), fingerprint="f",
        repeat=Repeat(cron=cron, timezone="Europe/Kyiv"),
    )


def record(fire_at: datetime, state: CampaignState, *, started: bool) -> CampaignRecord:
    """The journal's record of the occurrence at ``fire_at``."""
    return CampaignRecord(
        id=run_id("weekly", fire_at), type="promo", file="/w.toml", fingerprint="f",
        state=state, send_at=fire_at, deadline=fire_at + timedelta(days=1), recipients=3,
        skipped=0, batches=1, prepared_at=fire_at - timedelta(hours=1),
        started_at=fire_at if started else None, finished_at=None, error=None,
    )


def ids(campaigns: list[Campaign]) -> list[str]:
    """The run ids."""
    return [c.id for c in campaigns]


def test_a_new_series_plans_its_next_occurrence_only() -> None:
    """No record yet: nothing is due (a series starts from now), the next one is planned."""
    decision = decide(series(), [], MONDAY - timedelta(hours=3))
    assert ids(decision.run) == ["weekly@20261214T0800Z"]
    assert decision.next_at == MONDAY
    assert not decision.missed and not decision.cancel


def test_the_planned_occurrence_runs_when_due_and_the_next_is_planned() -> None:
    """At its fire time the planned one goes, and the following week's is planned."""
    decision = decide(series(), [record(MONDAY, "scheduled", started=False)],
                      MONDAY + timedelta(seconds=1))
    assert ids(decision.run) == ["weekly@20261214T0800Z", "weekly@20261221T0800Z"]


def test_only_the_latest_missed_occurrence_may_go_and_older_ones_are_missed() -> None:
    """Down for three weeks after a run: the occurrence planned then and the one after are
    missed; only the latest goes (the engine applies the TTL rule to it)."""
    now = MONDAY + 3 * WEEK + timedelta(hours=2)
    decision = decide(series(), [record(MONDAY - WEEK, "done", started=True),
                                 record(MONDAY, "scheduled", started=False)], now)
    assert ids(decision.run) == [run_id("weekly", MONDAY + 3 * WEEK),
                                 run_id("weekly", MONDAY + 4 * WEEK)]
    assert decision.cancel == {"weekly@20261214T0800Z": MISSED}
    assert decision.missed == ["weekly@20261221T0800Z", "weekly@20261228T0800Z"]


def test_a_started_occurrence_carries_on_and_is_never_planned_again() -> None:
    """A restart mid-occurrence: it resumes (the engine knows where it stopped); a done one
    is left alone; nothing is due twice."""
    now = MONDAY + timedelta(minutes=5)
    decision = decide(series(), [record(MONDAY - WEEK, "done", started=True),
                                 record(MONDAY, "running", started=True)], now)
    assert ids(decision.run) == ["weekly@20261214T0800Z", "weekly@20261221T0800Z"]
    assert not decision.missed and not decision.cancel


def test_an_edit_cancels_the_planned_occurrence_the_file_no_longer_has() -> None:
    """Monday became Tuesday: the planned Monday is cancelled, Tuesday is planned."""
    now = MONDAY - timedelta(days=2)
    decision = decide(series("0 10 * * TUE"), [record(MONDAY, "scheduled", started=False)], now)
    assert ids(decision.run) == ["weekly@20261215T0800Z"]
    assert decision.cancel == {"weekly@20261214T0800Z": NO_LONGER}


@pytest.mark.parametrize("state", ["cancelled", "done", "expired"])
def test_an_ended_occurrence_is_never_run_again(state: CampaignState) -> None:
    """Missed, skipped (cancelled), done or expired: the journal says it is over."""
    now = MONDAY + timedelta(hours=1)
    decision = decide(series(), [record(MONDAY, state, started=state != "cancelled")], now)
    assert ids(decision.run) == ["weekly@20261221T0800Z"]


# -- evergreen (audience = "new") ---------------------------------------------------------


def evergreen_series(root: Path, base_url: str, rows: list[tuple[str, str]]) -> Campaign:
    """An evergreen series over ``rows`` (phone, customer id) in ``root``, loaded."""
    config_path = write_config(root, base_url)
    write_people(root, rows)
    (root / "campaigns" / "weekly.toml").write_text("\n".join([
        'id = "weekly"', 'from_name = "Shop"', 'type = "promo"', 'text = "Hi {name}"',
        "[repeat]", 'cron = "0 10 * * MON"', 'timezone = "Europe/Kyiv"', 'audience = "new"',
        "[audience]", 'csv = "people.csv"', 'id_column = "cid"', "",
    ]), "utf-8")
    config = load_config(config_path, env={"CASCADE_API_KEY": KEY})
    check = load_campaign(root / "campaigns" / "weekly.toml", config, datetime.now(UTC))
    assert check.campaign is not None, check.problems
    return check.campaign


def write_people(root: Path, rows: list[tuple[str, str]]) -> None:
    """The audience CSV, replaced as a marketer replaces it between occurrences."""
    lines = ["phone,name,cid", *(f"{p},N,{c}" for p, c in rows)]
    (root / "campaigns" / "people.csv").write_text("\n".join(lines) + "\n", "utf-8")


async def test_an_evergreen_occurrence_skips_whom_an_earlier_one_messaged(
    tmp_path: Path, start_sandbox: StartSandbox,
) -> None:
    """The second occurrence reads the CSV afresh: the two new ids go, the three the first
    occurrence sent are skipped already_messaged (one of them under a new phone: by id)."""
    sandbox = await start_sandbox(api_key=KEY, record=tmp_path / "accepted.jsonl")
    first_rows = [(phone(n), f"C{n}") for n in range(3)]
    series = evergreen_series(tmp_path, sandbox.base_url, first_rows)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    first, second = series.occurrence(now - timedelta(minutes=2)), series.occurrence(now)
    config = load_config(tmp_path / "config.toml", env={"CASCADE_API_KEY": KEY})
    async with open_engine(config) as engine:
        assert await drive_with(engine, first) == "done"
        write_people(tmp_path, [(phone(9), "C0"), *first_rows[1:], (phone(3), "C3"),
                                (phone(4), "C4")])
        assert await drive_with(engine, second) == "done"
        counts = await engine.journal.counts(second.id)
        skipped = [r async for r in engine.journal.recipients(second.id, "skipped")]
    assert counts.get("sent") == 2
    assert sorted((r.tracking_id, r.detail) for r in skipped) == [
        (f"{second.wire_id}-C{n}", "already_messaged") for n in range(3)]
    log = read_jsonl(tmp_path / "logs" / "delivery.jsonl")
    assert any(line.get("reason") == "already_messaged" for line in log)
