"""The delivery log file (fields, phones, rotation, redaction) and the operational log on stderr."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from scheduler.delivery_log import DeliveryLog, MessageOutcome, SentMessages, mask_phone
from scheduler.oplog import REDACTED, configure_logging, get_logger, redact_secrets

SECRET = "sk-live-9f8e7d6c5b4a"


def lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON-lines file, parsed."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def parse_utc(stamp: str) -> None:
    """Fail unless ``stamp`` is an ISO-8601 time in UTC."""
    from datetime import datetime

    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == timedelta(0)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    """Where the delivery log goes (its folder does not exist yet)."""
    return tmp_path / "logs" / "delivery.jsonl"


@pytest.fixture
def delivery(log_path: Path) -> Iterator[DeliveryLog]:
    """A delivery log with masked phones that knows one secret."""
    log = DeliveryLog(log_path, phones="masked", secrets=[SECRET])
    yield log
    log.close()


OUTCOMES = [
    MessageOutcome("c-1", "sent", "+380501234567", 1, message_id="7f9c-uuid"),
    MessageOutcome("c-2", "rejected", "+380501234568", 2, error_code="INVALID_PHONE",
                   reason="toPhone is not valid"),
    MessageOutcome("c-3", "expired", "+380501234569", 6, reason="deadline passed"),
    MessageOutcome("c-4", "in_doubt", "+380501234560", 1, reason="timeout after the request"),
    MessageOutcome("c-5", "skipped", "0501234561", 0, reason="invalid_phone"),
]


# --- message lines ----------------------------------------------------------------------------


def test_message_lines(delivery: DeliveryLog, log_path: Path) -> None:
    """One JSON line per outcome, with the SPEC §8 fields and the right level."""
    delivery.messages("summer", "tg-viber", OUTCOMES)
    got = lines(log_path)
    assert [line["tracking_id"] for line in got] == ["c-1", "c-2", "c-3", "c-4", "c-5"]
    sent, rejected, expired, doubt, skipped = got
    assert sent["event"] == "message" and sent["campaign"] == "summer"
    assert (sent["status"], sent["level"], sent["message_id"]) == ("sent", "info", "7f9c-uuid")
    assert "error_code" not in sent and "reason" not in sent
    assert (sent["attempts"], sent["channel_route"]) == (1, "tg-viber")
    assert (rejected["level"], rejected["error_code"], rejected["attempts"]) == (
        "warning", "INVALID_PHONE", 2)
    assert "message_id" not in rejected
    assert (expired["level"], expired["reason"]) == ("warning", "deadline passed")
    assert doubt["level"] == "warning" and skipped["level"] == "info"
    for line in got:
        parse_utc(line["timestamp"])


def test_masked_and_full_phones(delivery: DeliveryLog, log_path: Path, tmp_path: Path) -> None:
    """Phones are masked unless the config asks for full numbers."""
    delivery.messages("c", "standard", OUTCOMES[:1])
    assert lines(log_path)[0]["phone"] == "+380*****4567"
    full_path = tmp_path / "full.jsonl"
    full = DeliveryLog(full_path, phones="full")
    full.messages("c", "standard", OUTCOMES[:1])
    full.close()
    assert lines(full_path)[0]["phone"] == "+380501234567"


def test_no_rows_writes_nothing(delivery: DeliveryLog, log_path: Path) -> None:
    """An empty batch adds no (blank) line."""
    delivery.messages("c", "standard", [])
    assert log_path.read_bytes() == b""


def test_mask_phone_examples() -> None:
    """The documented shape, and short numbers hidden whole."""
    assert mask_phone("+380501234567") == "+380*****4567"
    assert mask_phone("+14155550123") == "+141****0123"
    assert mask_phone("+12345") == "+*****"
    assert mask_phone("") == ""


@given(st.text(alphabet="0123456789", min_size=0, max_size=20), st.booleans())
def test_mask_phone_hides_the_middle(digits: str, plus: bool) -> None:
    """Whatever the number, at most 7 digits stay visible and the length is kept."""
    phone = ("+" if plus else "") + digits
    masked = mask_phone(phone)
    assert len(masked) == len(phone)
    assert sum(ch.isdigit() for ch in masked) <= 7
    assert masked.startswith("+") == plus


# --- events -------------------------------------------------------------------------------------


def test_event_lines(delivery: DeliveryLog, log_path: Path) -> None:
    """Lifecycle events are one JSON line each, with UTC timestamp, level and fields."""
    delivery.event("campaign_started", campaign="summer", recipients=3)
    delivery.event("batch_retry", level="warning", status=503, wait=1.5)
    started, retry = lines(log_path)
    assert list(started)[:3] == ["timestamp", "level", "event"]
    assert (started["event"], started["level"], started["recipients"]) == (
        "campaign_started", "info", 3)
    assert (retry["level"], retry["status"], retry["wait"]) == ("warning", 503, 1.5)
    parse_utc(started["timestamp"])
    with pytest.raises(ValueError, match="level"):
        delivery.event("x", level="loud")


def test_secrets_never_reach_the_file(delivery: DeliveryLog, log_path: Path) -> None:
    """A secret in any field, nested, in a repr, an exception or a message line is redacted."""
    delivery.event(
        "campaign_invalid", errors=[f"header X-Authorization-Key: {SECRET}"],
        nested={"deeper": {"list": ("ok", f"x{SECRET}y")}}, path=Path(f"/tmp/{SECRET}"),
        api_key="another-key-value", headers={"X-Authorization-Key": "third-value"},
    )
    try:
        raise ConnectionError(f"refused with key {SECRET}")
    except ConnectionError:
        delivery.event("batch_retry", level="error", exc_info=True)
    delivery.event(f"odd event {SECRET}")
    delivery.messages("c", "standard", [
        MessageOutcome("c-1", "rejected", "+380501234567", 1, error_code="X",
                       reason=f"echoed {SECRET}"),
    ])
    text = log_path.read_text()
    for secret in (SECRET, "another-key-value", "third-value"):
        assert secret not in text
    invalid = lines(log_path)[0]
    assert invalid["nested"]["deeper"]["list"] == ["ok", f"x{REDACTED}y"]
    assert invalid["api_key"] == REDACTED
    assert "ConnectionError" in lines(log_path)[1]["exception"]


def test_secrets_added_later_are_redacted(delivery: DeliveryLog, log_path: Path) -> None:
    """Credentials reloaded on SIGHUP are redacted from then on, alongside the old ones."""
    delivery.add_secrets(["fresh-key-123", ""])
    delivery.event("config_reloaded", note="fresh-key-123 and " + SECRET)
    delivery.messages("c", "standard", [
        MessageOutcome("c-1", "rejected", "+380501234567", 1, reason="fresh-key-123"),
    ])
    text = log_path.read_text()
    assert "fresh-key-123" not in text and SECRET not in text
    assert lines(log_path)[0]["note"] == f"{REDACTED} and {REDACTED}"


# --- rotation -----------------------------------------------------------------------------------


def test_reopens_after_logrotate_moves_the_file(log_path: Path) -> None:
    """After a rename, new lines go to a new file at the configured path; old ones stay put."""
    log = DeliveryLog(log_path, phones="masked", check_every=0)
    log.event("before")
    rotated = log_path.with_name("delivery.jsonl.1")
    log_path.rename(rotated)
    log.event("after")
    log.messages("c", "standard", OUTCOMES[:1])
    log_path.unlink()  # deleted outright this time
    log.event("recreated")
    log.close()
    assert [line["event"] for line in lines(rotated)] == ["before"]
    assert [line["event"] for line in lines(log_path)] == ["recreated"]


def test_checks_for_rotation_at_most_every_interval(log_path: Path) -> None:
    """Within the check interval the file is not re-stat'ed (lines follow the open file)."""
    log = DeliveryLog(log_path, phones="masked", check_every=3600)
    log_path.rename(log_path.with_name("old.jsonl"))
    log.event("still-old")
    log.close()
    assert not log_path.exists()
    assert [line["event"] for line in lines(log_path.with_name("old.jsonl"))] == ["still-old"]


