"""Read TOML files for validation: parsed data plus the line of every key, for precise errors.

`tomllib` gives neither line numbers nor duplicate-free guarantees about where a key was written,
so we keep a light line map (``"table.key" -> line``) from a scan of the text. It only has to be
right for the documents that `tomllib` accepted, and only for the simple shapes our files use
(top-level keys, ``[table]`` headers, ``key = value`` lines).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.errors import Problem

_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\s*(#.*)?$")
_ARRAY_HEADER = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)\s*=""")
_TOML_ERROR_AT = re.compile(r"\(at line (\d+), column (\d+)\)")


@dataclass(frozen=True)
class TomlDocument:
    """A parsed TOML file and where each of its keys was written."""

    path: Path
    data: dict[str, Any]
    lines: dict[str, int] = field(default_factory=dict)

    def line_of(self, dotted: str) -> int | None:
        """Line of ``dotted`` (e.g. ``"audience.csv"``), of its table, or None if absent."""
        while dotted:
            if dotted in self.lines:
                return self.lines[dotted]
            dotted = dotted.rpartition(".")[0]
        return None


def key_lines(text: str) -> dict[str, int]:
    """Map ``table.key`` (and ``table``) to the 1-based line where it is written."""
    lines: dict[str, int] = {}
    table = ""
    entries: dict[str, int] = {}  # entries so far of each array of tables ([[policy.caps]])
    for number, raw in enumerate(text.splitlines(), start=1):
        header = _ARRAY_HEADER.match(raw) or _HEADER.match(raw)
        if header:
            table = ".".join(p.strip().strip("\"'") for p in header.group(1).split("."))
            if header.re is _ARRAY_HEADER:  # its keys are "policy.caps.0.max", as pydantic says
                entries[table] = entries.get(table, -1) + 1
                lines.setdefault(table, number)
                table = f"{table}.{entries[table]}"
            lines.setdefault(table, number)
            continue
        key = _KEY.match(raw)
        if key:
            name = key.group(1).strip("\"'")
            lines.setdefault(f"{table}.{name}" if table else name, number)
    return lines


def read_toml(path: Path) -> TomlDocument:
    """Parse ``path``; raise `TomlProblem` with the line and column of a syntax error."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TomlProblem(Problem(path, None, None, f"cannot read file: {exc.strerror}")) from exc
    return parse_toml(path, raw)


def parse_toml(path: Path, raw: bytes) -> TomlDocument:
    """Parse bytes already read from ``path`` (so a caller can hash exactly what was parsed)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise TomlProblem(
            Problem(path, line, None, "file is not UTF-8 text: save it as UTF-8")
        ) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TomlProblem(_syntax_problem(path, text, str(exc))) from exc
    return TomlDocument(path, data, key_lines(text))


def _syntax_problem(path: Path, text: str, error: str) -> Problem:
    """tomllib's error as a `Problem` at its line, in words a marketer knows."""
    at = _TOML_ERROR_AT.search(error)
    message = _TOML_ERROR_AT.sub("", error).replace("(at end of document)", "").strip()
    lines = text.splitlines()
    line = int(at.group(1)) if at else _unclosed_quote_line(lines)
    source = lines[line - 1] if line is not None and 0 < line <= len(lines) else ""
    plain = _plain_words(message, source, lines[: line - 1] if line else [])
    where = f" (column {at.group(2)})" if at and plain is None else ""
    return Problem(path, line, None, f"TOML syntax error: {plain or message}{where}")


_DATE = re.compile(r"\d{4}-\d\d-\d\d")
_DUPLICATE_TABLE = re.compile(r"Cannot declare \((.*)\) twice")


def _plain_words(message: str, source: str, before: list[str]) -> str | None:
    """The fix for the common syntax errors (``source``: the line; ``before``: the lines
    above it), or None to keep tomllib's own message."""
    value = source.partition("=")[2].strip()
    if message in ("Illegal character '\\n'", "Unterminated string") or message.startswith(
        "Expected '\"'"
    ) or message == "Expected \"'\"":
        return "the text is missing its closing quote: end it with the same quote it starts with"
    if message == "Cannot overwrite a value":
        return _written_twice(source, before)
    if table := _DUPLICATE_TABLE.fullmatch(message):
        name = ".".join(part.strip(" '\"") for part in table.group(1).split(",") if part.strip())
        first = _first_line(before, lambda raw: _table_of(raw) == name)
        return (f"[{name}] is written twice{_also(first)}: keep one [{name}] line and put "
                "all its keys below it")
    if message == "Invalid value":
        if value[:1] in "“”‘’":
            return 'the text is in curly quotes (“ ”): write straight double quotes (")'
        return ('the value is not valid: text goes in double quotes (like "abc"); numbers, '
                "true/false and dates do not")
    if message in ("Expected newline or end of document after a statement",
                   "Invalid date or datetime"):
        if _DATE.match(value):
            return ("that is not a date and time this file can take: write it like "
                    "2026-12-01T09:00:00Z (a T between date and time, then Z for UTC)")
        return ("something follows the value on this line: text goes in double quotes, and "
                "each key = value on its own line")
    if message == "Expected '=' after a key in a key/value pair":
        return 'a key must be followed by = and its value, like ttl = 3600 or id = "abc"'
    if message == "Unclosed array":
        return 'a list is missing its closing ]: write it like ["Yes", "No"]'
    if message == "Unclosed inline table":
        return "a { … } is missing its closing }"
    if message == "Unescaped '\\' in a string":
        return ("a backslash in double quotes starts an escape: write \\\\ for one, or use "
                "single quotes ('C:\\data')")
    return None


def _written_twice(source: str, before: list[str]) -> str:
    """``send_at is written twice (also on line 2)``, for a key repeated in its table."""
    key = _KEY.match(source)
    if key is None:
        return "a key is written twice: keep one"
    name = key.group(1).strip("\"'")
    tables = [""]  # tables[n]: the table line n is in (0: above the first line)
    for raw in before:
        header = _table_of(raw)
        tables.append(tables[-1] if header is None else header)
    here = tables[-1]  # the repeated key's own line is in the table of the line above it

    def same(index: int, raw: str) -> bool:
        found = _KEY.match(raw)
        return tables[index + 1] == here and found is not None and (
            found.group(1).strip("\"'") == name)

    first = next((n + 1 for n, raw in enumerate(before) if same(n, raw)), None)
    return f"{name} is written twice{_also(first)}: keep one"


def _table_of(raw: str) -> str | None:
    """The table a ``[table]`` line opens, or None for any other line."""
    header = _HEADER.match(raw)
    if header is None or raw.lstrip().startswith("[["):
        return None
    return ".".join(p.strip().strip("\"'") for p in header.group(1).split("."))


def _first_line(lines: list[str], wanted: Callable[[str], bool]) -> int | None:
    return next((number for number, raw in enumerate(lines, start=1) if wanted(raw)), None)


def _also(line: int | None) -> str:
    return "" if line is None else f" (also on line {line})"


def _unclosed_quote_line(lines: list[str]) -> int | None:
    """The line of a text left open at the end of the file: the last with an odd number of
    double (or single) quotes."""
    odd = [n for n, raw in enumerate(lines, start=1) if raw.count('"') % 2 or raw.count("'") % 2]
    return odd[-1] if odd else None


class TomlProblem(ValueError):
    """A TOML file could not be read or parsed; carries the one `Problem` to report."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(problem.render())
