"""The engine: the sending parts of one process, wired together and started and closed as one.

`Snapshots` takes each campaign's snapshot, `Driver` moves it through its states, `Dispatcher`
posts its batches through one client, rate limit and worker pool, `Recorder` writes their
outcomes to the journal and the delivery log. `send`, `run` and `demo` each open one engine
(`service.open_engine`) and hand it campaigns (`Engine.run_campaign`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
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

__all__ = ["CampaignRun", "Clock", "Engine", "ProgressCallback", "utcnow"]


class Engine:
    """Shared by every campaign of a process: one client, one rate limit, one worker pool."""

    def __init__(
        self,
        *,
        client: CascadeClient,
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
        self.dispatcher = Dispatcher(
            client=client, journal=journal, recorder=self.recorder, lifecycle=self.lifecycle,
            sending=sending, metrics=self.metrics, clock=clock, may_send=may_send,
        )
        self.snapshots = Snapshots(
            journal, self.lifecycle, batch_size=sending.batch_size, suppression=suppression,
            suppression_path=suppression_path,
        )
        self.driver = Driver(
            journal=journal, lifecycle=self.lifecycle, dispatcher=self.dispatcher,
            recorder=self.recorder, snapshots=self.snapshots, sending=sending,
            default_route=default_route, caps=caps, catch_up=index.catch_up, clock=clock,
        )

    def start(self) -> None:
        """Start the dispatcher's worker pool."""
        self.dispatcher.start()

    async def close(self) -> None:
        """Stop the streams and the workers; call after every campaign run has returned."""
        await self.snapshots.close()
        await self.dispatcher.close()
        await self.recorder.close()

    @property
    def refused(self) -> CredentialsRefused | None:
        """Why the API refuses requests now (a 401/403), until new credentials come."""
        return self.dispatcher.refused

    def use_credentials(self, headers: Mapping[str, str] | None) -> None:
        """New credentials (a reload after the API refused the old ones): requests may go
        again. ``None`` keeps the client's headers (the embedded sandbox takes any)."""
        self.dispatcher.use_credentials(headers)

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