# --- the operational log --------------------------------------------------------------------


def test_oplog_json_lines_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """JSON format: one object a line on stderr with UTC timestamp, level, event, component."""
    configure_logging("info", "json")
    get_logger("daemon").info("daemon_started", campaigns=3)
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = [json.loads(text) for text in captured.err.splitlines()]
    assert (line["event"], line["level"], line["component"], line["campaigns"]) == (
        "daemon_started", "info", "daemon", 3)
    parse_utc(line["timestamp"])


def test_oplog_level_filtering(capsys: pytest.CaptureFixture[str]) -> None:
    """Below the configured level nothing is written; reconfiguring takes effect."""
    log = get_logger("made-before-configuring")
    configure_logging("warning")
    log.info("hidden")
    log.warning("shown")
    configure_logging("debug")
    log.debug("now-shown")
    events = [json.loads(text)["event"] for text in capsys.readouterr().err.splitlines()]
    assert events == ["shown", "now-shown"]
    with pytest.raises(ValueError, match="level"):
        configure_logging("verbose")


def test_oplog_redaction(capsys: pytest.CaptureFixture[str]) -> None:
    """The operational log never shows a secret either."""
    configure_logging("info", secrets=[SECRET, ""])
    get_logger().error("request failed", url=f"https://x/?k={SECRET}", token="zzz-token-value")
    err = capsys.readouterr().err
    assert SECRET not in err and "zzz-token-value" not in err
    assert json.loads(err)["token"] == REDACTED


