"""`scheduler.csvfile`'s reading from a line in the middle of a file (`line_start`,
`rows_after`): a helper that counts the end of a big audience starts there, so it must see
the very rows, with the very line numbers, that one reader of the whole file sees."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from scheduler import csvfile
from scheduler.csvfile import line_breaks, line_start, rows_after

CELLS = st.sampled_from(["a", "", "b c", '"q"', "x\ny", "x\r\ny", "x\ry", "é", ";"])
ENDINGS = st.sampled_from(["\n", "\r\n", "\r"])


def whole_reading(path: Path) -> list[tuple[int, list[str]]]:
    """Every row of the file with the line the reader is at after it, read from the start."""
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as file:
        reader = csv.reader(file, delimiter=",", strict=True)
        return [(reader.line_num, row) for row in reader]


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(CELLS, min_size=1, max_size=3), max_size=12),
       endings=st.lists(ENDINGS, min_size=1, max_size=12),
       chunk=st.sampled_from([1, 2, 7, 1 << 20]))
@example(rows=[["a"], [""]], endings=["\r", "\r\n"], chunk=1)  # "\r\r\n": found in CI
def test_reading_from_any_rows_end_gives_the_rest_with_the_files_line_numbers(
    tmp_path: Path, rows: list[list[str]], endings: list[str], chunk: int,
) -> None:
    """Rows with quoted line breaks of every kind, lines ended by \\n, \\r\\n or \\r (a
    \\r\\n split across the read chunks too): from the end of any row, `rows_after` gives
    the rows the whole reading gives after it, at the same line numbers."""
    text = "".join(
        ",".join(f'"{cell}"' if any(c in cell for c in '"\r\n,') else cell
                 for cell in (c.replace('"', '""') for c in row)) + endings[n % len(endings)]
        for n, row in enumerate(rows))
    path = tmp_path / "people.csv"
    path.write_bytes(text.encode())
    whole = whole_reading(path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(csvfile, "_CHUNK", chunk)
        for done in range(len(whole) + 1):
            lines = whole[done - 1][0] if done else 0
            with rows_after(path, ",", lines) as rest:
                assert [(rest.line_num, row) for row in rest] == whole[done:]


def test_line_start_counts_breaks_as_the_csv_module_does(tmp_path: Path) -> None:
    """``\\r\\n`` is one break, a lone ``\\r`` or ``\\n`` one each; past the last
    break, the file's end."""
    path = tmp_path / "lines.csv"
    data = b"a\r\nb\rc\nd\r\n\r\ne"
    path.write_bytes(data)
    assert line_breaks(data) == 5
    assert [line_start(path, n) for n in range(7)] == [0, 3, 5, 7, 10, 12, 13]
    path.write_bytes(b"a\r\r\nb")  # "\r" then "\r\n", read a byte at a time
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(csvfile, "_CHUNK", 1)
        assert [line_start(path, n) for n in range(4)] == [0, 2, 4, 5]
