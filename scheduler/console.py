"""What the interactive commands show on a terminal: progress bars, summaries, the demo's story.

Kept apart from `cli` (argument parsing) and from the engine (which knows nothing of terminals).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from scheduler.audience import iter_audience, summarize
from scheduler.batching import to_message
from scheduler.campaign import Campaign, utc_text
from scheduler.checking import describe_summary, policy_notes
from scheduler.config import Config, load_config
from scheduler.delivery_log import mask_phone
from scheduler.demo import write_workspace
from scheduler.journal import JournalError, JournalReader, open_journal
from scheduler.oplog import configure_logging
from scheduler.records import Recipient
from scheduler.report import write_summary
from scheduler.sandbox import serve
from scheduler.sandbox_options import SandboxOptions
from scheduler.service import SendOutcome, send_campaign
from scheduler.streaming import Reader
from scheduler.suppression import Suppression
from scheduler.testsend import describe, send_test
from scheduler.window import zones_of_group

EXIT_OK, EXIT_FAILED = 0, 1


def run_test_send(config: Config, campaign: Campaign, phones: list[str], line: int | None) -> int:
    """`send --test`: post the rendered row to ``phones``, print what went and the answer."""
    result = asyncio.run(send_test(config, campaign, phones, line))
    print(f"test send of {campaign.id} (CSV line {result.line}) to {len(phones)} phone(s):")
    ids = result.message_ids
    for message in result.messages:
        print(f"  {message['id']} -> {message['toPhone']}: {message.get('text', '(no text)')!r}"
              + (f"  messageId {ids[message['id']]}" if message["id"] in ids else ""))
    print(f"API answer: {describe(result.reply)}")
    return EXIT_OK if result.accepted else EXIT_FAILED


def dry_run(campaign: Campaign, config: Config, now: datetime, show: int = 3) -> str:
    """What `send --dry-run` prints: the audience summary, what the send window and the caps
    would do, and the first rendered messages with the ttl each would carry, as sent."""
    suppression = Suppression.load(config.paths.suppression)
    # `send --dry-run` starts nothing (no journal, no client): no other thread runs
    summary = summarize(campaign, suppression, may_fork=True)
    lines = [
        f"{campaign.id}: {campaign.type} to {summary.valid:,} recipients at "
        f"{utc_text(campaign.send_at)} (dry run: nothing sent)",
        describe_summary(summary),
        *_policy_lines(campaign, summary.zones, config, suppression, now),
        f"first {show} messages, with the ttl each would be sent with:",
    ]
    recipients = (r for r in iter_audience(campaign, suppression, may_fork=True)
                  if isinstance(r, Recipient))
    for recipient in islice(recipients, show):
        message = to_message(campaign, recipient)
        message["toPhone"] = mask_phone(message["toPhone"])
        goes = departure(campaign, recipient.zone, now)
        if goes is None:
            lines.append("  expired, outside_window (its window does not open before send_at "
                         f"+ ttl): {orjson.dumps(message).decode()}")
            continue
        moment, message["ttl"] = goes
        lines.append(f"  at {utc_text(moment)}: {orjson.dumps(message).decode()}")
    return "\n".join(lines)


def _policy_lines(
    campaign: Campaign, zones: Mapping[str, int], config: Config,
    suppression: Suppression | None, now: datetime,
) -> list[str]:
    """The send window's forecast and (with a journal) what the caps would skip now."""
    if not config.journal_location().exists:
        return policy_notes(campaign, zones, config, suppression, now)
    try:
        with JournalReader(open_journal(config.journal_location())) as journal:
            return policy_notes(campaign, zones, config, suppression, now, journal)
    except JournalError as exc:
        return [*policy_notes(campaign, zones, config, suppression, now),
                f"frequency caps: cannot tell ({exc})"]


