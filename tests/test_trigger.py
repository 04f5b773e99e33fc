"""Triggers (SPEC §13.2): ``[trigger]`` read and checked, due days (leap years and offsets across
year ends by hypothesis), release moments per zone, day-run decisions, check's due rows."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from hypothesis import given
from hypothesis import strategies as st

from scheduler import cli
from scheduler.audience import iter_audience
from scheduler.config import load_config
from scheduler.journal import CampaignRecord
from scheduler.loader import load_campaign
from scheduler.records import Recipient, Skip
from scheduler.series import names, run_of
from scheduler.trigger import (
    Trigger,
    day_run_id,
    in_year,
    is_leap,
    parse_date,
    parse_day_run,
)
from scheduler.trigger_days import decide_days, live_days
from scheduler.trigger_scan import due_counts, due_table
from tests.helpers import counted_by_plan, snapshot_as_the_daemon

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
PEOPLE = (
    "customer_id,phone,name,birthday,tz\n"
    "1,+380501000001,Olena,1990-12-08,Pacific/Kiritimati\n"
    "2,+380501000002,Taras,1985-12-08,Etc/GMT+12\n"
    "3,+380501000003,Iryna,12-09,\n"
    "4,+380501000004,Petro,,\n"
    "5,+380501000005,Max,1990-13-01,\n"
    "6,+380501000006,Leap,2000-02-29,\n"
)


def trigger_text(trigger: str = 'column = "birthday"\nyearly = true\nat = "10:00"', *,
                 extra: str = "") -> str:
    """A trigger file: lines 1 id, 2 from_name, 3 type, 4 text, 5 extra (or blank), 6 blank,
    7 [trigger], 8 onwards the trigger table, then [audience]."""
    return "\n".join([
        'id = "birthday"', 'from_name = "Brand"', 'type = "promo"', 'text = "Hi {name}"',
        extra, "", "[trigger]", trigger, "", "[audience]", 'csv = "audiences/people.csv"',
        'id_column = "customer_id"', 'tz_column = "tz"', "",
    ])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A config and ``campaigns/audiences/people.csv``."""
    (tmp_path / "campaigns" / "audiences").mkdir(parents=True)
    (tmp_path / "campaigns" / "audiences" / "people.csv").write_text(PEOPLE, "utf-8")
    (tmp_path / "config.toml").write_text('[paths]\ncampaigns = "campaigns"\n', "utf-8")
    return tmp_path


def load(root: Path, text: str):  # type: ignore[no-untyped-def]
    path = root / "campaigns" / "t.toml"
    path.write_text(text, "utf-8")
    return load_campaign(path, load_config(root / "config.toml"), NOW)


