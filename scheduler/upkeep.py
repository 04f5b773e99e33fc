"""The daemon's housekeeping loops: everything it does beside scheduling and sending.

Each loop is one small job: the systemd heartbeat, this daemon's presence in the journal, the
message index, delivery-status polling, delivery lines a crash kept from the log, final
statuses to the campaigns' brakes, and cancelled campaigns' rows that reach their deadline.
The daemon starts them (`Upkeep.loops`) and cancels them at shutdown; most act only while
this daemon leads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Coroutine, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from scheduler.campaign_run import CampaignRun, utcnow
from scheduler.config import SANDBOX, Config
from scheduler.delivery_log import DeliveryLogUnwritable
from scheduler.dlr import Deliveries, Poller, PollSettings, StatusClient
from scheduler.expiry import expire_cancelled
from scheduler.journal import FinalStatus, JournalError, JournalFenced
from scheduler.leadership import Leadership
from scheduler.oplog import get_logger
from scheduler.sdnotify import Notifier
from scheduler.service import SANDBOX_HEADERS, Runtime

STATUS_EVERY = 5.0  # seconds between STATUS= updates
INDEX_EVERY = 2.0  # seconds between looks for sent messages to index
INDEX_PAUSE = 0.05  # seconds between index transactions while a campaign sends
JOURNAL_PROBE_TIMEOUT = 5.0  # seconds the /readyz journal probe waits
REPLAY_EVERY = 30.0  # seconds between the leader's looks for delivery lines never written
REPLAY_AFTER = 60.0  # ... that many seconds after their final status was journaled
BRAKE_FEED_EVERY = 1.0  # seconds between the leader's looks for final statuses for its brakes
BRAKE_FEED_CALLS = 100  # record_statuses calls (a poll round, a webhook) taken per look
EXPIRY_EVERY = 60.0  # seconds between the leader's looks for cancelled campaigns past deadline


class Campaigns(Protocol):
    """What the loops ask the daemon about the campaigns it tracks."""

    def status_line(self) -> str:
        """One line for ``systemctl status``."""

    def sending(self) -> bool:
        """A campaign sends now."""

    def run_of(self, campaign_id: str) -> CampaignRun | None:
        """The campaign's run, while it has one."""

    def tracked(self) -> Collection[str]:
        """The ids of the campaigns the daemon tracks."""


