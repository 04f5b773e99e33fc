"""A day run's audience sieved before the row rules (SPEC §13.2): the lines whose date says
another day are dropped in C, so only the rest (the day's rows, the bad dates) are checked.

A day's run takes a few rows in a thousand; reading the others through `RowChecker` costs a
second a million rows in Python for rows it only counts as another day's. A line is dropped
only when its bytes settle that verdict: the file has no quote character (so a line is one row,
its cells split at the delimiter), and its date cell is exactly a real ``YYYY-MM-DD`` whose
month and day no row due that day can have. Everything else stays, in order, and the row rules
see it as before; the dropped lines only leave gaps that `Sieved.line_num` adds back, so skips
keep their file lines. The checker's row numbers (the id of an audience without ``id_column``)
count the kept rows only: unique all the same, so the counts do not change.
"""

from __future__ import annotations

import bisect
import csv
import io
import re
from collections.abc import Iterator
from datetime import date

from scheduler.campaign import Campaign
from scheduler.csvfile import CsvProblem, Table, line_breaks
from scheduler.trigger_scan import due_table

#: month-days that are always real (29 February is a date in leap years only: never dropped)
_REAL_DAY = (rb"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
             rb"|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)")


def other_day_lines(campaign: Campaign, delimiter: str, date_at: int) -> re.Pattern[bytes]:
    """Runs of whole lines whose cell ``date_at`` is a real date no row due in the day run
    ``campaign`` can have (its month-day differs from every due one)."""
    day = campaign.trigger_day
    assert day is not None
    due = sorted({(key.month, key.day) if isinstance(key, date) else key
                  for key in due_table(campaign, [day])})
    not_due = b"".join(rb"(?!%02d-%02d)" % month_day for month_day in due)
    sep = re.escape(delimiter.encode())
    # a cell the csv module refuses as too long stays, to be reported as the row checker does
    most = csv.field_size_limit() - 1
    cell = rb'[^"\r\n' + sep + rb"]{0,%d}" % most
    line = (rb"(?:" + cell + sep + rb"){%d}" % date_at
            + rb"(?!0000)[0-9]{4}-" + not_due + _REAL_DAY
            + rb"(?:" + sep + rb'[^"\r\n]{0,%d})?\r?(?:\n|\Z)' % most)
    return re.compile(rb"^(?:" + line + rb")+", re.MULTILINE)


class Sieved:
    """The kept lines read by the csv module, as a `RowSource` whose ``line_num`` is the
    file's: each run of dropped lines is added back after the kept line it followed."""

    def __init__(self, table: Table, gaps: list[tuple[int, int]]) -> None:
        self.table = table
        self._after = [after for after, _ in gaps]
        self._dropped = [0]
        for _, lines in gaps:
            self._dropped.append(self._dropped[-1] + lines)

    @property
    def line_num(self) -> int:
        """The file's line before the next kept row's (the last line read, and the dropped
        lines after it)."""
        kept = self.table.reader.line_num
        return kept + self._dropped[bisect.bisect_right(self._after, kept)]

    def __iter__(self) -> Iterator[list[str]]:
        return iter(self.table.reader)


def sieve(
    campaign: Campaign, data: bytes, delimiter: str, date_at: int, header: list[str],
) -> Sieved | None:
    """The day run's kept rows of the audience ``data`` (its whole file), positioned after
    the header; None when it cannot be sieved (it has quotes, or its header would change)."""
    if b'"' in data:  # a quoted cell may hold delimiters and line breaks: lines are not rows
        return None
    gaps: list[tuple[int, int]] = []
    kept_lines, kept_to = 0, 0

    def drop(run: re.Match[bytes]) -> bytes:
        nonlocal kept_lines, kept_to
        start, end = run.span()
        kept_lines += line_breaks(data, kept_to, start)
        kept_to = end
        ends_line = data.endswith(b"\n", start, end)  # else the file's last line, unended
        gaps.append((kept_lines, data.count(b"\n", start, end) + (not ends_line)))
        return b""

    kept = other_day_lines(campaign, delimiter, date_at).sub(drop, data)
    text = kept.decode("utf-8-sig", "surrogateescape")
    try:
        table = Table(io.StringIO(text, newline=""), delimiter)
    except CsvProblem:
        return None  # the header line was dropped (a date for a column name): read it all
    if table.header != header:
        return None
    return Sieved(table, gaps)