def check_file(root: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = root / "campaigns" / "t.toml"
    path.write_text(text, "utf-8")
    with time_machine.travel(NOW, tick=False):
        code = cli.main(["check", str(path), "--config", str(root / "config.toml")])
    return code, capsys.readouterr().out


# -- reading -------------------------------------------------------------------------------


def test_the_trigger_table_is_read_and_send_at_is_the_next_day_runs_first_release(
    root: Path,
) -> None:
    check = load(root, trigger_text())
    assert check.campaign is not None, [p.render() for p in check.problems]
    trigger = check.campaign.trigger
    assert trigger == Trigger(column="birthday", yearly=True, at=timedelta(hours=10))
    # 10:00 in UTC+14 on 2026-12-08 is 2026-12-07T20:00Z, the first release after NOW
    assert check.campaign.send_at == datetime(2026, 12, 7, 20, 0, tzinfo=UTC)
    run = check.campaign.day_run(date(2026, 12, 8))
    assert run.id == "birthday@2026-12-08" and run.wire_id == "birthday.2026-12-08"
    # its last zone (UTC-12) goes 26 hours later, and lives ttl from then
    assert run.deadline == datetime(2026, 12, 8, 22, 0, tzinfo=UTC) + timedelta(days=1)


@pytest.mark.parametrize(("table", "extra", "key", "line", "words"), [
    ('column = "birthday"\nat = "25:00"', "", "trigger.at", 9, ['"25:00"', 'at = "10:00"']),
    ('column = "birthday"\nat = "10am"', "", "trigger.at", 9, ['"10am"', "HH:MM"]),
    ('column = "birthday"\nat = "10:00"\noffset_days = 400', "", "trigger.offset_days", 10,
     ["400", "±366"]),
    ('column = "bday"\nat = "10:00"', "", "trigger.column", 8,
     ['"bday" is not a column', '"birthday"']),
    ('at = "10:00"', "", "trigger.column", 7, ["required", 'column = "birthday"']),
    ('column = "birthday"\nat = "10:00"', "send_at = 2026-12-10T09:00:00Z", "send_at", 5,
     ["send_at or [trigger]"]),
    ('column = "birthday"\nat = "10:00"\nuntil = 2026-12-01T00:00:00Z', "", "trigger.until",
     10, ["no day to run"]),
    ('column = "birthday"\nat = "10:00"\nyerly = true', "", "trigger.yerly", 10,
     ["unknown key", "yearly"]),
])
def test_bad_trigger_tables_are_errors_at_their_line(
    root: Path, table: str, extra: str, key: str, line: int, words: list[str],
) -> None:
    check = load(root, trigger_text(table, extra=extra))
    assert check.campaign is None
    found = [p for p in check.errors if p.field == key]
    assert found, [p.render() for p in check.errors]
    assert found[0].line == line, found[0].render()
    for word in words:
        assert word in found[0].message, found[0].render()


def test_trigger_and_repeat_together_is_an_error(root: Path) -> None:
    text = trigger_text() + '\n[repeat]\ncron = "0 10 * * *"\ntimezone = "UTC"\n'
    check = load(root, text)
    assert check.campaign is None
    assert any(p.field == "repeat" and "[repeat] or [trigger]" in p.message
               for p in check.errors), [p.render() for p in check.errors]


def test_check_counts_invalid_dates_and_shows_due_rows_by_day(
    root: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = check_file(root, trigger_text(), capsys)
    assert code == 0, out
    assert "trigger next run birthday@2026-12-08" in out
    assert "invalid_date 2: lines 5, 6" in out  # the empty and the 13th month
    # 12-08: Olena and Taras; 12-09: Iryna (MM-DD with yearly)
    assert ("due in the 7 days from 2026-12-07: 3 (2026-12-07 0, 2026-12-08 2, 2026-12-09 1, "
            "2026-12-10 0") in out


def test_a_day_run_reads_only_its_days_rows_and_skips_bad_dates_with_their_line(
    root: Path,
) -> None:
    check = load(root, trigger_text())
    assert check.campaign is not None
    items = list(iter_audience(check.campaign.day_run(date(2026, 12, 8)), may_fork=False))
    sent = [i for i in items if isinstance(i, Recipient)]
    skipped = [i for i in items if isinstance(i, Skip)]
    assert [r.tracking_id for r in sent] == ["birthday.2026-12-08-1", "birthday.2026-12-08-2"]
    assert [r.zone for r in sent] == ["Pacific/Kiritimati", "Etc/GMT+12"]
    assert [(s.line, s.reason) for s in skipped] == [(5, "invalid_date"), (6, "invalid_date")]
    assert 'empty "birthday"' in skipped[0].detail
    assert '"1990-13-01"' in skipped[1].detail


def test_without_yearly_a_month_and_day_is_an_invalid_date(root: Path) -> None:
    check = load(root, trigger_text('column = "birthday"\nat = "10:00"'))
    assert check.campaign is not None
    items = list(iter_audience(check.campaign.day_run(date(2026, 12, 9)), may_fork=False))
    bad = [i for i in items if isinstance(i, Skip) and i.line == 4]
    assert bad and "has no year" in bad[0].detail


# -- due days ------------------------------------------------------------------------------

dates = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31))
offsets = st.integers(min_value=-366, max_value=366)


def _oracle_yearly(birth: date, offset: int, day: date) -> bool:
    """Due on ``day`` if some year's occurrence (Feb 29 on Feb 28 in other years) plus the
    offset is ``day``: every year near it is tried."""
    for year in range(day.year - 2, day.year + 3):
        month, dom = birth.month, birth.day
        if (month, dom) == (2, 29) and not (year % 4 == 0 and (year % 100 or year % 400 == 0)):
            dom = 28
        if date(year, month, dom) + timedelta(days=offset) == day:
            return True
    return False


@given(birth=dates, offset=offsets, day=st.dates(min_value=date(2000, 1, 1),
                                                  max_value=date(2099, 12, 31)))
