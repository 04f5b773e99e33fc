"""Exact duplicate detection over a stream in flat memory.

Plain sets of a million phones cost ~125 MB, so duplicates are found in two passes over the data:
pass 1 feeds every key to a Bloom filter and keeps the keys it had (probably) seen already, the
*suspects*: the true repeats plus rare false positives. Pass 2 then answers "was this key used
before?" exactly, remembering only suspects, since a key that is not a suspect occurs once.
Memory is the filter (sized from the expected key count, capped) plus O(suspects).

Keys come in *columns* (the audience has a phone column and maybe an id column), each with its
own filter and suspects, so equal text in two columns is never mistaken for a repeat.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Container, Iterable, Iterator, Sequence
from operator import itemgetter

#: bits a key gets in the filter when its size is chosen from the expected key count: ~0.5%
#: false positives (3 bits in a 32-bit word), so ~5,000 suspects a million distinct keys
BITS_PER_KEY = 16
#: the smallest and largest filter `filter_bits` chooses: 8 KiB and 16 MiB a column. At the
#: cap, 10,000,000 keys still get 13 bits each (~0.7% false positives, ~70,000 suspects).
MIN_BITS = 1 << 16
MAX_BITS = 1 << 27
#: the size used when no key count is known (tests, callers that do not count): 8 MiB
DEFAULT_BITS = 1 << 26

_WORD = 32
_PATTERN_BITS = 12


def _patterns() -> tuple[int, ...]:
    """4096 words of 3 distinct bits each: a key sets one of them in one word of the filter."""
    rng = random.Random(_WORD)  # fixed: the layout is the same in every process
    return tuple(
        sum(1 << bit for bit in rng.sample(range(_WORD), 3)) for _ in range(1 << _PATTERN_BITS)
    )


_BIT_PATTERNS = _patterns()
_PATTERN_MASK = (1 << _PATTERN_BITS) - 1


def filter_bits(keys: int) -> int:
    """The filter size for about ``keys`` distinct keys: a power of two of ``BITS_PER_KEY``
    bits a key, between ``MIN_BITS`` and ``MAX_BITS``."""
    wanted = max(keys, 1) * BITS_PER_KEY
    return min(max(1 << (wanted - 1).bit_length(), MIN_BITS), MAX_BITS)


class BloomFilter:
    """A set that may answer "seen" for a key it never saw, and never "unseen" for one it did.

    Blocked layout: a key's three bits live in one 32-bit word, picked with the word by one
    ``hash()``. That is a few bytecodes a key (pass 1 is pure Python) for somewhat more false
    positives than three independent bits, which only cost a slightly larger suspects set.
    """

    __slots__ = ("_words",)

    def __init__(self, bits: int = DEFAULT_BITS) -> None:
        if bits < 8 or bits & (bits - 1):
            raise ValueError(f"bits must be a power of two of at least 8, not {bits}")
        self._words = array("I", bytes(max(bits >> 3, 4)))

    def add(self, key: str) -> bool:
        """Add ``key``; True when it may have been added before (always, if it was)."""
        return bool(self.repeated((key,)))

    def repeated(self, keys: Iterable[str]) -> set[str]:
        """Add every key; return those that may have been added before (all that were)."""
        found: set[str] = set()
        self._scan(keys, found)
        return found

    def _scan(self, keys: Iterable[str], found: set[str]) -> None:
        # hash() is randomised per process, which is fine: both passes run in one process.
        # The word comes from the low bits, the pattern from bits 40+: independent of each other.
        words, mask = self._words, len(self._words) - 1
        patterns, pick = _BIT_PATTERNS, _PATTERN_MASK
        for key in keys:
            h = hash(key)
            i, bits = h & mask, patterns[(h >> 40) & pick]
            old = words[i]
            if old & bits == bits:
                found.add(key)
            else:
                words[i] = old | bits


def _scan_pairs(
    pairs: Iterable[tuple[str, str]], first: BloomFilter, second: BloomFilter,
    found: tuple[set[str], set[str]],
) -> None:
    """`BloomFilter._scan` over two columns at once, each cell stripped (the hot loop of pass 1
    for an audience with an id column: one function, local names, no call a key)."""
    words_a, mask_a = first._words, len(first._words) - 1
    words_b, mask_b = second._words, len(second._words) - 1
    found_a, found_b = found
    patterns, pick = _BIT_PATTERNS, _PATTERN_MASK
    for a, b in pairs:
        a = a.strip()
        h = hash(a)
        i, bits = h & mask_a, patterns[(h >> 40) & pick]
        old = words_a[i]
        if old & bits == bits:
            found_a.add(a)
        else:
            words_a[i] = old | bits
        b = b.strip()
        h = hash(b)
        i, bits = h & mask_b, patterns[(h >> 40) & pick]
        old = words_b[i]
        if old & bits == bits:
            found_b.add(b)
        else:
            words_b[i] = old | bits


class ColumnScan:
    """Pass 1 over one or two columns of a table, each cell stripped of whitespace, fed in as
    many parts as the caller likes: each column's suspects, through a Bloom filter of ``bits``
    bits per column.

    A row too short to have every column is left out: the caller's pass 2 must register no key
    of such a row. An exception of a ``stop`` type from the rows ends the scan (what was read
    so far counts): pass 2 must then stop at that row too.
    """

    __slots__ = ("_columns", "_filters", "found")

    def __init__(self, columns: Sequence[int], bits: int) -> None:
        if not 1 <= len(columns) <= 2:
            raise ValueError(f"one or two columns, not {len(columns)}")
        self._columns = tuple(columns)
        self._filters = [BloomFilter(bits) for _ in columns]
        self.found: tuple[set[str], ...] = tuple(set() for _ in columns)

    def feed(self, rows: Iterator[Sequence[str]], stop: tuple[type[Exception], ...] = ()) -> bool:
        """Scan ``rows`` to their end (True), or until a ``stop`` exception (False)."""
        columns, filters, found = self._columns, self._filters, self.found
        while True:
            try:
                if len(columns) == 1:
                    keys = map(str.strip, map(itemgetter(columns[0]), rows))
                    filters[0]._scan(keys, found[0])
                else:
                    pairs = map(itemgetter(*columns), rows)
                    _scan_pairs(pairs, filters[0], filters[1], (found[0], found[1]))
            except IndexError:
                continue  # a short row (``itemgetter`` failed on it); the scan goes on after it
            except stop:
                return False
            return True


def scan_columns(
    rows: Iterator[Sequence[str]], columns: Sequence[int], bits: int,
    stop: tuple[type[Exception], ...] = (),
) -> tuple[set[str], ...]:
    """`ColumnScan` of all of ``rows`` at once: each column's suspects."""
    scan = ColumnScan(columns, bits)
    scan.feed(rows, stop)
    return scan.found