def departure(campaign: Campaign, zone: str | None, now: datetime) -> tuple[datetime, int] | None:
    """When a message to someone in ``zone`` (a zone group; None: no window) would go if the
    campaign were sent now, and the ttl it would carry then: the time left until send_at +
    ttl, or until its window closes. None: its window does not open before the deadline."""
    goes, until = max(now, campaign.send_at), campaign.deadline
    if campaign.window is not None and zone is not None:
        stretch = campaign.window.next_stretch(zones_of_group(zone), goes, until)
        if stretch is None:
            return None
        goes, until = stretch[0], min(stretch[1], until)
    return goes, max(1, int((until - goes).total_seconds()))


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)


def run_send(config: Config, campaign: Campaign, reader: Reader | None = None) -> int:
    """`send`: progress bar on a terminal, one summary line at the end; 0 when all final.
    ``reader``: the audience reader started ahead (`send --now`); the caller closes it."""
    err = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.percentage:>5.1f}%"), TimeRemainingColumn(),
        console=err, disable=not err.is_terminal, transient=False,
    )
    task = progress.add_task(campaign.id, total=None)

    def started(total: int, done: int) -> None:
        progress.update(task, total=total, completed=done)

    def advanced(count: int) -> None:
        progress.advance(task, count)

    async def go() -> SendOutcome:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        with progress:
            return await send_campaign(
                config, campaign, stop=stop, on_start=started, on_progress=advanced,
                reader=reader,
            )

    outcome = asyncio.run(go())
    counts = ", ".join(f"{k} {v:,}" for k, v in outcome.counts.items() if v)
    print(f"{campaign.id}: {outcome.state} ({counts or 'no recipients'})")
    if outcome.error:
        print(f"error: {outcome.error}", file=sys.stderr)
    elif not outcome.complete:
        print("interrupted: run the same command again to resume where it stopped",
              file=sys.stderr)
    return EXIT_OK if outcome.complete else EXIT_FAILED


def run_sandbox(options: SandboxOptions, host: str, port: int) -> int:
    """`sandbox`: serve until Ctrl-C / SIGTERM, printing the URL to use as base_url."""

    def ready(url: str) -> None:
        print(f"sandbox listening on {url}  (use it as [api].base_url; Ctrl-C stops)",
              flush=True)

    async def go() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        server = asyncio.create_task(serve(options, host, port, on_ready=ready))
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({server, waiter}, return_when=asyncio.FIRST_COMPLETED)
        server.cancel()
        waiter.cancel()
        await asyncio.gather(server, waiter, return_exceptions=True)
        if server.done() and not server.cancelled() and server.exception() is not None:
            raise server.exception()  # type: ignore[misc]

    try:
        asyncio.run(go())
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def run_demo(directory: Path | None) -> int:
    """`demo`: write a workspace, run the daemon until every campaign is final, show the report."""
    from scheduler.daemon import run_daemon  # only `demo` runs it here: see cli.cmd_run

    root = directory or Path(tempfile.mkdtemp(prefix="cascade-demo-"))
    out = Console()
    config_path = write_workspace(root, datetime.now(UTC))
    config = load_config(config_path)
    out.print(f"[bold]cascade-scheduler demo[/] in {root}\n"
              "four campaigns (transaction, promo, viber_survey, flashcall) are due in 3-6 s;\n"
              "the daemon sends them through the embedded sandbox (no account, no network)\n"
              "and follows each message to its delivery status.\n", soft_wrap=True)
    configure_logging("info", "console", ())
    asyncio.run(run_daemon(config, until_idle=True))
    with JournalReader(open_journal(config.journal_location())) as journal:
        write_summary(journal, None, "table", sys.stdout, delivery=True)
    out.print(
        f"delivery log: {config.paths.delivery_log}\n"
        f"journal:      {config.paths.state}\n"
        f"try:  cascade-scheduler report --config {config_path} --status skipped\n"
        f"      cascade-scheduler report --config {config_path} --status undeliverable\n"
        f"      cascade-scheduler plan --config {config_path}",
        soft_wrap=True,  # a command cut in two cannot be pasted (output not a terminal: 80)
    )
    return EXIT_OK
