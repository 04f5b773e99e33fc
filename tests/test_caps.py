"""The frequency-cap summary: phones over a cap as a sorted array, looked up per message."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scheduler.caps import PAGE, CapSummary, phone_key
from scheduler.config import CapConfig

PROMO = CapConfig(types=("promo",), max=2, days=7)
SURVEY = CapConfig(types=("viber_survey",), max=1, days=30)

phones = st.lists(st.integers(1_000_000, 999_999_999_999_999).map(lambda n: f"+{n}"),
                  max_size=300)


@given(inside=phones, outside=phones, set_limit=st.sampled_from([0, 1_000]))
def test_membership_is_exact(inside: list[str], outside: list[str], set_limit: int) -> None:
    """Exactly the phones given are in it, whatever their lengths (number order is not text
    order: +1... and +380... interleave), kept as a set or as sorted arrays."""
    summary = CapSummary.of([PROMO], lambda cap, after: inside if after == "" else [],
                            set_limit)
    for phone in inside:
        assert phone in summary
    for phone in set(outside) - set(inside):
        assert phone not in summary
    assert "not a phone" not in summary
    batch = outside + inside
    flags = summary.over(batch)
    if not inside:
        assert flags is None
    else:
        assert flags == [phone in set(inside) for phone in batch]


def test_pages_are_followed_until_a_short_one_and_caps_are_joined() -> None:
    """A full page asks for the next one after its last phone; every cap adds its phones."""
    asked: list[tuple[str, str]] = []
    full = [f"+38050{n:07d}" for n in range(PAGE)]

    def page(cap: CapConfig, after: str) -> list[str]:
        asked.append((cap.types[0], after))
        if cap is SURVEY:
            return ["+12125550000"]
        return full if after == "" else ["+380509999999"]

    summary = CapSummary.of([PROMO, SURVEY], page)
    assert asked == [("promo", ""), ("promo", full[-1]), ("viber_survey", "")]
    assert len(summary) == PAGE + 2
    assert "+380509999999" in summary and "+12125550000" in summary


@given(phones)
def test_phone_keys_keep_the_journals_text_order(listed: list[str]) -> None:
    """The journal pages phones in text order; their keys sort the same way, so a page is
    appended as it comes."""
    assert sorted(listed, key=phone_key) == sorted(listed)
