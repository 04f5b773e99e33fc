"""Reading a CSV file safely: bytes checked, delimiter sniffed, rows with their line numbers.

The audience reader and the suppression list both read CSVs people export from spreadsheets.
Every problem is a `CsvProblem` at the physical line where it is (UTF-16 files, bytes that are
not UTF-8, unclosed quotes, an empty file), which each caller turns into its own error.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

DELIMITERS = (",", ";", "\t")
#: the first line Excel writes to name a CSV's delimiter: ``sep=;``
EXCEL_SEP = re.compile(r'"?sep=([^"\r\n])"?\s*')
_CHUNK = 1 << 20
_NUL = "NUL bytes (is it UTF-16?): save the file as CSV UTF-8"
_NOT_UTF8 = "not UTF-8 text: save the file as CSV UTF-8"
_EMPTY = "is empty: it needs a header line with the column names"
_CHANGED = "changed while it was being read: check again once it is completely written"

#: what changes when a file is replaced or rewritten: device, inode, size, mtime
Signature = tuple[int, int, int, int]


class CsvProblem(ValueError):
    """A problem with a CSV file's content, at a physical line when known.

    Callers turn it into their own error (`CampaignError` or `ConfigError`).
    """

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message

    @classmethod
    def unreadable(cls, line: int, exc: csv.Error) -> CsvProblem:
        """The csv module could not read the row starting at ``line``."""
        return cls(line, csv_message(exc))

    @classmethod
    def changed(cls) -> CsvProblem:
        """The file is not the one whose bytes were checked (still being written, replaced)."""
        return cls(None, _CHANGED)


def _signature(fd: int) -> Signature:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def read_bytes(path: Path) -> tuple[Signature, bytes]:
    """The whole file's bytes, and its signature when they were read."""
    with path.open("rb") as raw:
        return _signature(raw.fileno()), raw.read()


def clean_bytes(data: bytes) -> bool:
    """The bytes `scan_bytes` accepts: UTF-8 without NUL bytes."""
    if b"\0" in data:
        return False
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _line_at(path: Path, offset: int) -> int:
    """The physical line (1-based; ``\\n``, ``\\r\\n`` and a lone ``\\r`` end lines) of a byte."""
    breaks, left, last = 0, offset, b""
    with path.open("rb") as raw:
        while left > 0 and (chunk := raw.read(min(_CHUNK, left))):
            breaks += chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n")
            breaks -= last == b"\r" and chunk[:1] == b"\n"
            left -= len(chunk)
            last = chunk[-1:]
    return breaks + 1


def scan_bytes(path: Path) -> tuple[Signature, int]:
    """Check the whole file is UTF-8 without NUL bytes (fast, in C); return its signature and
    about how many lines it has (to size pass 1's filters)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = 0
    with path.open("rb") as raw:
        signature = _signature(raw.fileno())
        while chunk := raw.read(_CHUNK):
            lines += max(chunk.count(b"\n"), chunk.count(b"\r"))
            nul = chunk.find(b"\0")
            if nul >= 0:
                raise CsvProblem(_line_at(path, offset + nul), _NUL)
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, offset - pending + exc.start) from None
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, offset - len(exc.object) + exc.start) from None
    return signature, lines + 1


def line_breaks(data: bytes, start: int = 0, end: int | None = None) -> int:
    """Line breaks in ``data[start:end]`` as the csv reader counts them: ``\\n``, ``\\r`` or
    ``\\r\\n`` (counted in place)."""
    end = len(data) if end is None else end
    return (data.count(b"\n", start, end) + data.count(b"\r", start, end)
            - data.count(b"\r\n", start, end))


_BREAK = re.compile(rb"\r\n|\r|\n")


def line_start(path: Path, lines: int) -> int:
    """The byte offset at which line ``lines + 1`` of the file starts: after its first
    ``lines`` line breaks as the csv reader counts them (a row that ends there is whole, so
    a reader may start at it). The file's end when it has fewer."""
    seen = offset = 0
    with path.open("rb") as raw:
        while lines > seen and (chunk := raw.read(_CHUNK)):
            while chunk.endswith(b"\r") and (more := raw.read(1)):
                chunk += more  # a "\r\n" across chunks is one break ("\r\r\n" two)
            count = line_breaks(chunk)
            if seen + count >= lines:
                for found in _BREAK.finditer(chunk):
                    seen += 1
                    if seen == lines:
                        return offset + found.end()
            seen += count
            offset += len(chunk)
    return offset


class RowsAfter:
    """The rows of a CSV file positioned at the start of a line (`rows_after`), read as
    `open_table` reads them, with the file's line numbers: ``line_num`` counts the
    ``lines_before`` too. The file must be open for as long as its rows are read."""

    def __init__(self, file: TextIO, delimiter: str, lines_before: int) -> None:
        self._reader = csv.reader(file, delimiter=delimiter, strict=True)
        self._before = lines_before

    @property
    def line_num(self) -> int:
        """The last line read, counted from the file's start."""
        return self._reader.line_num + self._before

    def __iter__(self) -> Iterator[list[str]]:
        return iter(self._reader)


