"""The audience reader: CSV dialects, the row rules of SPEC §5, suppression and file errors."""

from __future__ import annotations

import csv
import io
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler import batching, passes
from scheduler.audience import (
    iter_audience,
    iter_rows,
    read_header,
    summarize,
)
from scheduler.batching import Snapshot, to_message
from scheduler.campaign import (
    SURVEY_TEXT_MAX,
    TRACKING_ID_MAX,
    AudienceSpec,
    Campaign,
    MessageType,
)
from scheduler.config import load_config
from scheduler.errors import CampaignError, ConfigError
from scheduler.loader import load_campaign
from scheduler.records import Recipient, Skip
from scheduler.rows import AudienceSummary
from scheduler.service import open_engine
from scheduler.suppression import Suppression
from scheduler.template import Template
from scheduler.window import Window
from tests.helpers import write_audience, write_campaign, write_config

HEADER = "phone,customer_id,name\n"
TEXTS: dict[MessageType, str | None] = {
    "transaction": "Your code, {name}",
    "promo": "Hi {name}, up to 50% off",
    "viber_survey": "Did you like it, {name}?",
    "flashcall": None,
}

MakeCampaign = Callable[..., Campaign]


@pytest.fixture
def make_campaign(tmp_path: Path) -> MakeCampaign:
    """Write an audience CSV (text or bytes) and return a campaign that reads it."""

    def make(
        content: str | bytes,
        *,
        type: MessageType = "promo",
        text: str | None = "Hi {name}",
        id_column: str | None = "customer_id",
        delimiter: str | None = None,
        phone_column: str = "phone",
        campaign_id: str = "sale",
    ) -> Campaign:
        path = tmp_path / "audience.csv"
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
        return Campaign(
            id=campaign_id,
            from_name="Brand",
            type=type,
            send_at=datetime(2026, 12, 1, 9, tzinfo=UTC),
            ttl=86400,
            text=text,
            audience=AudienceSpec(
                csv=path, phone_column=phone_column, id_column=id_column, delimiter=delimiter
            ),
            file=tmp_path / "c.toml",
            fingerprint="x",
        )

    return make


def rows(campaign: Campaign, suppression: Suppression | None = None) -> list[Recipient | Skip]:
    """Every result of the reader, as a list."""
    return list(iter_audience(campaign, suppression, may_fork=False))


def skip_of(item: Recipient | Skip) -> Skip:
    """The item, which the test expects to be a skip."""
    assert isinstance(item, Skip), item
    return item


def write_list(path: Path, text: str) -> Suppression:
    """Write a suppression list and load it."""
    path.write_text(text, encoding="utf-8")
    return Suppression.load(path)


# -- dialects ----------------------------------------------------------------------------------


def test_reads_utf8_with_bom(make_campaign: MakeCampaign) -> None:
    """A BOM (Excel's "CSV UTF-8") is not part of the first column's name."""
    campaign = make_campaign(("\ufeff" + HEADER + "+380501234567,c1,Олег\n").encode())
    assert read_header(campaign.audience, campaign.file) == ["phone", "customer_id", "name"]
    assert rows(campaign) == [Recipient(2, "sale-c1", "+380501234567", "Hi Олег")]


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
@pytest.mark.parametrize("explicit", [False, True])
def test_delimiters_sniffed_or_explicit(
    make_campaign: MakeCampaign, delimiter: str, explicit: bool
) -> None:
    """Comma, semicolon and tab files read the same, whether named in the campaign or not."""
    lines = [["phone", "customer_id", "name"], ["+380501234567", "c1", "Ann, Bob"]]
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter).writerows(lines)
    campaign = make_campaign(buffer.getvalue(), delimiter=delimiter if explicit else None)
    assert read_header(campaign.audience, campaign.file) == lines[0]
    assert rows(campaign) == [Recipient(2, "sale-c1", "+380501234567", "Hi Ann, Bob")]


def test_quoted_fields_with_commas_and_newlines_keep_line_numbers(
    make_campaign: MakeCampaign,
) -> None:
    """A quoted field spanning lines counts its lines; each row reports its first line."""
    campaign = make_campaign(
        HEADER
        + '+380501234567,c1,"Smith, John"\n'
        + '+380501234568,c2,"two\nline\nname"\n'
        + "bad,c3,x\n"
    )
    result = rows(campaign)
    assert [item.line for item in result] == [2, 3, 6]
    assert result[0] == Recipient(2, "sale-c1", "+380501234567", "Hi Smith, John")
    assert result[1] == Recipient(3, "sale-c2", "+380501234568", "Hi two\nline\nname")


def test_crlf_and_old_mac_line_endings(make_campaign: MakeCampaign) -> None:
    """CRLF and lone-CR files number their lines like any editor."""
    text = "phone,customer_id,name{0}+380501234567,c1,A{0}{0}bad,c2,B{0}"
    for newline in ("\r\n", "\r"):
        result = rows(make_campaign(text.format(newline)))
        assert [item.line for item in result] == [2, 4], newline


def test_blank_lines_are_not_rows(make_campaign: MakeCampaign) -> None:
    """Blank lines (also all-empty ";;" lines from spreadsheets) neither count nor skip."""
    campaign = make_campaign(
        "phone;name\n\n+380501234567;A\n;\n  ;  \n+380501234568;B\n\n", id_column=None
    )
    assert rows(campaign) == [
        Recipient(3, "sale-1", "+380501234567", "Hi A"),
        Recipient(6, "sale-2", "+380501234568", "Hi B"),
    ]


def test_rows_shorter_than_the_header_read_empty(make_campaign: MakeCampaign) -> None:
    """Missing trailing columns read as "", so the row rules still apply to them."""
    campaign = make_campaign(HEADER + "+380501234567,c1\n+380501234568\n+380501234569,c3,Z,extra\n")
    result = rows(campaign)
    assert result[0] == Recipient(2, "sale-c1", "+380501234567", "Hi ")
    assert skip_of(result[1]).reason == "invalid_id"
    assert result[2] == Recipient(4, "sale-c3", "+380501234569", "Hi Z")


