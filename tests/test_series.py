"""Series (SPEC §13.1): ``[repeat]`` read and checked, occurrences and their names, DST rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import time_machine
from apscheduler.triggers.cron import CronTrigger
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler import cli
from scheduler.config import load_config
from scheduler.loader import load_campaign
from scheduler.series import (
    crontab,
    fire_times,
    parse_run_id,
    run_id,
    wire_id,
)
from tests.helpers import counted_by_plan, snapshot_as_the_daemon

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)  # a Monday
PEOPLE = "phone,name,customer_id\n+380501234567,Olena,C1\n+380671234567,Taras,C2\n"
KYIV = "Europe/Kyiv"


def series_text(
    repeat: str = 'cron = "0 10 * * MON"\ntimezone = "Europe/Kyiv"', *, send_at: str = "",
    id: str = "weekly-deals", audience_extra: str = "",
) -> str:
    """A series file: lines 1 id, 2 from_name, 3 type, 4 text, 5 send_at (or blank), 6 blank,
    7 [repeat], 8 onwards the repeat table, then [audience]."""
    return "\n".join([
        f'id = "{id}"', 'from_name = "Brand"', 'type = "promo"', 'text = "Hi {name}"',
        send_at and f"send_at = {send_at}", "", "[repeat]", repeat, "", "[audience]",
        'csv = "audiences/people.csv"', audience_extra, "",
    ])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A config and ``campaigns/audiences/people.csv``."""
    (tmp_path / "campaigns" / "audiences").mkdir(parents=True)
    (tmp_path / "campaigns" / "audiences" / "people.csv").write_text(PEOPLE, "utf-8")
    (tmp_path / "config.toml").write_text('[paths]\ncampaigns = "campaigns"\n', "utf-8")
    return tmp_path


