"""A campaign's states from start to end: the one way a campaign is driven.

`Driver.drive` moves a prepared campaign to "running", feeds its open batches to the
dispatcher (a bounded window at a time, asking the send windows' gate of each), walks its
roll-out stages, waits out outages as a whole campaign, and ends it: done, expired, failed,
braked, or halted from outside. `run_campaign` is what `send` and the daemon both call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from scheduler.brake import Brake, released
from scheduler.campaign import Campaign
from scheduler.campaign_run import CampaignRun, Clock, ProgressCallback
from scheduler.cap_gate import CapGate
from scheduler.caps import REFRESH, caps_for
from scheduler.config import CapConfig, Route, SendingConfig
from scheduler.dispatcher import Dispatcher
from scheduler.evergreen import is_evergreen, messaged_before
from scheduler.journal import BatchRecord, CampaignRecord, Journal, JournalFenced
from scheduler.lifecycle import Lifecycle
from scheduler.outcomes import all_open, open_messages, open_size
from scheduler.recorder import Recorder
from scheduler.snapshots import Snapshots
from scheduler.vocabulary import EXPIRED_REASON, FINISHED, OUTSIDE_WINDOW, CampaignState
from scheduler.window_gate import WindowGate, releases

#: how long a campaign waits after its retries ran out, growing per round up to the cap (seconds)
CAMPAIGN_BACKOFF = (5.0, 300.0)
PAGE = 32  # open batches read at a time
PROGRESS_EVERY = 10.0  # seconds between campaign_progress events


class Driver:
    """Drives every campaign of a process, each through its own `CampaignRun`."""

    def __init__(
        self, *, journal: Journal, lifecycle: Lifecycle, dispatchers: Mapping[str, Dispatcher],
        recorder: Recorder, snapshots: Snapshots, sending: SendingConfig, default_route: Route,
        caps: Sequence[CapConfig], catch_up: Callable[[], Awaitable[None]], clock: Clock,
    ) -> None:
        self._journal, self._lifecycle = journal, lifecycle
        #: each account's dispatcher: a campaign's batches go to its account's (SPEC §13.3)
        self._dispatchers, self._recorder, self._snapshots = dispatchers, recorder, snapshots
        self._sending, self._default_route = sending, default_route
        self._caps, self._catch_up, self._clock = tuple(caps), catch_up, clock
        self.progress_every = PROGRESS_EVERY
        self.caps_refresh = REFRESH

    def open_run(
        self, campaign: Campaign, record: CampaignRecord,
        on_progress: ProgressCallback | None = None,
    ) -> CampaignRun:
        """A handle for one campaign's sending; `drive` it, `halt` it from elsewhere.

        It goes through the account it was planned for (the journal's), not the one its
        file names now: an edit of a started campaign changes nothing of it (SPEC §7). Only
        an account no longer configured gives way to the file's."""
        if record.account != campaign.account and record.account in self._dispatchers:
            campaign = campaign.model_copy(update={"account": record.account})
        caps = caps_for(campaign, self._caps)
        dispatcher = self.dispatcher_of(campaign)
        return CampaignRun(
            campaign, campaign.route or self._default_route, record.deadline,
            # in flight + being recorded + queued ahead, so a worker rarely finds nothing of
            # this campaign queued (transactional work must be waiting to go first)
            slots=lambda: dispatcher.in_flight_limit * 2 + 2,
            windows=WindowGate(campaign.window, record.deadline, self._clock,
                               release=releases(campaign)),
            caps=CapGate(caps, self._journal, catch_up=self._catch_up, clock=self._clock,
                         refresh=self.caps_refresh) if caps else None,
            brake=(Brake(self._sending.brake_rate, self._sending.brake_window)
                   if self._sending.brake_window else None),
            on_progress=on_progress,
        )

    def dispatcher_of(self, campaign: Campaign) -> Dispatcher:
        """The dispatcher of the campaign's account."""
        try:
            return self._dispatchers[campaign.account]
        except KeyError:
            names = ", ".join(self._dispatchers)
            raise ValueError(f'campaign {campaign.id} names account "{campaign.account}", '
                             f"which is not configured (the accounts are {names})") from None

    async def run_campaign(
        self, campaign: Campaign, *,
        prepared: CampaignRecord | Awaitable[CampaignRecord] | None = None,
        on_run: Callable[[CampaignRun], None] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> CampaignState:
        """Take one campaign to its end, or until it is halted: the one way `send` and the
        daemon drive a campaign (and each occurrence of a series will).

        ``prepared``: its snapshot's record, or the task taking it (None: taken here, whole).
        ``on_run`` is handed the run before it is driven, so the caller can halt it; a run
        halted there is not started. A process deposed meanwhile (`JournalFenced`) leaves the
        campaign "running": the new leader carries it on."""
        try:
            if prepared is None:
                record = await self._snapshots.prepare(campaign)
            elif isinstance(prepared, CampaignRecord):
                record = prepared
            else:
                record = await prepared
            run = self.open_run(campaign, record, on_progress)
            if on_run is not None:
                on_run(run)
            if run.stopped:
                return "running"
            return await self.drive(run)
        except JournalFenced:
            return "running"

    async def drive(self, run: CampaignRun) -> CampaignState:
        """Send the campaign until every recipient is final, or it is halted, fails or expires."""
        cid = run.campaign.id
        record = await self._journal.campaign(cid)
        assert record is not None  # prepare() comes first
        if record.state in FINISHED:
            return record.state  # finished long ago: nothing to send, nothing to log again
        if record.state == "braked" and not released(run.campaign.file, record.finished_at):
            return "braked"  # until its file is saved again after the brake
        if self.dispatcher_of(run.campaign).refused is not None:
            return await self._fail(run)
        # "running" freezes the snapshot (started_at) even when it expires at once, so an
        # expired campaign is never re-planned and its skipped rows are logged exactly once
        await self._lifecycle.move(
            cid, "running", type=run.campaign.type, recipients=record.recipients,
            skipped=record.skipped, send_at=record.send_at.isoformat(),
            deadline=record.deadline.isoformat(), route=run.route,
            **_streaming_field(record),
        )
        run.started(record.started_at is None)  # the schedule lag is the first start's
        await self._snapshots.resume(run, record)
        if not record.streaming:
            await self._recorder.log_skips(run)  # a streamed snapshot's: once it is whole
        await self._recorder.log_unlogged(run)
        if self._clock() >= run.deadline:
            return await self._expire(run, record)
        await self._settle_crashed(run)
        await self._resume_stage(run, record)
        if is_evergreen(run.campaign):  # series (SPEC §13.1): only those never messaged
            run.already = await messaged_before(self._journal, run.campaign)
        ticker = asyncio.create_task(self._report_progress(run))
        try:
            if run.caps is not None:
                await run.caps.start()
            return await self._rounds(run, record)
        finally:
            ticker.cancel()
            if run.caps is not None:
                run.caps.stop()

    async def _rounds(self, run: CampaignRun, record: CampaignRecord) -> CampaignState:
        """Feed the batches, then decide: finished, halted, failed, backing off or expired."""
        rounds = 0
        while True:
            await self._feed(run)
            if self.dispatcher_of(run.campaign).refused is not None:
                return await self._fail(run)
            if run.stopped:
                if run.stop_state == "braked" and (counts := await self._all_final(run)):
                    # the last batch tripped it: nothing is left to stop, the campaign is over
                    return await self._finish(run, record, counts, brake=run.details)
                return await self._halted(run)
            if run.backing_off:
                rounds += 1
                if not await self._back_off(run, rounds):
                    continue
                if run.stopped:
                    return await self._halted(run)
                return await self._expire(run, record)
            counts = await self._journal.counts(run.campaign.id)
            if counts.get("pending", 0) == 0 and await self._snapshots.whole(run):
                return await self._finish(run, record, counts)
            if self._clock() >= run.deadline:
                return await self._expire(run, record)
            if await self._stage_complete(run):
                await self._next_stage(run, record)
            elif (held_until := run.windows.held_until) is not None:
                self._announce_hold(run)
                await self._hold_until(run, held_until)  # a send window opens then

    # ----------------------------------------------------------------- roll-out

    async def _resume_stage(self, run: CampaignRun, record: CampaignRecord) -> None:
        """Continue the journaled stage (never repeat one); wait out a hold that is running."""
        rollout = run.campaign.rollout
        if rollout is None:
            return
        stage = min(record.stage, len(rollout.stages) - 1)
        run.enter_stage(stage, record.recipients - rollout.messages(stage, record.recipients))
        if record.stage_at is not None:
            await self._hold_until(run, record.stage_at)

    async def _stage_complete(self, run: CampaignRun) -> bool:
        """True when every message of the stage in progress is final and a later one waits.
        (The snapshot cuts a batch where a stage ends, so no open batch straddles two.)"""
        budget = await self._stage_budget(run)
        if budget is None:
            return False
        first_open = await self._journal.open_batches(run.campaign.id, -1, 1)
        return bool(first_open) and open_size(first_open[0]) > budget

    async def _stage_budget(self, run: CampaignRun) -> int | None:
        """Roll-out: how many more messages the stages so far may send (None: no roll-out)."""
        if run.later is None:
            return None
        counts = await self._journal.counts(run.campaign.id)
        return counts.get("pending", 0) - run.later

    async def _next_stage(self, run: CampaignRun, record: CampaignRecord) -> None:
        """Journal the next stage with its start after the hold, announce it, and wait."""
        rollout = run.campaign.rollout
        assert rollout is not None  # only staged campaigns have a limit
        stage = run.stage + 1
        starts = self._clock() + timedelta(seconds=rollout.hold)
        await self._journal.set_stage(run.campaign.id, stage, starts)
        run.enter_stage(stage, record.recipients - rollout.messages(stage, record.recipients))
        self._lifecycle.announce(
            "campaign_stage", campaign=run.campaign.id, stage=stage + 1,
            stages=len(rollout.stages), share=rollout.stages[stage],
            starts_at=starts.isoformat(),
        )
        await self._hold_until(run, starts)

    async def _hold_until(self, run: CampaignRun, moment: datetime) -> None:
        """Wait until ``moment`` (or the deadline, or a stop)."""
        await run.wait_stop((min(moment, run.deadline) - self._clock()).total_seconds())

    # ----------------------------------------------------------------- feeding

    async def _feed(self, run: CampaignRun) -> None:
        """Queue the campaign's open batches (a bounded window at a time) and wait for them."""
        after = -1
        loop = asyncio.get_running_loop()
        cid = run.campaign.id
        run.windows.look_again()
        streamed = self._snapshots.reading(cid)
        budget = await self._stage_budget(run)
        dispatcher = self.dispatcher_of(run.campaign)
        while not run.halted and dispatcher.refused is None:
            if streamed:
                self._snapshots.look_again(cid)  # an append after this read wakes `more`
            page = await self._journal.open_batches(cid, after, PAGE)
            staged, budget = _within(page, budget)
            if not staged:
                if await self._snapshots.more(run):
                    continue
                break
            for batch in staged:
                after = batch.seq
                until = await self._until(run, batch)
                if until is None:
                    continue  # held by its send window, or expired by it
                await run.take_slot()
                if run.halted or dispatcher.refused is not None:
                    run.free_slot()
                    break
                # a job's future only ever gets a result: failures are kept on the run, so no
                # exception can sit unretrieved in a future that was already discarded
                done: asyncio.Future[None] = loop.create_future()
                run.track(done)
                dispatcher.submit(
                    run, batch.seq, open_messages(batch), done,
                    body=None if batch.decided else batch.body, until=until,
                    doubtful=batch.doubtful,
                )
            if len(staged) < len(page):
                break  # the rest belongs to later roll-out stages
        await run.settled()

    async def _until(self, run: CampaignRun, batch: BatchRecord) -> datetime | None:
        """When the batch must have gone by (the deadline, or its send window's close); None
        when it may not go now (held, or expired outside its window here and now)."""
        until = run.windows.until(batch, open_size(batch))
        if until == "never" or until == "late":
            reason = OUTSIDE_WINDOW if until == "never" else EXPIRED_REASON
            await self._recorder.record(run, batch.seq, all_open(batch, "expired", reason))
            return None
        return None if until == "held" else until

    def _announce_hold(self, run: CampaignRun) -> None:
        """``campaign_held``: how many wait for their send window, and the next opening (once
        per opening, not per round)."""
        news = run.windows.news()
        if news is None:
            return
        held, opening = news
        self._lifecycle.announce(
            "campaign_held", campaign=run.campaign.id, held=held,
            next_opening=opening.isoformat(), window=run.campaign.window.text()
            if run.campaign.window else None,
        )

    async def _report_progress(self, run: CampaignRun) -> None:
        """A ``campaign_progress`` event with the journal's counts every `progress_every` s."""
        while True:
            await asyncio.sleep(self.progress_every)
            counts = await self._journal.counts(run.campaign.id)
            self._lifecycle.announce("campaign_progress", campaign=run.campaign.id, counts=counts)

    async def _back_off(self, run: CampaignRun, rounds: int) -> bool:
        """Wait out an outage as a whole campaign; False means "try again", True "deadline"."""
        base, cap = CAMPAIGN_BACKOFF
        delay = min(cap, base * 2 ** (rounds - 1))
        left = (run.deadline - self._clock()).total_seconds()
        await self._lifecycle.move(
            run.campaign.id, "backing_off", wait=round(min(delay, max(left, 0)), 1), round=rounds,
        )
        await run.wait_stop(min(delay, left))
        if run.stopped or self._clock() >= run.deadline:
            return True
        run.resume()
        await self._lifecycle.move(run.campaign.id, "running")
        return False

    # ----------------------------------------------------------------- endings

    async def _fail(self, run: CampaignRun) -> CampaignState:
        refused = self.dispatcher_of(run.campaign).refused
        assert refused is not None
        await self._lifecycle.move(run.campaign.id, "failed", error=str(refused))
        return "failed"

    async def _halted(self, run: CampaignRun) -> CampaignState:
        state = run.stop_state
        if state is not None:
            await self._lifecycle.move(run.campaign.id, state, error=run.reason, **run.details)
            return state
        return "running"  # shutdown: left running, resumed from the journal at the next start

    async def _expire(self, run: CampaignRun, record: CampaignRecord) -> CampaignState:
        """Every message still open is past send_at + ttl: record and log it as expired."""
        await self._snapshots.wait_whole(run.campaign.id)
        if not await self._snapshots.whole(run):
            return await self._halted(run)  # its stream stopped short: expired at next start
        while page := await self._journal.open_batches(run.campaign.id, -1, PAGE):
            for batch in page:
                await self._recorder.record(run, batch.seq,
                                            all_open(batch, "expired", EXPIRED_REASON))
        counts = await self._journal.counts(run.campaign.id)
        await self._finish(run, record, counts, state="expired")
        return "expired"

    async def _all_final(self, run: CampaignRun) -> dict[str, int] | None:
        """The campaign's counts when every recipient has a final outcome (and its snapshot is
        whole), else None."""
        counts = await self._journal.counts(run.campaign.id)
        if counts.get("pending", 0):
            return None
        current = await self._journal.campaign(run.campaign.id)
        return None if current is None or current.streaming else counts

    async def _finish(
        self,
        run: CampaignRun,
        record: CampaignRecord,
        counts: dict[str, int],
        state: CampaignState = "done",
        **fields: Any,
    ) -> CampaignState:
        await self._recorder.log_skips(run)  # a streamed snapshot's, now that it is whole
        current = await self._journal.campaign(run.campaign.id) or record
        started = current.started_at or self._clock()
        seconds = max((self._clock() - started).total_seconds(), 1e-6)
        await self._lifecycle.move(
            run.campaign.id, state,
            counts={k: v for k, v in counts.items() if k != "pending"},
            duration_s=round(seconds, 3),
            rate_per_s=round(counts.get("sent", 0) / seconds, 1), **fields,
        )
        return state

    async def _settle_crashed(self, run: CampaignRun) -> None:
        """Batches that may have reached the API already (left in flight by a crash or a
        deposed leader, or given back after an ambiguous answer): resent under at-least-once
        (then counted and logged as resent), in doubt under at-most-once."""
        if self._sending.delivery != "at-most-once":
            return
        after = -1
        while page := await self._journal.open_batches(run.campaign.id, after, PAGE):
            for batch in page:
                after = batch.seq
                if not batch.doubtful:
                    continue
                why = ("in flight when the process stopped" if batch.state == "in_flight"
                       else "posted before without a clear answer")
                await self._recorder.record(run, batch.seq, all_open(batch, "in_doubt", why))


def _within(
    page: list[BatchRecord], budget: int | None,
) -> tuple[list[BatchRecord], int | None]:
    """The first batches of ``page`` whose open messages fit in a roll-out's ``budget`` (None:
    no roll-out, all of them), and the budget they leave."""
    if budget is None:
        return page, None
    fitting = []
    for batch in page:
        size = open_size(batch)
        if size > budget:
            break
        fitting.append(batch)
        budget -= size
    return fitting, budget


def _streaming_field(record: CampaignRecord) -> dict[str, Any]:
    """``streaming: true`` on campaign_started while the snapshot is still being read (its
    recipients and skipped counts are those read so far)."""
    return {"streaming": True} if record.streaming else {}