@contextmanager
def rows_after(path: Path, delimiter: str, lines: int) -> Iterator[RowsAfter]:
    """The rows after the file's first ``lines`` lines (`RowsAfter`), without reading those:
    a helper that counts the end of a big audience starts there."""
    offset = line_start(path, lines)
    with path.open("rb") as raw:
        raw.seek(offset)
        # as `open_table` decodes (no BOM can be there: the file's start is behind)
        file = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
        try:
            yield RowsAfter(file, delimiter, lines)
        finally:
            file.detach()  # the raw file is closed by its own `with`


def _not_utf8(path: Path, offset: int) -> CsvProblem:
    return CsvProblem(_line_at(path, offset), _NOT_UTF8)


def sniff(line: str) -> str:
    """The delimiter among , ; and tab that splits the header line into the most columns."""
    return max(DELIMITERS, key=lambda d: len(next(csv.reader([line], delimiter=d), [])))


class Table:
    """An open CSV file: its header (read on creation) and a stream of its non-blank rows."""

    def __init__(self, file: TextIO, delimiter: str | None) -> None:
        self._file = file
        first = ""
        while not first.strip() and (text := file.readline()):
            first = text
        if not first.strip():
            raise CsvProblem(None, _EMPTY)
        excel = EXCEL_SEP.fullmatch(first.rstrip("\r\n"))
        if excel is not None:  # Excel's "sep=;": the delimiter, then the real header line
            first = ""
            while not first.strip() and (text := file.readline()):
                first = text
        file.seek(0)
        self.delimiter = delimiter or (excel.group(1) if excel else sniff(first))
        self.reader = csv.reader(file, delimiter=self.delimiter, strict=True)
        row = self._next_row()
        while not has_values(row) or excel is not None:
            if has_values(row):
                excel = None  # that was the sep= line: the csv reader still counts it
            row = self._next_row()
        self.header = [name.strip() for name in row]
        self._check_header()

    def _next_row(self) -> list[str]:
        try:
            return next(self.reader)
        except StopIteration:  # nothing but delimiters: no column names
            raise CsvProblem(None, _EMPTY) from None
        except csv.Error as exc:
            raise CsvProblem.unreadable(self.reader.line_num, exc) from None

    def _check_header(self) -> None:
        line = self.reader.line_num
        text = "".join(self.header)
        if "\0" in text:
            raise CsvProblem(line, _NUL)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # surrogateescape'd bytes: the header is not UTF-8
            raise CsvProblem(line, _NOT_UTF8) from None

    def column(self, name: str) -> int | None:
        """Index of the first column called ``name``, None if there is none."""
        try:
            return self.header.index(name)
        except ValueError:
            return None

    def rows(self) -> Iterator[tuple[int, list[str]]]:
        """(first physical line, fields) of each data row; blank lines are not rows."""
        reader = self.reader
        start = reader.line_num + 1
        try:
            for row in reader:
                if row and (row[0].strip() or has_values(row)):
                    yield start, row
                start = reader.line_num + 1
        except csv.Error as exc:
            raise CsvProblem.unreadable(start, exc) from None

    def signature(self) -> Signature:
        """The open file's signature now."""
        return _signature(self._file.fileno())


def has_values(row: list[str]) -> bool:
    """The row has a cell that is not blank (a row of delimiters only is a blank line)."""
    return bool("".join(row).strip())


def cell(row: list[str], index: int) -> str:
    """The cell at ``index``, stripped; "" when the row is too short to have it."""
    return row[index].strip() if index < len(row) else ""


def csv_message(exc: csv.Error) -> str:
    """What the csv module's complaint means for the person who exported the file."""
    text = str(exc)
    if "end of data" in text:
        return "a quoted field is never closed: check the quotes from this line on"
    if "expected after" in text:
        return f'a quote ends a field too early ({text}): double the quotes inside a quoted field'
    return f"not readable as CSV ({text})"


@contextmanager
def open_table(path: Path, delimiter: str | None) -> Iterator[Table]:
    """Open a CSV (UTF-8, BOM or not) and read its header; raises OSError or `CsvProblem`."""
    # surrogateescape: undecodable bytes never raise mid-read; `scan_bytes` or the header
    # check report them with their line instead.
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as file:
        yield Table(file, delimiter)


def os_message(path: Path, exc: OSError) -> str:
    """Why ``path`` could not be read, and what to do about it."""
    if isinstance(exc, FileNotFoundError):
        return f"{path} does not exist: check the path (it is relative to the campaign file)"
    if isinstance(exc, IsADirectoryError):
        return f"{path} is a folder: name a CSV file"
    if isinstance(exc, PermissionError):
        return f"cannot read {path}: permission denied; let the scheduler's user read it"
    return f"cannot read {path}: {exc.strerror or exc}"
