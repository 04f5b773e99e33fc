"""A trigger's next day run counted from a sieved audience (`scheduler.day_sieve`): `plan`'s
count equals the daemon's snapshot of the run, and the sieve changes no count, skip or line."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import time_machine
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import audience, cli
from scheduler.audience import summarize
from scheduler.campaign import Campaign
from scheduler.config import load_config
from scheduler.day_sieve import sieve
from scheduler.errors import CampaignError
from scheduler.loader import load_campaign
from scheduler.suppression import Suppression
from tests.helpers import counted_by_plan, snapshot_as_the_daemon

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
DAY = date(2026, 12, 8)  # the next day run's at NOW
HEADER = "customer_id,phone,name,birthday,tz\n"
TRIGGER = "\n".join([
    'id = "birthday"', 'from_name = "Brand"', 'type = "promo"', 'text = "Hi {name}"',
    "[trigger]", 'column = "birthday"', "yearly = true", 'at = "10:00"',
    "[audience]", 'csv = "audiences/people.csv"', 'id_column = "customer_id"',
    'tz_column = "tz"', "",
])
#: the day's rows and the bad dates among runs of rows due on other days
DUE_AND_BAD = [
    "1,+380501000001,A,1990-12-08,Pacific/Kiritimati",
    "2,+380501000002,B,1985-12-08,Etc/GMT+12",
    "3,+380501000001,C,1991-12-08,Europe/Kyiv",  # duplicate phone among the day's rows
    "4,+380501000004,D,1992-12-08,Europe/Kyiv",  # suppressed
    "5,+380501000005,E,12-08,Europe/Kyiv",
    "6,+380501000006,F,,",  # invalid_date: empty
    "7,+380501000007,G,1990-13-01,",  # invalid_date: no such month
    "8,+380501000008,H,1990-02-30,",  # invalid_date: no such day
    "11,not-a-phone,K,1990-12-08,",  # invalid_phone
    "12,+380501000012,L, 1993-12-08 ,Europe/Kyiv",
    "13,+380501000013,M,1993-12-08,Mars/Olympus",  # invalid_timezone
]


def other_days(start: int, count: int) -> list[str]:
    """``count`` rows due on other days, one of them sharing a due row's phone (not a
    duplicate: it is not in the day's run)."""
    rows = [f"{n},+38050{n:07d},N{n},19{n % 90:02d}-0{n % 9 + 1}-{n % 28 + 1:02d},"
            for n in range(start, start + count)]
    rows[0] = f"{start},+380501000002,Twin,1990-12-09,"
    return rows


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A config with a journal and a suppression list, and the trigger over a big-ish
    audience: the day's rows and bad dates spread among runs of other days' rows."""
    audiences = tmp_path / "campaigns" / "audiences"
    audiences.mkdir(parents=True)
    lines = [HEADER.rstrip("\n")]
    for n, row in enumerate(DUE_AND_BAD):
        lines += [*other_days(1000 + 100 * n, 50), row]
    (audiences / "people.csv").write_text("\n".join(lines) + "\n", "utf-8")
    (tmp_path / "optout.csv").write_text("phone\n+380501000004\n", "utf-8")
    (tmp_path / "campaigns" / "birthday.toml").write_text(TRIGGER, "utf-8")
    (tmp_path / "config.toml").write_text(
        '[paths]\ncampaigns = "campaigns"\nstate = "state/j.sqlite3"\n'
        'suppression = "optout.csv"\n', "utf-8")
    return tmp_path


def plan_row(root: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with time_machine.travel(NOW, tick=False):
        assert cli.main(["plan", "--json", "--config", str(root / "config.toml")]) == 0
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return next(row for row in rows if row["campaign"] == "birthday")


def test_plan_counts_the_next_day_run_as_its_snapshot_holds(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From the files, `plan` gives the next run's due count, skips and zone groups that the
    daemon's snapshot of that run holds: invalid dates skipped, the day's duplicate and
    suppressed phone skipped, another day's row sharing a phone not a duplicate."""
    from_files = plan_row(root, capsys)
    config = load_config(root / "config.toml", env={})
    check = load_campaign(root / "campaigns" / "birthday.toml", config, NOW)
    assert check.campaign is not None
    record = snapshot_as_the_daemon(root / "config.toml", check.campaign.day_run(DAY))
    snapshot = record.recipients, record.skipped
    counted = counted_by_plan(monkeypatch)
    from_journal = plan_row(root, capsys)
    assert counted == []  # read from the journal's snapshot this time
    assert (from_files["valid"], from_files["skipped"]) == snapshot == (4, 7)
    assert from_files["next_run"] == from_journal["next_run"]
    assert from_files["next_run"]["groups"] == [
        {"zones": "Pacific/Kiritimati", "due": 1, "at": "2026-12-07T20:00:00Z"},
        {"zones": "Europe/Kyiv", "due": 2, "at": "2026-12-08T08:00:00Z"},
        {"zones": "Etc/GMT+12", "due": 1, "at": "2026-12-08T22:00:00Z"},
    ]