def test_oplog_console_format(capsys: pytest.CaptureFixture[str]) -> None:
    """Console format is readable text, without colour codes when stderr is not a terminal."""
    configure_logging("info", "console", secrets=[SECRET])
    get_logger("cli").info("campaign_loaded", campaign="summer", key=SECRET)
    err = capsys.readouterr().err
    assert "campaign_loaded" in err and "summer" in err and SECRET not in err
    assert "\x1b[" not in err


def test_redaction_processor_leaves_clean_events_alone() -> None:
    """Events without secrets pass through unchanged (numbers stay numbers)."""
    processor = redact_secrets([SECRET])
    event = {"event": "campaign_progress", "sent": 10, "rate": 1.5, "done": False, "err": None}
    assert processor(None, "info", dict(event)) == event
    with structlog.testing.capture_logs() as captured:
        get_logger().info("captured")
    assert captured[0]["event"] == "captured"


# --- the hot path for sent rows ----------------------------------------------------------------


@pytest.mark.parametrize("phones", ["masked", "full"])
@pytest.mark.parametrize("message_id", ["3fa85f64-5717-4562-b3fc-2c963f66afa6",
                                        'odd "id" \\ with\nescapes', ""])
def test_sent_fast_path_writes_the_same_lines_as_messages(
    tmp_path: Path, phones: str, message_id: str
) -> None:
    """`sent` (templated lines) and `messages` (a dict per line) give identical JSON, even for a
    message id that needs escaping."""
    fast_path, slow_path = tmp_path / "fast.jsonl", tmp_path / "slow.jsonl"
    fast = DeliveryLog(fast_path, phones=phones)  # type: ignore[arg-type]
    slow = DeliveryLog(slow_path, phones=phones)  # type: ignore[arg-type]
    fast.sent("camp", "tg-viber", [SentMessages(["camp-1"], [message_id], ["+380501234567"], 2)])
    slow.messages("camp", "tg-viber", [
        MessageOutcome("camp-1", "sent", "+380501234567", 2, message_id=message_id)
    ])
    fast.close()
    slow.close()
    (got,), (want,) = lines(fast_path), lines(slow_path)
    assert got.pop("timestamp")[:16] == want.pop("timestamp")[:16]
    assert got == want
    assert got["message_id"] == message_id


_TRACKING_IDS = st.text(alphabet="abcXYZ019._-", min_size=1, max_size=12)
_E164 = st.from_regex(r"\+[0-9]{10,16}", fullmatch=True)
#: E.164 numbers, too short ones, ones without "+", non-ASCII digits
_ANY_PHONE = st.one_of(_E164, st.from_regex(r"\+[0-9]{4,9}", fullmatch=True),
                       st.text(alphabet="+0123456789\u0663\u0665", max_size=18))
#: no id, an empty one, ids JSON must escape (quotes, backslashes, control characters)
_ODD_MESSAGE_ID = st.one_of(st.none(), st.text(alphabet='ab"\\\n\x01\x7f\u00e9\u2028', max_size=4))


@st.composite
def _one_length(draw: st.DrawFn, size: int) -> list[str]:
    """``size`` phones of one length, E.164 but for a few: "+" moved, lost or doubled, a
    non-ASCII digit (each must be masked as `mask_phone` masks it)."""
    length = draw(st.integers(8, 14))  # around the shortest E.164 number mask_phone masks
    phones = []
    for _ in range(size):
        digits = list(draw(st.text(alphabet="0123456789", min_size=length - 1,
                                   max_size=length - 1)))
        phone = ["+", *digits]
        spot = draw(st.integers(0, length - 1))
        flaw = draw(st.sampled_from(["none", "none", "moved", "lost", "doubled", "non-ascii"]))
        if flaw == "moved":
            phone[0], phone[spot] = phone[spot], phone[0]
        elif flaw == "lost":
            phone[0] = "7"
        elif flaw == "doubled":
            phone[spot] = "+"
        elif flaw == "non-ascii" and spot:
            phone[spot] = "\u0663"
        phones.append("".join(phone))
    return phones


