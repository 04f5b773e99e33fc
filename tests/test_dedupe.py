"""The two-pass duplicate finder: a Bloom filter for pass 1, exact answers in pass 2."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.dedupe import (
    DEFAULT_BITS,
    MAX_BITS,
    MIN_BITS,
    BloomFilter,
    Dedupe,
    filter_bits,
)


def reference_first_lines(keys: list[str]) -> list[int | None]:
    """What pass 2 must answer for each key: the index of its first use, None if new."""
    first: dict[str, int] = {}
    answers: list[int | None] = []
    for line, key in enumerate(keys):
        answers.append(first.get(key))
        first.setdefault(key, line)
    return answers


def dedupe_first_lines(keys: list[str], bits: int) -> list[int | None]:
    """The same answers from `Dedupe`, after its pass 1 over the same keys."""
    dedupe = Dedupe.scan(iter(keys), bits)
    return [dedupe.first_line(key, line) for line, key in enumerate(keys)]


def test_bloom_never_forgets_a_key() -> None:
    """Every key added before answers "seen": a Bloom filter has no false negatives."""
    bloom = BloomFilter(1 << 12)
    keys = [f"+38050{n:07d}" for n in range(5000)]
    for key in keys:
        bloom.add(key)
    assert all(bloom.add(key) for key in keys)


def test_bloom_answers_new_for_a_fresh_key() -> None:
    """A key never added to an empty filter is new."""
    assert BloomFilter().add("+380501234567") is False


@pytest.mark.parametrize("bits", [0, 7, 12, 1000])
def test_bloom_size_must_be_a_power_of_two(bits: int) -> None:
    """Sizes that are not a power of two (of at least one byte) are refused."""
    with pytest.raises(ValueError, match="power of two"):
        BloomFilter(bits)


def test_repeated_reports_every_key_seen_twice() -> None:
    """`repeated` returns the true repeats (plus maybe false positives), never fewer."""
    keys = ["a", "b", "a", "c", "b", "a"]
    assert {"a", "b"} <= BloomFilter().repeated(keys)


def test_suspects_are_few_with_the_default_filter() -> None:
    """100,000 distinct keys give next to no false positives with the default 8 MiB filter."""
    dedupe = Dedupe.scan((f"p+38050{n:07d}" for n in range(100_000)), DEFAULT_BITS)
    assert dedupe.count() < 100


@pytest.mark.parametrize("keys", [1, 1000, 1_000_000, 10_000_000, 10**9])
def test_filter_size_follows_the_key_count(keys: int) -> None:
    """About 16 bits a key, a power of two, never below 8 KiB nor above 16 MiB."""
    bits = filter_bits(keys)
    assert bits & (bits - 1) == 0
    assert MIN_BITS <= bits <= MAX_BITS
    assert bits == MAX_BITS or bits >= 16 * keys


def test_sized_filter_keeps_suspects_few() -> None:
    """A filter sized for the key count gives under 1% false positives (flat memory at 10M
    rows depends on it: suspects are kept exactly)."""
    keys = [f"+38050{n:07d}" for n in range(200_000)]
    dedupe = Dedupe.scan(iter(keys), filter_bits(len(keys)))
    assert dedupe.count() < 0.01 * len(keys)


def test_first_line_names_the_first_use() -> None:
    """The first use of a key is new; later uses get the first one's line."""
    keys = ["x", "y", "x", "x"]
    assert dedupe_first_lines(keys, DEFAULT_BITS) == [None, None, 0, 0]


def test_a_tiny_filter_still_gives_exact_answers() -> None:
    """With one byte of filter nearly every key is a false positive, and answers stay exact."""
    keys = [f"k{n % 50}" for n in range(0, 500, 3)] + [f"u{n}" for n in range(200)]
    dedupe = Dedupe.scan(iter(keys), 8)
    assert dedupe.count() > 100  # the filter really was saturated
    assert dedupe_first_lines(keys, 8) == reference_first_lines(keys)


@given(
    keys=st.lists(st.text(alphabet="ab+01", max_size=3), max_size=60),
    bits=st.sampled_from([8, 16, 64, 1 << 10, DEFAULT_BITS]),
)
def test_exact_for_any_keys_and_filter_size(keys: list[str], bits: int) -> None:
    """Whatever the keys and however small the filter, pass 2 matches plain sets."""
    assert dedupe_first_lines(keys, bits) == reference_first_lines(keys)


def test_keys_missed_by_pass_one_are_never_suspects() -> None:
    """Only keys pass 1 saw twice are remembered: a key new to both passes costs nothing."""
    dedupe = Dedupe.scan(iter(["a", "b"]), DEFAULT_BITS)
    assert dedupe.first_line("a", 1) is None
    assert dedupe.first_line("a", 2) is None  # pass 2 must only register pass 1's keys
    assert dedupe.count() == 0


def test_columns_are_separate() -> None:
    """The same text in two columns is no repeat; a repeat within either column is."""
    rows = iter([["a", "b"], ["b", "a"], ["c", "b"]])
    dedupe = Dedupe.scan_rows(rows, (0, 1), DEFAULT_BITS)
    assert "b" in dedupe.suspects(1)
    assert dedupe.count(0) == 0
    assert [dedupe.first_line("b", line, 1) for line in (1, 2, 3)] == [None, 1, 1]


def test_scan_rows_strips_cells_and_skips_short_rows() -> None:
    """Cells are compared stripped; rows without every column leave no key and do not end
    the scan."""
    rows = iter([[" x ", "1"], [], ["x"], ["y", "2"], ["x", "3"], ["y\t", "2"]])
    dedupe = Dedupe.scan_rows(rows, (0, 1), 8)
    assert "x" in dedupe.suspects(0)
    assert "y" in dedupe.suspects(0)
    assert "2" in dedupe.suspects(1)


class Broken(ValueError):
    """A row that cannot be read."""


def test_scan_rows_stops_at_a_stop_exception() -> None:
    """A ``stop`` exception ends pass 1; what was read before it counts."""
    def rows() -> Iterator[list[str]]:
        yield ["a"]
        yield ["a"]
        raise Broken

    dedupe = Dedupe.scan_rows(rows(), (0,), DEFAULT_BITS, stop=(Broken,))
    assert "a" in dedupe.suspects()


@given(
    rows=st.lists(st.lists(st.text(alphabet="ab +", max_size=3), max_size=3), max_size=40),
    bits=st.sampled_from([8, 64, DEFAULT_BITS]),
)
def test_scan_rows_is_exact_per_column(rows: list[list[str]], bits: int) -> None:
    """Per column, over the rows that have both columns: the same answers as plain sets."""
    dedupe = Dedupe.scan_rows(iter(rows), (0, 2), bits)
    full = [row for row in rows if len(row) > 2]
    for column, at in ((0, 0), (1, 2)):
        keys = [row[at].strip() for row in full]
        got = [dedupe.first_line(key, line, column) for line, key in enumerate(keys)]
        assert got == reference_first_lines(keys)
