"""Send windows as rules (SPEC §11.4): parsing, open stretches across zones and clock changes,
each recipient's zone (column, phone prefix, policy), and what `check` says about them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from phonenumbers import (
    SUPPORTED_REGIONS,
    PhoneNumberFormat,
    PhoneNumberType,
    example_number_for_type,
    format_number,
)
from phonenumbers.timezone import time_zones_for_number

from scheduler.audience import iter_audience
from scheduler.checking import check_paths, render_report
from scheduler.config import ConfigError, load_config
from scheduler.loader import load_campaign
from scheduler.planning import plan_rows
from scheduler.records import Skip
from scheduler.window import Window, zone, zone_group, zones_of_group
from scheduler.zones import ZoneFinder
from tests.helpers import run_cli, write_campaign, write_config

KYIV, NEW_YORK = zone("Europe/Kyiv"), zone("America/New_York")
MONDAY = datetime(2026, 12, 7, tzinfo=UTC)  # winter: Kyiv UTC+2, New York UTC-5


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- the window itself --------------------------------------------------------------------


@pytest.mark.parametrize(("text", "says"), [
    ("9-20", "HH:MM-HH:MM"),
    ("20:00-09:00", "closes before it opens"),
    ("09:00-25:00", "past 24:00"),
    ("09:61-20:00", "minute past 59"),
])
def test_a_bad_window_says_what_to_write(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as error:
        Window.parse(text)
    assert "09:00-20:00" in str(error.value)


def test_days_are_names_and_a_bad_one_is_named() -> None:
    assert Window.parse("09:00-20:00", ["mon", "Saturday"]).days == {0, 5}
    with pytest.raises(ValueError, match='"funday" is not a day'):
        Window.parse("09:00-20:00", ["mon", "funday"])
    assert Window.parse("08:00-20:00", ["mon", "tue"]).text() == "08:00-20:00 mon,tue"


def test_open_now_goes_now_until_the_local_close() -> None:
    window = Window.parse("09:00-20:00")
    now = at("2026-12-07T10:00:00Z")  # 12:00 in Kyiv
    assert window.next_stretch([KYIV], now, now + timedelta(days=1)) == (
        now, at("2026-12-07T18:00:00Z"))


def test_closed_now_waits_for_the_opening_or_never_within_the_deadline() -> None:
    window = Window.parse("09:00-20:00")
    now = at("2026-12-07T10:00:00Z")  # 05:00 in New York, opens 14:00Z
    assert window.next_stretch([NEW_YORK], now, now + timedelta(days=1)) == (
        at("2026-12-07T14:00:00Z"), at("2026-12-08T01:00:00Z"))
    assert window.next_stretch([NEW_YORK], now, now + timedelta(hours=1)) is None


def test_window_days_skip_to_the_next_allowed_day() -> None:
    window = Window.parse("08:00-20:00", ["mon", "tue", "wed", "thu", "fri", "sat"])
    sunday_noon = at("2026-12-06T10:00:00Z")  # Sunday 12:00 in Kyiv
    opens, _ = window.next_stretch([KYIV], sunday_noon, sunday_noon + timedelta(days=3)) or (
        None, None)
    assert opens == at("2026-12-07T06:00:00Z")  # Monday 08:00 in Kyiv


def test_several_zones_send_only_when_open_in_every_one() -> None:
    """Fail closed: a prefix spanning zones goes only inside the window in all of them."""
    window = Window.parse("09:00-20:00")
    start = at("2026-12-07T00:00:00Z")
    stretch = window.next_stretch([KYIV, NEW_YORK], start, start + timedelta(days=2))
    assert stretch == (at("2026-12-07T14:00:00Z"), at("2026-12-07T18:00:00Z"))
    # Russia's and Kazakhstan's +7 spans ten hours: a ten-hour window is never open in all
    russia = zones_of_group(ZoneFinder("UTC").of_phone("+79161234567"))
    assert len(russia) > 10
    later = start + timedelta(days=3)
    assert Window.parse("10:00-20:00").next_stretch(russia, start, later) is None
    wide = Window.parse("09:00-20:00").next_stretch(russia, start, later)
    assert wide is not None and wide[1] - wide[0] == timedelta(hours=1)


ZONES_WITH_DST = ["Europe/Kyiv", "Europe/Paris", "America/New_York", "Australia/Sydney",
                  "America/Los_Angeles", "Asia/Tokyo"]


@settings(max_examples=300, deadline=None)
@given(
    day=st.dates(min_value=date(2026, 1, 1), max_value=date(2030, 12, 31)),
    minute=st.integers(0, 24 * 60 - 1),
    names=st.lists(st.sampled_from(ZONES_WITH_DST), min_size=1, max_size=2, unique=True),
    hours=st.sampled_from(["08:00-21:00", "09:00-20:00", "00:30-03:30", "10:00-24:00",
                           "02:30-20:00", "01:00-02:30"]),  # edges a clock change may skip
)
@example(day=date(2028, 3, 25), minute=90, names=["Europe/Kyiv"], hours="00:30-03:30")
def test_a_stretch_is_inside_the_local_window_everywhere_across_clock_changes(
    day: date, minute: int, names: list[str], hours: str,
) -> None:
    """Whatever the date (daylight saving changes included), every moment of the stretch
    found is inside the window on each zone's wall clock, and it starts at the earliest such
    moment (a minute before it, one zone is closed)."""
    window = Window.parse(hours)
    zones = [zone(name) for name in names]
    now = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(minutes=minute)
    stretch = window.next_stretch(zones, now, now + timedelta(days=3))
    if stretch is None:
        return  # possible: two zones whose windows never overlap
    opens, closes = stretch
    assert now <= opens < closes

    def inside(moment: datetime) -> bool:
        for place in zones:
            local = moment.astimezone(place)
            since = timedelta(hours=local.hour, minutes=local.minute, seconds=local.second)
            if not window.opens <= since < window.closes and not (
                    window.closes == timedelta(hours=24) and since >= window.opens):
                return False
        return True

    for moment in (opens, opens + (closes - opens) / 2, closes - timedelta(seconds=1)):
        assert inside(moment), (moment, names)
    if opens > now:
        assert not inside(opens - timedelta(minutes=1))


# --- each recipient's zone -------------------------------------------------------------------


def test_phone_zones_by_prefix_with_a_default_for_the_unknown() -> None:
    finder = ZoneFinder("Europe/Kyiv")
    assert finder.of_phone("+380501234567") == "Europe/Kyiv"
    assert finder.of_phone("+48501234567") == "Europe/Warsaw"
    assert finder.of_phone("+12125551234") == "America/New_York"  # +1 by area code
    assert finder.of_phone("+13105551234") == "America/Los_Angeles"
    # area code 219 (Indiana) spans two zones: libphonenumber tells them by the exchange
    assert finder.of_phone("+12192261234") == "America/Chicago"
    assert finder.of_phone("+12194001234") == "America/New_York"
    assert finder.of_phone("+447700900123") == "Europe/Kyiv"  # a drama range: unknown
    assert " " in finder.of_phone("+79161234567")  # several zones: a group
    assert zone_group(["b/B", "a/A", "b/B"]) == "a/A b/B"


def test_the_prefix_cache_agrees_with_libphonenumber_for_every_region() -> None:
    """Each region's example mobile and fixed-line numbers, through ONE finder (so a prefix
    cached for one kind of number must not answer for the other: a Caribbean island's mobiles
    and fixed lines share an area code), get the zones libphonenumber gives them."""
    finder = ZoneFinder("UTC")
    kinds = (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE)
    examples = [example_number_for_type(region, kind)
                for region in sorted(SUPPORTED_REGIONS) for kind in kinds]
    checked = 0
    for number in filter(None, examples):
        phone = format_number(number, PhoneNumberFormat.E164)
        known = [name for name in time_zones_for_number(number) if name != "Etc/Unknown"]
        assert finder.of_phone(phone) == (zone_group(known) if known else "UTC"), phone
        checked += 1
    assert checked > 400


def test_tz_column_names_the_zone_and_a_bad_one_is_skipped_with_a_hint(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    (tmp_path / "campaigns" / "people.csv").write_text(
        "phone,name,tz\n+380501234567,A,America/Chicago\n+380501234568,B,\n"
        "+380501234569,C,Kyiv\n")
    file = write_campaign(tmp_path / "campaigns", "w", "people.csv", type="promo", ttl=86400,
                          extra='window = "09:00-20:00"\n')
    text = file.read_text().replace('csv = "people.csv"', 'csv = "people.csv"\ntz_column = "tz"')
    file.write_text(text)
    check = load_campaign(file, config, datetime.now(UTC))
    assert check.campaign is not None, check.problems
    rows = list(iter_audience(check.campaign, may_fork=False))
    assert [getattr(r, "zone", None) for r in rows[:2]] == ["America/Chicago", "Europe/Kyiv"]
    skip = rows[2]
    assert isinstance(skip, Skip) and skip.reason == "invalid_timezone"
    assert '"Kyiv"' in skip.detail and "Europe/Kyiv" in skip.detail


def test_tz_column_is_checked_without_a_window_and_check_gives_the_closest_zone(
    tmp_path: Path,
) -> None:
    """A transactional campaign has no window, yet its ``tz_column`` still names zones: a
    "Kyiv" row is skipped (not sent unflagged), and `check` warns at the column's line with
    the closest IANA name; an empty cell and a real zone pass."""
    config = load_config(write_config(tmp_path))
    (tmp_path / "campaigns" / "people.csv").write_text(
        "phone,name,tz\n+380501234567,A,Europe/Kyiv\n+380501234568,B,\n"
        "+380501234569,C,Kyiv\n+380501234570,D,new york\n")
    file = write_campaign(tmp_path / "campaigns", "t", "people.csv")
    file.write_text(file.read_text().replace('csv = "people.csv"',
                                             'csv = "people.csv"\ntz_column = "tz"'))
    check = load_campaign(file, config, datetime.now(UTC))
    assert check.campaign is not None and check.campaign.window is None, check.problems
    rows = list(iter_audience(check.campaign, may_fork=False))
    skips = [r for r in rows if isinstance(r, Skip)]
    assert [(s.line, s.reason) for s in skips] == [(4, "invalid_timezone"),
                                                  (5, "invalid_timezone")]
    assert 'write e.g. "Europe/Kyiv"' in skips[0].detail
    assert 'write e.g. "America/New_York"' in skips[1].detail
    text = render_report(check_paths([file], config, datetime.now(UTC)))
    tz_line = file.read_text().splitlines().index('tz_column = "tz"') + 1
    assert (f't.toml:{tz_line}: warning: audience.tz_column: 2 rows name no IANA time zone '
            'and are skipped: line 4: "Kyiv" in column "tz" is not an IANA time zone: '
            'write e.g. "Europe/Kyiv"') in text
    assert "2 recipients valid, 2 skipped (invalid_timezone 2: lines 4, 5)" in text


@pytest.mark.parametrize(("value", "hint"), [
    ("kyiv", "Europe/Kyiv"), ("europe/kyiv", "Europe/Kyiv"), ("Europe/Kyev", "Europe/Kyiv"),
    ("Berlin", "Europe/Berlin"), ("Pacific/Auckand", "Pacific/Auckland"),
    ("UTC+3", "Europe/Kyiv"),  # an offset: a place name, which knows summer time
])
def test_the_closest_zone_hint(tmp_path: Path, value: str, hint: str) -> None:
    config = load_config(write_config(tmp_path))
    (tmp_path / "campaigns" / "people.csv").write_text(f"phone,name,tz\n+380501234567,A,{value}\n")
    file = write_campaign(tmp_path / "campaigns", "t", "people.csv")
    file.write_text(file.read_text().replace('csv = "people.csv"',
                                             'csv = "people.csv"\ntz_column = "tz"'))
    check = load_campaign(file, config, datetime.now(UTC))
    assert check.campaign is not None, check.problems
    (skip,) = iter_audience(check.campaign, may_fork=False)
    assert isinstance(skip, Skip) and f'write e.g. "{hint}"' in skip.detail


def test_policy_window_is_the_default_for_promo_but_not_transactional(tmp_path: Path) -> None:
    config_file = write_config(tmp_path)
    config_file.write_text(config_file.read_text()
                           + '\n[policy]\nwindow = "10:00-19:00"\ntimezone = "Europe/Kyiv"\n')
    config = load_config(config_file)
    (tmp_path / "campaigns" / "people.csv").write_text("phone,name\n+380501234567,A\n")
    now = datetime.now(UTC)
    for kind, expected in (("promo", "10:00-19:00"), ("viber_survey", "10:00-19:00"),
                           ("transaction", None)):
        text = None if kind != "viber_survey" else "Rate us?"
        extra = 'survey_options = ["Yes", "No"]\n' if kind == "viber_survey" else ""
        file = write_campaign(tmp_path / "campaigns", kind, "people.csv", type=kind,
                              text=text or "Hello {name}", ttl=604800 if text else 86400,
                              extra=extra)
        check = load_campaign(file, config, now)
        assert check.campaign is not None, check.problems
        shown = check.campaign.window.text() if check.campaign.window else None
        assert shown == expected, kind
    own = write_campaign(tmp_path / "campaigns", "t2", "people.csv",
                         extra='window = "08:00-09:00"\n')
    check = load_campaign(own, config, now)
    assert check.campaign is not None and check.campaign.window is not None
    assert check.campaign.window.text() == "08:00-09:00"  # a transaction's own window holds


def test_check_names_file_line_and_field_of_a_bad_window(tmp_path: Path) -> None:
    write_config(tmp_path)
    (tmp_path / "campaigns" / "people.csv").write_text("phone,name\n+380501234567,A\n")
    write_campaign(tmp_path / "campaigns", "w", "people.csv", type="promo", ttl=86400,
                   extra='window = "21:00-08:00"\nwindow_days = ["mon", "sun", "holiday"]\n')
    done = run_cli(["check", "--config", str(tmp_path / "config.toml")], cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    lines = (done.stdout + done.stderr).splitlines()
    assert any("w.toml:7: window:" in line and "closes before it opens" in line
               for line in lines), lines


def test_a_bad_policy_window_or_zone_is_a_config_error(tmp_path: Path) -> None:
    config_file = write_config(tmp_path)
    base = config_file.read_text()
    config_file.write_text(base + '\n[policy]\nwindow = "9 to 5"\n')
    with pytest.raises(ConfigError, match="HH:MM-HH:MM"):
        load_config(config_file)
    config_file.write_text(base + '\n[policy]\ntimezone = "Mars/Olympus"\n')
    with pytest.raises(ConfigError, match="IANA"):
        load_config(config_file)


def test_check_shows_zones_held_and_unreachable(tmp_path: Path) -> None:
    """Per campaign: recipients by zone, how many go at once, are held (and when their
    window opens, in UTC and local time), and cannot be reached in the TTL."""
    config = load_config(write_config(tmp_path))
    rows = [f"+38050{n:07d},K{n}" for n in range(6)] + [
        f"+1212555{n:04d},N{n}" for n in range(4)] + [f"+7916123{n:04d},R{n}" for n in range(2)]
    (tmp_path / "campaigns" / "people.csv").write_text("phone,name\n" + "\n".join(rows) + "\n")
    write_campaign(tmp_path / "campaigns", "w", "people.csv", type="promo", ttl=86400,
                   send_at=MONDAY + timedelta(hours=10), extra='window = "10:00-20:00"\n')
    report = check_paths([], config, MONDAY + timedelta(hours=9))  # a fixed clock: the hour matters
    text = render_report(report)
    assert "6 may go at once, 4 held for their window, 2 cannot be reached" in text, text
    assert "by zone: Europe/Kyiv 6, America/New_York 4" in text
    assert "2026-12-07T15:00Z (America/New_York 10:00) 4" in text


def test_check_and_plan_say_whose_window_holds_and_how_to_send_at_any_hour(
    tmp_path: Path,
) -> None:
    """A test send "in a minute" at 05:00 Kyiv time: [policy]'s 09:00-20:00 holds everyone,
    and `check` says it is the policy's and how to send anyway (the file's own window =
    "00:00-24:00"); with that line the file's own window shows, and nobody is held; `plan`
    names the window's source too (issue 24, item 14)."""
    config_file = write_config(tmp_path)
    config_file.write_text(config_file.read_text() + '\n[policy]\nwindow = "09:00-20:00"\n')
    config = load_config(config_file)
    (tmp_path / "campaigns" / "people.csv").write_text(
        "phone,name\n" + "".join(f"+38050{n:07d},K{n}\n" for n in range(6)))
    now = MONDAY + timedelta(hours=3)  # 05:00 in Kyiv
    for cid, extra in (("held", ""), ("anytime", 'window = "00:00-24:00"\n')):
        write_campaign(tmp_path / "campaigns", cid, "people.csv", type="promo", ttl=86400,
                       send_at=now + timedelta(minutes=1), extra=extra)
    text = render_report(check_paths([], config, now))
    held, anytime = text.split("OK       ")[2], text.split("OK       ")[1]
    assert "anytime" in anytime and "held" in held
    assert ("window 09:00-20:00 local ([policy] window): 0 may go at once, 6 held for their "
            "window") in held
    assert ('to send outside it (a test now, say), write window = "00:00-24:00" in the '
            "campaign file: its own window replaces [policy]'s") in held
    assert ("window 00:00-24:00 local (the file's own window): 6 may go at once, 0 held"
            in anytime) and "to send outside it" not in anytime
    notes = {row["campaign"]: row["note"] for row in plan_rows(config, now)}
    assert notes["held"].startswith("window 09:00-20:00 ([policy] window): 6 held")
    assert notes["anytime"] == "window 00:00-24:00 (the file's own window): 0 held"
