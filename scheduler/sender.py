"""The engine: the sending parts of one process, wired together and started and closed as one.

`Snapshots` takes each campaign's snapshot, `Driver` moves it through its states, the
`Dispatcher` of its account posts its batches through that account's client, rate limit and
worker pool (one each per ``[[accounts]]`` entry, SPEC §13.3), `Recorder` writes their
outcomes to the journal and the delivery log. `send`, `run` and `demo` each open one engine
(`service.open_engine`) and hand it campaigns (`Engine.run_campaign`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from scheduler.answers import Keeper
from scheduler.campaign import Campaign
from scheduler.campaign_run import CampaignRun, Clock, ProgressCallback, utcnow
from scheduler.cascade import CascadeClient
from scheduler.config import CapConfig, Route, SendingConfig
from scheduler.delivery_log import DeliveryLog
from scheduler.dispatcher import CredentialsRefused, Dispatcher
from scheduler.driver import Driver
from scheduler.indexing import MessageIndex
from scheduler.journal import CampaignRecord, Journal
from scheduler.lifecycle import Lifecycle
from scheduler.metrics import Metrics
from scheduler.recorder import Recorder
from scheduler.snapshots import Snapshots
from scheduler.streaming import Reader, StreamJob
from scheduler.suppression import Suppression
from scheduler.vocabulary import CampaignState

__all__ = ["Account", "CampaignRun", "Clock", "Engine", "ProgressCallback", "utcnow"]


@dataclass(frozen=True)
class Account:
    """One account's way to the API: its name, its client (session, pool, key) and its
    ``[sending]`` (with its own ``requests_per_second`` and ``concurrency``)."""

    name: str
    client: CascadeClient
    sending: SendingConfig
    #: (environment variable, credential file) of its key, named when the API refuses it
    key_source: tuple[str, str] = ("CASCADE_API_KEY", "api-key")


class Engine:
    """Shared by every campaign of a process; each account has its own dispatcher (client,
    rate limit, in-flight limit, worker pool), so one account's outage or refused key never
    holds another's campaigns back."""

    def __init__(
        self,
        *,
        accounts: Sequence[Account],
        journal: Journal,
        log: DeliveryLog,
        lifecycle: Lifecycle,
        sending: SendingConfig,
        default_route: Route,
        index: MessageIndex,
        suppression: Suppression | None = None,
        suppression_path: Path | None = None,
        clock: Clock = utcnow,
        may_send: Callable[[], bool] = lambda: True,
        metrics: Metrics | None = None,
        caps: Sequence[CapConfig] = (),
    ) -> None:
        self.journal = journal
        self.metrics = metrics or Metrics()
        self.lifecycle = lifecycle
        #: writes the outcomes of posted batches, and never lets go of an answer in hand
        self.answers = Keeper(journal, log, self.metrics)
        self.recorder = Recorder(journal, log, self.metrics, self.answers)
        #: one dispatcher per account, in the config's order
        self.dispatchers = {
            account.name: Dispatcher(
                client=account.client, journal=journal, recorder=self.recorder,
                lifecycle=self.lifecycle, sending=account.sending, metrics=self.metrics,
                clock=clock, may_send=may_send, account=account.name,
                key_source=account.key_source,
            )
            for account in accounts
        }
        self.snapshots = Snapshots(
            journal, self.lifecycle, batch_size=sending.batch_size, suppression=suppression,
            suppression_path=suppression_path,
        )
        self.driver = Driver(
            journal=journal, lifecycle=self.lifecycle, dispatchers=self.dispatchers,
            recorder=self.recorder, snapshots=self.snapshots, sending=sending,
            default_route=default_route, caps=caps, catch_up=index.catch_up, clock=clock,
        )

    @property
    def dispatcher(self) -> Dispatcher:
        """The first account's dispatcher (the only one without ``[[accounts]]``)."""
        return next(iter(self.dispatchers.values()))

    def start(self) -> None:
        """Start every account's worker pool."""
        for dispatcher in self.dispatchers.values():
            dispatcher.start()

    async def close(self) -> None:
        """Stop the streams and the workers; call after every campaign run has returned."""
        await self.snapshots.close()
        for dispatcher in self.dispatchers.values():
            await dispatcher.close()
        await self.recorder.close()

    @property
    def refused(self) -> CredentialsRefused | None:
        """Why the API refuses an account's requests now (a 401/403), until new credentials
        come: the first account refused (`refused_for` tells one account's)."""
        return next((d.refused for d in self.dispatchers.values() if d.refused), None)

    def refused_for(self, account: str) -> CredentialsRefused | None:
        """Why the API refuses ``account``'s requests now, or None."""
        dispatcher = self.dispatchers.get(account)
        return None if dispatcher is None else dispatcher.refused

    def use_credentials(self, account: str, headers: Mapping[str, str] | None) -> None:
        """New credentials for ``account`` (a reload after the API refused the old ones):
        its requests may go again. ``None`` keeps the client's headers (the embedded sandbox
        takes any)."""
        self.dispatchers[account].use_credentials(headers)

    async def run_campaign(
        self, campaign: Campaign, *,
        prepared: CampaignRecord | Awaitable[CampaignRecord] | None = None,
        on_run: Callable[[CampaignRun], None] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> CampaignState:
        """Take one campaign to its end, or until it is halted (`Driver.run_campaign`)."""
        return await self.driver.run_campaign(campaign, prepared=prepared, on_run=on_run,
                                              on_progress=on_progress)

    async def prepare(
        self, campaign: Campaign, *, stream: bool = False, reader: Reader | None = None,
    ) -> CampaignRecord:
        """Snapshot the campaign's audience unless it already started (`Snapshots.prepare`)."""
        return await self.snapshots.prepare(campaign, stream=stream, reader=reader)

    def stream_job(self, campaign: Campaign) -> StreamJob:
        """What a reader of this campaign's streamed snapshot is given."""
        return self.snapshots.stream_job(campaign)

    async def wait_whole(self, campaign_id: str) -> None:
        """Return once the campaign's snapshot is whole, or its stream failed or stopped."""
        await self.snapshots.wait_whole(campaign_id)

    def open_run(
        self, campaign: Campaign, record: CampaignRecord,
        on_progress: ProgressCallback | None = None,
    ) -> CampaignRun:
        """A handle for one campaign's sending; `drive` it, `halt` it from elsewhere."""
        return self.driver.open_run(campaign, record, on_progress)

    async def drive(self, run: CampaignRun) -> CampaignState:
        """Send the campaign until every recipient is final, or it is halted, fails or expires."""
        return await self.driver.drive(run)
