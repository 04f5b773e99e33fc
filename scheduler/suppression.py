"""The suppression list: phones that get no promo or survey messages (SPEC §5).

A file of opt-outs, one number a line or a CSV with a ``phone`` column, read into a sorted array
of integers (8 bytes a number) that the audience reader asks about each row's phone.
"""

from __future__ import annotations

import csv
from array import array
from bisect import bisect_left
from collections.abc import Container, Iterator
from pathlib import Path

from scheduler.csvfile import EXCEL_SEP, CsvProblem, cell, open_table, os_message, scan_bytes, sniff
from scheduler.errors import ConfigError, Problem
from scheduler.phones import E164, EXAMPLE_PHONE, SEPARATORS

#: suppression lists up to this size are also held as a set of E.164 strings (~9 MB at most)
SMALL_SUPPRESSION = 100_000
#: bad entries listed with their line (the rest are counted)
SHOWN = 5


def _number(text: str) -> int | None:
    """A phone as the integer of its digits, if it is an international number; else None.

    Generous on purpose: "+38 050 123-45-67", "00380501234567" and "380501234567" all match
    +380501234567, because missing an opt-out is worse than skipping one message too many.
    """
    compact = SEPARATORS.sub("", text)
    if compact.startswith("+"):
        compact = compact[1:]
    elif compact.startswith("00"):
        compact = compact[2:]
    if not (compact.isascii() and compact.isdigit()) or compact.startswith("0"):
        return None
    return int(compact) if 7 <= len(compact) <= 15 else None


class Suppression:
    """The opt-out list: phones that get no promo or survey messages (SPEC §5).

    Held as a sorted array of 64-bit integers (8 bytes a number) so a large list stays small.
    """

    __slots__ = ("_e164", "_numbers")

    def __init__(self, numbers: array[int] | None = None) -> None:
        self._numbers = numbers if numbers is not None else array("q")
        self._e164: Container[str] | None = None

    def e164_lookup(self) -> Container[str]:
        """What the audience reader asks, with E.164 phones only: the list as a set of E.164
        strings while it is small (a look-up is a hash, ~10x cheaper than parsing the phone and
        a binary search), else the list itself."""
        if self._e164 is None:
            lookup: Container[str] = self
            if len(self._numbers) <= SMALL_SUPPRESSION:
                # "+" and the number is the phone's only E.164 spelling (no leading zero)
                lookup = frozenset(f"+{n}" for n in self._numbers)
            self._e164 = lookup
        return self._e164

    @classmethod
    def load(cls, path: Path | None) -> Suppression:
        """Read a CSV with a ``phone`` column, or one number a line (``#`` starts a comment)."""
        if path is None:
            return cls()
        try:
            scan_bytes(path)
            numbers = _read_suppression(path)
        except OSError as exc:
            raise _suppression_error(path, None, os_message(path, exc)) from None
        except CsvProblem as exc:
            raise _suppression_error(path, exc.line, exc.message) from None
        return cls(_sorted_unique(numbers))

    def __contains__(self, phone: object) -> bool:
        numbers = self._numbers
        if not numbers or not isinstance(phone, str):
            return False
        # The audience reader asks with E.164 phones: parse those without the regex.
        number = int(phone) if E164.fullmatch(phone) else _number(phone)
        if number is None:
            return False
        i = bisect_left(numbers, number)
        return i < len(numbers) and numbers[i] == number

    def __len__(self) -> int:
        return len(self._numbers)


def _suppression_error(path: Path, line: int | None, message: str) -> ConfigError:
    return ConfigError([Problem(path, line, "paths.suppression", message)])


def _sorted_unique(numbers: array[int]) -> array[int]:
    result = array("q")
    previous = -1
    for number in sorted(numbers):
        if number != previous:
            result.append(number)
            previous = number
    return result


class _BadEntries:
    """Collects suppression entries that are not phone numbers, to report them all at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[Problem] = []
        self.count = 0

    def add(self, line: int, value: str) -> None:
        """Note one bad entry (the first few are kept with their line)."""
        self.count += 1
        if len(self.problems) < SHOWN:
            message = f'"{value[:40]}" is not a phone number: write it as {EXAMPLE_PHONE}'
            self.problems.append(Problem(self.path, line, "paths.suppression", message))

    def raise_if_any(self) -> None:
        """One `ConfigError` for every bad entry noted, if there were any."""
        if not self.count:
            return
        problems = list(self.problems)
        if self.count > len(problems):
            more = f"{self.count - len(problems)} more entries are not phone numbers"
            problems.append(Problem(self.path, None, "paths.suppression", more))
        raise ConfigError(problems)


def _read_suppression(path: Path) -> array[int]:
    """Every number in the list, in file order; bad entries raise one `ConfigError`."""
    bad = _BadEntries(path)
    numbers: array[int] = array("q")
    for line, value in _suppression_entries(path):
        number = _number(value)
        if number is not None:
            numbers.append(number)
        elif value:
            bad.add(line, value)
    bad.raise_if_any()
    return numbers


def _phone_column(header: list[str]) -> int | None:
    lowered = [name.lower() for name in header]
    return lowered.index("phone") if "phone" in lowered else None


def _suppression_entries(path: Path) -> Iterator[tuple[int, str]]:
    """(line, value) of each entry: a CSV whose first line names a ``phone`` column, else lines."""
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline=None) as file:
        lines = (text for text in file if text.strip() and not EXCEL_SEP.fullmatch(text))
        first = next(lines, "")
    if _phone_column(next(csv.reader([first], delimiter=sniff(first)), [])) is None:
        yield from _plain_entries(path)
        return
    with open_table(path, None) as table:
        phone = _phone_column(table.header)
        assert phone is not None  # the same first line, parsed again
        for line, row in table.rows():
            yield line, cell(row, phone)


def _plain_entries(path: Path) -> Iterator[tuple[int, str]]:
    """(line, value) of a one-number-a-line list, skipping blank lines and ``#`` comments."""
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline=None) as file:
        for line, text in enumerate(file, 1):
            value = text.strip()
            if value and not value.startswith("#") and not EXCEL_SEP.fullmatch(value):
                yield line, value