def test_the_same_file_gives_the_same_result(make_campaign: MakeCampaign) -> None:
    """Tracking ids are stable: reading the same file again gives identical output."""
    campaign = make_campaign(
        "phone,name\n" + "".join(f"+38050{n:07d},N{n}\n" for n in range(50)), id_column=None
    )
    assert rows(campaign) == rows(campaign)
    assert rows(campaign)[49] == Recipient(51, "sale-50", "+380500000049", "Hi N49")


# -- rule 1: phones ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phone", ["+380501234567", "+12025550123", "+4915112345678", "+1234567", "+123456789012345"]
)
def test_valid_e164_phones(make_campaign: MakeCampaign, phone: str) -> None:
    """Plus, a non-zero country digit, then 7 to 15 digits in all."""
    campaign = make_campaign(f"{HEADER} {phone} ,c1,A\n")
    assert rows(campaign) == [Recipient(2, "sale-c1", phone, "Hi A")]


@pytest.mark.parametrize(
    ("phone", "advice"),
    [
        ("380501234567", "is missing the + in front: write +380501234567"),
        ("3.80501E+11", "was turned into a number by a spreadsheet (its last digits are lost)"),
        ("380501234567.0", "was turned into a number by a spreadsheet: format the phone column "
         "as text; this one is +380501234567"),
        ("+38 050 123 45 67", "has spaces or other signs between the digits: write "
         "+380501234567"),
        ("00380501234567", "starts with 00 instead of +"),
        ("+38 (050) 123-45-67", "write +380501234567"),
        ("00380501234567", "write +380501234567"),
        ("0501234567", "has no country code: write the international number with +"),
        ("+0501234567", "no country code"),
        ("+123456", "too short"),
        ("+1234567890123456", "too long"),
        ("", "no phone number"),
        ("call me", "not a phone number"),
        ("+３８０５０１２３４５６７", "not a phone number"),  # full-width digits
        ("+380501234567 ext 2", "not a phone number"),
    ],
)
def test_invalid_phones_are_skipped_with_advice(
    make_campaign: MakeCampaign, phone: str, advice: str
) -> None:
    """A non-E.164 phone skips the row as invalid_phone, and the detail says how to fix it."""
    skip = skip_of(rows(make_campaign(f"{HEADER}{phone},c1,A\n"))[0])
    assert (skip.reason, skip.line, skip.tracking_id) == ("invalid_phone", 2, None)
    assert advice in skip.detail


# -- rule 2: tracking ids ----------------------------------------------------------------------


def test_tracking_id_is_the_row_number_without_an_id_column(make_campaign: MakeCampaign) -> None:
    """Without id_column the id is the 1-based data row number, invalid rows included."""
    campaign = make_campaign("phone,name\nbad,A\n+380501234567,B\n", id_column=None)
    assert rows(campaign)[1] == Recipient(3, "sale-2", "+380501234567", "Hi B")


def test_tracking_id_length_limit(make_campaign: MakeCampaign) -> None:
    """A tracking id of exactly 254 characters goes; 255 is invalid_id."""
    fits = "x" * (TRACKING_ID_MAX - len("sale-"))
    campaign = make_campaign(f"{HEADER}+380501234567,{fits},A\n+380501234568,{fits}y,B\n")
    first, second = rows(campaign)
    assert isinstance(first, Recipient)
    assert len(first.tracking_id) == TRACKING_ID_MAX
    skip = skip_of(second)
    assert skip.reason == "invalid_id"
    assert "255 characters" in skip.detail


@pytest.mark.parametrize("value", ["a b", "ä1", "id/1", "x@y", '"', ""])
def test_tracking_id_characters(make_campaign: MakeCampaign, value: str) -> None:
    """Only letters, digits, '.', '_' and '-' may be in an id; an empty id is invalid too."""
    cell = '""""' if value == '"' else value
    skip = skip_of(rows(make_campaign(f"{HEADER}+380501234567,{cell},A\n"))[0])
    assert (skip.reason, skip.tracking_id) == ("invalid_id", None)


def test_tracking_id_allows_dots_dashes_underscores(make_campaign: MakeCampaign) -> None:
    """The API's allowed punctuation passes."""
    result = rows(make_campaign(f"{HEADER}+380501234567, A-1_b.2 ,x\n"))
    assert result == [Recipient(2, "sale-A-1_b.2", "+380501234567", "Hi x")]


# -- rule 3: duplicates ------------------------------------------------------------------------


def test_duplicate_phone_first_occurrence_wins(make_campaign: MakeCampaign) -> None:
    """The second row with a phone is skipped as duplicate; the detail names the first line."""
    campaign = make_campaign(f"{HEADER}+380501234567,c1,A\n+380501234567,c2,B\n")
    first, second = rows(campaign)
    assert first == Recipient(2, "sale-c1", "+380501234567", "Hi A")
    skip = skip_of(second)
    assert (skip.reason, skip.line, skip.tracking_id) == ("duplicate", 3, None)
    assert "line 2" in skip.detail


def test_duplicate_id(make_campaign: MakeCampaign) -> None:
    """Two rows with one id: the second is a duplicate even with another phone."""
    campaign = make_campaign(f"{HEADER}+380501234567,c1,A\n+380501234568,c1,B\n")
    skip = skip_of(rows(campaign)[1])
    assert skip.reason == "duplicate"
    assert "customer_id as line 2" in skip.detail


def test_duplicates_register_their_keys_too(make_campaign: MakeCampaign) -> None:
    """A row that passed rules 1-2 registers both keys, even when it is itself skipped."""
    campaign = make_campaign(
        HEADER
        + "+380501234567,c1,A\n"  # registers P1, c1
        + "+380501234567,c2,B\n"  # duplicate phone; registers c2
        + "+380501234569,c2,C\n"  # duplicate id c2
    )
    assert [getattr(item, "reason", "sent") for item in rows(campaign)] == [
        "sent", "duplicate", "duplicate",
    ]


