"""Read TOML files for validation: parsed data plus the line of every key, for precise errors.

`tomllib` gives neither line numbers nor duplicate-free guarantees about where a key was written,
so we keep a light line map (``"table.key" -> line``) from a scan of the text. It only has to be
right for the documents that `tomllib` accepted, and only for the simple shapes our files use
(top-level keys, ``[table]`` headers, ``key = value`` lines).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.errors import Problem

_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\s*(#.*)?$")
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
    for number, raw in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(raw)
        if header and not raw.lstrip().startswith("[["):
            table = ".".join(p.strip().strip("\"'") for p in header.group(1).split("."))
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
        message = str(exc)
        at = _TOML_ERROR_AT.search(message)
        error_line = int(at.group(1)) if at else None
        message = _TOML_ERROR_AT.sub("", message).strip()
        if at:
            message += f" (column {at.group(2)})"
        raise TomlProblem(
            Problem(path, error_line, None, f"TOML syntax error: {message}")
        ) from exc
    return TomlDocument(path, data, key_lines(text))


class TomlProblem(ValueError):
    """A TOML file could not be read or parsed; carries the one `Problem` to report."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(problem.render())
