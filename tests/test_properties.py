"""Property tests: any campaign file or audience CSV gives problems or a campaign, never a crash."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from scheduler.checking import check_paths, render_report
from scheduler.config import Config, load_config
from scheduler.loader import CampaignCheck, load_campaign

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SETTINGS = settings(
    max_examples=200, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
VALID: dict[str, Any] = {
    "id": "prop-1",
    "from_name": "YourBrand",
    "type": "viber_survey",
    "send_at": datetime(2026, 12, 1, 9, tzinfo=UTC),
    "ttl": 604800,
    "text": "Hi {name}",
    "survey_options": ["Yes", "No"],
    "route": "standard",
    "paused": False,
    "audience": {"csv": "people.csv", "phone_column": "phone", "id_column": "cid",
                 "delimiter": ","},
}
KEYS = [*VALID, "sendat", "csv", "", "a.b", "ключ"]

offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
scalars = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "promo", "flashcall", "tg-viber", ",", "\t", "{name}", "{", "}}", "{0}",
                     "people.csv", "../people.csv", "/etc/passwd", "phone", "2026-12-01T09:00Z"]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=2**63, max_value=2**200),
    st.booleans(),
    st.floats(allow_nan=True),
    st.datetimes(timezones=st.none() | offsets | st.just(UTC)),
    st.dates(),
    st.times(),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner,
                                                                 max_size=3),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Config]]:
    """One campaigns folder (with a valid CSV) and its config, reused by every example."""
    root = tmp_path_factory.mktemp("props")
    (root / "campaigns").mkdir()
    (root / "campaigns" / "people.csv").write_text("phone,name,cid\n+380501234567,Olena,1\n")
    (root / "config.toml").write_text('[paths]\ncampaigns = "campaigns"\n', "utf-8")
    yield root / "campaigns", load_config(root / "config.toml", env={})


def assert_clean(check: CampaignCheck) -> None:
    """A result is either a campaign with no errors, or no campaign with at least one error."""
    assert (check.campaign is None) == (not check.ok)
    for problem in check.problems:
        assert problem.message and problem.render()


def toml_or_none(document: dict[str, Any]) -> str | None:
    """``document`` as TOML, or None when TOML cannot express it (e.g. ints over 64 bits)."""
    try:
        return tomli_w.dumps(document)
    except (TypeError, ValueError, OverflowError):
        return None


def test_valid_document_is_valid(workspace: tuple[Path, Config]) -> None:
    """The base document of the mutations below is itself valid (so mutations test something)."""
    folder, config = workspace
    path = folder / "base.toml"
    path.write_text(tomli_w.dumps(VALID), "utf-8")
    check = load_campaign(path, config, NOW)
    assert check.ok and check.campaign is not None, check.problems


@SETTINGS
@given(document=st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), values, max_size=8))
def test_arbitrary_toml_documents(workspace: tuple[Path, Config], document: dict[str, Any]) -> None:
    """Random keys and values of every TOML type give problems, never an exception."""
    folder, config = workspace
    text = toml_or_none(document)
    if text is None:
        return
    path = folder / "random.toml"
    path.write_text(text, "utf-8")
    assert_clean(load_campaign(path, config, NOW))


@SETTINGS
@given(
    key=st.sampled_from([*VALID, *(f"audience.{k}" for k in VALID["audience"])]),
    value=values,
    drop=st.booleans(),
)
def test_mutated_valid_campaign(
    workspace: tuple[Path, Config], key: str, value: Any, drop: bool
) -> None:
    """A valid campaign with one key replaced by any TOML value (or removed) never crashes."""
    folder, config = workspace
    document = {**VALID, "audience": dict(VALID["audience"])}
    table, _, name = key.rpartition(".")
    target = document["audience"] if table else document
    if drop:
        target.pop(name)
    else:
        target[name] = value
    text = toml_or_none(document)
    if text is None:
        return
    path = folder / "mutated.toml"
    path.write_text(text, "utf-8")
    assert_clean(load_campaign(path, config, NOW))


@SETTINGS
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_arbitrary_bytes_as_campaign_file(workspace: tuple[Path, Config], raw: bytes) -> None:
    """Any bytes at all as a campaign file: problems, never an exception."""
    folder, config = workspace
    path = folder / "bytes.toml"
    path.write_bytes(raw)
    assert_clean(load_campaign(path, config, NOW))


csv_texts = st.lists(
    st.lists(st.sampled_from(["+380501234567", "+380671234567", "0501234567", "", "x", '"',
                              "a,b", "1", "\n", "{", "Олена", "\x00", "\ufeff"]), max_size=4)
    .map(",".join),
    max_size=8,
).map(lambda rows: "phone,name,cid\n" + "\n".join(rows))


@SETTINGS
@given(
    raw=st.binary(max_size=300)
    | csv_texts.map(str.encode)
    | csv_texts.map(lambda t: t.encode("utf-16"))
    | st.binary(max_size=40).map(lambda b: b"phone,name,cid\n+380501234567,a,1\n" + b)
)
def test_arbitrary_bytes_as_audience(workspace: tuple[Path, Config], raw: bytes) -> None:
    """Any bytes as the audience CSV: `check` gives a located error or a summary, never a crash."""
    folder, config = workspace
    (folder / "fuzz.csv").write_bytes(raw)
    campaign = {**VALID, "id": "fuzz", "audience": {"csv": "fuzz.csv"}}
    path = folder / "fuzz.toml"
    path.write_text(tomli_w.dumps(campaign), "utf-8")
    report = check_paths([path], config, NOW)
    (check,) = report.checks
    assert_clean(check)
    if check.campaign is not None:
        assert path in report.summaries
    else:
        assert any(p.is_error and p.file is not None for p in check.problems)
    assert render_report(report)


@SETTINGS
@example(moment=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))))
@example(moment=datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-1))))
@given(moment=st.datetimes(timezones=st.none() | offsets | st.just(UTC)) | st.dates()
       | st.times())
def test_any_send_at_is_judged(
    workspace: tuple[Path, Config], moment: datetime | date | time
) -> None:
    """Every kind of TOML date or time as send_at is accepted (UTC, in range) or explained."""
    folder, config = workspace
    path = folder / "when.toml"
    path.write_text(tomli_w.dumps({**VALID, "send_at": moment}), "utf-8")
    check = load_campaign(path, config, NOW)
    assert_clean(check)
    if check.campaign is not None:
        assert check.campaign.send_at.utcoffset() == timedelta(0)
        assert check.campaign.send_at <= NOW + timedelta(days=30)
    else:
        assert [p.field for p in check.errors] == ["send_at"]