def test_due_days_match_the_definition(birth: date, offset: int, day: date) -> None:
    for yearly in (False, True):
        trigger = Trigger(column="d", yearly=yearly, offset_days=offset, at=timedelta(hours=10))
        due = trigger.due_checker(day)
        expected = (_oracle_yearly(birth, offset, day) if yearly
                    else birth + timedelta(days=offset) == day)
        assert due(birth.isoformat()) is expected
        if yearly:
            assert due(birth.strftime("%m-%d")) is expected


@given(birth=dates, offset=offsets, year=st.integers(min_value=2001, max_value=2098))
def test_a_yearly_date_is_due_exactly_once_a_year(birth: date, offset: int, year: int) -> None:
    """Over the 365 or 366 days whose target (day - offset) is in one year, a yearly row is
    due once: 29 February on 28 February in other years, never twice, never lost."""
    trigger = Trigger(column="d", yearly=True, offset_days=offset, at=timedelta(hours=10))
    first = date(year, 1, 1) + timedelta(days=offset)
    span = 366 if is_leap(year) else 365
    hits = [first + timedelta(days=n) for n in range(span)
            if trigger.due_checker(first + timedelta(days=n))(birth.isoformat())]
    assert len(hits) == 1
    assert hits[0] - timedelta(days=offset) == in_year((birth.month, birth.day), year)


@given(birth=dates, offset=offsets, days=st.lists(st.dates(min_value=date(2000, 1, 1),
                                                           max_value=date(2099, 12, 31)),
                                                  min_size=1, max_size=7, unique=True))
def test_checks_table_agrees_with_the_day_runs_filter(
    birth: date, offset: int, days: list[date],
) -> None:
    for yearly in (False, True):
        trigger = Trigger(column="d", yearly=yearly, offset_days=offset, at=timedelta(hours=10))
        campaign = _campaign(trigger)
        table = due_table(campaign, days)
        occasion = parse_date(birth.isoformat(), yearly)
        assert occasion is not None
        listed = table.get(occasion)
        due = [d for d in days if trigger.due_checker(d)(birth.isoformat())]
        assert due == ([] if listed is None else [listed]) or len(due) > 1


@pytest.mark.parametrize("text", ["", " ", "2026-02-30", "2026-2-3", "12/08/1990", "1990-12-08x",
                                  "2025-02-29"])
def test_malformed_dates_are_not_dates(text: str) -> None:
    assert parse_date(text, yearly=True) is None
    assert parse_date(text, yearly=False) is None


def test_month_day_needs_yearly_and_may_be_the_29th_of_february() -> None:
    assert parse_date("02-29", yearly=True) == (2, 29)
    assert parse_date("02-29", yearly=False) is None
    assert parse_date("02-30", yearly=True) is None


# -- when each zone goes ---------------------------------------------------------------------

ZONES = ["Pacific/Kiritimati", "Etc/GMT+12", "Europe/Kyiv", "America/New_York", "Asia/Kolkata",
         "Australia/Lord_Howe", "Pacific/Chatham", "UTC"]


@given(day=st.dates(min_value=date(2000, 1, 1), max_value=date(2099, 12, 31)),
       minutes=st.integers(min_value=0, max_value=24 * 60 - 1), zone=st.sampled_from(ZONES))
def test_each_zone_is_released_within_the_days_run(day: date, minutes: int, zone: str) -> None:
    trigger = Trigger(column="d", at=timedelta(minutes=minutes))
    moment = trigger.release(day, zone)
    assert trigger.first_release(day) <= moment <= trigger.last_release(day)


def test_utc_plus_14_and_minus_12_are_26_hours_apart_for_one_day() -> None:
    trigger = Trigger(column="d", at=timedelta(hours=10))
    day = date(2026, 12, 8)
    assert trigger.release(day, "Pacific/Kiritimati") == datetime(2026, 12, 7, 20, tzinfo=UTC)
    assert trigger.release(day, "Etc/GMT+12") == datetime(2026, 12, 8, 22, tzinfo=UTC)
    # a group of several zones goes once it is 10:00 in every one of them
    assert trigger.release(day, "Etc/GMT+12 Pacific/Kiritimati") == datetime(
        2026, 12, 8, 22, tzinfo=UTC)


# -- names and day-run decisions -------------------------------------------------------------