def test_invalid_rows_do_not_claim_keys(make_campaign: MakeCampaign) -> None:
    """A row skipped by rules 1-2 registers nothing: a later valid row with its id is sent."""
    campaign = make_campaign(f"{HEADER}bad,c1,A\n+380501234567,c1,B\n+380501234567,a b,C\n"
                             "+380501234568,c2,D\n")
    result = rows(campaign)
    assert result[1] == Recipient(3, "sale-c1", "+380501234567", "Hi B")
    assert skip_of(result[2]).reason == "invalid_id"
    assert isinstance(result[3], Recipient)


def test_suppressed_rows_still_claim_their_keys(
    make_campaign: MakeCampaign, tmp_path: Path
) -> None:
    """A suppressed row's phone still makes a later row with it a duplicate."""
    suppression = write_list(tmp_path / "optout.txt", "+380501234567\n")
    campaign = make_campaign(f"{HEADER}+380501234567,c1,A\n+380501234567,c2,B\n")
    assert [skip_of(item).reason for item in rows(campaign, suppression)] == [
        "suppressed", "duplicate",
    ]


# -- rule 4: suppression -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "suppressed"),
    [("promo", True), ("viber_survey", True), ("transaction", False), ("flashcall", False)],
)
def test_suppression_applies_to_promo_and_surveys_only(
    make_campaign: MakeCampaign, tmp_path: Path, type_: MessageType, suppressed: bool
) -> None:
    """Opted-out phones get no promo or survey; transactional and flashcall still go."""
    suppression = write_list(tmp_path / "optout.txt", "+380501234567\n")
    campaign = make_campaign(f"{HEADER}+380501234567,c1,A\n", type=type_, text=TEXTS[type_])
    item = rows(campaign, suppression)[0]
    if suppressed:
        assert skip_of(item).reason == "suppressed"
        assert skip_of(item).tracking_id == "sale-c1"
    else:
        assert isinstance(item, Recipient)


def test_suppression_list_one_number_a_line(tmp_path: Path) -> None:
    """Comments and blank lines are ignored; common spellings of a number all match."""
    suppression = write_list(
        tmp_path / "optout.txt",
        "# opted out, from the CRM\n+380501234567\n\n380501234568\n 00380501234569 \n"
        "+38 (050) 123-45-70\n+380501234567\n",
    )
    assert len(suppression) == 4
    for phone in ("+380501234567", "+380501234568", "+380501234569", "+380501234570"):
        assert phone in suppression
    assert "+380501234571" not in suppression
    assert "not a phone" not in suppression


def test_suppression_list_csv_with_a_phone_column(tmp_path: Path) -> None:
    """A CSV (any delimiter, BOM allowed) is read by its phone column; other columns ignored."""
    path = tmp_path / "optout.csv"
    path.write_bytes("\ufeffname;Phone;date\nA;+380501234567;2026-01-01\nB;;x\n".encode())
    suppression = Suppression.load(path)
    assert len(suppression) == 1
    assert "+380501234567" in suppression


def test_empty_suppression_file(tmp_path: Path) -> None:
    """An empty file, or one of comments only, suppresses nobody."""
    assert len(write_list(tmp_path / "a.txt", "")) == 0
    assert len(write_list(tmp_path / "b.txt", "# nobody yet\n")) == 0


def test_no_suppression_list_is_empty() -> None:
    """No configured list suppresses nobody."""
    suppression = Suppression.load(None)
    assert len(suppression) == 0
    assert "+380501234567" not in suppression


def test_suppression_list_errors_name_the_line(tmp_path: Path) -> None:
    """An entry that is not a phone number is a ConfigError at its line: never guess."""
    with pytest.raises(ConfigError) as info:
        write_list(tmp_path / "optout.txt", "+380501234567\n0501234567\n")
    problem = info.value.problems[0]
    assert (problem.line, problem.field) == (2, "paths.suppression")
    assert "0501234567" in problem.message


def test_missing_suppression_list(tmp_path: Path) -> None:
    """A configured list that does not exist is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"optout\.txt does not exist"):
        Suppression.load(tmp_path / "optout.txt")


def test_suppression_list_not_utf8(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are reported with their line."""
    path = tmp_path / "optout.txt"
    path.write_bytes(b"+380501234567\n+38050\xff\n")
    with pytest.raises(ConfigError) as info:
        Suppression.load(path)
    assert info.value.problems[0].line == 2


# -- rule 5: text ------------------------------------------------------------------------------


def test_personalisation_and_literal_braces(make_campaign: MakeCampaign) -> None:
    """{column} takes the row's (stripped) value; {{ and }} are literal braces."""
    campaign = make_campaign(
        f"{HEADER}+380501234567,c1, Ann \n", text="{{Hi}} {name}, id {customer_id} {{x}}"
    )
    assert rows(campaign)[0] == Recipient(2, "sale-c1", "+380501234567", "{Hi} Ann, id c1 {x}")


def test_placeholders_that_look_like_indexes(make_campaign: MakeCampaign) -> None:
    """Column names such as "0", "a.b" and "first name" work like any other."""
    campaign = make_campaign(
        "phone,0,a.b,first name\n+380501234567,zero,dot,Ann\n",
        text="{0}|{a.b}|{first name}", id_column=None,
    )
    assert rows(campaign)[0] == Recipient(2, "sale-1", "+380501234567", "zero|dot|Ann")


def test_flashcall_sends_no_text(make_campaign: MakeCampaign) -> None:
    """Flashcall messages carry no text, even if the campaign has one."""
    campaign = make_campaign(f"{HEADER}+380501234567,c1,A\n", type="flashcall", text="ignored")
    assert rows(campaign)[0] == Recipient(2, "sale-c1", "+380501234567", None)


def test_survey_text_too_long(make_campaign: MakeCampaign) -> None:
    """A survey text over 85 characters after personalisation is skipped; 85 goes."""
    text = "{name}"
    campaign = make_campaign(
        f"{HEADER}+380501234567,c1,{'a' * SURVEY_TEXT_MAX}\n"
        f"+380501234568,c2,{'b' * (SURVEY_TEXT_MAX + 1)}\n",
        type="viber_survey", text=text,
    )
    first, second = rows(campaign)
    assert isinstance(first, Recipient)
    skip = skip_of(second)
    assert (skip.reason, skip.tracking_id) == ("text_too_long", "sale-c2")
    assert "86 characters" in skip.detail