def test_the_sieve_leaves_only_the_days_rows_and_the_bad_dates(root: Path) -> None:
    """The other days' rows never reach the row rules; the rest keep their file lines."""
    run = day_run(root)
    header = HEADER.rstrip("\n").split(",")
    sieved = sieve(run, run.audience.csv.read_bytes(), ",", 3, header)
    assert sieved is not None
    kept, start = [], sieved.line_num + 1
    for row in sieved:  # a row's line, as the row checker reads it
        kept.append((start, row[0]))
        start = sieved.line_num + 1
    assert kept == [(1 + 51 * (n + 1), row.split(",")[0]) for n, row in enumerate(DUE_AND_BAD)]


def day_run(root: Path, text: str = TRIGGER) -> Campaign:
    path = root / "campaigns" / "birthday.toml"
    path.write_text(text, "utf-8")
    check = load_campaign(path, load_config(root / "config.toml", env={}), NOW)
    assert check.campaign is not None, [p.render() for p in check.problems]
    return check.campaign.day_run(DAY)


#: lines that test the sieve's edges: the day's, other days', bad dates, blank and odd lines
LINES = st.sampled_from([
    "1,+380501000001,A,1990-12-08,Europe/Kyiv", "2,+380501000002,B,12-08,",
    "3,+380501000003,C,1990-12-09,", "4,+380501000003,D,2001-01-31,Etc/GMT+12",
    "5,+380501000005,E,0000-01-01,", "6,+380501000006,F,2001-02-29,",
    "7,+380501000007,G,2000-02-29,", "8,+380501000008,H,2001-04-31,",
    "9,+380501000009,I, 1990-12-08,", "10,+380501000010,J,1990-12-08 ,",
    "11,+380501000011,K,١٩٩٠-١٢-٠٨,", "12,+380501000012,L,1990-12-08",
    "13,+380501000013,M,2001-11-30,x,y", "14,+380501000001,N,1990-12-08,",
    "15,+380501000015,O,1990-1-08,", "16,+380501000016", "", ",,,,", " , , , , ",
    '17,+380501000017,"P, Q",1990-12-08,', '18,+380501000018,"R\nS",2001-01-01,',
    "19,+380501000019,T,2001-01-01,\r", "20,+380501000020,U,1990-12-08,\r",
])


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(LINES, max_size=25), crlf=st.booleans(), unended=st.booleans())
def test_the_sieve_changes_no_count_skip_or_line(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str], crlf: bool, unended: bool,
) -> None:
    """Any audience counts the same with the sieve as without (the same valid rows, zone
    groups, skips with their reasons, details and first lines)."""
    root = tmp_path_factory.mktemp("sieve")
    (root / "campaigns" / "audiences").mkdir(parents=True)
    (root / "config.toml").write_text('[paths]\ncampaigns = "campaigns"\n', "utf-8")
    end = "\r\n" if crlf else "\n"
    text = end.join([HEADER.rstrip("\n"), *lines]) + ("" if unended else end)
    (root / "campaigns" / "audiences" / "people.csv").write_bytes(text.encode())
    run = day_run(root)
    suppression = Suppression()
    sieved = summarize(run, suppression, may_fork=False).to_json()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(audience, "_sieve", lambda *args: None)
        whole = summarize(run, suppression, may_fork=False).to_json()
    assert sieved == whole


@pytest.mark.parametrize(("bad", "why"), [
    (b"B" * 200_000, "not readable as CSV"),  # over the csv module's field limit
    (b"B\xff", "not UTF-8"),
    (b"B\0", "NUL bytes"),
])
def test_a_bad_line_another_days_is_reported_as_without_the_sieve(
    tmp_path: Path, bad: bytes, why: str,
) -> None:
    """A line the sieve would drop but the reader refuses (a cell too long, bytes that are not
    UTF-8, a NUL) is not dropped unread: the count fails on it with its line, as without."""
    (tmp_path / "campaigns" / "audiences").mkdir(parents=True)
    (tmp_path / "config.toml").write_text('[paths]\ncampaigns = "campaigns"\n', "utf-8")
    (tmp_path / "campaigns" / "audiences" / "people.csv").write_bytes(
        HEADER.encode() + b"1,+380501000001,A,1990-12-08,\n"
        b"2,+380501000002," + bad + b",1990-01-01,\n")
    run = day_run(tmp_path)
    with pytest.raises(CampaignError) as sieved:
        summarize(run, may_fork=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(audience, "_sieve", lambda *args: None)
        with pytest.raises(CampaignError) as whole:
            summarize(run, may_fork=False)
    assert str(sieved.value) == str(whole.value)
    assert ":3: " in str(sieved.value) and why in str(sieved.value)