def test_day_run_names() -> None:
    assert day_run_id("birthday", date(2027, 2, 28)) == "birthday@2027-02-28"
    parsed = parse_day_run("birthday@2027-02-28")
    assert parsed is not None and (parsed.trigger, parsed.day) == ("birthday", date(2027, 2, 28))
    assert parse_day_run("birthday@2027-02-30") is None
    assert run_of("birthday@2027-02-28") == "birthday"
    assert names("birthday", "birthday@2027-02-28")
    assert not names("birthday", "birthdays@2027-02-28")


def _campaign(trigger: Trigger):  # type: ignore[no-untyped-def]
    from scheduler.campaign import AudienceSpec, Campaign
    return Campaign(id="birthday", from_name="B", type="promo", send_at=NOW, ttl=86400,
                    text="Hi", audience=AudienceSpec(csv=Path("/x.csv")), file=Path("/t.toml"),
                    fingerprint="f", trigger=trigger)


def _record(run_id: str, state: str, started: bool) -> CampaignRecord:
    return CampaignRecord(
        id=run_id, type="promo", file="/t.toml", fingerprint="f", state=state,  # type: ignore[arg-type]
        send_at=NOW, deadline=NOW, recipients=1, skipped=0, batches=1, prepared_at=NOW,
        started_at=NOW if started else None, finished_at=None, error=None,
    )


def test_the_live_days_run_the_next_is_planned_and_a_whole_day_passed_is_missed() -> None:
    trigger = Trigger(column="d", at=timedelta(hours=10))
    campaign = _campaign(trigger)
    # NOW 12:00Z on 12-07: 12-06's run lives until its UTC-12 release (12-06 22:00Z) + 24 h,
    # 12-05's ended at 12-06 22:00Z; 12-08's starts at 20:00Z
    assert live_days(campaign, NOW) == [date(2026, 12, 6), date(2026, 12, 7)]
    # the last daemon ran 12-02's run and planned 12-03's, then stopped until NOW
    records = [_record("birthday@2026-12-02", "done", True),
               _record("birthday@2026-12-03", "scheduled", False)]
    decision = decide_days(campaign, records, NOW)
    assert [c.id for c in decision.run] == [
        "birthday@2026-12-06", "birthday@2026-12-07", "birthday@2026-12-08"]
    assert decision.next_at == datetime(2026, 12, 7, 20, tzinfo=UTC)
    # 12-03 to 12-05 passed whole while no daemon ran: missed, never sent late
    assert decision.cancel == {"birthday@2026-12-03": "missed"}
    assert decision.missed == ["birthday@2026-12-04", "birthday@2026-12-05"]
    # a day's run that is done is never run again
    again = decide_days(campaign, [*records, _record("birthday@2026-12-06", "done", True)], NOW)
    assert "birthday@2026-12-06" not in [c.id for c in again.run]


def test_a_planned_run_the_edited_file_no_longer_has_is_cancelled() -> None:
    trigger = Trigger(column="d", at=timedelta(hours=10),
                      until=datetime(2026, 12, 7, 19, tzinfo=UTC))
    decision = decide_days(_campaign(trigger), [_record("birthday@2026-12-08", "scheduled",
                                                        False)], NOW)
    assert decision.cancel == {"birthday@2026-12-08": "no longer an occurrence: the series "
                               "file changed"}
    assert decision.next_at is None


def test_due_counts_stream_the_file(root: Path) -> None:
    check = load(root, trigger_text())
    assert check.campaign is not None
    counts = due_counts(check.campaign, [date(2026, 12, 8), date(2026, 12, 9),
                                         date(2027, 2, 28)])
    assert counts.days == {date(2026, 12, 8): 2, date(2026, 12, 9): 1, date(2027, 2, 28): 1}
    assert counts.invalid == 2