def test_long_text_is_fine_for_other_types(make_campaign: MakeCampaign) -> None:
    """Only surveys have the 85-character limit."""
    campaign = make_campaign(f"{HEADER}+380501234567,c1,{'a' * 200}\n", type="promo")
    assert isinstance(rows(campaign)[0], Recipient)


# -- summaries ---------------------------------------------------------------------------------


def test_summarize_counts_and_first_lines(make_campaign: MakeCampaign) -> None:
    """Counts per reason, and at most the first five lines of each."""
    body = "".join(f"bad{n},c{n},A\n" for n in range(7)) + "+380501234567,x,A\n" * 2
    summary = summarize(make_campaign(HEADER + body), may_fork=False)
    assert summary == AudienceSummary(
        valid=1,
        skipped={"invalid_phone": 7, "duplicate": 1},
        first_lines={"invalid_phone": [2, 3, 4, 5, 6], "duplicate": [10]},
        first_details={"invalid_phone": '"bad0" is not a phone number: write it in E.164, '
                       "e.g. +380501234567", "duplicate": "same phone as line 9"},
    )
    assert summary.total == 9


def summary_by_hand(campaign: Campaign, suppression: Suppression | None) -> AudienceSummary:
    """`summarize` rebuilt from `iter_audience` (no counting mode, no helper process)."""
    summary = AudienceSummary()
    for item in iter_audience(campaign, suppression, may_fork=False):
        summary.add(item)
        if isinstance(item, Recipient) and item.zone is not None:
            summary.zones[item.zone] = summary.zones.get(item.zone, 0) + 1
    for item in iter_audience(campaign, suppression, may_fork=False):
        if isinstance(item, Recipient) and not item.text.split(" ")[1].strip(","):
            summary.add_empty("name", item.line)
    return summary


HELPER_BODY = "".join(
    f"{'+38050' if n % 7 else '050'}{n % 900:07d},{'c' if n % 5 else 'x'}{n % 950}"
    f",{'' if n % 11 == 0 else 'Ann'}\n"
    for n in range(3000)
) + "+380501\n\n,,\n\"+380509\",\"q\nuoted\",Bo\n+380501234567,c,A\n+380671234567,b d,A\n"


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> list[passes.Forked]:
    """Every helper process the reader forks from now on, in order."""
    started: list[passes.Forked] = []
    start = passes.Forked.start

    def recorded(*args: Any) -> passes.Forked:
        started.append(start(*args))
        return started[-1]

    monkeypatch.setattr(passes.Forked, "start", recorded)
    return started


@pytest.mark.parametrize("helper", ["none", "forked", "ids fail", "counting fails"])
def test_summarize_counts_the_same_with_helper_processes(
    make_campaign: MakeCampaign, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, helper: str,
    forks: list[passes.Forked],
) -> None:
    """Counts, first lines, details and their order are the same whether pass 1 of the ids and
    the counting of the last rows run here, in forked helpers, or here again after a helper
    failed."""
    campaign = make_campaign(HEADER + HELPER_BODY, text="Hi {name}, hello")
    campaign = campaign.model_copy(update={"window": Window.parse("09:00-20:00")})
    suppression = write_list(tmp_path / "optout.txt", "+3805000000014\n+380500000028\n")
    expected = summary_by_hand(campaign, suppression)
    if helper != "none":
        monkeypatch.setattr(passes, "HELPER_LINES", 0)
        monkeypatch.setattr(passes, "DEDUPE_BITS", 64)  # many false positives on both sides
    if helper == "ids fail":
        monkeypatch.setattr(passes, "_scan_keys", _broken_scan)
    if helper == "counting fails":
        monkeypatch.setattr(passes, "_count_rest", _broken_scan)
    summary = summarize(campaign, suppression, may_fork=helper != "none")
    assert summary == expected
    assert list(summary.skipped) == list(expected.skipped)  # the same order too
    assert list(summary.empty) == list(expected.empty)
    assert summary.skipped["duplicate"] > 100
    assert summary.skipped["invalid_id"] == 1  # first met in the last rows
    assert summary.empty["name"] > 50
    assert sum(summary.zones.values()) == summary.valid  # every valid row has its zone group
    assert len(forks) == (0 if helper == "none" else 2)


@pytest.mark.parametrize("ending", ["\r\n", "\r"])
def test_helpers_count_the_same_whatever_the_line_breaks(
    make_campaign: MakeCampaign, monkeypatch: pytest.MonkeyPatch, forks: list[passes.Forked],
    ending: str,
) -> None:
    """The helper that counts the last rows starts reading at their first line, found by
    counting line breaks as the csv module does (``\\r\\n`` is one, a lone ``\\r`` is one,
    a quoted cell's count too): the same counts, first lines and details as one process."""
    body = (HEADER + HELPER_BODY).replace("\n", ending)
    campaign = make_campaign(body, text="Hi {name}, hello")
    expected = summarize(campaign, may_fork=False)
    monkeypatch.setattr(passes, "HELPER_LINES", 0)
    assert summarize(campaign, may_fork=True) == expected
    assert len(forks) == 2  # the ids' pass 1, and the count of the last rows


@pytest.mark.parametrize("at", [0.1, 0.9])
def test_a_malformed_row_is_reported_the_same_with_helper_processes(
    make_campaign: MakeCampaign, monkeypatch: pytest.MonkeyPatch, at: float,
) -> None:
    """A row the csv module cannot read, early or late in the file: the same error and line
    whether or not helpers counted part of the audience."""
    lines = HELPER_BODY.splitlines(keepends=True)
    cut = int(len(lines) * at)
    campaign = make_campaign(HEADER + "".join(lines[:cut]) + '"+38050,x,y\n' + "".join(lines[cut:]))
    with pytest.raises(CampaignError) as plain:
        summarize(campaign, may_fork=False)
    monkeypatch.setattr(passes, "HELPER_LINES", 0)
    with pytest.raises(CampaignError) as helped:
        summarize(campaign, may_fork=True)
    assert helped.value.problems == plain.value.problems
    assert plain.value.problems[0].line == cut + 2


