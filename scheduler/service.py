"""Wiring shared by `send`, `run` and `demo`: config in, a running `Engine` out.

Starts the embedded sandbox when ``base_url = "sandbox"``, opens the journal (on its writer
thread), the delivery log and the one HTTP client, and closes them in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from scheduler.campaign import Campaign
from scheduler.cascade import CascadeClient
from scheduler.config import Config
from scheduler.delivery_log import DeliveryLog
from scheduler.errors import UserError
from scheduler.identity import content_fingerprint, reuse_problem, used
from scheduler.journal import (
    JournalBusy,
    JournalFenced,
    JournalLocation,
    SchemaNews,
    open_journal,
)
from scheduler.leadership import Leadership
from scheduler.metrics import Metrics
from scheduler.oplog import get_logger
from scheduler.sandbox import Sandbox
from scheduler.sender import CampaignRun, Engine, ProgressCallback, utcnow
from scheduler.streaming import Reader
from scheduler.suppression import Suppression
from scheduler.vocabulary import CampaignState

#: (total recipients, already final) when sending starts
ProgressStart = Callable[[int, int], None]
#: any non-empty key satisfies the embedded sandbox
SANDBOX_HEADERS = {"X-Authorization-Key": "sandbox"}


def sandbox_record_path(config: Config) -> Path:
    """Where the embedded sandbox records what it accepted: beside the journal."""
    return config.paths.state.with_name("sandbox.jsonl")


@contextlib.asynccontextmanager
async def api_endpoint(config: Config) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """The base URL and headers to use; runs the embedded sandbox for ``base_url = "sandbox"``."""
    if not config.api.is_sandbox:
        config.require_credentials()
        yield config.api.base_url, config.credentials.headers()
        return
    sandbox = Sandbox(config.sandbox.options(record=sandbox_record_path(config)))
    base_url = await sandbox.start()
    try:
        yield base_url, config.credentials.headers() or dict(SANDBOX_HEADERS)
    finally:
        await sandbox.stop()


def log_schema(news: SchemaNews) -> None:
    """What the journal did, or waits to do, with its schema, in the operational log."""
    log = get_logger("journal")
    fields = {"location": news.location, "from_version": news.found,
              "to_version": news.release}
    if news.event == "journal_upgraded":
        log.info("journal_upgraded", **fields)
    elif news.event == "journal_upgrade_waiting":
        log.warning("journal_upgrade_waiting", leader=news.leader, **fields,
                    hint="the leader runs an earlier release on this schema: this daemon "
                    "stays standby and upgrades the schema when it takes the lead (stop the "
                    "leader, or upgrade its machine, to hand over)")
    else:
        log.error("journal_newer", schema=news.found, release_schema=news.release,
                  location=news.location, hint="a newer release upgraded this journal: this "
                  "daemon never leads on it; upgrade cascade-scheduler on this machine")


def _reconnected(where: JournalLocation) -> None:
    """A dropped journal connection was replaced: say so plainly (writes that failed with it
    are retried by their callers; an answer in hand is never lost, see `scheduler.answers`)."""
    get_logger("journal").info("journal_reconnected", journal=where.url or str(where.path))


@contextlib.asynccontextmanager
async def open_engine(config: Config, metrics: Metrics | None = None) -> AsyncIterator[Engine]:
    """A started `Engine` with everything it needs; everything is closed on exit."""
    suppression = Suppression.load(config.paths.suppression)
    async with contextlib.AsyncExitStack() as stack:
        # the journal first: a second writer is refused before anything else is started
        where = config.journal_location()
        journal = open_journal(where, on_schema=log_schema,
                               on_reconnect=functools.partial(_reconnected, where))
        await journal.start(writer=True)
        stack.push_async_callback(journal.close)
        base_url, headers = await stack.enter_async_context(api_endpoint(config))
        log = DeliveryLog(
            config.paths.delivery_log,
            phones=config.log.phones,
            secrets=config.credentials.secrets(),
        )
        stack.callback(log.close)
        client = CascadeClient(
            base_url, headers, timeout=config.api.timeout, pool_size=config.sending.concurrency
        )
        await stack.enter_async_context(client)
        engine = Engine(
            client=client,
            journal=journal,
            log=log,
            sending=config.sending,
            default_route=config.api.route,
            suppression=suppression,
            suppression_path=config.paths.suppression,
            metrics=metrics,
            caps=config.policy.caps,
        )
        engine.start()
        stack.push_async_callback(engine.close)
        yield engine


@dataclass(frozen=True)
class SendOutcome:
    """How a foreground `send` ended, with the journal's counts."""

    state: CampaignState
    counts: dict[str, int]
    error: str | None = None

    @property
    def complete(self) -> bool:
        """Every recipient reached a final outcome."""
        return self.counts.get("pending", 0) == 0 and self.state in ("done", "expired")