def test_plan_shows_the_next_runs_count_and_time_per_zone_group(
    root: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    (root / "campaigns" / "t.toml").write_text(trigger_text(), "utf-8")
    with time_machine.travel(NOW, tick=False):
        assert cli.main(["plan", "--json", "--config", str(root / "config.toml")]) == 0
    rows = {r["campaign"]: r for r in json.loads(capsys.readouterr().out)}
    row = rows["birthday"]
    assert row["state"] == "trigger" and row["valid"] == 2
    assert row["next_run"] == {
        "run": "birthday@2026-12-08", "day": "2026-12-08", "due": 2,
        "groups": [{"zones": "Pacific/Kiritimati", "due": 1, "at": "2026-12-07T20:00:00Z"},
                   {"zones": "Etc/GMT+12", "due": 1, "at": "2026-12-08T22:00:00Z"}],
    }
    with time_machine.travel(NOW, tick=False):
        assert cli.main(["plan", "--config", str(root / "config.toml")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "next run birthday@2026-12-08" in out.replace("│ ", "")


def test_a_day_run_finds_duplicates_among_its_days_rows_only(root: Path) -> None:
    """A day's run reads no pass 1 (its few due rows are remembered exactly): a phone twice
    among the day's rows is a duplicate; a phone shared with a row due another day is not."""
    (root / "campaigns" / "audiences" / "people.csv").write_text(
        "customer_id,phone,name,birthday,tz\n"
        "1,+380501000001,A,1990-12-09,\n"
        "2,+380501000001,B,1991-12-08,\n"  # the same phone, another day
        "3,+380501000003,C,1992-12-08,\n"
        "4,+380501000003,D,1993-12-08,\n"  # the same phone the same day
        "5,+380501000005,E,1994-12-08,\n", "utf-8")
    check = load(root, trigger_text())
    assert check.campaign is not None
    items = list(iter_audience(check.campaign.day_run(date(2026, 12, 8)), may_fork=False))
    assert [(i.line, i.tracking_id if isinstance(i, Recipient) else i.reason) for i in items] == [
        (3, "birthday.2026-12-08-2"), (4, "birthday.2026-12-08-3"), (5, "duplicate"),
        (6, "birthday.2026-12-08-5")]


def test_send_refuses_a_trigger_and_dry_run_shows_its_next_day_run(
    root: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    path = root / "campaigns" / "t.toml"
    path.write_text(trigger_text(), "utf-8")
    config = str(root / "config.toml")
    with time_machine.travel(NOW, tick=False):
        assert cli.main(["send", str(path), "--config", config]) != 0
        assert "is a trigger: the daemon" in capsys.readouterr().err
        assert cli.main(["send", "--dry-run", str(path), "--config", config]) == 0
    assert "birthday@2026-12-08: promo to 2 recipients" in capsys.readouterr().out


def test_plan_reads_a_day_run_the_daemon_planned_from_the_journal(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A day run snapshotted from the files as they are now is counted from the journal (not
    the whole CSV again); once the CSV changes, from the files."""
    config_path = root / "config.toml"
    config_path.write_text('[paths]\ncampaigns = "campaigns"\nstate = "state/j.sqlite3"\n',
                           "utf-8")
    check = load(root, trigger_text())
    assert check.campaign is not None
    snapshot_as_the_daemon(config_path, check.campaign.day_run(date(2026, 12, 8)))
    counted = counted_by_plan(monkeypatch)
    with time_machine.travel(NOW, tick=False):
        assert cli.main(["plan", "--json", "--config", str(config_path)]) == 0
    row = {r["campaign"]: r for r in json.loads(capsys.readouterr().out)}["birthday"]
    assert row["next_run"]["due"] == 2 and len(row["next_run"]["groups"]) == 2
    assert "birthday@2026-12-08" not in counted
    with (root / "campaigns" / "audiences" / "people.csv").open("a") as csv:
        csv.write("7,+380501000007,New,1999-12-08,\n")
    with time_machine.travel(NOW, tick=False):
        assert cli.main(["plan", "--json", "--config", str(config_path)]) == 0
    row = {r["campaign"]: r for r in json.loads(capsys.readouterr().out)}["birthday"]
    assert row["next_run"]["due"] == 3 and "birthday@2026-12-08" in counted


def test_new_trigger_writes_a_trigger_file_that_checks(
    root: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    config = str(root / "config.toml")
    audience = str(root / "campaigns" / "audiences" / "people.csv")
    with time_machine.travel(NOW, tick=False):
        assert cli.main(["new", "bd", "--type", "promo", "--audience", audience, "--trigger",
                         "birthday", "--yearly", "--offset-days", "-3", "--at", "09:30",
                         "--id-column", "customer_id", "--config", config]) == 0
        check = load_campaign(root / "campaigns" / "bd.toml", load_config(root / "config.toml"),
                              NOW)
        assert check.campaign is not None, [p.render() for p in check.problems]
        assert check.campaign.trigger == Trigger(column="birthday", yearly=True, offset_days=-3,
                                                 at=timedelta(hours=9, minutes=30))
        assert cli.main(["new", "bad", "--type", "promo", "--audience", audience, "--trigger",
                         "birthday", "--at", "9.30", "--config", config]) != 0
    assert '--at: "9.30" is not a time of day HH:MM' in capsys.readouterr().err


# -- the gate: each zone group at its own `at`, for its own ttl --------------------------------


def test_the_gate_holds_each_zone_group_until_its_at_and_expires_it_after_its_ttl() -> None:
    from scheduler.journal import BatchRecord
    from scheduler.window_gate import WindowGate, releases

    day = date(2026, 12, 8)
    run = _campaign(Trigger(column="d", at=timedelta(hours=10))).day_run(day)
    release = releases(run)
    assert release is not None
    clock = [datetime(2026, 12, 7, 20, 0, tzinfo=UTC)]  # 10:00 in UTC+14 on the 8th
    gate = WindowGate(None, run.deadline, lambda: clock[0], release=release)
    east = BatchRecord(0, b"", 1, "open", 0, zones="Pacific/Kiritimati")
    west = BatchRecord(1, b"", 1, "open", 0, zones="Etc/GMT+12")
    # the east goes now, its messages living a day (ttl) from its own 10:00
    assert gate.until(east, 1) == datetime(2026, 12, 8, 20, 0, tzinfo=UTC)
    assert gate.until(west, 1) == "held"
    assert gate.held_until == datetime(2026, 12, 8, 22, 0, tzinfo=UTC)  # 26 hours later
    clock[0] = datetime(2026, 12, 8, 22, 0, tzinfo=UTC)
    gate.look_again()
    assert gate.until(east, 1) == "late"  # its day passed: expired, never a day late
    assert gate.until(west, 1) == run.deadline == datetime(2026, 12, 9, 22, 0, tzinfo=UTC)


def test_an_id_too_long_for_the_day_runs_tracking_ids_is_an_error_at_check(root: Path,
                                                                          capsys: pytest.
                                                                          CaptureFixture[str],
                                                                          ) -> None:
    """``birthday.2026-12-08-{id}`` must fit in 254 characters: an id that fits with
    ``birthday-`` but not with the day is found by `check`, not skipped every day."""
    long_id = "x" * (254 - len("birthday.2026-12-08-") + 1)  # fits "birthday-", not the day
    (root / "campaigns" / "audiences" / "people.csv").write_text(
        f"customer_id,phone,name,birthday,tz\n{long_id},+380501000001,A,1990-12-08,\n"
        "2,+380501000002,B,1990-12-08,\n", "utf-8")
    code, out = check_file(root, trigger_text(), capsys)
    assert code != 0, out
    assert "audience.id_column: each occurrence's tracking ids are birthday.YYYY-MM-DD-{id}" in out


def test_status_sees_the_west_wait_for_its_at_and_the_east_expire() -> None:
    """`status`'s view of a day run's open batches (`held_back`, the gate asked at a moment):
    at 09:00Z on the 8th the east (released 20:00Z on the 7th) and Kyiv (08:00Z) may go and
    the west waits for 22:00Z; at 20:30Z the east's day has passed (it will expire: neither)."""
    from scheduler.journal import BatchRecord
    from scheduler.window_gate import Held, held_back

    run = _campaign(Trigger(column="d", at=timedelta(hours=10))).day_run(date(2026, 12, 8))
    batches = [BatchRecord(0, b"", 3, "open", 0, zones="Pacific/Kiritimati"),
               BatchRecord(1, b"", 2, "open", 0, zones="Europe/Kyiv",
                           decided=frozenset({"sent-already"})),
               BatchRecord(2, b"", 4, "open", 0, zones="Etc/GMT+12")]
    west = datetime(2026, 12, 8, 22, 0, tzinfo=UTC)
    assert held_back(run, batches, datetime(2026, 12, 8, 9, 0, tzinfo=UTC)) == Held(4, 4, west)
    assert held_back(run, batches, datetime(2026, 12, 8, 20, 30, tzinfo=UTC)) == Held(1, 4, west)
    assert held_back(run, batches, west) == Held(5, 0, None)
    assert held_back(_campaign(Trigger(column="d", at=timedelta(hours=10))), batches, west) \
        is None  # the trigger file itself, not a day run: nothing held