def test_a_skipped_row_reports_no_empty_placeholder(make_campaign: MakeCampaign) -> None:
    """Placeholders are checked last: a row skipped for its time zone (or anything else) is
    not also counted as leaving ``{name}`` empty, with one placeholder or several."""
    body = "+380501234567,c1,,Kyiv\n+380501234568,c2,,\n+380501234569,c3,A,Mars/Base\n"
    for text in ("Hi {name}", "Hi {name} {tz}"):
        campaign = make_campaign("phone,customer_id,name,tz\n" + body, text=text)
        spec = campaign.audience.model_copy(update={"tz_column": "tz"})
        campaign = campaign.model_copy(
            update={"audience": spec, "window": Window.parse("09:00-20:00")}
        )
        summary = summarize(campaign, may_fork=False)
        assert summary.skipped == {"invalid_timezone": 2}
        assert summary.empty_lines["name"] == [3]
        assert summary.zones == {"Europe/Kyiv": 1}


def _broken_scan(*args: object) -> None:
    raise SystemExit(3)


# -- file-level problems -----------------------------------------------------------------------


def test_non_utf8_bytes_name_their_line(make_campaign: MakeCampaign) -> None:
    """Latin-1 bytes in row 5 are a CampaignError at line 5 of the CSV."""
    good = "".join(f"+38050123456{n},c{n},A\n" for n in range(3))
    campaign = make_campaign(HEADER.encode() + good.encode() + b"+380501234569,c9,Jos\xe9\n")
    with pytest.raises(CampaignError) as info:
        rows(campaign)
    problem = info.value.problems[0]
    assert (problem.file, problem.line) == (campaign.audience.csv, 5)
    assert "UTF-8" in problem.message


def test_non_utf8_bytes_far_into_a_big_file(make_campaign: MakeCampaign) -> None:
    """The line is right beyond the first read chunk too (and with CRLF endings)."""
    good = "".join(f"+3805{n:08d},c{n},A\r\n" for n in range(60_000))
    campaign = make_campaign(HEADER.encode() + good.encode() + b"+380501234569,x,\xc3\n")
    with pytest.raises(CampaignError) as info:
        summarize(campaign, may_fork=False)
    assert info.value.problems[0].line == 60_002


def test_nul_bytes(make_campaign: MakeCampaign) -> None:
    """NUL bytes (typically a UTF-16 file) are a CampaignError with the line."""
    campaign = make_campaign(HEADER + "+380501234567,c1,A\n+380501234568,c2,B\0\n")
    with pytest.raises(CampaignError, match="NUL") as info:
        rows(campaign)
    assert info.value.problems[0].line == 3


def test_utf16_file(make_campaign: MakeCampaign) -> None:
    """A UTF-16 export is refused with advice to save as UTF-8, not misread."""
    campaign = make_campaign((HEADER + "+380501234567,c1,A\n").encode("utf-16"))
    with pytest.raises(CampaignError, match="UTF-8"):
        read_header(campaign.audience, campaign.file)
    with pytest.raises(CampaignError, match="UTF-8"):
        rows(campaign)


def test_unclosed_quote_names_the_row(make_campaign: MakeCampaign) -> None:
    """A quote that never closes would swallow the rest of the file: an error at its row."""
    campaign = make_campaign(HEADER + '+380501234567,c1,A\n+380501234568,c2,"B\n+3805,c3,C\n')
    with pytest.raises(CampaignError, match="never closed") as info:
        rows(campaign)
    assert info.value.problems[0].line == 3


def test_text_after_a_closing_quote(make_campaign: MakeCampaign) -> None:
    """`"a"b` is malformed CSV: an error at its line rather than a guess."""
    campaign = make_campaign(HEADER + '+380501234567,c1,"A"B\n')
    with pytest.raises(CampaignError) as info:
        rows(campaign)
    assert info.value.problems[0].line == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("", "is empty"),
        ("\n\n  \n", "is empty"),
        (",,\n , ,\n", "is empty"),
        (b"\xff\xfephone\n", "line 1: not UTF-8"),
        ("ph\0one\n", "NUL"),
    ],
)
def test_read_header_errors(
    make_campaign: MakeCampaign, content: str | bytes | None, message: str
) -> None:
    """Missing, empty or undecodable files: a CampaignError on the campaign's audience.csv."""
    campaign = make_campaign(content or "")
    if content is None:
        campaign.audience.csv.unlink()
    with pytest.raises(CampaignError) as info:
        read_header(campaign.audience, campaign.file)
    problem = info.value.problems[0]
    assert (problem.file, problem.field) == (campaign.file, "audience.csv")
    assert str(campaign.audience.csv) in problem.message
    assert message in problem.message
    with pytest.raises(CampaignError, match=re.escape(message.removeprefix("line 1: "))):
        rows(campaign)


def test_audience_is_a_folder(make_campaign: MakeCampaign) -> None:
    """A folder instead of a file says so."""
    campaign = make_campaign("")
    campaign.audience.csv.unlink()
    campaign.audience.csv.mkdir()
    with pytest.raises(CampaignError, match="is a folder"):
        read_header(campaign.audience, campaign.file)


def test_missing_columns_are_an_error(make_campaign: MakeCampaign) -> None:
    """A phone, id or placeholder column the CSV lacks is named, with the columns it has."""
    campaign = make_campaign(
        "tel,customer_id\n+380501234567,c1\n", text="Hi {first_name}", phone_column="phone"
    )
    with pytest.raises(CampaignError) as info:
        rows(campaign)
    message = info.value.problems[0].message
    assert '"phone", "first_name"' in message
    assert '"tel", "customer_id"' in message


def test_file_changed_while_streaming(make_campaign: MakeCampaign) -> None:
    """A CSV rewritten during the read is reported, never silently mixed."""
    campaign = make_campaign(HEADER + "+380501234567,c1,A\n+380501234568,c2,B\n")
    stream = iter_audience(campaign, may_fork=False)
    assert isinstance(next(stream), Recipient)
    with campaign.audience.csv.open("a") as file:
        file.write("+380501234569,c3,C\n")
    with pytest.raises(CampaignError, match="changed while it was being read"):
        list(stream)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                   HealthCheck.too_slow])
