"""The package's shape, checked: no import cycles, and each storage driver stays in its backend.

Imports are read from the source (module level and inside functions alike), so a lazy import
that closes a cycle is caught too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "scheduler"


def module_name(path: Path) -> str:
    """``scheduler/journal/base.py`` -> ``scheduler.journal.base`` (a package is its __init__)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module of the package that ``path`` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("scheduler")}


def graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (names that are not modules dropped)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imports(path) & set(modules) - {name} for name, path in modules.items()}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the path that closes it, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node):], node]
        if node in done:
            return None
        for target in sorted(edges.get(node, ())):
            if (found := visit(target, [*path, node])) is not None:
                return found
        done.add(node)
        return None

    for start in sorted(edges):
        if (found := visit(start, [])) is not None:
            return found
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    """The checker itself can fail: a lazy two-module loop is reported."""
    assert cycle({"a": {"b"}, "b": {"a"}, "c": set()}) == ["a", "b", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_one_that_imports_it_back() -> None:
    """Data flows one way (files → models → plan → batches → API → journal → log)."""
    edges = graph()
    # a package's __init__ re-exports its modules, which import their siblings, not the package
    assert "scheduler.journal.sqlite" in edges["scheduler.journal"]
    assert cycle(edges) is None, " -> ".join(cycle(edges) or [])


def test_only_the_sqlite_backend_names_its_driver() -> None:
    """Nothing outside scheduler/journal/sqlite.py imports sqlite3 or catches its errors."""
    users = sorted(
        module_name(path) for path in PACKAGE.rglob("*.py")
        if "import sqlite3" in path.read_text("utf-8") or "sqlite3." in path.read_text("utf-8")
    )
    assert users == ["scheduler.journal.sqlite"]


def test_only_the_postgres_backend_names_its_driver() -> None:
    """Nothing outside scheduler/journal/postgres.py imports psycopg or catches its errors."""
    driver = re.compile(r"^\s*(import|from) psycopg\b|\bpsycopg\.", re.MULTILINE)
    users = sorted(
        module_name(path) for path in PACKAGE.rglob("*.py")
        if driver.search(path.read_text("utf-8"))
    )
    assert users == ["scheduler.journal.postgres"]


#: what storage may stand on: its own package and the leaf modules of names and records
STORAGE_FLOOR = {"scheduler.vocabulary", "scheduler.records", "scheduler.errors"}


def storage_reaches_up(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Each journal module -> the package's modules above storage that it imports."""
    return {
        module: above for module, targets in edges.items()
        if module == "scheduler.journal" or module.startswith("scheduler.journal.")
        if (above := {t for t in targets
                      if not t.startswith("scheduler.journal") and t not in STORAGE_FLOOR})
    }


def test_the_storage_check_can_fail() -> None:
    """A journal module that imports the config is reported."""
    edges = {"scheduler.journal.sqlite": {"scheduler.config", "scheduler.vocabulary"}}
    assert storage_reaches_up(edges) == {"scheduler.journal.sqlite": {"scheduler.config"}}


def test_storage_stands_at_the_bottom() -> None:
    """The journal imports nothing above it (no config, no CSV reader): its records come from
    `scheduler.records`, its location from the caller (`Config.journal_location`)."""
    assert storage_reaches_up(graph()) == {}


TESTS = Path(__file__).resolve().parent


def test_no_test_module_imports_another() -> None:
    """Helpers are shared through helper modules (`tests/*_helpers.py`, `tests/helpers.py`),
    never by one test module importing another (which runs its tests' module code twice and
    ties unrelated files together)."""
    importing = re.compile(r"^\s*(?:from|import)\s+(?:tests\.)?test_\w+", re.MULTILINE)
    offenders = sorted(path.name for path in TESTS.glob("*.py")
                       if importing.search(path.read_text("utf-8")))
    assert offenders == []
    assert importing.search("from tests.test_sender import KEY")  # the check can fail


#: the journal's own tests: the contract suite, each backend's own behaviour, copying and
#: schema upgrades (and this check, which names the classes)
JOURNAL_TESTS = {
    "test_journal_contract.py", "test_journal_sqlite.py", "test_journal_postgres.py",
    "test_journal_copy.py", "test_journal_upgrade_and_lock.py", "test_rolling_upgrade.py",
    "test_layout.py",
}
BACKEND_CLASS = re.compile(
    r"\b(?:SqliteConnection|SqliteWriter|SqliteJournal|PostgresStore|PostgresWriter"
    r"|PostgresJournal)\b",
)


def test_only_the_journals_own_tests_open_a_backend_class() -> None:
    """Every other test reaches the journal through the storage interface (`open_journal`,
    `tests/journal_helpers.py`), so what it checks holds on every backend and a backend's
    change does not break it; journal behaviour is checked on both by the contract suite."""
    offenders = sorted(path.name for path in TESTS.glob("*.py")
                       if path.name not in JOURNAL_TESTS
                       and BACKEND_CLASS.search(path.read_text("utf-8")))
    assert offenders == []
    assert BACKEND_CLASS.search("with SqliteConnection(path) as journal:")  # it can fail
