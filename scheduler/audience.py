"""Audience CSVs: a streaming reader that yields one `Recipient` or `Skip` per data row.

The file is never held in memory: its bytes are checked once (`scheduler.csvfile`), then it is
read twice (`scheduler.passes`), first for the duplicate-detection keys only, then for the rows,
which the row rules turn into recipients or skips (`scheduler.rows`). Memory stays flat whatever
the row count. File-level problems become `CampaignError`s on the campaign's audience.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from scheduler.campaign import AudienceSpec, Campaign
from scheduler.csvfile import (
    CsvProblem,
    clean_bytes,
    open_table,
    os_message,
    read_bytes,
    scan_bytes,
)
from scheduler.day_sieve import Sieved, sieve
from scheduler.dedupe import Dedupe
from scheduler.errors import CampaignError, Problem
from scheduler.passes import PassOne, pass_one, pass_two
from scheduler.records import Recipient, Skip
from scheduler.rows import (
    AudienceSummary,
    Columns,
    RowChecker,
    ValidRow,
    campaign_error,
    template_of,
)
from scheduler.suppression import Suppression


def _header_error(spec: AudienceSpec, campaign_file: Path, exc: Exception) -> CampaignError:
    """A problem met before any row, reported on the campaign file's ``audience.csv``."""
    if isinstance(exc, OSError):
        message = os_message(spec.csv, exc)
    elif isinstance(exc, CsvProblem) and exc.line is not None:
        message = f"{spec.csv} line {exc.line}: {exc.message}"
    else:
        message = f"{spec.csv} {exc}"
    return campaign_error(campaign_file, "audience.csv", message)


def read_header(spec: AudienceSpec, campaign_file: Path) -> list[str]:
    """The audience CSV's column names (stripped), so a campaign can be checked against them."""
    try:
        with open_table(spec.csv, spec.delimiter) as table:
            return table.header
    except (OSError, CsvProblem) as exc:
        raise _header_error(spec, campaign_file, exc) from None


def _stream(
    campaign: Campaign, suppression: Suppression | None, *, may_fork: bool,
    counted: AudienceSummary | None = None,
) -> Iterator[ValidRow | Skip]:
    """Both passes; raises OSError or `CsvProblem` for file-level problems.

    With ``counted``, valid rows are counted into it (with the placeholders they leave empty)
    instead of being yielded: only the skips come out.
    """
    if counted is not None and campaign.trigger_day is not None:
        sieved = _sieve(campaign)
        if sieved is not None:  # only the lines that may be due are checked
            yield from _count_sieved(campaign, suppression, *sieved, counted)
            return
    spec = campaign.audience
    template = template_of(campaign)
    signature, lines = scan_bytes(spec.csv)
    with open_table(spec.csv, spec.delimiter) as table:
        if table.signature() != signature:
            raise CsvProblem.changed()
        columns = Columns.find(campaign, table, template)
        if campaign.trigger_day is not None:
            # a trigger's day run (SPEC §13.2): only its day's rows (a few in a thousand)
            # reach the duplicate check, so pass 2 remembers their keys exactly; no pass 1
            first = PassOne(Dedupe.remember_all(len(columns.keys())))
        else:
            first = pass_one(spec, table.reader, columns, lines, may_fork=may_fork,
                             counting=counted is not None)
    with open_table(spec.csv, spec.delimiter) as table:
        if table.signature() != signature:
            first.cancel()
            raise CsvProblem.changed()
        on_empty = counted.add_empty if counted is not None else None
        checker = RowChecker(campaign, columns, template, suppression, first.dedupe, on_empty)
        yield from pass_two(checker, spec, table.reader, first, counted)
        if counted is not None:
            counted.merge(AudienceSummary(valid=checker.valid, zones=checker.zones))
        if table.signature() != signature:
            raise CsvProblem.changed()


def _sieve(campaign: Campaign) -> tuple[Sieved, Columns] | None:
    """A counted day run's audience without the lines that are surely another day's
    (`scheduler.day_sieve`), and its columns; None when it cannot be sieved, and when the file
    is not clean UTF-8 (the plain reading says what is wrong, with the line)."""
    spec = campaign.audience
    signature, data = read_bytes(spec.csv)
    if not clean_bytes(data):
        return None
    with open_table(spec.csv, spec.delimiter) as table:
        if table.signature() != signature:
            raise CsvProblem.changed()
        columns = Columns.find(campaign, table, template_of(campaign))
        delimiter, header = table.delimiter, table.header
    if columns.date is None:
        return None
    sieved = sieve(campaign, data, delimiter, columns.date, header)
    return None if sieved is None else (sieved, columns)


def _count_sieved(
    campaign: Campaign, suppression: Suppression | None, sieved: Sieved, columns: Columns,
    counted: AudienceSummary,
) -> Iterator[Skip]:
    """Count a sieved day run: its due rows remembered exactly for the duplicate check (they
    are few), as in the plain day run; only the skips come out."""
    dedupe = Dedupe.remember_all(len(columns.keys()))
    checker = RowChecker(campaign, columns, template_of(campaign), suppression, dedupe,
                         counted.add_empty)
    for item in checker.rows(sieved, emit=False):
        assert isinstance(item, Skip)  # counting yields only skips
        yield item
    counted.merge(AudienceSummary(valid=checker.valid, zones=checker.zones))


def _checked(
    campaign: Campaign, suppression: Suppression | None, *, may_fork: bool,
    counted: AudienceSummary | None = None,
) -> Iterator[ValidRow | Skip]:
    """`_stream` with its file-level problems turned into `CampaignError`."""
    spec = campaign.audience
    try:
        yield from _stream(campaign, suppression, may_fork=may_fork, counted=counted)
    except OSError as exc:
        raise _header_error(spec, campaign.file, exc) from None
    except CsvProblem as exc:
        if exc.line is None:
            raise _header_error(spec, campaign.file, exc) from None
        raise CampaignError([Problem(spec.csv, exc.line, None, exc.message)]) from None


def iter_audience(
    campaign: Campaign, suppression: Suppression | None = None, *, may_fork: bool,
) -> Iterator[Recipient | Skip]:
    """Each data row of the campaign's audience as a `Recipient` or a `Skip`, in file order.

    Every non-None tracking id in the output is unique, so skips whose id may repeat an earlier
    row's (invalid_phone, invalid_id, duplicate) carry None. File-level problems raise
    `CampaignError`; no row content raises anything else.

    ``may_fork``: the caller's process runs no other thread, so a big file may be read with
    forked helpers on a second core (`scheduler.passes`); the same rows come out either way.
    """
    for item in _checked(campaign, suppression, may_fork=may_fork):
        yield item if isinstance(item, Skip) else Recipient(*item)


def iter_rows(
    campaign: Campaign, suppression: Suppression | None = None, *, may_fork: bool,
) -> Iterator[ValidRow | Skip]:
    """`iter_audience` with each valid row as a `ValidRow` tuple instead of a `Recipient`,
    for hot loops that only take it apart again (the snapshot)."""
    return _checked(campaign, suppression, may_fork=may_fork)


def summarize(
    campaign: Campaign, suppression: Suppression | None = None, *, may_fork: bool,
) -> AudienceSummary:
    """Stream the whole audience once and count it; raises `CampaignError` like `iter_audience`
    (``may_fork`` as there)."""
    summary = AudienceSummary()
    for item in _checked(campaign, suppression, may_fork=may_fork, counted=summary):
        assert isinstance(item, Skip)  # valid rows are counted into the summary, not yielded
        summary.add(item)
    return summary