@given(body=st.binary(max_size=300))
def test_any_bytes_give_results_or_a_campaign_error(
    make_campaign: MakeCampaign, body: bytes
) -> None:
    """Whatever follows the header, the reader yields rows or raises CampaignError: no crash."""
    campaign = make_campaign(HEADER.encode() + body)
    try:
        result = rows(campaign)
    except CampaignError as exc:
        assert exc.problems
    else:
        assert all(isinstance(item, Recipient | Skip) for item in result)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                   HealthCheck.too_slow])
@given(content=st.binary(max_size=200) | st.binary(max_size=200).map(lambda b: b"phone;" + b))
def test_any_file_gives_a_header_or_a_campaign_error(
    make_campaign: MakeCampaign, content: bytes
) -> None:
    """Whole random files, header included: column names, rows, or CampaignError only."""
    campaign = make_campaign(content, id_column=None, text="Hi")
    try:
        assert all(isinstance(name, str) for name in read_header(campaign.audience, campaign.file))
        rows(campaign)
    except CampaignError as exc:
        assert exc.problems


# -- against a naive reference -----------------------------------------------------------------

E164 = re.compile(r"\+[1-9][0-9]{6,14}")
ID_CHARS = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Case:
    """A small audience: rows of (phone, id, name), or None for a blank line."""

    rows: list[tuple[str, str, str] | None]
    type: MessageType
    id_column: bool
    suppressed: frozenset[str]


def reference(case: Case, campaign: Campaign) -> Iterator[tuple[object, ...]]:
    """SPEC §5 the obvious way, with plain sets: (line, outcome, tracking id, phone, text)."""
    seen: set[str] = set()
    template = Template(campaign.text) if campaign.text and case.type != "flashcall" else None
    number = 0
    for line, row in enumerate(case.rows, 2):
        if row is None or not "".join(row).strip():
            continue  # blank, or empty cells only: not a row
        number += 1
        phone, value, name = (cell.strip() for cell in row)
        value = value if case.id_column else str(number)
        tracking_id = f"{campaign.id}-{value}"
        if not E164.fullmatch(phone):
            yield (line, "invalid_phone", None, phone, None)
            continue
        if not ID_CHARS.fullmatch(value) or len(tracking_id) > TRACKING_ID_MAX:
            yield (line, "invalid_id", None, phone, None)
            continue
        keys = {"phone:" + phone} | ({"id:" + value} if case.id_column else set())
        duplicate = bool(keys & seen)
        seen |= keys
        text = template.render({"name": name}) if template else None
        if duplicate:
            yield (line, "duplicate", None, phone, None)
        elif phone in case.suppressed and case.type in ("promo", "viber_survey"):
            yield (line, "suppressed", tracking_id, phone, None)
        elif case.type == "viber_survey" and text is not None and len(text) > SURVEY_TEXT_MAX:
            yield (line, "text_too_long", tracking_id, phone, None)
        else:
            yield (line, "sent", tracking_id, phone, text)


def outcome(item: Recipient | Skip) -> tuple[object, ...]:
    """The reader's result in the reference's shape."""
    if isinstance(item, Recipient):
        return (item.line, "sent", item.tracking_id, item.phone, item.text)
    return (item.line, item.reason, item.tracking_id, item.phone, None)


PHONES = ["+380501234567", " +380501234568", "+380501234569 ", "380501234567", "", "+1234567"]
IDS = ["a", "b", " c ", "a.b", "x y", "", "d" * 250]
NAMES = ["Ann", "", " Bo ", "{x}", "n" * 80]
CASES = st.builds(
    Case,
    rows=st.lists(
        st.none() | st.tuples(st.sampled_from(PHONES), st.sampled_from(IDS),
                              st.sampled_from(NAMES)),
        max_size=25,
    ),
    type=st.sampled_from(["transaction", "promo", "viber_survey", "flashcall"]),
    id_column=st.booleans(),
    suppressed=st.frozensets(st.sampled_from(PHONES[:3]).map(str.strip)),
)