async def send_campaign(
    config: Config,
    campaign: Campaign,
    *,
    stop: asyncio.Event,
    on_start: ProgressStart | None = None,
    on_progress: ProgressCallback | None = None,
    reader: Reader | None = None,
) -> SendOutcome:
    """Send one campaign in the foreground; ``stop`` interrupts it (it resumes on the next run).

    Like a daemon, it sends only while it holds the journal's leadership lease. ``reader``: the
    audience reader the caller started ahead (`Engine.prepare`); the caller closes it.
    """
    async with open_engine(config) as engine, _leading(config, engine) as lost:
        await _refuse_used_id(engine, campaign)
        # due now: read the audience while sending; else prepare it whole while waiting
        record = await engine.prepare(campaign, stream=campaign.send_at <= utcnow(),
                                      reader=reader)
        if reader is not None and not reader.used:
            # not streamed after all (a window, a roll-out, a snapshot taken already): end it
            # now, not when a send that may take hours ends
            await asyncio.to_thread(reader.close)
        delay = (record.send_at - utcnow()).total_seconds()
        if delay > 0 and record.started_at is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        run = engine.open_run(campaign, record, on_progress)
        watchers = [asyncio.create_task(_halt_on(stop, run)),
                    asyncio.create_task(_halt_on(lost, run))]
        if on_start is not None:
            watchers.append(asyncio.create_task(_announce_total(engine, campaign.id, on_start)))
        try:
            state = await engine.drive(run) if not stop.is_set() else "running"
        except JournalFenced:
            state = "running"  # a daemon took the lease: it carries the campaign on
        finally:
            for watcher in watchers:
                watcher.cancel()
        counts = await engine.journal.counts(campaign.id)
        error = str(engine.refused) if engine.refused is not None else None
        if state == "braked":
            latest = await engine.journal.campaign(campaign.id)
            error = latest.error if latest is not None else None
        return SendOutcome(state, counts, error)


async def _refuse_used_id(engine: Engine, campaign: Campaign) -> None:
    """Raise `UserError` when the campaign's id belongs to another campaign that ended
    (`identity.reuse_problem`): a new file never restarts an old campaign."""
    record = await engine.journal.campaign(campaign.id)
    if not used(record):
        return
    content = await asyncio.to_thread(content_fingerprint, campaign)
    problem = reuse_problem(campaign, record, content)
    if problem is not None and problem.is_error:
        raise UserError([problem])


@contextlib.asynccontextmanager
async def _leading(config: Config, engine: Engine) -> AsyncIterator[asyncio.Event]:
    """Take the journal's leadership lease for a foreground send (or raise `JournalBusy`)
    and renew it from the start: a big snapshot can take longer than the lease. The event
    is set if the lease is lost anyway."""
    leadership = Leadership(engine.journal, config.journal.lease)
    if not await leadership.acquire():
        raise JournalBusy(engine.journal.location, "the daemon that leads it")
    engine.may_send = leadership.may_send
    lost, done = asyncio.Event(), asyncio.Event()

    async def on_lost(reason: str) -> None:
        lost.set()

    renewing = asyncio.create_task(leadership.hold(done, on_lost))
    try:
        yield lost
    finally:
        done.set()
        await renewing
        await leadership.release()


async def _announce_total(engine: Engine, campaign_id: str, on_start: ProgressStart) -> None:
    """The progress total, once the snapshot is whole (at once unless it is streamed)."""
    await engine.wait_whole(campaign_id)
    record = await engine.journal.campaign(campaign_id)
    if record is not None:
        counts = await engine.journal.counts(campaign_id)
        total = record.recipients + record.skipped
        on_start(total, total - counts.get("pending", 0))


async def _halt_on(event: asyncio.Event, run: CampaignRun) -> None:
    await event.wait()
    run.halt()
