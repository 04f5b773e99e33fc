"""Campaign files: every file-level rule of SPEC §5, reported with file, line and field."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine

from scheduler import cli
from scheduler.campaign import DEFAULT_TTL, MESSAGE_TYPES
from scheduler.config import Config, load_config
from scheduler.loader import CampaignCheck, campaign_files, load_campaign, load_campaigns

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
PEOPLE = "phone,first_name,customer_id\n+380501234567,Olena,C1\n+380671234567,Taras,C2\n"


@dataclass
class Workspace:
    """A config file, a campaigns folder and one audience CSV in a temporary directory."""

    root: Path

    @property
    def campaigns(self) -> Path:
        """The campaigns folder."""
        return self.root / "campaigns"

    @property
    def config_file(self) -> Path:
        """The config file naming the campaigns folder."""
        return self.root / "config.toml"

    def config(self) -> Config:
        """The loaded config (paths resolved against the workspace)."""
        return load_config(self.config_file, env={})

    def write(self, name: str, text: str) -> Path:
        """Write a campaign file into the campaigns folder and return its path."""
        path = self.campaigns / name
        path.write_text(text, "utf-8")
        return path


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    """A fresh workspace with ``campaigns/audiences/people.csv``."""
    (tmp_path / "campaigns" / "audiences").mkdir(parents=True)
    (tmp_path / "campaigns" / "audiences" / "people.csv").write_text(PEOPLE, "utf-8")
    (tmp_path / "config.toml").write_text('[paths]\ncampaigns = "campaigns"\n', "utf-8")
    return Workspace(tmp_path)


def campaign_text(
    *,
    id: str | None = '"spring-2026"',
    from_name: str | None = '"YourBrand"',
    type: str | None = '"promo"',
    send_at: str | None = "2026-12-01T09:00:00Z",
    text: str | None = '"Hi {first_name}, spring sale!"',
    extra: str = "",
    audience: bool = True,
    csv: str | None = '"audiences/people.csv"',
    audience_extra: str = "",
) -> str:
    """A campaign file whose keys always sit on the same lines (a removed key leaves a blank).

    Lines: 1 id, 2 from_name, 3 type, 4 send_at, 5 text, 6 extra, 8 [audience], 9 csv,
    10 audience_extra.
    """

    def line(key: str, value: str | None) -> str:
        return "" if value is None else f"{key} = {value}"

    lines = [
        line("id", id), line("from_name", from_name), line("type", type),
        line("send_at", send_at), line("text", text), extra, "",
        "[audience]" if audience else "", line("csv", csv), audience_extra,
    ]
    return "\n".join(lines) + "\n"


def run_check(ws: Workspace, path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``cascade-scheduler check PATH --config ws/config.toml`` at NOW; exit code and output."""
    with time_machine.travel(NOW, tick=False):
        code = cli.main(["check", str(path), "--config", str(ws.config_file)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


SURVEY = {"type": '"viber_survey"', "text": '"Rate us"'}
OPTIONS = 'survey_options = ["Yes", "No"]'

# (case id, campaign_text overrides, exit code, line, field, words in the message)
BAD_FILES: list[tuple[str, dict[str, object], int, int | None, str | None, str]] = [
    ("toml-syntax", {"type": '"promo'}, 1, 3, None, "TOML syntax error"),
    ("missing-id", {"id": None}, 1, None, "id", "required key is missing"),
    ("bad-id-space", {"id": '"spring 2026"'}, 1, 1, "id", "not a valid id"),
    ("bad-id-start", {"id": '"-spring"'}, 1, 1, "id", "starting with a letter or digit"),
    ("id-too-long", {"id": '"' + "a" * 65 + '"'}, 1, 1, "id", "1 to 64"),
    ("id-array", {"id": '["a"]'}, 1, 1, "id", "not an array"),
    ("missing-from-name", {"from_name": None}, 1, None, "from_name", "required key is missing"),
    ("from-name-number", {"from_name": "42"}, 1, 2, "from_name", "must be text"),
    ("from-name-empty", {"from_name": '"  "'}, 1, 2, "from_name", "must not be empty"),
    ("missing-type", {"type": None}, 1, None, "type", "required key is missing"),
    ("unknown-type", {"type": '"promos"'}, 1, 3, "type", 'did you mean "promo"'),
    ("unknown-type-lists", {"type": '"sms"'}, 1, 3, "type",
     "transaction, promo, viber_survey, flashcall"),
    ("missing-send-at", {"send_at": None}, 1, None, "send_at", "missing: write send_at = 2026-"),
    ("send-at-local", {"send_at": "2026-12-01T09:00:00"}, 1, 4, "send_at",
     "2026-12-01T09:00:00 has no time zone, and send_at must be UTC"),
    ("send-at-offset", {"send_at": "2026-12-01T11:00:00+02:00"}, 1, 4, "send_at",
     "2026-12-01T11:00:00+02:00 is not UTC: write 2026-12-01T09:00:00Z"),
    ("send-at-string-offset", {"send_at": '"2026-12-01T09:00:00-05:00"'}, 1, 4, "send_at",
     "write 2026-12-01T14:00:00Z"),
    ("send-at-string-local", {"send_at": '"2026-12-01 09:00"'}, 1, 4, "send_at",
     "2026-12-01T09:00:00 has no time zone, and send_at must be UTC"),
    ("send-at-not-a-date", {"send_at": '"tomorrow"'}, 1, 4, "send_at", "not a date and time"),
    ("send-at-bare-date", {"send_at": "2026-12-01"}, 1, 4, "send_at",
     "needs a time of day too: write 2026-12-01T09:00:00Z"),
    ("send-at-string-date", {"send_at": '"2026-12-01"'}, 1, 4, "send_at", "needs a time of day"),
    ("send-at-time-only", {"send_at": "09:00:00"}, 1, 4, "send_at", "needs a date too"),
    ("send-at-number", {"send_at": "1764579600"}, 1, 4, "send_at", "not a whole number"),
    ("send-at-too-far", {"send_at": "2026-12-27T12:00:01Z"}, 1, 4, "send_at",
     "more than 30 days ahead (the API refuses that): the latest allowed now is "
     "2026-12-26T12:00:00Z"),
    ("send-at-past-warns", {"send_at": "2026-11-26T11:00:00Z"}, 0, 4, "send_at",
     "warning: send_at: send time has passed: the daemon sends at once, until send_at + ttl "
     "(2026-11-27T11:00:00Z)"),
    ("send-at-expired-warns", {"send_at": "2026-11-01T09:00:00Z"}, 0, 4, "send_at",
     "the daemon would mark every message expired"),
    ("missing-text", {"text": None}, 1, None, "text", "required key is missing"),
    ("empty-text", {"text": '""'}, 1, 5, "text", "must not be empty"),
    ("text-table", {"text": "{ a = 1 }"}, 1, 5, "text", "not a table"),
    ("text-bad-brace", {"text": '"Hi {first_name"'}, 1, 5, "text", "{{ and }}"),
    ("text-format-spec", {"text": '"Hi {first_name:>10}"'}, 1, 5, "text", "is not a placeholder"),
    ("text-unknown-column", {"text": '"Hi {frist_name}"'}, 1, 5, "text",
     '{frist_name} is not a column of audiences/people.csv: did you mean "first_name"?'),
    ("ttl-zero", {"extra": "ttl = 0"}, 1, 6, "ttl", "out of range"),
    ("ttl-negative", {"extra": "ttl = -60"}, 1, 6, "ttl", "out of range"),
    ("ttl-huge", {"extra": "ttl = 99999999999999999999"}, 1, 6, "ttl", "out of range"),
    ("ttl-string", {"extra": 'ttl = "3600"'}, 1, 6, "ttl", "whole number of seconds"),
    ("ttl-bool", {"extra": "ttl = true"}, 1, 6, "ttl", "not true/false"),
    ("ttl-float", {"extra": "ttl = 3600.5"}, 1, 6, "ttl", "not a decimal number"),
    ("ttl-outside-range-warns", {"extra": "ttl = 600"}, 0, 6, "ttl",
     "warning: ttl: 600 s is outside the recommended 86400–259200 s for promo"),
    ("route-unknown", {"extra": 'route = "tg_viber"'}, 1, 6, "route", 'did you mean "tg-viber"'),
    ("paused-string", {"extra": 'paused = "yes"'}, 1, 6, "paused", "true or false"),
    ("unknown-key", {"extra": "sendat = 2026-12-01T09:00:00Z"}, 1, 6, "sendat",
     'unknown key: did you mean "send_at"'),
    ("unknown-key-nested-table", {"extra": "weird = { a = [1, 2] }"}, 1, 6, "weird",
     "unknown key"),
    ("csv-at-top", {"extra": 'phone_column = "phone"'}, 1, 6, "phone_column",
     "belongs in the [audience] table"),
    ("survey-options-on-promo", {"extra": OPTIONS}, 1, 6, "survey_options",
     "only viber_survey campaigns"),
    ("survey-missing-options", SURVEY, 1, None, "survey_options", "required for viber_survey"),
    ("survey-one-option", {**SURVEY, "extra": 'survey_options = ["Yes"]'}, 1, 6,
     "survey_options", "has 1 options: write 2 to 5"),
    ("survey-six-options", {**SURVEY, "extra": 'survey_options = ["1","2","3","4","5","6"]'}, 1,
     6, "survey_options", "has 6 options"),
    ("survey-long-option", {**SURVEY, "extra": f'survey_options = ["Yes", "{"x" * 30}"]'}, 1, 6,
     "survey_options", "has 30 characters: each must have 1 to 29"),
    ("survey-options-not-array", {**SURVEY, "extra": 'survey_options = "Yes, No"'}, 1, 6,
     "survey_options", "must be an array of texts"),
    ("survey-options-numbers", {**SURVEY, "extra": "survey_options = [1, 2]"}, 1, 6,
     "survey_options", "must be an array of texts"),
    ("survey-text-too-long", {**SURVEY, "text": '"' + "x" * 86 + '"', "extra": OPTIONS}, 1, 5,
     "text", "survey text is 86 characters: Viber allows 85"),
    ("survey-text-too-long-anyway", {**SURVEY, "text": '"{first_name}' + "x" * 86 + '"',
     "extra": OPTIONS}, 1, 5, "text", "without its placeholders, 86 characters"),
    ("flashcall-text-warns", {"type": '"flashcall"', "extra": "ttl = 300"}, 0, 5, "text",
     "warning: text: flashcall messages carry no text"),
    ("audience-missing", {"audience": False, "csv": None}, 1, None, "audience",
     "required table is missing"),
    ("audience-not-table", {"extra": 'audience = "people.csv"', "audience": False, "csv": None},
     1, 6, "audience", "must be a table"),
    ("csv-missing", {"csv": None}, 1, 8, "audience.csv", "required key is missing"),
    ("csv-number", {"csv": "5"}, 1, 9, "audience.csv", "must be text"),
    ("csv-not-found", {"csv": '"audiences/nobody.csv"'}, 1, 9, "audience.csv", "nobody.csv"),
    ("csv-outside", {"csv": '"../config.toml"'}, 1, 9, "audience.csv",
     "audience CSV must be inside"),
    ("audience-unknown-key", {"audience_extra": 'phone_col = "phone"'}, 1, 10,
     "audience.phone_col", 'did you mean "phone_column"'),
    ("top-key-under-audience", {"audience_extra": "ttl = 3600"}, 1, 10, "audience.ttl",
     "must be written above [audience]"),
    ("phone-column-missing", {"audience_extra": 'phone_column = "tel"'}, 1, 10,
     "audience.phone_column", '"tel" is not a column of audiences/people.csv'),
    ("id-column-missing", {"audience_extra": 'id_column = "customer"'}, 1, 10,
     "audience.id_column", 'did you mean "customer_id"'),
    ("id-column-lists-columns", {"audience_extra": 'id_column = "zzz"'}, 1, 10,
     "audience.id_column", 'its columns are "phone", "first_name", "customer_id"'),
    ("delimiter-pipe", {"audience_extra": 'delimiter = "|"'}, 1, 10, "audience.delimiter",
     '"|" is not a delimiter'),
    ("delimiter-array", {"audience_extra": "delimiter = [',']"}, 1, 10, "audience.delimiter",
     "an array is not a delimiter"),
]


@pytest.mark.parametrize(
    ("overrides", "code", "line", "field", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_FILES],
)
def test_bad_campaign_file(
    ws: Workspace, capsys: pytest.CaptureFixture[str], overrides: dict[str, object], code: int,
    line: int | None, field: str | None, words: str,
) -> None:
    """Each rule gives the right exit code and names the file, the line and the field."""
    path = ws.write("c.toml", campaign_text(**overrides))  # type: ignore[arg-type]
    exit_code, output = run_check(ws, path, capsys)
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    what = f"{field}: " if field else ""
    assert exit_code == code, output
    problem_lines = [text for text in output.splitlines() if where in text and what in text]
    assert any(words in text for text in problem_lines), output


def test_good_campaign_file_checks_clean(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    """A correct file exits 0 with no problem lines, and shows its id, type and send time."""
    path = ws.write("c.toml", campaign_text())
    exit_code, output = run_check(ws, path, capsys)
    assert exit_code == 0, output
    assert "OK" in output and "spring-2026  promo  send_at 2026-12-01T09:00:00Z" in output
    assert "0 errors, 0 warnings" in output


def test_every_problem_is_reported_at_once(ws: Workspace) -> None:
    """Several mistakes in one file are all reported, in line order."""
    path = ws.write("c.toml", campaign_text(
        id='"a b"', type='"promos"', send_at="2026-12-01T09:00:00", csv='"nobody.csv"',
    ))
    check = load_campaign(path, ws.config(), NOW)
    assert not check.ok and check.campaign is None
    assert [p.field for p in check.problems] == ["id", "type", "send_at", "audience.csv"]
    assert [p.line for p in check.problems] == [1, 3, 4, 9]


def test_valid_campaign_model(ws: Workspace) -> None:
    """A valid file becomes a `Campaign` with UTC send time, absolute paths and a fingerprint."""
    path = ws.write("c.toml", campaign_text(
        send_at='"2026-12-01T09:00:00+00:00"', extra='route = "tg-viber"',
        audience_extra='id_column = "customer_id"',
    ))
    check = load_campaign(path, ws.config(), NOW)
    campaign = check.campaign
    assert check.ok and campaign is not None
    assert campaign.send_at == datetime(2026, 12, 1, 9, tzinfo=UTC)
    assert campaign.ttl == DEFAULT_TTL["promo"]
    assert campaign.route == "tg-viber"
    assert campaign.paused is False
    assert campaign.audience.csv == ws.campaigns.resolve() / "audiences" / "people.csv"
    assert campaign.audience.id_column == "customer_id"
    assert campaign.audience.phone_column == "phone"
    assert campaign.file == path.resolve()
    assert campaign.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", MESSAGE_TYPES)
def test_default_ttl_by_type(ws: Workspace, kind: str) -> None:
    """Without ``ttl``, each type gets its documented default and no warning."""
    extra = OPTIONS if kind == "viber_survey" else ""
    text = None if kind == "flashcall" else '"Hi {first_name}"'
    path = ws.write("c.toml", campaign_text(type=f'"{kind}"', text=text, extra=extra))
    check = load_campaign(path, ws.config(), NOW)
    assert check.campaign is not None, check.problems
    assert check.campaign.ttl == DEFAULT_TTL[kind]  # type: ignore[index]
    assert check.problems == []


def test_flashcall_text_is_dropped(ws: Workspace) -> None:
    """A flashcall's text is only a warning, and is not kept on the campaign."""
    path = ws.write("c.toml", campaign_text(type='"flashcall"'))
    check = load_campaign(path, ws.config(), NOW)
    assert check.ok and check.campaign is not None
    assert check.campaign.text is None
    assert [(p.field, p.severity) for p in check.problems] == [("text", "warning")]


def test_survey_text_with_placeholders_is_left_to_rows(ws: Workspace) -> None:
    """Survey text that only personalisation could make too long is valid at file level."""
    text = '"{first_name}' + "x" * 80 + '"'
    path = ws.write("c.toml", campaign_text(type='"viber_survey"', text=text, extra=OPTIONS))
    check = load_campaign(path, ws.config(), NOW)
    assert check.ok, check.problems
    assert check.campaign is not None and check.campaign.survey_options == ("Yes", "No")


def test_literal_braces_are_not_placeholders(ws: Workspace) -> None:
    """``{{`` and ``}}`` are literal braces, not columns."""
    path = ws.write("c.toml", campaign_text(text='"Use code {{SALE}} now"'))
    check = load_campaign(path, ws.config(), NOW)
    assert check.ok, check.problems


def test_thirty_day_horizon_boundary(ws: Workspace) -> None:
    """Exactly 30 days ahead is allowed; one second more is an error."""
    config = ws.config()
    at_limit = ws.write("a.toml", campaign_text(send_at="2026-12-26T12:00:00Z"))
    beyond = ws.write("b.toml", campaign_text(id='"b"', send_at="2026-12-26T12:00:01Z"))
    assert load_campaign(at_limit, config, NOW).ok
    later = load_campaign(beyond, config, NOW)
    assert not later.ok and later.problems[0].field == "send_at"
    assert load_campaign(beyond, config, NOW + timedelta(seconds=1)).ok


def test_duplicate_ids_are_errors_on_both_files(ws: Workspace) -> None:
    """Two files with the same id both fail, each naming the other."""
    first = ws.write("a.toml", campaign_text())
    second = ws.write("b.toml", campaign_text())
    unique = ws.write("c.toml", campaign_text(id='"other"'))
    checks = load_campaigns([first, second, unique], ws.config(), NOW)
    assert [c.ok for c in checks] == [False, False, True]
    assert checks[0].campaign is None and checks[1].campaign is None
    assert f'id "spring-2026" is also used by {second}' in checks[0].problems[0].message
    assert f'id "spring-2026" is also used by {first}' in checks[1].problems[0].message
    assert checks[0].problems[0].line == 1


def test_check_of_one_file_sees_duplicates_in_the_folder(
    ws: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checking a single file still compares its id with the folder's other campaigns."""
    ws.write("a.toml", campaign_text())
    second = ws.write("b.toml", campaign_text())
    exit_code, output = run_check(ws, second, capsys)
    assert exit_code == 1
    assert f"{second}:1: id: " in output and "a.toml" in output


def test_audience_outside_folders_is_refused(ws: Workspace, tmp_path: Path) -> None:
    """An absolute CSV path outside the campaigns folder is an error naming the folder."""
    outside = tmp_path / "elsewhere.csv"
    outside.write_text(PEOPLE, "utf-8")
    path = ws.write("c.toml", campaign_text(csv=f'"{outside}"'))
    check = load_campaign(path, ws.config(), NOW)
    assert not check.ok
    assert check.problems[0].field == "audience.csv"
    assert str(ws.campaigns.resolve()) in check.problems[0].message


def test_audiences_folder_is_allowed(ws: Workspace) -> None:
    """A CSV in ``[paths].audiences`` is allowed even outside the campaigns folder."""
    shared = ws.root / "shared"
    shared.mkdir()
    (shared / "people.csv").write_text(PEOPLE, "utf-8")
    ws.config_file.write_text('[paths]\ncampaigns = "campaigns"\naudiences = "shared"\n', "utf-8")
    path = ws.write("c.toml", campaign_text(csv='"../shared/people.csv"'))
    assert load_campaign(path, ws.config(), NOW).ok


def test_symlink_escape_is_refused(ws: Workspace, tmp_path: Path) -> None:
    """A symlink inside the folder pointing outside it is judged by where it really leads."""
    secret = tmp_path / "secret.csv"
    secret.write_text(PEOPLE, "utf-8")
    (ws.campaigns / "audiences" / "link.csv").symlink_to(secret)
    path = ws.write("c.toml", campaign_text(csv='"audiences/link.csv"'))
    check = load_campaign(path, ws.config(), NOW)
    assert not check.ok
    assert "audience CSV must be inside" in check.problems[0].message


def test_not_utf8_campaign_file(ws: Workspace) -> None:
    """A campaign file that is not UTF-8 is one clear problem with its line."""
    path = ws.campaigns / "c.toml"
    path.write_bytes(b'id = "a"\ntext = "\xff"\n')
    check = load_campaign(path, ws.config(), NOW)
    assert check.problems[0].line == 2 and "UTF-8" in check.problems[0].message


def test_campaign_files_sorted_not_recursive_not_hidden(ws: Workspace) -> None:
    """Only visible ``*.toml`` files directly in the folder, sorted by name."""
    for name in ("b.toml", "a.toml", ".draft.toml", "notes.txt"):
        (ws.campaigns / name).write_text("", "utf-8")
    (ws.campaigns / "sub").mkdir()
    (ws.campaigns / "sub" / "c.toml").write_text("", "utf-8")
    assert [p.name for p in campaign_files(ws.campaigns)] == ["a.toml", "b.toml"]


def test_check_result_properties(ws: Workspace) -> None:
    """`CampaignCheck.ok` ignores warnings; errors and warnings are split for callers."""
    path = ws.write("c.toml", campaign_text(send_at="2026-11-20T09:00:00Z"))
    check: CampaignCheck = load_campaign(path, ws.config(), NOW)
    assert check.ok and check.campaign is not None
    assert check.errors == [] and len(check.warnings) == 1


# --- issue 9: hints a marketer can follow (items 9, 10, 11, 16) --------------------------------


@pytest.fixture
def machine_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Set this process's time zone (as the machine's) for one test; restored afterwards."""

    def use(zone: str) -> None:
        monkeypatch.setenv("TZ", zone)
        time.tzset()

    yield use
    monkeypatch.undo()
    time.tzset()


def test_a_local_time_is_converted_for_the_machines_zone(
    ws: Workspace, machine_zone: Callable[[str], None],
) -> None:
    """A Kyiv marketer writes 11:00 without Z: the error does not tell them to add Z (which
    sends two hours late) but shows the UTC time of 11:00 on their clock."""
    machine_zone("Europe/Kyiv")
    for local, utc in (("2026-11-28T11:00:00", "2026-11-28T09:00:00Z"),
                       ("2026-12-20T11:00:00", "2026-12-20T09:00:00Z")):
        path = ws.write("c.toml", campaign_text(send_at=local))
        (problem,) = load_campaign(path, ws.config(), NOW).problems
        assert problem.field == "send_at" and problem.line == 4
        assert problem.message.startswith(f"{local} has no time zone, and send_at must be UTC")
        assert f"11:00 on this machine's clock (EET, UTC+02:00) is {utc}: write that" in (
            problem.message)


def test_a_local_time_on_a_utc_machine_shows_both_readings(
    ws: Workspace, machine_zone: Callable[[str], None],
) -> None:
    """On a UTC machine the time may be either: the message gives the UTC reading and, for a
    local time, the conversion (Kyiv's, the example the README uses)."""
    machine_zone("UTC")
    path = ws.write("c.toml", campaign_text(send_at="2026-11-28T11:00:00"))
    (problem,) = load_campaign(path, ws.config(), NOW).problems
    assert "if 11:00 is UTC, write 2026-11-28T11:00:00Z" in problem.message
    assert "11:00 in Kyiv on 2026-11-28 is 2026-11-28T09:00:00Z" in problem.message


def test_new_send_at_without_a_zone_gets_the_same_hint(
    ws: Workspace, machine_zone: Callable[[str], None], capsys: pytest.CaptureFixture[str],
) -> None:
    """`new --send-at` with a local time: the same conversion, as a usage error."""
    machine_zone("Europe/Kyiv")
    code = cli.main(["new", "x", "--type", "promo", "--audience",
                     str(ws.campaigns / "audiences" / "people.csv"), "--send-at",
                     "2026-11-28T11:00", "--config", str(ws.config_file)])
    assert code == 2
    assert "is 2026-11-28T09:00:00Z: write that" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "line", "words"), [
    ('id = "spring-2026\nfrom_name = "YourBrand"\n', 1,
     "the text is missing its closing quote"),
    ('id = "a"\nsend_at = 2026-12-01T09:00:00Z\nttl = 3600\nsend_at = 2026-12-01T10:00:00Z\n',
     4, "send_at is written twice (also on line 2): keep one"),
    ('id = "a"\n[audience]\ncsv = "a.csv"\ncsv = "b.csv"\n', 4,
     "csv is written twice (also on line 3)"),
    ('[audience]\ncsv = "a.csv"\n[audience]\n', 3, "[audience] is written twice (also on line 1)"),
    ("type = promo\n", 1, "text goes in double quotes"),
    ("id = “spring”\n", 1, "curly quotes"),
    ("send_at = 2026-12-01 09:00\n", 1, "write it like 2026-12-01T09:00:00Z"),
    ('id "spring"\n', 1, "a key must be followed by ="),
    ('survey_options = ["Yes", "No"\nttl = 1\n', 2, "missing its closing ]"),
    ("text = 'abc\n", 1, "missing its closing quote"),
])
def test_toml_syntax_errors_in_plain_words(
    ws: Workspace, text: str, line: int, words: str,
) -> None:
    """The usual TOML mistakes are explained in words a marketer knows, at their line (not
    "Illegal character '\\n'" or "Cannot overwrite a value")."""
    path = ws.write("c.toml", text)
    (problem,) = load_campaign(path, ws.config(), NOW).problems
    assert problem.line == line, problem
    assert problem.message.startswith("TOML syntax error: ") and words in problem.message
    assert "Illegal character" not in problem.message
    assert "Cannot overwrite" not in problem.message


def test_every_placeholder_problem_at_once(ws: Workspace) -> None:
    """An empty `{}` does not hide the other placeholder mistakes: each bad brace is listed,
    and the good placeholders are still checked against the CSV's columns."""
    path = ws.write("c.toml", campaign_text(
        text='"Hi {}, {first_name!r}, {frist_name} and {customer_id:>4}} {"'))
    messages = [p.message for p in load_campaign(path, ws.config(), NOW).problems]
    assert any(m.startswith("{} has no column name") for m in messages), messages
    assert any(m.startswith("{first_name!r} is not a placeholder") for m in messages)
    assert any(m.startswith("{customer_id:>4} is not a placeholder") for m in messages)
    assert any("closes nothing" in m for m in messages)
    assert any("is never closed" in m for m in messages)
    assert any(m.startswith("{frist_name} is not a column of audiences/people.csv: did you "
                            'mean "first_name"?') for m in messages), messages
    assert len(messages) == 6


def test_a_long_sender_name_is_a_warning(ws: Workspace) -> None:
    """A from_name longer than an SMS sender name (11 characters) is a warning that says so;
    11 characters pass quietly."""
    path = ws.write("c.toml", campaign_text(from_name='"YourBrandOnline"'))
    check = load_campaign(path, ws.config(), NOW)
    (problem,) = check.problems
    assert check.ok and (problem.severity, problem.field, problem.line) == (
        "warning", "from_name", 2)
    assert '"YourBrandOnline" has 15 characters' in problem.message and "at most 11" in (
        problem.message)
    path = ws.write("c.toml", campaign_text(from_name='"YourBrand01"'))
    assert load_campaign(path, ws.config(), NOW).problems == []


def test_files_sharing_a_csv_read_its_header_once_and_each_reports_its_own_problems(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`load_campaigns` (the daemon, `plan`, `check` of a folder) reads a CSV's header once for
    every file on it (1,000 campaigns on one list: 1,000 opens saved); each file still
    checks its own columns, and a CSV no file can read is each file's error."""
    from scheduler import loader

    reads: list[Path] = []
    read_header = loader.read_header

    def counted(spec: Any, campaign_file: Path) -> list[str]:
        reads.append(campaign_file)
        return read_header(spec, campaign_file)

    monkeypatch.setattr(loader, "read_header", counted)
    good = [ws.write(f"{n}.toml", campaign_text(id=f'"c{n}"')) for n in range(3)]
    wrong = ws.write("w.toml", campaign_text(id='"w"', text='"Hi {name}"'))
    missing = [ws.write(f"m{n}.toml", campaign_text(id=f'"m{n}"', csv='"audiences/gone.csv"'))
               for n in range(2)]
    checks = load_campaigns([*good, wrong, *missing], ws.config(), NOW)
    assert [c.ok for c in checks] == [True, True, True, False, False, False]
    assert "{name} is not a column of audiences/people.csv" in checks[3].problems[0].message
    assert all("gone.csv" in c.problems[0].message and c.problems[0].file == c.file
               for c in checks[4:])
    assert reads == [good[0], *missing]  # people.csv once; gone.csv tried by each
