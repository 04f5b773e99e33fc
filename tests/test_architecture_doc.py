"""docs/architecture.md's module map stays true: every module is in it, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAP = REPO / "docs" / "architecture.md"


def mapped(text: str) -> set[str]:
    """The modules the map's tables name (first column, ``scheduler/...py`` in backticks)."""
    return set(re.findall(r"^\| `(scheduler/[\w/]+\.py)` \|", text, flags=re.MULTILINE))


def test_the_reader_finds_table_rows_only() -> None:
    """Only a table row's first cell counts: a module named in prose is not mapped."""
    text = "| `scheduler/a.py` | x |\nsee `scheduler/b.py` here\n| y | `scheduler/c.py` |\n"
    assert mapped(text) == {"scheduler/a.py"}


def test_every_module_is_on_the_map_and_every_mapped_module_exists() -> None:
    """A module added without its line in the map (or removed and still mapped) fails."""
    modules = {
        path.relative_to(REPO).as_posix() for path in (REPO / "scheduler").rglob("*.py")
    }
    named = mapped(MAP.read_text("utf-8"))
    assert sorted(modules - named) == [], "add these to docs/architecture.md"
    assert sorted(named - modules) == [], "docs/architecture.md names modules that are gone"