def case_campaign(
    make_campaign: MakeCampaign, tmp_path: Path, case: Case,
) -> tuple[Campaign, Suppression]:
    """The campaign of a generated ``case`` (its rows as a CSV) and its suppression list."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["phone", "customer_id", "name"])
    for row in case.rows:
        buffer.write("\n") if row is None else writer.writerow(row)
    campaign = make_campaign(
        buffer.getvalue(), type=case.type, text=TEXTS[case.type],
        id_column="customer_id" if case.id_column else None,
    )
    suppression = write_list(tmp_path / "optout.txt", "".join(p + "\n" for p in case.suppressed))
    return campaign, suppression


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                   HealthCheck.too_slow])
@given(case=CASES, tiny_filter=st.booleans())
def test_matches_a_naive_reference(
    make_campaign: MakeCampaign, tmp_path: Path, case: Case, tiny_filter: bool
) -> None:
    """Random small audiences with many duplicates: identical to plain sets, even when a
    one-byte Bloom filter makes nearly every key a false positive."""
    campaign, suppression = case_campaign(make_campaign, tmp_path, case)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(passes, "DEDUPE_BITS", 8 if tiny_filter else passes.DEDUPE_BITS)
        got = [outcome(item) for item in iter_audience(campaign, suppression, may_fork=False)]
    assert got == list(reference(case, campaign))
    ids = [row[2] for row in got if row[2] is not None]
    assert len(ids) == len(set(ids))  # every tracking id handed out is unique


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(case=CASES, ahead=st.integers(0, 12), step=st.integers(1, 3), late=st.booleans(),
       tiny_filter=st.booleans())
def test_reading_ahead_of_pass_one_matches_the_reference(
    make_campaign: MakeCampaign, tmp_path: Path, case: Case, ahead: int, step: int, late: bool,
    tiny_filter: bool,
) -> None:
    """A snapshot's pass 2 starts while pass 1 runs in a forked helper: ``ahead`` rows read
    with every key remembered (all of them when the helper is ``late``), then pass 1's
    suspects narrow the memory. Identical to plain sets, whatever the switch point."""
    campaign, suppression = case_campaign(make_campaign, tmp_path, case)
    narrowed: list[int] = []
    narrow = passes.Dedupe.narrow

    def recorded(dedupe: passes.Dedupe, *suspects: Any) -> None:
        narrowed.append(len(suspects))
        narrow(dedupe, *suspects)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(passes, "DEDUPE_BITS", 8 if tiny_filter else passes.DEDUPE_BITS)
        patch.setattr(passes, "HELPER_LINES", 0)
        patch.setattr(passes, "AHEAD_ROWS", ahead)
        patch.setattr(passes, "_AHEAD_STEP", step)
        patch.setattr(passes.Dedupe, "narrow", recorded)
        if late:
            patch.setattr(passes.KeyScan, "ready", lambda scan: False)
        got = [outcome(item) for item in iter_audience(campaign, suppression, may_fork=True)]
    assert got == list(reference(case, campaign))
    assert narrowed == [2 if case.id_column else 1]  # the helper ran, and pass 2 switched


def test_reading_ahead_survives_a_failed_helper_and_a_reader_that_stops(
    make_campaign: MakeCampaign, monkeypatch: pytest.MonkeyPatch, forks: list[passes.Forked],
) -> None:
    """A helper that fails: pass 1 runs here after all, same rows. A consumer that stops
    early: the helper is killed and reaped, not left running."""
    campaign = make_campaign(HEADER + HELPER_BODY, text="Hi {name}, hello")
    expected = [outcome(item) for item in iter_audience(campaign, may_fork=False)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(passes, "HELPER_LINES", 0)
        patch.setattr(passes, "AHEAD_ROWS", 500)
        patch.setattr(passes.KeyScan, "ready", lambda scan: False)
        assert [outcome(item) for item in iter_audience(campaign, may_fork=True)] == expected
        patch.setattr(passes, "_scan_keys", _broken_scan)
        assert [outcome(item) for item in iter_audience(campaign, may_fork=True)] == expected
    forks.clear()
    monkeypatch.setattr(passes, "HELPER_LINES", 0)
    monkeypatch.setattr(passes.KeyScan, "ready", lambda scan: False)
    items = iter_audience(campaign, may_fork=True)
    assert len([next(items) for _ in range(10)]) == 10
    items.close()
    (helper,) = forks
    assert not helper._process.is_alive() and helper._process.exitcode is not None


@pytest.mark.parametrize("may_fork", [True, False])
def test_the_caller_decides_whether_to_fork_not_the_threads_running(
    make_campaign: MakeCampaign, monkeypatch: pytest.MonkeyPatch, forks: list[passes.Forked],
    may_fork: bool,
) -> None:
    """Whether helpers are forked is the caller's ``may_fork`` alone: a thread running beside
    the reader changes neither the helpers (none at all when the caller may not fork) nor the
    rows, counts and batches that come out."""
    campaign = make_campaign(HEADER + HELPER_BODY, text="Hi {name}, hello")
    expected = read_everything(campaign, may_fork=False)
    monkeypatch.setattr(passes, "HELPER_LINES", 0)
    assert read_everything(campaign, may_fork=may_fork) == expected
    helpers = [len(forks)]
    forks.clear()
    stop = threading.Event()
    bystander = threading.Thread(target=stop.wait, name="bystander")
    bystander.start()
    try:
        assert read_everything(campaign, may_fork=may_fork) == expected
    finally:
        stop.set()
        bystander.join()
    helpers.append(len(forks))
    # reading ahead (1), ids scanned and rows counted (2), the snapshot reading ahead (1)
    assert helpers == ([4, 4] if may_fork else [0, 0])


def read_everything(campaign: Campaign, *, may_fork: bool) -> tuple[object, ...]:
    """Everything the reader gives: the rows, the summary and a snapshot's batches."""
    rows = [outcome(item) for item in iter_audience(campaign, may_fork=may_fork)]
    summary = summarize(campaign, may_fork=may_fork)
    snapshot = Snapshot(campaign, None, 100, may_fork=may_fork)
    return rows, summary, list(snapshot.batches()), list(snapshot.skips)


async def test_the_engine_never_forks_its_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forks: list[passes.Forked],
) -> None:
    """The daemon and `send` run threads (the journal's writer among them): the snapshot they
    take in their own process reads without helpers, even of a file big enough for them."""
    monkeypatch.setattr(passes, "HELPER_LINES", 0)
    config = load_config(write_config(tmp_path, "http://127.0.0.1:9"),
                         env={"CASCADE_API_KEY": "k"})
    write_audience(tmp_path / "campaigns" / "people.csv", 50)
    now = datetime.now(UTC)
    file = write_campaign(tmp_path / "campaigns", "snap", "people.csv", send_at=now)
    check = load_campaign(file, config, now)
    assert check.campaign is not None, check.problems
    async with open_engine(config) as engine:
        record = await engine.prepare(check.campaign)
    assert record.recipients == 50
    assert forks == []