class _Everything:
    """The suspects before pass 1 is done: every key must be looked up."""

    __slots__ = ()

    def __contains__(self, key: object) -> bool:
        return True


_EVERYTHING = _Everything()


class Dedupe:
    """First-occurrence bookkeeping for pass 2, exact, holding only pass 1's suspects.

    One suspects table per column: each suspect maps to the line it was first registered at
    (None until pass 2 meets it), so the table is also pass 2's memory.

    Pass 2 may also start before pass 1 is done (`remember_all`): every key it registers is
    then kept, which is exact without any suspects but costs memory per row, until `narrow`
    hands it pass 1's suspects.
    """

    __slots__ = ("_all", "_first")

    def __init__(self, *suspects: Iterable[str]) -> None:
        self._first: tuple[dict[str, int | None], ...] = tuple(
            dict.fromkeys(column) for column in suspects
        )
        self._all = False

    @classmethod
    def remember_all(cls, columns: int) -> Dedupe:
        """Before pass 1's suspects are known: every key of ``columns`` columns is a suspect,
        remembered once registered (`narrow` ends it)."""
        dedupe = cls(*([()] * columns))
        dedupe._all = True
        return dedupe

    def narrow(self, *suspects: Iterable[str]) -> None:
        """Pass 1's suspects (of every row, also those pass 2 has met): keep only theirs.

        Exact: a key that is not a suspect occurs once in the whole file, so no later row can
        repeat it; a suspect keeps the first line it was registered at, if any."""
        if len(suspects) != len(self._first):
            raise ValueError(f"{len(self._first)} columns of suspects, not {len(suspects)}")
        self._first = tuple(
            {key: first.get(key) for key in column}
            for first, column in zip(self._first, suspects, strict=True)
        )
        self._all = False

    @classmethod
    def scan(cls, keys: Iterable[str], bits: int = DEFAULT_BITS) -> Dedupe:
        """Pass 1 over a single column of keys, through a Bloom filter of ``bits`` bits."""
        return cls(BloomFilter(bits).repeated(keys))

    @classmethod
    def scan_rows(
        cls, rows: Iterator[Sequence[str]], columns: Sequence[int], bits: int,
        stop: tuple[type[Exception], ...] = (),
    ) -> Dedupe:
        """Pass 1 over one or two columns of a table: `scan_columns`' suspects."""
        return cls(*scan_columns(rows, columns, bits, stop))

    def suspects(self, column: int = 0) -> Container[str]:
        """The keys of ``column`` that pass 2 must look up (every key not in it is new)."""
        return _EVERYTHING if self._all else self._first[column]

    def count(self, column: int = 0) -> int:
        """How many suspects ``column`` has (the true repeats plus false positives)."""
        return len(self._first[column])

    def first_line(self, key: str, line: int, column: int = 0) -> int | None:
        """Register ``key`` at ``line``; the line it was first registered at, or None if new.

        Exact as long as pass 2 registers no key that pass 1 did not scan.
        """
        first = self._first[column]
        if key not in first:
            if self._all:
                first[key] = line
            return None
        seen = first[key]
        if seen is None:
            first[key] = line
        return seen