def check_file(root: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``check`` of one series file at NOW: exit code and output."""
    path = root / "campaigns" / "s.toml"
    path.write_text(text, "utf-8")
    with time_machine.travel(NOW, tick=False):
        code = cli.main(["check", str(path), "--config", str(root / "config.toml")])
    out = capsys.readouterr()
    return code, out.out + out.err


def utc(*args: int) -> datetime:
    """An aware UTC datetime."""
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# -- DST ---------------------------------------------------------------------------------


def test_ten_in_kyiv_follows_the_wall_clock_across_the_change() -> None:
    """10:00 Europe/Kyiv is 08:00Z in winter and 07:00Z in summer (clocks go forward on
    2027-03-28)."""
    times = list(islice(fire_times("0 10 * * MON", KYIV, utc(2027, 3, 20)), 3))
    assert times == [utc(2027, 3, 22, 8), utc(2027, 3, 29, 7), utc(2027, 4, 5, 7)]


def test_a_time_the_change_skips_fires_at_the_jump() -> None:
    """03:30 does not exist in Kyiv on 2027-03-28 (03:00 EET becomes 04:00 EEST): it fires at
    the jump, 01:00Z, not 01:30Z as APScheduler alone would."""
    times = list(islice(fire_times("30 3 * * *", KYIV, utc(2027, 3, 27)), 3))
    assert times == [utc(2027, 3, 27, 1, 30), utc(2027, 3, 28, 1, 0), utc(2027, 3, 29, 0, 30)]


def test_a_time_that_happens_twice_fires_once() -> None:
    """03:30 happens twice in Kyiv on 2026-10-25 (04:00 EEST goes back to 03:00 EET): one
    occurrence, the first."""
    times = list(islice(fire_times("30 3 * * *", KYIV, utc(2026, 10, 24)), 3))
    assert times == [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30),
                     utc(2026, 10, 26, 1, 30)]


# -- weekdays: cron's numbers, not APScheduler 3's ----------------------------------------


@pytest.mark.parametrize(("field", "names"), [
    ("1", "mon"), ("0", "sun"), ("7", "sun"), ("1-5", "mon,tue,wed,thu,fri"),
    ("*/2", "sun,tue,thu,sat"), ("5-7", "sun,fri,sat"), ("MON", "mon"), ("sat,sun", "sun,sat"),
    ("1/2", "mon,wed,fri"),
])
def test_weekday_numbers_are_cron_s(field: str, names: str) -> None:
    """APScheduler 3 reads weekday 1 as Tuesday (its issue #286); cron reads it as Monday:
    the field goes to APScheduler as names."""
    assert crontab(f"0 10 * * {field}") == f"0 10 * * {names}"


def test_weekday_one_fires_on_monday() -> None:
    """``0 10 * * 1`` fires on Mondays."""
    first = next(fire_times("0 10 * * 1", "UTC", NOW))
    assert first.strftime("%a %H:%M") == "Mon 10:00"


ZONES = ["UTC", KYIV, "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata",
         "Europe/London", "Pacific/Chatham", "America/Sao_Paulo"]
FIELD = st.one_of(st.just("*"), st.integers(0, 59).map(str))
HOUR = st.one_of(st.just("*"), st.integers(0, 23).map(str),
                 st.lists(st.integers(0, 23), min_size=1, max_size=3, unique=True)
                 .map(lambda hs: ",".join(map(str, sorted(hs)))))
DAYS = st.sampled_from(["*", "MON", "mon-fri", "sat,sun", "1", "15", "L"])


@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(minute=st.integers(0, 59), hour=HOUR, day=st.sampled_from(["*", "1", "15", "28"]),
       weekday=DAYS.filter(lambda d: not d.isdigit() and d != "L"),
       zone=st.sampled_from(ZONES),
       start=st.datetimes(datetime(2026, 1, 1), datetime(2028, 12, 31), timezones=st.just(UTC)))
def test_occurrences_are_apscheduler_s_away_from_the_change(
    minute: int, hour: str, day: str, weekday: str, zone: str, start: datetime,
) -> None:
    """Wherever a wall time exists exactly once, the occurrences are APScheduler's own."""
    expression = f"{minute} {hour} {day} * {weekday}"
    tz = ZoneInfo(zone)
    trigger = CronTrigger.from_crontab(expression, timezone=tz)
    theirs, previous, now = [], None, start
    while len(theirs) < 6 and (fired := trigger.get_next_fire_time(previous, now)) is not None:
        previous = now = fired
        theirs.append(fired)
    ours = list(islice(fire_times(expression, zone, start), 8))

    def plain(moment: datetime) -> bool:
        wall = moment.replace(tzinfo=None)
        sure = [wall.replace(tzinfo=tz, fold=f).astimezone(UTC) for f in (0, 1)]
        return sure[0] == sure[1]  # neither skipped nor repeated

    for fired in theirs:
        if plain(fired):
            assert fired.astimezone(UTC) in ours
    assert ours == sorted(set(ours))  # strictly increasing, none twice
    assert all(t >= start for t in ours)


# -- run ids -----------------------------------------------------------------------------


def test_run_ids_name_occurrences_and_the_wire_writes_a_dot() -> None:
    """``{id}@YYYYMMDDTHHMMZ`` for people, ``{id}.YYYYMMDDTHHMMZ`` on the wire."""
    name = run_id("weekly-deals", utc(2026, 12, 14, 8))
    assert name == "weekly-deals@20261214T0800Z"
    assert wire_id(name) == "weekly-deals.20261214T0800Z"
    parsed = parse_run_id(name)
    assert parsed is not None
    assert (parsed.series, parsed.fire_at) == ("weekly-deals", utc(2026, 12, 14, 8))
    assert parse_run_id("weekly-deals") is None
    assert parse_run_id("weekly-deals@20261399T0800Z") is None


def test_an_occurrence_is_a_campaign_of_its_own(root: Path) -> None:
    """The occurrence's id is its run id, its send_at its fire time, its TTL counts from it;
    its tracking ids carry the run id with a dot."""
    path = root / "campaigns" / "s.toml"
    path.write_text(series_text(), "utf-8")
    config = load_config(root / "config.toml", env={})
    check = load_campaign(path, config, NOW)
    assert check.campaign is not None and check.campaign.repeat is not None
    assert check.campaign.send_at == utc(2026, 12, 7, 8) + timedelta(days=7)
    one = check.campaign.occurrence(utc(2026, 12, 14, 8))
    assert one.id == "weekly-deals@20261214T0800Z"
    assert one.wire_id == "weekly-deals.20261214T0800Z"
    assert one.deadline == utc(2026, 12, 15, 8)


# -- check -------------------------------------------------------------------------------


def test_check_says_when_the_next_three_occurrences_are(
    root: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """`check`'s line: the next three occurrences in UTC and in the series' zone."""
    code, out = check_file(root, series_text(), capsys)
    assert code == 0, out
    assert 'weekly-deals  promo  series "0 10 * * MON" Europe/Kyiv' in out
    assert ("next occurrences: 2026-12-14T08:00Z (2026-12-14 10:00 Mon Europe/Kyiv), "
            "2026-12-21T08:00Z (2026-12-21 10:00 Mon Europe/Kyiv), "
            "2026-12-28T08:00Z (2026-12-28 10:00 Mon Europe/Kyiv)") in out


BAD_SERIES: list[tuple[str, str, str, str]] = [
    ("invalid-cron", 'cron = "0 25 * * MON"\ntimezone = "Europe/Kyiv"', ":8: repeat.cron:",
     '"0 25 * * MON" is not a cron expression'),
    ("four-fields", 'cron = "0 10 * *"\ntimezone = "Europe/Kyiv"', ":8: repeat.cron:",
     "\"0 10 * *\" is not a cron expression: Wrong number of fields; got 4, expected 5"),
    ("missing-zone", 'cron = "0 10 * * MON"', ":7: repeat.timezone:",
     'required key is missing: the zone the cron is read in, like timezone = "Europe/Kyiv"'),
    ("unknown-zone", 'cron = "0 10 * * MON"\ntimezone = "Europe/Kyv"', ":9: repeat.timezone:",
     '"Europe/Kyv" is not an IANA time zone: did you mean "Europe/Kyiv"?'),
    ("zone-case", 'cron = "0 10 * * MON"\ntimezone = "europe/kyiv"', ":9: repeat.timezone:",
     'did you mean "Europe/Kyiv"?'),
    ("no-occurrence", 'cron = "0 10 30 2 *"\ntimezone = "Europe/Kyiv"\n'
     "until = 2027-12-01T00:00:00Z", ":8: repeat.cron:",
     '"0 10 30 2 *" in Europe/Kyiv has no occurrence from 2026-12-07T12:00Z before until '
     "(2027-12-01T00:00Z)"),
    ("none-before-until", 'cron = "0 10 1 1 *"\ntimezone = "Europe/Kyiv"\n'
     "until = 2026-12-31T00:00:00Z", ":8: repeat.cron:",
     "its first ones would be 2027-01-01T08:00Z (2027-01-01 10:00 Fri Europe/Kyiv)"),
    ("too-often", 'cron = "*/30 9-17 * * MON-FRI"\ntimezone = "Europe/Kyiv"', ":8: repeat.cron:",
     "repeats less than an hour apart (2026-12-07T12:00Z (2026-12-07 14:00 Mon Europe/Kyiv), "
     "2026-12-07T12:30Z (2026-12-07 14:30 Mon Europe/Kyiv)): a series may go at most once an "
     "hour"),
    ("start-far", 'cron = "0 10 * * MON"\ntimezone = "Europe/Kyiv"\n'
     "start = 2027-03-01T00:00:00Z", ":10: repeat.start:", "more than 30 days ahead"),
    ("start-local", 'cron = "0 10 * * MON"\ntimezone = "Europe/Kyiv"\n'
     "start = 2026-12-14T00:00:00", ":10: repeat.start:",
     "has no time zone, and repeat.start must be UTC"),
    ("until-before-start", 'cron = "0 10 * * MON"\ntimezone = "Europe/Kyiv"\n'
     "start = 2026-12-14T00:00:00Z\nuntil = 2026-12-10T00:00:00Z", ":11: repeat.until:",
     "is not after start"),
    ("bad-audience", 'cron = "0 10 * * MON"\ntimezone = "Europe/Kyiv"\naudience = "fresh"',
     ":10: repeat.audience:", "'fresh' is not a series audience"),
    ("unknown-key", 'cron = "0 10 * * MON"\ntimezone = "Europe/Kyiv"\naudiance = "new"',
     ":10: repeat.audiance:", 'unknown key: did you mean "audience"?'),
    ("not-a-table", "", ":1: repeat:", "must be a table"),
]


@pytest.mark.parametrize(("repeat", "where", "message"),
                         [case[1:] for case in BAD_SERIES], ids=[c[0] for c in BAD_SERIES])
def test_check_reports_series_mistakes_with_file_and_line(
    root: Path, capsys: pytest.CaptureFixture[str], repeat: str, where: str, message: str,
) -> None:
    """Each mistake of the issue, with FILE:LINE, field and the fix."""
    text = series_text(repeat)
    if not repeat:  # `repeat = "weekly"` written as a key, not a table
        text = 'repeat = "weekly"\n' + text.replace("[repeat]\n", "")
    code, out = check_file(root, text, capsys)
    assert code == 1, out
    assert any(f"s.toml{where} " in line and message in line for line in out.splitlines()), out


def test_send_at_and_repeat_together_is_an_error(
    root: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A file has send_at or [repeat], never both."""
    code, out = check_file(root, series_text(send_at="2026-12-10T09:00:00Z"), capsys)
    assert code == 1
    assert "s.toml:5: send_at: a file has send_at or [repeat], never both" in out


def test_tracking_ids_over_255_are_an_error_for_a_series(
    root: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Every occurrence would skip the same rows: `check` refuses the series instead."""
    long_id = "C" * 180
    csv = root / "campaigns" / "audiences" / "people.csv"
    csv.write_text(f"{PEOPLE}+380631234567,Ivan,{long_id}\n", "utf-8")
    code, out = check_file(root, series_text(id="a" * 64, audience_extra='id_column = '
                                             '"customer_id"'), capsys)
    assert code == 1, out
    assert ("s.toml:13: audience.id_column: each occurrence's tracking ids are "
            + "a" * 64 + ".20261214T0800Z-{id}: for line 4 tracking id would be 260 characters"
            ) in out


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(cron=st.text(max_size=30), zone=st.text(max_size=30),
       audience=st.sampled_from(["all", "new", "old", ""]))
def test_any_repeat_table_gives_problems_never_a_traceback(
    tmp_path_factory: pytest.TempPathFactory, cron: str, zone: str, audience: str,
) -> None:
    """Whatever a [repeat] says, loading gives a campaign or problems, never an exception."""
    root = tmp_path_factory.mktemp("any")
    (root / "campaigns" / "audiences").mkdir(parents=True)
    (root / "campaigns" / "audiences" / "people.csv").write_text(PEOPLE, "utf-8")
    (root / "config.toml").write_text('[paths]\ncampaigns = "campaigns"\n', "utf-8")
    quoted = [s.replace("\\", "\\\\").replace('"', '\\"') for s in (cron, zone, audience)]
    text = series_text(f'cron = "{quoted[0]}"\ntimezone = "{quoted[1]}"\n'
                       f'audience = "{quoted[2]}"')
    path = root / "campaigns" / "s.toml"
    path.write_text(text, "utf-8")
    check = load_campaign(path, load_config(root / "config.toml", env={}), NOW)
    assert check.campaign is not None or check.errors


def test_send_refuses_a_series_but_dry_runs_its_next_occurrence(
    root: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """`send` does not send a series (the daemon does, occurrence by occurrence); its dry run
    shows the next occurrence under its run id."""
    path = root / "campaigns" / "s.toml"
    path.write_text(series_text(), "utf-8")
    config = str(root / "config.toml")
    with time_machine.travel(NOW, tick=False):
        refused = cli.main(["send", str(path), "--config", config])
        out = capsys.readouterr()
        assert refused != 0
        assert "is a series: the daemon (cascade-scheduler run) sends each of its" in out.err
        assert cli.main(["send", str(path), "--dry-run", "--config", config]) == 0
    assert "weekly-deals@20261214T0800Z" in capsys.readouterr().out


# -- plan and new --repeat ---------------------------------------------------------------


def test_plan_lists_the_occurrences_within_30_days(
    root: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """``plan --json``: the series' row with ``occurrences: [{run, fire_at, local}]`` within
    30 days, across a DST change in its zone; the table has a row per occurrence."""
    path = root / "campaigns" / "s.toml"
    path.write_text(series_text('cron = "0 9 * * SUN"\ntimezone = "America/New_York"'), "utf-8")
    config = str(root / "config.toml")
    with time_machine.travel(utc(2027, 2, 20, 12), tick=False):
        assert cli.main(["plan", "--json", "--config", config]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert cli.main(["plan", "--config", config]) == 0
    table = capsys.readouterr().out
    (row,) = rows
    assert (row["campaign"], row["state"], row["valid"]) == ("weekly-deals", "series", 2)
    assert row["occurrences"] == [
        {"run": "weekly-deals@20270221T1400Z", "fire_at": "2027-02-21T14:00:00Z",
         "local": "2027-02-21 09:00 Sun America/New_York"},
        {"run": "weekly-deals@20270228T1400Z", "fire_at": "2027-02-28T14:00:00Z",
         "local": "2027-02-28 09:00 Sun America/New_York"},
        {"run": "weekly-deals@20270307T1400Z", "fire_at": "2027-03-07T14:00:00Z",
         "local": "2027-03-07 09:00 Sun America/New_York"},
        {"run": "weekly-deals@20270314T1300Z", "fire_at": "2027-03-14T13:00:00Z",
         "local": "2027-03-14 09:00 Sun America/New_York"},
        {"run": "weekly-deals@20270321T1300Z", "fire_at": "2027-03-21T13:00:00Z",
         "local": "2027-03-21 09:00 Sun America/New_York"},
    ]
    assert "weekly-deals@20270314T1300Z" in table
    assert "2027-03-14 09:00 Sun America/New_York" in table


def test_plan_reads_the_next_occurrence_the_daemon_snapshotted_from_the_journal(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The occurrence the daemon has snapshotted already from the files as they are now is
    counted from the journal, not from the whole CSV again (a million rows take seconds);
    once the CSV changes, from the files."""
    config_path = root / "config.toml"
    config_path.write_text('[paths]\ncampaigns = "campaigns"\nstate = "state/j.sqlite3"\n',
                           "utf-8")
    path = root / "campaigns" / "s.toml"
    path.write_text(series_text(), "utf-8")
    with time_machine.travel(NOW, tick=False):
        check = load_campaign(path, load_config(config_path, env={}), NOW)
    series = check.campaign
    assert series is not None
    occurrence = series.occurrence(series.send_at)
    snapshot_as_the_daemon(config_path, occurrence)
    counted = counted_by_plan(monkeypatch)

    def series_row() -> dict[str, object]:
        with time_machine.travel(NOW, tick=False):
            assert cli.main(["plan", "--json", "--config", str(config_path)]) == 0
        rows: dict[str, dict[str, object]] = {
            r["campaign"]: r for r in json.loads(capsys.readouterr().out)}
        return rows["weekly-deals"]

    assert series_row()["valid"] == 2 and occurrence.id not in counted
    with (root / "campaigns" / "audiences" / "people.csv").open("a") as csv:
        csv.write("+380931234567,Ivan,C3\n")
    assert series_row()["valid"] == 3 and occurrence.id in counted


def test_new_repeat_writes_a_series_that_checks(
    root: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """``new --repeat CRON --timezone ZONE --evergreen`` writes a paused series file."""
    config = str(root / "config.toml")
    csv = str(root / "campaigns" / "audiences" / "people.csv")
    with time_machine.travel(NOW, tick=False):
        assert cli.main(["new", "weekly", "--type", "promo", "--audience", csv, "--repeat",
                         "0 10 * * MON", "--timezone", KYIV, "--evergreen",
                         "--config", config]) == 0
        check = load_campaign(root / "campaigns" / "weekly.toml",
                              load_config(root / "config.toml", env={}), NOW)
    assert check.campaign is not None and check.campaign.repeat is not None
    assert (check.campaign.repeat.cron, check.campaign.repeat.audience) == ("0 10 * * MON", "new")
    assert check.campaign.paused
    assert "send_at =" not in (root / "campaigns" / "weekly.toml").read_text("utf-8")


@pytest.mark.parametrize(("args", "message"), [
    (["--repeat", "0 10 * *", "--timezone", KYIV], '--repeat: "0 10 * *" is not a cron'),
    (["--repeat", "0 10 * * MON", "--timezone", "Europe/Kiyv"],
     '--timezone: "Europe/Kiyv" is not an IANA time zone: did you mean "Europe/Kyiv"?'),
    (["--repeat", "0 10 * * MON"], "--repeat needs --timezone"),
    (["--evergreen"], "--timezone and --evergreen go with --repeat CRON"),
])
def test_new_repeat_refuses_what_check_would(
    root: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str,
) -> None:
    """A mistake names the argument, and no file is written."""
    csv = str(root / "campaigns" / "audiences" / "people.csv")
    with time_machine.travel(NOW, tick=False):
        code = cli.main(["new", "weekly", "--type", "promo", "--audience", csv, *args,
                         "--config", str(root / "config.toml")])
    assert code != 0
    assert message in capsys.readouterr().err
    assert not (root / "campaigns" / "weekly.toml").exists()


@pytest.mark.parametrize(("expression", "zone"), [
    ("0 * * * *", KYIV), ("30 * * * *", KYIV), ("0 * * * *", "Australia/Lord_Howe"),
    ("15,45 2 * * *", "America/New_York"),
])
def test_occurrences_never_repeat_a_moment_across_the_changes(expression: str, zone: str) -> None:
    """Around both changes of 2027 in the zone, every fire time comes after the one before
    (a jump over a skipped time never lands on the next occurrence's moment)."""
    for begin in (utc(2027, 3, 1), utc(2027, 9, 20)):
        times = list(islice(fire_times(expression, zone, begin), 24 * 50))
        assert all(later > earlier for earlier, later in pairwise(times))


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(minute=st.integers(0, 59), hour=st.integers(0, 23),
       day=st.sampled_from(["*", "1", "1-7", "15", "28", "31"]),
       month=st.sampled_from(["*", "3", "10", "3,10", "*/2"]),
       weekday=st.sampled_from(["*", "MON", "sun", "mon-fri", "sat,sun", "0", "6"]),
       zone=st.sampled_from([*ZONES, "Antarctica/Troll", "Pacific/Apia"]),
       start=st.datetimes(datetime(2026, 1, 1), datetime(2028, 12, 31), timezones=st.just(UTC)))
def test_one_wall_time_a_day_is_never_under_an_hour_apart(
    minute: int, hour: int, day: str, month: str, weekday: str, zone: str, start: datetime,
) -> None:
    """`check` (and `plan`) skip the scan for a cron with one minute and one hour: walking its
    fire times, summer time changes included, finds no two under an hour apart either."""
    from scheduler.series import nominal_gap, scanned_gap

    expression = f"{minute} {hour} {day} {month} {weekday}"
    assert nominal_gap(expression, zone, start) is None
    assert scanned_gap(expression, zone, start) is None
    # a second hour within the hour of the first is still found
    close = f"{minute} {hour},{(hour + 1) % 24} * * *"
    if minute > 0 and hour < 23:
        assert nominal_gap(f"{minute},0 {hour},{hour + 1} * * *", zone, start) is not None
    assert scanned_gap(close, zone, start) == nominal_gap(close, zone, start)