PIECES = st.sampled_from(["Hi ", "{{", "}}", " {a} ", "{b}", "{0}", "{a.b}", "é", ", "])


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                   HealthCheck.too_slow])
@given(
    pieces=st.lists(PIECES, max_size=8),
    values=st.lists(
        st.text(st.characters(exclude_characters="\0", exclude_categories=["Cs"]), max_size=5),
        min_size=4, max_size=4,
    ),
)
def test_rendering_matches_template_render(
    make_campaign: MakeCampaign, pieces: list[str], values: list[str]
) -> None:
    """The reader's fast rendering gives exactly `Template.render`'s text."""
    text = "".join(pieces) or "plain"
    clean = [" ".join(value.split()).replace('"', "") for value in values]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows([["phone", "a", "b", "0", "a.b"], ["+380501234567", *clean]])
    campaign = make_campaign(buffer.getvalue(), text=text, id_column=None)
    row = dict(zip(["a", "b", "0", "a.b"], (value.strip() for value in clean), strict=True))
    item = rows(campaign)[0]
    assert isinstance(item, Recipient)
    assert item.text == Template(text).render(row)


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                   HealthCheck.too_slow])
@given(case=CASES, batch_size=st.integers(1, 4))
def test_snapshot_fast_path_matches_iter_audience(
    make_campaign: MakeCampaign, tmp_path: Path, case: Case, batch_size: int
) -> None:
    """The snapshot builds messages from plain row tuples, never from `Recipient`s: the same
    messages as `to_message` over `iter_audience`, the same skips, cut into full batches."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["phone", "customer_id", "name"])
    for row in case.rows:
        buffer.write("\n") if row is None else writer.writerow(row)
    campaign = make_campaign(
        buffer.getvalue(), type=case.type, text=TEXTS[case.type],
        id_column="customer_id" if case.id_column else None,
    )
    if case.type == "viber_survey":
        campaign = campaign.model_copy(update={"survey_options": ("Yes", "No")})
    suppression = write_list(tmp_path / "optout.txt", "".join(p + "\n" for p in case.suppressed))
    expected = list(iter_audience(campaign, suppression, may_fork=False))
    snapshot = Snapshot(campaign, suppression, batch_size, may_fork=False)
    batches = list(snapshot.batches())
    assert [message for batch in batches for message in batch] == [
        to_message(campaign, item) for item in expected if isinstance(item, Recipient)
    ]
    assert list(snapshot.skips) == [item for item in expected if isinstance(item, Skip)]
    assert all(len(batch) == batch_size for batch in batches[:-1])
    valid = iter_rows(campaign, suppression, may_fork=False)
    assert [(*row,) for row in valid if not isinstance(row, Skip)] == [
        (r.line, r.tracking_id, r.phone, r.text, r.zone) for r in expected
        if isinstance(r, Recipient)
    ]


def test_snapshot_skips_past_the_held_ones_go_to_a_file(
    make_campaign: MakeCampaign, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Skipped rows beyond `SKIPS_HELD` wait in a temporary file (flat memory), and come back
    complete and in CSV order, as often as they are read."""
    monkeypatch.setattr(batching, "SKIPS_HELD", 3)
    body = "".join(
        f"0501234{n:03d},c{n}\n" if n % 3 else f"+380501234{n:03d},c{n}\n" for n in range(20)
    )
    campaign = make_campaign("phone,customer_id\n" + body, text="Hi", id_column="customer_id")
    snapshot = Snapshot(campaign, None, 5, may_fork=False)
    sent = [message for batch in snapshot.batches() for message in batch]
    expected = [item for item in iter_audience(campaign, may_fork=False) if isinstance(item, Skip)]
    assert len(sent) == 7
    assert len(expected) == 13
    assert snapshot.skips._spilled is not None  # some did go to the file
    assert list(snapshot.skips) == expected
    assert list(snapshot.skips) == expected


def test_drained_skips_come_out_once_in_order_across_a_spill(
    make_campaign: MakeCampaign, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A streamed snapshot drains its skipped rows chunk by chunk: each comes out exactly
    once, in CSV order, whether it waited in memory or in the file."""
    monkeypatch.setattr(batching, "SKIPS_HELD", 3)
    body = "".join(
        f"0501234{n:03d},c{n}\n" if n % 3 else f"+380501234{n:03d},c{n}\n" for n in range(40)
    )
    campaign = make_campaign("phone,customer_id\n" + body, text="Hi", id_column="customer_id")
    snapshot = Snapshot(campaign, None, 2, may_fork=False)
    drained: list[Skip] = []
    for _ in snapshot.batches():
        drained += snapshot.skips.drain()  # spills between two drains, at 3 skips held
    drained += snapshot.skips.drain()
    assert snapshot.skips._spilled is not None  # some did wait in the file
    items = iter_audience(campaign, may_fork=False)
    assert drained == [item for item in items if isinstance(item, Skip)]
    assert snapshot.skips.drain() == [] and list(snapshot.skips) == []


# -- issue 9: Excel's sep= line (item 12), empty personalisation (item 16) ----------------------


@pytest.mark.parametrize("sep", [";", ",", "\t"])
def test_excel_sep_line_names_the_delimiter(make_campaign: MakeCampaign, sep: str) -> None:
    """Excel's first line ``sep=;`` is the delimiter, not the header; lines stay the file's."""
    body = f"sep={sep}\n" + sep.join(["phone", "customer_id", "name"]) + "\n"
    body += sep.join(["+380501234567", "c1", "Ann"]) + "\n" + sep.join(["bad", "c2", "Bo"]) + "\n"
    campaign = make_campaign(body)
    result = rows(campaign)
    assert result[0] == Recipient(3, "sale-c1", "+380501234567", "Hi Ann")
    assert skip_of(result[1]).line == 4
    assert read_header(campaign.audience, campaign.file) == ["phone", "customer_id", "name"]
    assert summarize(campaign, may_fork=False).valid == 1


def test_sep_line_in_a_suppression_list(tmp_path: Path) -> None:
    """A suppression CSV saved by Excel with its sep= line reads like any other."""
    listed = write_list(tmp_path / "optout.csv", "sep=;\nphone;name\n+380501234567;A\n")
    assert "+380501234567" in listed and len(listed) == 1


def test_summary_counts_placeholders_left_empty(make_campaign: MakeCampaign) -> None:
    """Valid rows whose ``{name}`` is empty (or missing) are counted with their first lines;
    skipped rows are not (they are not sent)."""
    body = "+380501234561,c1,Ann\n+380501234562,c2,\n+380501234563,c3,  \nbad,c4,\n"
    body += "+380501234565,c5\n"
    summary = summarize(make_campaign(HEADER + body), may_fork=False)
    assert (summary.valid, summary.empty, summary.empty_lines) == (
        4, {"name": 3}, {"name": [3, 4, 6]})
    constant = make_campaign(HEADER + body, text="No placeholder")
    assert summarize(constant, may_fork=False).empty == {}
