"""`report`: outcomes per campaign from the journal, as a table, JSON or CSV.

With ``--status`` it lists the recipients in that outcome (full phones: the export is for
re-targeting), streamed so a million-row export needs no memory. ``--status pending`` lists the
recipients that have no final outcome yet (a cancelled campaign's unsent rows, for instance), so
every row of every audience is accounted for.

With ``--resent`` it lists the recipients whose message was posted again after an ambiguous
outcome (a restart, a takeover, a timeout; SPEC §13.4): each may have received it twice. The
summary counts them per campaign (``resent``, also counted in their outcome).

With delivery reports (SPEC §11.3), the summary also says what became of the sent messages
(delivered, undeliverable, permanenterror, unknown, awaiting; delivered per channel; the cost
per currency; the median time to delivery), and ``--status delivered`` (or undeliverable,
permanenterror, unknown) lists those recipients with their channel and cost.

A terminal table shows at most `TABLE_ROWS` rows (then says how many more, and to use CSV), and
never cuts a number, a time or an id: on a narrow terminal it hides whole columns, and says so.
"""

from __future__ import annotations

import csv
import errno
import io
import os
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from itertools import islice
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Literal, TextIO, TypeGuard, TypeVar, cast

import orjson

if TYPE_CHECKING:  # rich is imported by the tables only: JSON and CSV (`plan --json`) need
    from rich.console import Console  # none of its ~40 ms of imports
    from rich.table import Table

from scheduler.campaign import utc_text
from scheduler.journal import CampaignRecord, JournalReader
from scheduler.series import names
from scheduler.vocabulary import NO_CHANNEL, NO_CURRENCY, OUTCOMES, SENDING, Outcome

T = TypeVar("T")
Format = Literal["table", "json", "csv"]
#: the final delivery statuses ``--status`` lists (SPEC §11.3)
DeliveryListing = Literal["delivered", "undeliverable", "permanenterror", "unknown"]
DELIVERY_LISTINGS: tuple[DeliveryListing, ...] = (
    "delivered", "undeliverable", "permanenterror", "unknown",
)
#: what ``--status`` takes: a final outcome, ``pending`` (no final outcome yet), or a final
#: delivery status
Listing = Outcome | Literal["pending"] | DeliveryListing
LISTINGS: tuple[str, ...] = (*OUTCOMES, "pending", *DELIVERY_LISTINGS)

SUMMARY_COLUMNS = (
    "campaign", "type", "state", "send_at", "recipients", "skipped",
    "sent", "rejected", "expired", "in_doubt", "pending", "resent", "note",
)
#: the account a campaign is sent through (SPEC §13.3); None: one account, no column
AccountOf = Callable[[CampaignRecord], str] | None


def journaled_account(record: CampaignRecord) -> str:
    """`AccountOf`: the account the journal kept when the campaign was planned (its file may
    have named another since, or be gone)."""
    return record.account


def with_account(columns: tuple[str, ...], account_of: object | None) -> tuple[str, ...]:
    """``columns`` with "account" after "campaign" when accounts are shown."""
    if account_of is None or "account" in columns:
        return columns
    return (columns[0], "account", *columns[1:])
NUMERIC_COLUMNS = frozenset(
    {"recipients", "valid", "skipped", "sent", "rejected", "expired", "in_doubt", "pending",
     "resent",
     "attempts", "line", "delivered", "undeliverable", "permanenterror", "unknown", "awaiting",
     "awaiting_status", "parts", "median_delivery"}
)
#: ``at``: when the outcome was decided (its batch done), UTC
RECIPIENT_COLUMNS = ("campaign", "tracking_id", "phone", "status", "at", "detail", "attempts")
#: skipped rows never went out (no attempts); their CSV line is what finds them again
SKIPPED_COLUMNS = ("campaign", "line", "tracking_id", "phone", "status", "detail")
#: ``--status delivered`` etc.: what re-targeting needs ("undelivered by Viber: try SMS")
DELIVERY_RECIPIENT_COLUMNS = (
    "campaign", "tracking_id", "phone", "status", "channel", "parts", "cost", "currency",
    "sent_at", "status_at", "message_id",
)
#: the summary's delivery part (a table of its own; extra columns in CSV; "delivery" in JSON)
DELIVERY_COLUMNS = (
    "campaign", "sent", "delivered", "undeliverable", "permanenterror", "unknown", "awaiting",
    "by_channel", "cost", "median_delivery",
)

