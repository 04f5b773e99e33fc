"""The one E.164 rule (`scheduler.phones`): ASCII digits only, and every checker uses it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.audience import iter_audience
from scheduler.campaign import AudienceSpec, Campaign
from scheduler.phones import E164, normalise
from scheduler.records import Recipient
from scheduler.sandbox import InvalidMessage, check_message

#: "+38050" then 1234567 in Arabic-Indic digits: `\d` takes them, the API does not
ARABIC_INDIC = "+38050\u0661\u0662\u0663\u0664\u0665\u0666\u0667"


def message(phone: str) -> dict[str, object]:
    """A valid transaction message to ``phone``."""
    return {"id": "t-1", "fromName": "Brand", "toPhone": phone,
            "messageType": "transaction", "text": "Your order shipped"}


@pytest.mark.parametrize(
    "phone", ["+380501234567", "+1234567", "+123456789012345"],
)
def test_e164_accepts_plus_and_7_to_15_ascii_digits(phone: str) -> None:
    """A "+", a first digit 1-9, 6 to 14 more digits."""
    assert E164.fullmatch(phone)


@pytest.mark.parametrize(
    "phone",
    [
        ARABIC_INDIC,
        "+38050\uff11\uff12\uff13\uff14\uff15\uff16\uff17",  # fullwidth digits
        "380501234567", "+0501234567", "+123456", "+1234567890123456", "+38050 123 45 67", "",
        "+380501234567\n",
    ],
)
def test_e164_rejects_everything_else(phone: str) -> None:
    """Non-ASCII digits, no "+", a leading 0, too short or long, separators, a trailing newline."""
    assert not E164.fullmatch(phone)


def test_sandbox_rejects_non_ascii_digits() -> None:
    """The sandbox's validation refuses a phone written in Arabic-Indic digits."""
    check_message(message("+380501234567"), 0, frozenset())  # the same number in ASCII passes
    with pytest.raises(InvalidMessage) as caught:
        check_message(message(ARABIC_INDIC), 0, frozenset())
    assert caught.value.code == "INVALID_PHONE"
    assert caught.value.field == "toPhone"


def test_audience_and_sandbox_agree(tmp_path: Path) -> None:
    """The audience reader skips exactly the phones the sandbox refuses, and sends the rest."""
    phones = ["+380501234567", ARABIC_INDIC, "+0501234567", "+1234567"]
    csv = tmp_path / "people.csv"
    csv.write_text("phone\n" + "".join(f"{p}\n" for p in phones), "utf-8")
    campaign = Campaign(
        id="e164", from_name="Brand", type="transaction",
        send_at=datetime(2026, 12, 1, 9, tzinfo=UTC), ttl=3600, text="Hi",
        audience=AudienceSpec(csv=csv), file=tmp_path / "e164.toml", fingerprint="x",
    )
    rows = iter_audience(campaign, may_fork=False)
    sent = {row.phone for row in rows if isinstance(row, Recipient)}
    for phone in phones:
        try:
            check_message(message(phone), 0, frozenset())
        except InvalidMessage:
            assert phone not in sent
        else:
            assert phone in sent
    assert sent == {"+380501234567", "+1234567"}


@pytest.mark.parametrize(("written", "stored"), [
    ("+380501234567", "+380501234567"), ("380501234567", "+380501234567"),
    ("+380 50 123-45-67", "+380501234567"), ("00380 (50) 123 45 67", "+380501234567"),
    (" +1.212.555.0100 ", "+12125550100"), ("0501234567", None), ("call me", None),
])
def test_a_phone_as_people_write_it_is_normalised(written: str, stored: str | None) -> None:
    """`report --phone` takes a number with spaces, dashes, dots, brackets, 00 or no +; a
    national number (no country code) is none (issue 24, item 15)."""
    assert normalise(written) == stored


@given(st.text(max_size=30))
def test_normalise_gives_e164_or_none(text: str) -> None:
    """Any text: an E.164 number or None, never an exception."""
    phone = normalise(text)
    assert phone is None or E164.fullmatch(phone)
