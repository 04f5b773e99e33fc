"""Exact duplicate detection over a stream in flat memory.

Plain sets of a million phones cost ~125 MB, so duplicates are found in two passes over the data:
pass 1 feeds every key to a fixed-size Bloom filter and keeps the keys it had (probably) seen
already, the *suspects*: the true repeats plus rare false positives. Pass 2 then answers "was
this key used before?" exactly, remembering only suspects, since a key that is not a suspect
occurs once. Memory is the filter plus O(duplicates), whatever the row count.
"""

from __future__ import annotations

from collections.abc import Iterable

#: 2**26 bits = 8 MiB: ~0.6% false positives at 2 million keys (1M rows with an id column)
DEFAULT_BITS = 1 << 26

#: the 28 ways to pick 2 distinct bits of a byte
_BIT_PAIRS = tuple((1 << a) | (1 << b) for a in range(8) for b in range(a + 1, 8))


class BloomFilter:
    """A set that may answer "seen" for a key it never saw, and never "unseen" for one it did.

    Blocked layout: a key's two bits live in one byte, picked by one ``hash()``. That is a few
    bytecodes a key (pass 1 is pure Python) for about twice the false positives of two
    independent bits, which only cost a slightly larger suspects set.
    """

    __slots__ = ("_bytes",)

    def __init__(self, bits: int = DEFAULT_BITS) -> None:
        if bits < 8 or bits & (bits - 1):
            raise ValueError(f"bits must be a power of two of at least 8, not {bits}")
        self._bytes = bytearray(bits >> 3)

    def add(self, key: str) -> bool:
        """Add ``key``; True when it may have been added before (always, if it was)."""
        return bool(self.repeated((key,)))

    def repeated(self, keys: Iterable[str]) -> set[str]:
        """Add every key; return those that may have been added before (all that were)."""
        # hash() is randomised per process, which is fine: both passes run in one process.
        # The byte comes from the low bits, the pair from bits 40+: independent of each other.
        table, mask, pairs = self._bytes, len(self._bytes) - 1, _BIT_PAIRS
        found: set[str] = set()
        for key in keys:
            h = hash(key)
            i, pair = h & mask, pairs[(h >> 40) % 28]
            old = table[i]
            if old & pair == pair:
                found.add(key)
            else:
                table[i] = old | pair
        return found


class Dedupe:
    """First-occurrence bookkeeping for pass 2, exact, holding only pass 1's suspects."""

    __slots__ = ("_first", "suspects")

    def __init__(self, suspects: Iterable[str]) -> None:
        self.suspects = frozenset(suspects)
        self._first: dict[str, int] = {}

    @classmethod
    def scan(cls, keys: Iterable[str], bits: int = DEFAULT_BITS) -> Dedupe:
        """Pass 1: stream every key once through a Bloom filter of ``bits`` bits."""
        return cls(BloomFilter(bits).repeated(keys))

    def suspects_of(self, prefix: str) -> frozenset[str]:
        """The suspects that start with ``prefix``, without it: cheaper to test than a prefixed key
        built per row."""
        size = len(prefix)
        return frozenset(key[size:] for key in self.suspects if key.startswith(prefix))

    def first_line(self, key: str, line: int) -> int | None:
        """Register ``key`` at ``line``; the line it was first registered at, or None if new.

        Exact as long as pass 2 registers no key that pass 1 did not scan.
        """
        if key not in self.suspects:
            return None
        first = self._first.get(key)
        if first is None:
            self._first[key] = line
        return first
