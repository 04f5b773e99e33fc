"""Wiring shared by `send`, `run` and `demo`: config in, a running `Engine` (and its handles) out.

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
from scheduler.config import SANDBOX, Config
from scheduler.delivery_log import DeliveryLog
from scheduler.errors import UserError
from scheduler.identity import content_fingerprint, reuse_problem, used
from scheduler.indexing import MessageIndex
from scheduler.journal import (
    Journal,
    JournalBusy,
    JournalLocation,
    SchemaNews,
    open_journal,
)
from scheduler.leadership import Leadership
from scheduler.lifecycle import Lifecycle
from scheduler.metrics import Metrics
from scheduler.oplog import get_logger
from scheduler.sandbox import Sandbox
from scheduler.sender import Account, CampaignRun, Clock, Engine, ProgressCallback, utcnow
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
async def api_endpoints(
    config: Config, only: str | None = None,
) -> AsyncIterator[dict[str, tuple[str, dict[str, str]]]]:
    """Each account's base URL and headers (``only``: that account's alone); runs the
    embedded sandbox (one, whichever accounts use it) for ``base_url = "sandbox"``."""
    config.require_credentials(None if only is None else [only])
    accounts = [a for a in config.account_list() if only is None or a.name == only]
    sandbox: Sandbox | None = None
    if any(account.base_url == SANDBOX for account in accounts):
        sandbox = Sandbox(config.sandbox.options(record=sandbox_record_path(config)))
        await sandbox.start()
    try:
        endpoints = {}
        for account in accounts:
            headers = config.account_headers(account.name)
            if account.base_url == SANDBOX:
                assert sandbox is not None
                endpoints[account.name] = (sandbox.base_url, headers or dict(SANDBOX_HEADERS))
            else:
                assert account.base_url is not None  # `account_list` fills it in
                endpoints[account.name] = (account.base_url, headers)
        yield endpoints
    finally:
        if sandbox is not None:
            await sandbox.stop()


@contextlib.asynccontextmanager
async def api_endpoint(
    config: Config, account: str | None = None,
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """The base URL and headers of one account (None: the default one, else the first)."""
    name = account or config.default_account or config.account_names[0]
    async with api_endpoints(config, name) as endpoints:
        yield endpoints[name]


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


@dataclass(frozen=True)
class Runtime:
    """What one process opened to send: the engine, and the handles its owner uses beside it
    (the daemon's upkeep reads the journal and writes the log; `send` holds the lease)."""

    engine: Engine
    journal: Journal
    log: DeliveryLog
    #: the one owner of campaigns' state changes and their log events
    lifecycle: Lifecycle
    metrics: Metrics
    #: the first account's client (the embedded sandbox's URL, when it runs)
    client: CascadeClient
    index: MessageIndex
    #: the journal's leadership lease, when the engine sends only while it holds it
    leadership: Leadership | None = None


@contextlib.asynccontextmanager
async def open_runtime(
    config: Config, metrics: Metrics | None = None, *, lead: bool = False,
    clock: Clock = utcnow, may_send: Callable[[], bool] | None = None,
) -> AsyncIterator[Runtime]:
    """A started `Engine` with everything it needs; everything is closed on exit. ``lead``:
    it sends only while it holds the journal's leadership lease (`Runtime.leadership`,
    acquired by the caller); ``may_send`` is asked instead without it (tests)."""
    metrics = metrics or Metrics()
    for account in config.account_list():
        metrics.add_account(account.name, account.requests_per_second)
    suppression = Suppression.load(config.paths.suppression)
    async with contextlib.AsyncExitStack() as stack:
        # the journal first: a second writer is refused before anything else is started
        where = config.journal_location()
        journal = open_journal(where, on_schema=log_schema,
                               on_reconnect=functools.partial(_reconnected, where))
        await journal.start(writer=True)
        stack.push_async_callback(journal.close)
        endpoints = await stack.enter_async_context(api_endpoints(config))
        log = DeliveryLog(
            config.paths.delivery_log,
            phones=config.log.phones,
            secrets=config.credentials.secrets(),
        )
        stack.callback(log.close)
        # one client (aiohttp session and connection pool) per account: one account's slow
        # or failing API never holds a connection another needs
        accounts = []
        for account in config.account_list():
            base_url, headers = endpoints[account.name]
            client = CascadeClient(base_url, headers, timeout=config.api.timeout,
                                   pool_size=account.most_in_flight)
            await stack.enter_async_context(client)
            accounts.append(Account(account.name, client, config.sending_for(account.name),
                                    config.key_source(account.name)))
        leadership = None
        if lead:
            leadership = Leadership(journal, config.journal.lease,
                                    on_renew_failure=metrics.lease_renew_failures.inc)
            may_send = leadership.may_send
        index = MessageIndex(journal, config.delivery_reports.first_poll)
        lifecycle = Lifecycle(journal, log)
        engine = Engine(
            accounts=accounts,
            journal=journal,
            log=log,
            lifecycle=lifecycle,
            sending=config.sending,
            default_route=config.api.route,
            index=index,
            suppression=suppression,
            suppression_path=config.paths.suppression,
            clock=clock,
            may_send=may_send or _always,
            metrics=metrics,
            caps=config.policy.caps,
        )
        engine.start()
        stack.push_async_callback(engine.close)
        yield Runtime(engine, journal, log, lifecycle, metrics, accounts[0].client, index,
                      leadership)


@contextlib.asynccontextmanager
async def open_engine(
    config: Config, metrics: Metrics | None = None, *, clock: Clock = utcnow,
    may_send: Callable[[], bool] | None = None,
) -> AsyncIterator[Engine]:
    """`open_runtime`'s engine alone (tests, tools): it sends whenever ``may_send`` says."""
    async with open_runtime(config, metrics, clock=clock, may_send=may_send) as runtime:
        yield runtime.engine


def _always() -> bool:
    return True


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
    async with open_runtime(config, lead=True) as runtime, _leading(runtime) as lost:
        engine = runtime.engine
        await _refuse_used_id(runtime.journal, campaign)
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
        watchers: list[asyncio.Task[None]] = []

        def watch(run: CampaignRun) -> None:
            if stop.is_set():
                run.halt()  # stopped while it waited: not started
            watchers.extend([asyncio.create_task(_halt_on(stop, run)),
                             asyncio.create_task(_halt_on(lost, run))])
            if on_start is not None:
                watchers.append(asyncio.create_task(
                    _announce_total(runtime, campaign.id, on_start)))

        try:
            state = await engine.run_campaign(campaign, prepared=record, on_run=watch,
                                              on_progress=on_progress)
        finally:
            for watcher in watchers:
                watcher.cancel()
        counts = await runtime.journal.counts(campaign.id)
        refused = engine.refused_for(campaign.account)
        error = str(refused) if refused is not None else None
        if state == "braked":
            latest = await runtime.journal.campaign(campaign.id)
            error = latest.error if latest is not None else None
        return SendOutcome(state, counts, error)


async def _refuse_used_id(journal: Journal, campaign: Campaign) -> None:
    """Raise `UserError` when the campaign's id belongs to another campaign that ended
    (`identity.reuse_problem`): a new file never restarts an old campaign."""
    record = await journal.campaign(campaign.id)
    if not used(record):
        return
    content = await asyncio.to_thread(content_fingerprint, campaign)
    problem = reuse_problem(campaign, record, content)
    if problem is not None and problem.is_error:
        raise UserError([problem])


@contextlib.asynccontextmanager
async def _leading(runtime: Runtime) -> AsyncIterator[asyncio.Event]:
    """Take the journal's leadership lease for a foreground send (or raise `JournalBusy`)
    and renew it from the start: a big snapshot can take longer than the lease. The event
    is set if the lease is lost anyway."""
    leadership = runtime.leadership
    assert leadership is not None  # opened with lead=True
    if not await leadership.acquire():
        raise JournalBusy(runtime.journal.location, "the daemon that leads it")
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


async def _announce_total(
    runtime: Runtime, campaign_id: str, on_start: ProgressStart,
) -> None:
    """The progress total, once the snapshot is whole (at once unless it is streamed)."""
    await runtime.engine.wait_whole(campaign_id)
    record = await runtime.journal.campaign(campaign_id)
    if record is not None:
        counts = await runtime.journal.counts(campaign_id)
        total = record.recipients + record.skipped
        on_start(total, total - counts.get("pending", 0))


async def _halt_on(event: asyncio.Event, run: CampaignRun) -> None:
    await event.wait()
    run.halt()