class Upkeep:
    """The housekeeping loops of one daemon, over its runtime's journal and logs."""

    def __init__(
        self, runtime: Runtime, leadership: Leadership, notifier: Notifier, *,
        config: Callable[[], Config], campaigns: Campaigns, lock: asyncio.Lock,
        stop: asyncio.Event,
    ) -> None:
        self._journal, self._log_file, self._metrics = runtime.journal, runtime.log, runtime.metrics
        self._runtime, self._leadership, self._notifier = runtime, leadership, notifier
        self._config, self._campaigns, self._lock, self._stop = config, campaigns, lock, stop
        self.deliveries = Deliveries(runtime.journal, runtime.log, runtime.metrics,
                                     currency=config().delivery_reports.currency)
        self._accounts: dict[str, str] = {}  # campaign id -> the account the journal kept
        #: why the last presence write failed, if it did (what /readyz reports)
        self.journal_problem: str | None = None
        self._role_changed = asyncio.Event()  # tells `_keep_presence` to write at once
        self._cancelled = asyncio.Event()  # a campaign may have been cancelled: look again
        self.log = get_logger("daemon")

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        """The loops to run until shutdown (status polling only when it is on)."""
        loops = [self._heartbeat(), self._index_messages(), self._keep_presence(),
                 self._replay_stale_deliveries(), self._feed_brakes(), self._expire_cancelled()]
        if self._config().delivery_reports.poll:
            loops.append(self._poll_statuses())
        return loops

    def role_changed(self) -> None:
        """This daemon took or lost the lease: say so in the journal at once."""
        self._role_changed.set()

    def look_for_cancelled(self) -> None:
        """A campaign may have been cancelled (or its file gone): look again now."""
        self._cancelled.set()

    async def index_some(self) -> int:
        """Index a few closed batches (the loop below; and at once when a webhook came before
        its message was indexed); how many it indexed."""
        return await self._runtime.index.some()

    async def replay_deliveries(self, before: datetime) -> None:
        """Write the ``delivery`` lines of final statuses journaled before ``before`` that never
        reached the delivery log (a crash between the two, a log that refused them); trouble
        is said and left for the next look."""
        try:
            await self.deliveries.replay(before)
        except (JournalError, DeliveryLogUnwritable) as exc:
            self.log.warning("delivery_replay_failed", error=str(exc))

    # ------------------------------------------------------------------ the loops

    async def _heartbeat(self) -> None:
        """WATCHDOG=1 from the event loop itself, and a STATUS= line now and then."""
        interval = self._notifier.watchdog_interval()
        step = min(interval, STATUS_EVERY) if interval else STATUS_EVERY
        while True:
            if interval:
                self._notifier.watchdog()
            self._notifier.status(self._campaigns.status_line())
            self._metrics.tick()
            await asyncio.sleep(step)

    async def _keep_presence(self) -> None:
        """Every few seconds, and at once when this daemon takes or loses the lease, tell the
        journal it is alive and since when it holds its role (for `status`); a failure is
        what /readyz reports as the journal not answering."""
        holder = self._leadership.holder
        while True:
            self._role_changed.clear()
            try:
                await asyncio.wait_for(
                    self._journal.heartbeat(
                        holder, self._leadership.since, 3 * STATUS_EVERY),
                    JOURNAL_PROBE_TIMEOUT,
                )
            except (JournalError, TimeoutError) as exc:
                self.journal_problem = (
                    f"the journal does not answer: {exc or 'no answer in time'}")
            else:
                self.journal_problem = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._role_changed.wait(), STATUS_EVERY)

    async def _index_messages(self) -> None:
        """Copy sent messages into the journal's per-message rows, every few seconds (see
        `scheduler.indexing`). It goes a couple of batches per writer transaction, with a
        pause between them while a campaign sends, so the send path's writes (and its fire
        lag) never wait long behind it."""
        while True:
            await asyncio.sleep(INDEX_EVERY)
            try:
                while self._leadership.leading:
                    if not await self.index_some():
                        break
                    await asyncio.sleep(INDEX_PAUSE if self._campaigns.sending() else 0)
            except JournalError as exc:  # a full disk...: say so, try again later
                self.log.warning("message_index_failed", error=str(exc))

    async def _poll_statuses(self) -> None:
        """Ask the status API about every sent message until it is final (leader only), on
        a session and rate limit of its own: it never holds sending back."""
        config = self._config()
        settings = config.delivery_reports
        base = settings.status_base(config.api)
        sandbox = base == SANDBOX
        client = StatusClient(
            self._runtime.client.base_url if sandbox else base,
            lambda: _status_headers(self._config()) or (SANDBOX_HEADERS if sandbox else {}),
            timeout=config.api.timeout,
        )
        poller = Poller(
            self._journal, client, self.deliveries,
            PollSettings(settings.status_rate(config.sending), settings.first_poll,
                         settings.max_interval),
            leading=lambda: self._leadership.leading,
            credentials_of=self._status_credentials,
        )
        async with client:
            await poller.run(self._stop)

    async def _status_credentials(self, campaign_id: str) -> dict[str, str] | None:
        """With several accounts, a campaign's messages are asked about with its account's
        key (each account sees only its own): the account the journal kept when it started,
        which holds after its file was edited or removed. None: the default account's."""
        config = self._config()
        if not config.accounts:
            return None
        account = self._accounts.get(campaign_id)
        if account is None:
            record = await self._journal.campaign(campaign_id)
            if record is None:
                return None
            account = self._accounts[campaign_id] = record.account  # fixed once it started
        return config.account_headers(account) or None  # none set (the sandbox): the client's

    async def _replay_stale_deliveries(self) -> None:
        """The leader looks now and then for lines still unwritten a while after their status
        was journaled (a log that refused them, a daemon that died and did not come back)."""
        while True:
            await asyncio.sleep(REPLAY_EVERY)
            if self._leadership.leading:
                await self.replay_deliveries(utcnow() - timedelta(seconds=REPLAY_AFTER))

    async def _feed_brakes(self) -> None:
        """Every `BRAKE_FEED_EVERY` s, the leader takes the first final statuses journaled
        since its last look, by itself or by a standby that took a webhook, to the brakes of
        the campaigns that send (or hold between roll-out stages) now: too many undeliverable
        or permanenterror ones stop a campaign. Those of other campaigns are dropped."""
        while True:
            await asyncio.sleep(BRAKE_FEED_EVERY)
            try:
                while self._leadership.leading and (finals := await self._journal
                                                    .take_final_statuses(BRAKE_FEED_CALLS)):
                    self._brake_on_deliveries(finals)
            except JournalFenced:
                continue  # deposed: the statuses stay for the new leader
            except JournalError as exc:
                self.log.warning("brake_feed_failed", error=str(exc))

    def _brake_on_deliveries(self, finals: Sequence[FinalStatus]) -> None:
        """Each campaign's statuses to its brake, if it runs now; a brake that trips stops it."""
        by_campaign: dict[str, list[FinalStatus]] = {}
        for final in finals:
            by_campaign.setdefault(final.campaign, []).append(final)
        for cid, statuses in by_campaign.items():
            run = self._campaigns.run_of(cid)
            if run is not None:
                run.observe_deliveries(statuses)

    async def _expire_cancelled(self) -> None:
        """The leader ends cancelled campaigns' unsent rows once their deadline passed
        (`expiry`): looks when a campaign may have been cancelled, at the next deadline of a
        cancelled one, and every `EXPIRY_EVERY` s. Campaigns it tracks are left alone (a
        restored one is sending; a removed one is ending its run)."""
        replay = True  # the first look also writes the lines a crash kept from the log
        while True:
            ahead = None
            if self._leadership.leading:
                try:
                    async with self._lock:
                        ahead = await expire_cancelled(
                            self._journal, self._log_file, self._metrics,
                            route=self._config().api.route, now=utcnow(),
                            busy=set(self._campaigns.tracked()), replay=replay,
                            account=_only_account(self._config()))
                    replay = False
                except JournalFenced:
                    pass  # deposed: the new leader looks
                except (JournalError, DeliveryLogUnwritable) as exc:
                    self.log.warning("cancelled_expiry_failed", error=str(exc))
            wait = EXPIRY_EVERY if ahead is None else min(
                EXPIRY_EVERY, max(0.0, (ahead - utcnow()).total_seconds()) + 0.1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._cancelled.wait(), wait)
            self._cancelled.clear()


def _only_account(config: Config) -> str:
    """The metrics' account of a cancelled campaign's expired messages: the only account,
    else "unknown" (the journal does not keep which account a campaign used)."""
    names = config.account_names
    return names[0] if len(names) == 1 else "unknown"


def _status_headers(config: Config) -> dict[str, str]:
    """The status API's credentials: the default account's (else the first account's).
    With several accounts, messages of the others are asked about with this key too."""
    return config.account_headers(config.default_account or config.account_names[0])