@st.composite
def _sent_runs(draw: st.DrawFn) -> SentMessages:
    """A run of sent messages: usually well-formed (the templated path), sometimes with an
    odd phone or message id among them (the careful path)."""
    size = draw(st.integers(0, 6))
    ids = draw(st.lists(_TRACKING_IDS, min_size=size, max_size=size))
    message_ids = draw(st.lists(st.one_of(st.uuids().map(str), _ODD_MESSAGE_ID)
                                if draw(st.booleans()) else st.uuids().map(str),
                                min_size=size, max_size=size))
    phones = draw(st.one_of(st.lists(_E164, min_size=size, max_size=size),
                            st.lists(_ANY_PHONE, min_size=size, max_size=size),
                            _one_length(size)))
    return SentMessages(ids, message_ids, phones, draw(st.integers(1, 9)), draw(st.booleans()))


def assert_sent_writes_what_messages_writes(
    folder: Path, runs: list[SentMessages], phones: str,
) -> None:
    """`sent`'s runs give byte for byte the lines of `messages` (but the time), in order."""
    fast = DeliveryLog(folder / "fast.jsonl", phones=phones)  # type: ignore[arg-type]
    slow = DeliveryLog(folder / "slow.jsonl", phones=phones)  # type: ignore[arg-type]
    fast.sent("camp", "standard", runs)
    slow.messages("camp", "standard", [
        MessageOutcome(tracking_id, "sent", phone, run.attempts, message_id=message_id or "",
                       resent=run.resent)
        for run in runs
        for tracking_id, message_id, phone in zip(
            run.tracking_ids, run.message_ids, run.phones, strict=True)
    ])
    fast.close()
    slow.close()

    def untimed(path: Path) -> list[bytes]:
        return [line.split(b",", 1)[1] for line in path.read_bytes().splitlines()]

    assert untimed(folder / "fast.jsonl") == untimed(folder / "slow.jsonl")


@given(st.lists(_sent_runs(), max_size=4), st.sampled_from(["masked", "full"]))
def test_sent_runs_write_the_bytes_messages_writes(
    tmp_path_factory: pytest.TempPathFactory, runs: list[SentMessages], phones: str,
) -> None:
    """Whatever the phones (E.164 of any length, too short, not E.164) and message ids (none,
    empty, needing escapes), `sent`'s runs give byte for byte the lines of `messages`."""
    assert_sent_writes_what_messages_writes(tmp_path_factory.mktemp("runs"), runs, phones)


@pytest.mark.parametrize("phones", [
    ["+123456789", "+987654321"],  # 9 digits: hidden whole
    ["+1234567890", "+1234567891"],  # 10: the shortest shown in part
    ["+380501234567", "+14155550123"],  # two lengths in one run
    ["3+80501234567", "+380501234567"],  # a "+" moved
    ["+380501234567", "4380501234567"],  # a "+" lost
    ["+38050+234567", "+380501234567"],  # a "+" doubled
    ["+38050\u0661234567", "+380501234567"],  # a non-ASCII digit
])
def test_sent_masks_each_phone_as_mask_phone_does(tmp_path: Path, phones: list[str]) -> None:
    """A run of phones that are not all E.164 of one length is masked phone by phone, the
    same as `mask_phone`; one of E.164 numbers of one length column by column, the same."""
    run = SentMessages(["c-1", "c-2"], ["m-1", "m-2"], phones, 1)
    assert_sent_writes_what_messages_writes(tmp_path, [run], "masked")


def test_a_toy_length_secret_does_not_mangle_the_log(log_path: Path) -> None:
    """A one-letter key (sandbox experiments) is redacted where it is a whole value, but is not
    cut out of every word of every line."""
    log = DeliveryLog(log_path, phones="full", secrets=["k"])
    log.sent("bulk", "standard", [SentMessages(["bulk-1"], ["mid-1"], ["+380501234567"], 1)])
    log.event("campaign_started", campaign="bulk", note="k")
    log.close()
    message, event = lines(log_path)
    assert message["tracking_id"] == "bulk-1" and message["status"] == "sent"
    assert event["campaign"] == "bulk" and event["note"] == REDACTED