#: a terminal table stops after this many rows: a longer listing is for --format csv or json
TABLE_ROWS = 1_000
#: columns a narrow terminal hides first, in this order; the others are never hidden
_HIDE_FIRST = (
    "type", "send_at", "attempts", "in_doubt", "resent", "expired", "rejected", "recipients",
    "skipped", "valid", "status",
)
#: columns whose text may wrap onto more lines (everything else is kept whole on one line)
_WRAPPING = frozenset({"detail", "note", "by_channel", "cost"})
_WRAP_MIN = 12  # the narrowest a wrapping column gets
_JSON_CHUNK = 1_000  # JSON rows written at once


def recipient_columns(status: Listing) -> tuple[str, ...]:
    """The columns of ``report --status status``."""
    if is_delivery(status):
        return DELIVERY_RECIPIENT_COLUMNS
    return SKIPPED_COLUMNS if status == "skipped" else RECIPIENT_COLUMNS


def is_delivery(status: Listing) -> TypeGuard[DeliveryListing]:
    """True for the delivery statuses (they list sent messages by what became of them)."""
    return status in DELIVERY_LISTINGS


#: why a braked campaign stopped, when its journal does not say it in full
_BRAKED = ("the error brake stopped the campaign (too many messages refused): fix the "
           "campaign, then save its file again to resume")


def campaign_note(record: CampaignRecord, pending: int, leading: bool) -> str:
    """What a person needs to know beyond the state: why rows are still unsent and what will
    happen to them. ``leading``: a daemon (or `send`) acts on this journal right now."""
    state = record.state
    if state == "cancelled" and pending and record.error:  # a series' occurrence: why
        return f"{pending:,} not sent: {record.error}"
    if state == "cancelled" and pending:
        return (f"{pending:,} not sent: its file was removed; restoring the file (or a file "
                "with its id and resume = true) resumes them (see --status pending)")
    if state == "braked":
        return f"{pending:,} not sent: {record.error or _BRAKED}"
    if state in SENDING and not leading:
        return "not running now: resumes where it stopped when the daemon starts"
    if state == "paused" and pending:
        return f"{pending:,} not sent yet: set paused = false to send them"
    if state == "failed":  # the error says what to do (a refused key, an unreadable audience)
        return f"stopped: {record.error}" if record.error else \
            "stopped: the API refused the credentials; fix the key and reload the daemon"
    if record.streaming and state in SENDING:
        return f"still reading its audience: {record.recipients:,} recipients so far"
    if state == "invalid":
        return "stopped: its file is invalid (run `check`); fixing it resumes the campaign"
    return ""


def summary_rows(
    journal: JournalReader, campaign_id: str | None = None, account_of: AccountOf = None,
) -> list[dict[str, Any]]:
    """One row per campaign in the journal (or just ``campaign_id``): state and counts (and
    its account, with ``account_of``)."""
    rows = []
    leading = journal.leader() is not None
    for record in journal.campaigns():
        if not names(campaign_id, record.id):  # a series names its occurrences
            continue
        counts = journal.counts(record.id)
        row: dict[str, Any] = {"campaign": record.id}
        if account_of is not None:
            row["account"] = account_of(record)
        row.update({
            "type": record.type, "state": record.state, "send_at": utc_text(record.send_at),
            "recipients": record.recipients,
        })
        row.update({key: counts.get(key, 0) for key in SUMMARY_COLUMNS[5:-1]})
        row["note"] = campaign_note(record, counts.get("pending", 0), leading)
        rows.append(row)
    return rows


def listed_total(
    journal: JournalReader, status: Listing | Literal["resent"], campaign_id: str | None,
) -> int:
    """How many recipients ``report --status status`` (or ``--resent``) lists (from the
    counts: no listing)."""
    return sum(
        (journal.delivery_counts(record.id).statuses if status in DELIVERY_LISTINGS
         else journal.counts(record.id)).get(status, 0)
        for record in journal.campaigns() if names(campaign_id, record.id)
    )


