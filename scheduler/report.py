"""`report`: outcomes per campaign from the journal, as a table, JSON or CSV.

With ``--status`` it lists the recipients in that outcome (full phones: the export is for
re-targeting), streamed so a million-row export needs no memory.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any, Literal, TextIO

import orjson
from rich.console import Console
from rich.table import Table

from scheduler.campaign import utc_text
from scheduler.journal import JournalReader
from scheduler.vocabulary import OUTCOMES, Outcome

Format = Literal["table", "json", "csv"]
SUMMARY_COLUMNS = (
    "campaign", "type", "state", "send_at", "recipients", "skipped",
    "sent", "rejected", "expired", "in_doubt", "pending",
)
NUMERIC_COLUMNS = frozenset(
    {"recipients", "valid", "skipped", "sent", "rejected", "expired", "in_doubt", "pending",
     "attempts"}
)
RECIPIENT_COLUMNS = ("campaign", "tracking_id", "phone", "status", "detail", "attempts")


def summary_rows(journal: JournalReader, campaign_id: str | None = None) -> list[dict[str, Any]]:
    """One row per campaign in the journal (or just ``campaign_id``): state and counts."""
    rows = []
    for record in journal.campaigns():
        if campaign_id is not None and record.id != campaign_id:
            continue
        counts = journal.counts(record.id)
        row: dict[str, Any] = {
            "campaign": record.id, "type": record.type, "state": record.state,
            "send_at": utc_text(record.send_at),
            "recipients": record.recipients,
        }
        row.update({key: counts.get(key, 0) for key in SUMMARY_COLUMNS[5:]})
        rows.append(row)
    return rows


def recipient_rows(
    journal: JournalReader, status: Outcome, campaign_id: str | None = None
) -> Iterator[dict[str, Any]]:
    """Every recipient in outcome ``status`` (of one campaign, or of all), streamed."""
    for record in journal.campaigns():
        if campaign_id is not None and record.id != campaign_id:
            continue
        for row in journal.recipients(record.id, status):
            yield {
                "campaign": record.id, "tracking_id": row.tracking_id, "phone": row.phone,
                "status": row.outcome, "detail": row.detail or "", "attempts": row.attempts,
            }


def write_rows(
    rows: Iterator[dict[str, Any]] | list[dict[str, Any]],
    columns: tuple[str, ...],
    fmt: Format,
    out: TextIO,
    title: str = "",
) -> None:
    """Render rows as a rich table, JSON lines-free JSON array, or CSV with a header."""
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    elif fmt == "json":
        out.write("[")
        for number, row in enumerate(rows):
            out.write(("," if number else "") + "\n  " + orjson.dumps(row).decode())
        out.write("\n]\n")
    else:
        table = Table(title=title or None, show_lines=False)
        for column in columns:
            numeric = column in NUMERIC_COLUMNS
            table.add_column(column.replace("_", " "), justify="right" if numeric else "left")
        for row in rows:
            table.add_row(*(_cell(row[c]) for c in columns))
        console = Console(file=out)
        if not console.is_terminal:
            console = Console(file=out, width=240)  # a file or pipe: never squeeze columns
        console.print(table)


def _cell(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def render_summary(journal: JournalReader, campaign_id: str | None, fmt: Format) -> str:
    """The whole summary report as text (for tests and small outputs)."""
    buffer = io.StringIO()
    write_rows(summary_rows(journal, campaign_id), SUMMARY_COLUMNS, fmt, buffer,
               title="Campaign outcomes")
    return buffer.getvalue()


def valid_status(value: str) -> Outcome:
    """Parse ``--status``; raises ValueError naming the allowed values."""
    if value not in OUTCOMES:
        raise ValueError(f"unknown status {value!r}: use one of {', '.join(OUTCOMES)}")
    return value