def resent_rows(journal: JournalReader, campaign_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Every recipient whose message was posted again after an ambiguous outcome (of one
    campaign, or of all), streamed: the possible duplicates. Its final outcome and detail (the
    messageId of the answer kept, for a sent one) say what the journal knows of it."""
    for record in journal.campaigns():
        if not names(campaign_id, record.id):  # a series names its occurrences
            continue
        for row in journal.recipients(record.id, resent=True):
            yield {"campaign": record.id, "tracking_id": row.tracking_id, "phone": row.phone,
                   "status": row.outcome, "at": "" if row.at is None else utc_text(row.at),
                   "detail": row.detail or "", "attempts": row.attempts}


def recipient_rows(
    journal: JournalReader, status: Listing, campaign_id: str | None = None
) -> Iterator[dict[str, Any]]:
    """Every recipient in outcome ``status`` (of one campaign, or of all), streamed."""
    leading = None
    for record in journal.campaigns():
        if not names(campaign_id, record.id):  # a series names its occurrences
            continue
        if status == "pending":
            if leading is None:
                leading = journal.leader() is not None
            yield from _unsent_rows(journal, record, leading)
            continue
        if is_delivery(status):
            yield from _delivery_rows(journal, record.id, status)
            continue
        if status == "skipped":
            for row in journal.recipients(record.id, status):
                yield {"campaign": record.id, "line": row.line, "tracking_id": row.tracking_id,
                       "phone": row.phone, "status": row.outcome, "detail": row.detail or ""}
            continue
        for row in journal.recipients(record.id, cast("Outcome", status)):
            yield {"campaign": record.id, "tracking_id": row.tracking_id, "phone": row.phone,
                   "status": row.outcome, "at": "" if row.at is None else utc_text(row.at),
                   "detail": row.detail or "", "attempts": row.attempts}


def _delivery_rows(
    journal: JournalReader, campaign_id: str, status: DeliveryListing,
) -> Iterator[dict[str, Any]]:
    """The campaign's sent messages whose final delivery status is ``status``."""
    for row in journal.delivery_recipients(campaign_id, status):
        yield {"campaign": campaign_id, "tracking_id": row.tracking_id, "phone": row.phone,
               "status": row.status, "channel": row.channel or NO_CHANNEL,
               "parts": row.parts, "cost": row.cost,
               "currency": row.currency or (NO_CURRENCY if row.cost else ""),
               "sent_at": utc_text(row.sent_at),
               "status_at": "" if row.status_at is None else utc_text(row.status_at),
               "message_id": row.message_id}


def awaiting_status(
    journal: JournalReader, campaign_id: str, sent: int, reports: bool,
) -> int | None:
    """Sent messages of the campaign without a final delivery status yet (as the delivery
    summary counts them); None when delivery reports are off (``reports``) and no status
    ever came: then nothing is awaited, and 0 would read as "all delivered"."""
    if not sent:
        return 0 if reports else None
    statuses = journal.delivery_counts(campaign_id).statuses
    finals = sum(n for status, n in statuses.items() if status != "awaiting")
    return max(0, sent - finals) if reports or finals else None


def delivery_summaries(
    journal: JournalReader, campaign_id: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Per campaign (or just ``campaign_id``): its sent messages by final delivery status,
    ``awaiting`` (no final status yet), delivered ones per channel, the cost per currency
    and the median seconds to delivery."""
    found: dict[str, dict[str, Any]] = {}
    for record in journal.campaigns():
        if not names(campaign_id, record.id):  # a series names its occurrences
            continue
        sent = journal.counts(record.id).get("sent", 0)
        counts = journal.delivery_counts(record.id)
        finals: dict[str, int] = {s: counts.statuses.get(s, 0) for s in DELIVERY_LISTINGS}
        median = counts.delivery_seconds
        found[record.id] = {
            "campaign": record.id, "sent": sent, **finals,
            "awaiting": max(0, sent - sum(finals.values())),
            "by_channel": dict(sorted(counts.delivered_by_channel.items(),
                                      key=lambda item: (-item[1], item[0]))),
            "cost": {currency: round(total, 2) for currency, total in sorted(counts.cost.items())},
            "median_delivery": None if median is None else round(median, 1),
        }
    return found


def delivery_text(entry: dict[str, Any]) -> dict[str, Any]:
    """A `delivery_summaries` entry for a table or CSV: channels with their shares of the
    delivered, costs with their currencies, the median in seconds."""
    delivered = entry["delivered"] or 1
    return {
        **entry,
        "by_channel": ", ".join(f"{channel} {count:,} ({count / delivered:.0%})"
                                for channel, count in entry["by_channel"].items()),
        "cost": ", ".join(f"{total:,.2f} {_currency_text(currency)}"
                          for currency, total in entry["cost"].items()),
        "median_delivery": "" if entry["median_delivery"] is None else
        f"{entry['median_delivery']:,.1f} s",
    }


def _currency_text(currency: str) -> str:
    return "(currency unknown)" if currency == NO_CURRENCY else currency


def write_summary(
    journal: JournalReader, campaign_id: str | None, fmt: Format, out: TextIO, *,
    delivery: bool = False, width: int | None = None, account_of: AccountOf = None,
) -> None:
    """The summary: outcomes per campaign and, when delivery reports are on (``delivery``)
    or any message has a final delivery status, what became of the sent messages: a table
    of its own, more CSV columns, or a ``delivery`` object in each JSON row. With several
    accounts (``account_of``), each campaign's account is a column."""
    rows = summary_rows(journal, campaign_id, account_of)
    columns = with_account(SUMMARY_COLUMNS, account_of)
    entries = delivery_summaries(journal, campaign_id)
    if not delivery and not any(e[s] for e in entries.values() for s in DELIVERY_LISTINGS):
        write_rows(rows, columns, fmt, out, "Campaign outcomes", width=width)
        return
    empty: dict[str, Any] = dict.fromkeys(DELIVERY_COLUMNS[1:], 0) | {
        "by_channel": {}, "cost": {}, "median_delivery": None}
    matched = [(row, entries.get(row["campaign"]) or {**empty, "campaign": row["campaign"]})
               for row in rows]
    if fmt == "json":
        for row, entry in matched:
            row["delivery"] = {k: v for k, v in entry.items() if k not in ("campaign", "sent")}
        write_rows(rows, columns, fmt, out)
    elif fmt == "csv":
        write_rows([row | delivery_text(entry) for row, entry in matched],
                   columns + DELIVERY_COLUMNS[2:], fmt, out)
    else:
        write_rows(rows, columns, fmt, out, "Campaign outcomes", width=width)
        write_rows([delivery_text(entry) for _, entry in matched], DELIVERY_COLUMNS, fmt, out,
                   "Delivery status", width=width)


def _unsent_rows(
    journal: JournalReader, record: CampaignRecord, leading: bool,
) -> Iterator[dict[str, Any]]:
    """The recipients of ``record`` with no final outcome yet, and why."""
    why = _unsent_reason(record, leading)
    for batch in journal.open_batches(record.id):
        for message in orjson.loads(batch.body):
            if message["id"] not in batch.decided:
                yield {
                    "campaign": record.id, "tracking_id": message["id"],
                    "phone": message["toPhone"], "status": "pending", "at": "", "detail": why,
                    "attempts": batch.attempts,
                }


def _unsent_reason(record: CampaignRecord, leading: bool) -> str:
    state = record.state
    if state == "cancelled" and record.error:  # a series' occurrence: why
        return f"not sent: {record.error}"
    if state == "cancelled":
        return "not sent: the campaign was cancelled (its file was removed); restoring the " \
            "file (or resume = true in a file with its id) resumes it"
    if state == "braked":
        return f"not sent: {_BRAKED}"
    if state in SENDING and not leading:
        return "not sent yet: resumes when the daemon starts"
    reasons = {
        "scheduled": f"not sent yet: due at {utc_text(record.send_at)}",
        "running": "not sent yet: sending",
        "backing_off": "not sent yet: waiting for the API to answer again",
        "paused": "not sent yet: the campaign is paused",
        "failed": "not sent yet: the API refused the credentials",
        "invalid": "not sent yet: the campaign file is invalid",
    }
    return reasons.get(state, "not sent")


def write_rows(
    rows: Iterable[dict[str, Any]],
    columns: tuple[str, ...],
    fmt: Format,
    out: TextIO,
    title: str = "",
    *,
    total: int | None = None,
    width: int | None = None,
) -> None:
    """Render rows as a rich table, a JSON array, or CSV with a header, streaming.

    Each row holds exactly ``columns``, in that order. ``total``: how many rows there are, when
    known without reading them (the table stops at `TABLE_ROWS` and says how many more there
    are). ``width``: the terminal's, for tests.
    """
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(map(itemgetter(*columns), rows))
    elif fmt == "json":
        out.write("[")
        separator = "\n  "
        for chunk in batched(rows, _JSON_CHUNK):
            out.write(separator + ",\n  ".join(orjson.dumps(row).decode() for row in chunk))
            separator = ",\n  "
        out.write("\n]\n")
    else:
        _write_table(iter(rows), columns, out, title, total, width)


def _write_table(
    rows: Iterator[dict[str, Any]], columns: tuple[str, ...], out: TextIO, title: str,
    total: int | None, width: int | None,
) -> None:
    shown = [[_cell(row.get(c), c) for c in columns] for row in islice(rows, TABLE_ROWS)]
    more = (total - len(shown)) if total is not None else sum(1 for _ in rows)
    console = _console(out, width)
    kept = _fitting(columns, shown, console.width)
    if kept is None:  # not even the essential columns fit: one "column: value" line each
        _print_records(console, columns, shown, title)
    else:
        console.print(_table(columns, kept, shown, title))
        hidden = [c.replace("_", " ") for c in columns if c not in kept]
        if hidden:
            console.print(f"(not shown at this width: {', '.join(hidden)}; widen the terminal "
                          "or use --format csv)", highlight=False)
    if more > 0:
        console.print(f"… {more:,} more: use --format csv (or json) for the full list",
                      highlight=False)


@cache
def _console_class() -> type[Console]:
    """rich's console, except that a closed pipe is the CLI's to handle (quietly, with the
    exit code of SIGPIPE) instead of rich's own exit 1."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            """Let the `BrokenPipeError` reach the command line's edge."""
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    return _Console


def batched(rows: Iterable[T], size: int) -> Iterator[list[T]]:
    """``rows`` in lists of ``size`` (the last one shorter), lazily."""
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _console(out: TextIO, width: int | None) -> Console:
    _Console = _console_class()
    if width is not None:
        return _Console(file=out, width=width)
    console = _Console(file=out)
    if not console.is_terminal:
        console = _Console(file=out, width=240)  # a file or pipe: never squeeze columns
    return console


def _needed(columns: Iterable[str], widths: dict[str, int]) -> int:
    """The width a table of these columns takes (rich: 2 of padding and 1 border each)."""
    chosen = list(columns)
    return sum(widths[c] for c in chosen) + 3 * len(chosen) + 1


def _fitting(
    columns: tuple[str, ...], cells: list[list[str]], available: int,
) -> tuple[str, ...] | None:
    """The columns to show so that no cell is cut: hide `_HIDE_FIRST` ones in order until
    the table fits; None when it does not fit even then."""
    widths = {}
    for index, column in enumerate(columns):
        longest = max([len(column), *(len(row[index]) for row in cells)])
        widths[column] = min(longest, _WRAP_MIN) if column in _WRAPPING else longest
    kept = list(columns)
    for column in _HIDE_FIRST:
        if _needed(kept, widths) <= available:
            break
        if column in kept:
            kept.remove(column)
    return tuple(kept) if _needed(kept, widths) <= available else None


def _table(
    columns: tuple[str, ...], kept: tuple[str, ...], cells: list[list[str]], title: str,
) -> Table:
    from rich.table import Table

    table = Table(title=title or None, show_lines=False)
    for column in kept:
        justify: Literal["left", "right"] = "right" if column in NUMERIC_COLUMNS else "left"
        if column in _WRAPPING:
            table.add_column(column.replace("_", " "), justify=justify, overflow="fold",
                             min_width=_WRAP_MIN)
        else:
            longest = max([len(column), *(len(row[columns.index(column)]) for row in cells)])
            table.add_column(column.replace("_", " "), justify=justify, no_wrap=True,
                             min_width=longest)
    indexes = [columns.index(c) for c in kept]
    for row in cells:
        table.add_row(*(row[i] for i in indexes))
    return table


def _print_records(
    console: Console, columns: tuple[str, ...], cells: list[list[str]], title: str,
) -> None:
    """The rows as blocks of ``column: value`` lines, for terminals too narrow for a table."""
    if title:
        console.print(title, highlight=False)
    label = max(len(c) for c in columns)
    for row in cells:
        console.print("", highlight=False)
        for column, value in zip(columns, row, strict=True):
            console.print(f"{column.replace('_', ' '):<{label}}  {value}", highlight=False,
                          soft_wrap=True)


#: numbers that name something (a CSV line, a process): printed as written, without the
#: thousands separators of counts, so they can be pasted (``kill 13581``)
_NAMES = frozenset({"line", "pid"})


def _cell(value: Any, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool) and column not in _NAMES:
        return f"{value:,}"
    return str(value)


def render_summary(journal: JournalReader, campaign_id: str | None, fmt: Format) -> str:
    """The whole summary report as text (for tests and small outputs)."""
    buffer = io.StringIO()
    write_rows(summary_rows(journal, campaign_id), SUMMARY_COLUMNS, fmt, buffer,
               title="Campaign outcomes")
    return buffer.getvalue()


def valid_status(value: str) -> Listing:
    """Parse ``--status``; raises ValueError naming the allowed values."""
    if value in LISTINGS:
        return cast("Listing", value)
    raise ValueError(f"unknown status {value!r}: use one of {', '.join(LISTINGS)}")
