"""The daemon (`cascade-scheduler run`): campaign files in, campaigns sent on time, forever.

APScheduler is only the timer (in-memory store, one date job per campaign, rebuilt from the files
and the journal at every start); the journal is the record of truth. Jobs hand the campaign to
the daemon's own tasks, which drive the shared `Engine`. The campaigns folder is watched and
re-read on SIGHUP; a bad file is logged loudly and never takes the daemon down.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import tomllib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import watchfiles
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from scheduler.campaign import Campaign
from scheduler.config import Config
from scheduler.errors import ConfigError, UserError
from scheduler.identity import judged
from scheduler.journal import CampaignRecord, JournalError
from scheduler.loader import CampaignCheck, campaign_files, load_campaigns
from scheduler.metrics import HealthServer, Metrics, Readiness
from scheduler.oplog import get_logger
from scheduler.recurrence import MISSED, NO_LONGER, PREVIOUS_RUNNING, decide
from scheduler.rotation import Rotation
from scheduler.sdnotify import Notifier
from scheduler.sender import CampaignRun, utcnow
from scheduler.series import is_run_of, parse_run_id, run_of
from scheduler.service import Runtime, open_runtime
from scheduler.trigger_days import decide_days
from scheduler.upkeep import Upkeep
from scheduler.vocabulary import FINISHED, CampaignState
from scheduler.webhooks import WebhookServer

RETRY_FIRST, RETRY_CAP = 2.0, 60.0  # seconds before a campaign whose storage failed goes again
WATCH_DEBOUNCE_MS = 300  # a burst of editor writes becomes one reload; well inside the 2 s target
WATCH_SETTLE_MS = 1000  # the watcher's first empty yield comes this soon after it is up
IDLE_POLL = 0.5  # seconds between looks for messages awaiting a status (until_idle)


@dataclass
class _Tracked:
    """What the daemon knows about one campaign id."""

    campaign: Campaign
    prepared: asyncio.Task[CampaignRecord] | None = None
    run: CampaignRun | None = None
    task: asyncio.Task[None] | None = None
    state: str = "scheduled"
    resume_after: bool = False
    removed: bool = False
    interruptions: int = 0  # storage failures in a row (the retry waits longer each time)


@dataclass
class _Invalid:
    """A campaign file that does not validate, and the problems we last reported for it."""

    rendered: str
    campaign_id: str | None = None


async def run_daemon(
    config: Config, *, notifier: Notifier | None = None, until_idle: bool = False,
) -> int:
    """`cascade-scheduler run`: open the engine, serve until stopped; 0 on a clean stop."""
    config.require_daemon()
    notifier = notifier or Notifier()
    metrics = Metrics()
    try:
        async with open_runtime(config, metrics, lead=True) as runtime:
            daemon = Daemon(config, runtime, notifier, until_idle=until_idle)
            await daemon.serve()
    finally:
        notifier.close()
    return 0


class Daemon:
    """Runs until SIGTERM/SIGINT (or, with ``until_idle``, until every campaign is final)."""

    def __init__(
        self, config: Config, runtime: Runtime, notifier: Notifier, *, until_idle: bool = False,
    ) -> None:
        leadership, metrics = runtime.leadership, runtime.metrics
        assert leadership is not None  # opened with lead=True
        self._rotation = Rotation(config, runtime)  # holds the config: its credentials change
        self.notifier = notifier
        self.until_idle = until_idle
        self.leadership = leadership
        self.metrics = metrics
        metrics.present.states = self.state_counts
        metrics.present.leading = lambda: leadership.leading
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._upkeep = Upkeep(runtime, leadership, notifier, config=lambda: self._rotation.config,
                              campaigns=self, lock=self._lock, stop=self._stop)
        readiness = Readiness([lambda: self._upkeep.journal_problem, self._credentials_problem])
        address = config.metrics.address
        self._health = None if address is None else HealthServer(metrics, readiness, *address)
        self._deliveries = self._upkeep.deliveries
        hook = config.delivery_reports.address
        self._webhooks = None if hook is None else WebhookServer(
            self._deliveries, self._rotation.webhook_token, *hook, index=self._upkeep.index_some,
            refresh=self._rotation.refresh_webhook_token)
        self.log = get_logger("daemon")
        self._runtime = runtime
        self._engine = runtime.engine
        self._journal = runtime.journal
        self._lifecycle = runtime.lifecycle
        self._timer = AsyncIOScheduler(
            timezone=UTC,
            # never let APScheduler drop a late job silently: the TTL rule decides (SPEC §7)
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        )
        self._campaigns: dict[str, _Tracked] = {}
        self._file_ids: dict[Path, str] = {}
        self._invalid: dict[Path, _Invalid] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._reload = asyncio.Event()
        self._idle_waiter: asyncio.Task[None] | None = None  # until_idle: statuses to come
        self._missed: set[str] = set()  # series occurrences announced missed (SPEC §13.1)

    @property
    def config(self) -> Config:
        """The daemon's config, with the credentials it uses now."""
        return self._rotation.config

    # ------------------------------------------------------------------ main

    async def serve(self) -> None:
        """Load, announce READY, serve until SIGTERM/SIGINT, shut down cleanly."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        try:
            await self._start_health()
            # lines a crash kept from the delivery log, before new ones come after them
            await self._upkeep.replay_deliveries(utcnow())
            await self._start_webhooks()
            await self._serve()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            if self._health is not None:
                await self._health.stop()
            if self._webhooks is not None:
                await self._webhooks.stop()
            await self._deliveries.flush()  # the marks of the lines written

    async def _start_health(self) -> None:
        """Listen for /metrics, /livez and /readyz when ``[metrics] listen`` is set."""
        if self._health is None:
            return
        try:
            await self._health.start()
        except OSError as exc:
            raise ConfigError.single(
                f"cannot listen on {self.config.metrics.listen}: {exc.strerror or exc}: "
                "pick a free port", file=self.config.source, field="metrics.listen",
            ) from None

    async def _start_webhooks(self) -> None:
        """Take delivery reports at ``[delivery_reports] listen`` (every daemon does: SMSBAT
        may reach any of them, and each journals what it gets)."""
        if self._webhooks is None:
            return
        try:
            await self._webhooks.start()
        except OSError as exc:
            raise ConfigError.single(
                f"cannot listen on {self.config.delivery_reports.listen}: "
                f"{exc.strerror or exc}: pick a free port", file=self.config.source,
                field="delivery_reports.listen",
            ) from None

    def _credentials_problem(self) -> str | None:
        refused = self._engine.refused
        return None if refused is None else str(refused)

    async def _serve(self) -> None:
        self._timer.start()
        # Watch before the first load, so a file written between the load and READY=1 is not
        # missed: awatch sets up inotify synchronously on its first step (one loop turn).
        watcher = self._spawn(self._watch())
        await asyncio.sleep(0)
        leading = await self._try_to_lead()
        await self._reconcile()
        if leading:
            await self._took_over()
        self._lifecycle.announce(
            "daemon_started", role=self.leadership.role, holder=self.leadership.holder,
            campaigns=len(self._campaigns), invalid=len(self._invalid),
            folder=str(self.config.paths.campaigns),
        )
        self.notifier.ready(self.status_line())
        background = [
            watcher,
            self._spawn(self._reloader()),
            self._spawn(self._lead()),
            *(self._spawn(loop) for loop in self._upkeep.loops()),
        ]
        self._check_idle()
        await self._stop.wait()
        self.notifier.stopping()
        self._lifecycle.announce("daemon_stopping", role=self.leadership.role)
        for task in background:
            task.cancel()
        await self._shutdown_runs()
        self._timer.shutdown(wait=False)
        await self.leadership.release()  # SIGTERM hands over: a standby takes it at once
        with contextlib.suppress(JournalError):
            await self._journal.leave(self.leadership.holder)

    async def _shutdown_runs(self) -> None:
        """Stop taking batches, let in-flight ones finish, leave campaigns resumable."""
        for tracked in self._campaigns.values():
            if tracked.run is not None:
                tracked.run.halt(None)
        tasks: list[asyncio.Future[Any]] = [t for t in self._tasks if not t.done()]
        tasks += [t.prepared for t in self._campaigns.values()
                  if t.prepared is not None and not t.prepared.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ inputs

    async def _watch(self) -> None:
        """Reconcile whenever something changes under the campaigns (or audiences) folder."""
        paths = [self.config.paths.campaigns]
        if self.config.paths.audiences is not None and self.config.paths.audiences.is_dir():
            paths.append(self.config.paths.audiences)
        watching = False
        async for changes in watchfiles.awatch(
            *paths, stop_event=self._stop, debounce=WATCH_DEBOUNCE_MS, step=50,
            recursive=True, ignore_permission_denied=True,
            rust_timeout=WATCH_SETTLE_MS, yield_on_timeout=True,
        ):
            if changes or not watching:
                # the first (empty) yield proves the watcher is up: catch up on anything
                # written between the first load and that moment
                watching = True
                await self._reconcile()

    # ------------------------------------------------------------------ leadership

    async def _try_to_lead(self) -> bool:
        """One attempt at the lease at start (a journal that does not answer: standby)."""
        try:
            return await self.leadership.acquire()
        except JournalError as exc:
            self.log.warning("lease_acquire_failed", error=str(exc))
            return False

    async def _lead(self) -> None:
        """Hold the lease while leading; as a standby, wait to take it over."""
        while not self._stop.is_set():
            if not self.leadership.leading:
                if not await self.leadership.wait_for_lease(self._stop):
                    return
                await self._reconcile()
                await self._took_over()
            await self.leadership.hold(self._stop, self._step_down)

    async def _took_over(self) -> None:
        """Now the leader: say so; campaigns whose file is gone are cancelled."""
        self._lifecycle.announce("leadership_acquired", holder=self.leadership.holder,
                                 epoch=self.leadership.epoch)
        self._upkeep.role_changed()
        await self._cancel_orphans()
        self._upkeep.look_for_cancelled()
        self.notifier.status(self.status_line())

    async def _step_down(self, reason: str) -> None:
        """The lease is lost: stop every campaign after its in-flight batch, disarm every
        timer, and forget the schedule (a new term rebuilds it from files and journal)."""
        self._lifecycle.announce("leadership_lost", "warning", holder=self.leadership.holder,
                                 reason=reason)
        self._upkeep.role_changed()
        async with self._lock:
            for tracked in self._campaigns.values():
                self._unschedule(tracked.campaign.id)
                if tracked.run is not None:
                    tracked.run.halt(None)
            running = [t.task for t in self._campaigns.values()
                       if t.task is not None and not t.task.done()]
            await asyncio.gather(*running, return_exceptions=True)
            self._campaigns.clear()
        self.notifier.status(self.status_line())

    async def _reloader(self) -> None:
        """SIGHUP: re-read credentials and every campaign file."""
        while True:
            await self._reload.wait()
            self._reload.clear()
            self.notifier.reloading()
            self._lifecycle.announce("daemon_reloading")
            self._rotation.reload()
            await self._reconcile()
            self._lifecycle.announce("daemon_reloaded", status=self.status_line())
            self.notifier.ready(self.status_line())

    # ------------------------------------------------------------------ reconcile

    async def _reconcile(self) -> None:
        """Make the schedule match the files and the journal (SPEC §7 rules); as a standby,
        only check the files. A journal that fails is logged; the next change or reload
        tries again (the watcher never dies of it)."""
        try:
            await self._reconcile_once()
        except JournalError as exc:
            self.log.error("reconcile_failed", error=str(exc))
        # a file may have gone: its campaign's deadline counts now
        self._upkeep.look_for_cancelled()
        self.notifier.status(self.status_line())

    async def _reconcile_once(self) -> None:
        async with self._lock:
            files = campaign_files(self.config.paths.campaigns)
            checks = await asyncio.to_thread(load_campaigns, files, self.config, utcnow())
            if not self.leadership.leading:
                for check in checks:
                    if check.campaign is None:
                        await self._invalid_file(check)
                    else:
                        self._invalid.pop(check.file, None)
                return
            # one read of the journal per reconcile, not one per campaign (1,000 files load
            # in under 2 s instead of 6: each read would queue behind snapshot writes)
            records = {r.id: r for r in await self._journal.campaigns()}
            # a file with the id of a campaign that ended is refused unless it is that very
            # campaign (or says resume = true): it is reported as invalid, and nothing is sent
            checks = await asyncio.to_thread(_judge_ids, checks, records)
            present: set[str] = set()
            for check in checks:
                if check.campaign is None:
                    cid = await self._invalid_file(check)
                elif check.campaign.trigger is not None:  # a trigger (SPEC §13.2)
                    self._invalid.pop(check.file, None)
                    self._file_ids[check.file] = cid = check.campaign.id
                    present |= await self._apply_trigger(check.campaign, records)
                elif check.campaign.repeat is not None:  # a series (SPEC §13.1)
                    self._invalid.pop(check.file, None)
                    self._file_ids[check.file] = cid = check.campaign.id
                    present |= await self._apply_series(check.campaign, records)
                else:
                    self._invalid.pop(check.file, None)
                    self._file_ids[check.file] = cid = check.campaign.id
                    await self._apply(check.campaign, records.get(cid))
                if cid is not None:
                    present.add(cid)
            for cid in set(self._campaigns) - present:
                if not self._campaigns[cid].removed:
                    await self._removed(cid)
            for gone in set(self._file_ids) - set(files):
                del self._file_ids[gone]
                self._invalid.pop(gone, None)

    # -- series (SPEC §13.1): the rules are `scheduler.recurrence`'s -------------------------

    async def _apply_series(
        self, series: Campaign, records: dict[str, CampaignRecord],
    ) -> set[str]:
        """Run, keep, cancel or record as missed the series' occurrences as
        `recurrence.decide` says; the run ids it tracks (they stay while the file does)."""
        decision = decide(series, records.values(), utcnow())
        for run_id, reason in decision.cancel.items():
            self._unschedule(run_id)
            self._campaigns.pop(run_id, None)
            await self._lifecycle.move(run_id, "cancelled", error=_WHY[reason], reason=reason)
            if reason == MISSED:
                self._occurrence_missed(series.id, run_id)
        for run_id in decision.missed:
            if run_id not in self._missed:
                self._missed.add(run_id)
                self._occurrence_missed(series.id, run_id)
        for occurrence in decision.run:
            record = records.get(occurrence.id)
            if (occurrence.send_at <= utcnow() and (record is None or record.started_at is None)
                    and self._previous_running(occurrence.id)):
                await self._skip_occurrence(occurrence, record)
                continue
            if (occurrence.send_at <= utcnow() and record is None
                    and occurrence.id not in self._campaigns):
                self.metrics.occurrences.labels(series.id, "fired").inc()  # late: TTL rule
            await self._apply(occurrence, record)
        if decision.next_at is not None:  # then plan the one after it
            self._timer.add_job(
                self._reconcile, "date", run_date=decision.next_at + timedelta(seconds=1),
                id=f"series:{series.id}", replace_existing=True,
            )
        return {cid for cid in self._campaigns if is_run_of(cid, series.id)}

    # -- triggers (SPEC §13.2): the rules are `scheduler.trigger_days`' ----------------------

    async def _apply_trigger(
        self, trigger: Campaign, records: dict[str, CampaignRecord],
    ) -> set[str]:
        """Run, keep, cancel or record as missed the trigger's day runs as
        `trigger_days.decide_days` says; the run ids it tracks."""
        decision = decide_days(trigger, records.values(), utcnow())
        for run_id, reason in decision.cancel.items():
            self._unschedule(run_id)
            self._campaigns.pop(run_id, None)
            await self._lifecycle.move(run_id, "cancelled", error=_WHY[reason], reason=reason)
            if reason == MISSED:
                self._occurrence_missed(trigger.id, run_id)
        for run_id in decision.missed:
            if run_id not in self._missed:
                self._missed.add(run_id)
                self._occurrence_missed(trigger.id, run_id)
        for day_run in decision.run:
            record = records.get(day_run.id)
            if (day_run.send_at <= utcnow() and record is None
                    and day_run.id not in self._campaigns):
                self.metrics.occurrences.labels(trigger.id, "fired").inc()  # late: TTL rule
            await self._apply(day_run, record)
        if decision.next_at is not None:  # then plan the one after it
            self._timer.add_job(
                self._reconcile, "date", run_date=decision.next_at + timedelta(seconds=1),
                id=f"trigger:{trigger.id}", replace_existing=True,
            )
        return {cid for cid in self._campaigns if is_run_of(cid, trigger.id)}

    def _occurrence_missed(self, series: str, run_id: str) -> None:
        self.metrics.occurrences.labels(series, "missed").inc()
        self._lifecycle.announce("occurrence_missed", "warning", campaign=run_id, series=series)

    def _previous_running(self, run_id: str) -> bool:
        """True when another occurrence of ``run_id``'s series is sending now."""
        parsed = parse_run_id(run_id)
        return parsed is not None and any(
            cid != run_id and is_run_of(cid, parsed.series) and t.task is not None
            and not t.task.done() for cid, t in self._campaigns.items())

    async def _skip_occurrence(self, occurrence: Campaign, record: CampaignRecord | None) -> None:
        """Due while the previous occurrence still sends: recorded, never queued."""
        self._unschedule(occurrence.id)
        tracked = self._campaigns.pop(occurrence.id, None)
        if record is None and tracked is not None and tracked.prepared is not None:
            with contextlib.suppress(UserError):
                record = await tracked.prepared
        if record is None:
            record = await self._engine.prepare(occurrence)
        await self._lifecycle.move(occurrence.id, "cancelled", error=_WHY[PREVIOUS_RUNNING],
                                   reason=f"skipped_occurrence: {PREVIOUS_RUNNING}")
        series = parse_run_id(occurrence.id)
        assert series is not None
        self.metrics.occurrences.labels(series.series, "skipped_occurrence").inc()
        self._lifecycle.announce("skipped_occurrence", "warning", campaign=occurrence.id,
                                 series=series.series, reason=PREVIOUS_RUNNING)

    async def _cancel_orphans(self) -> None:
        """Unfinished campaigns in the journal whose file is gone (removed while we were down)."""
        for record in await self._journal.campaigns():
            # (a cancelled one stays as it is: a series' occurrence keeps why, SPEC §13.1)
            if record.id in self._campaigns or record.state in FINISHED | {"cancelled"}:
                continue
            if record.id not in self._invalid_ids():
                await self._lifecycle.move(record.id, "cancelled",
                                           reason="its campaign file is gone")

    def _invalid_ids(self) -> set[str]:
        return {i.campaign_id for i in self._invalid.values() if i.campaign_id is not None}

    async def _apply(self, campaign: Campaign, record: CampaignRecord | None) -> None:
        tracked = self._campaigns.get(campaign.id)
        if tracked is None:
            tracked = self._campaigns[campaign.id] = _Tracked(campaign)
            self._lifecycle.announce("campaign_loaded", campaign=campaign.id,
                                     file=str(campaign.file), type=campaign.type,
                                     send_at=campaign.send_at.isoformat())
        tracked.removed = False
        if record is not None and record.started_at is not None:
            await self._apply_started(tracked, campaign, record)
        elif (
            tracked.prepared is None
            or tracked.campaign.fingerprint != campaign.fingerprint
            or tracked.state in ("invalid", "cancelled")
        ):
            await self._apply_unstarted(tracked, campaign)
        elif tracked.prepared.done():
            self._prepare(tracked)  # the CSV may have changed; a no-op when it did not

    async def _apply_started(
        self, tracked: _Tracked, campaign: Campaign, record: CampaignRecord
    ) -> None:
        """Once started only ``paused`` and removal have effect; finished ones stay finished."""
        edited = tracked.campaign.fingerprint != campaign.fingerprint
        if edited and tracked.campaign.paused == campaign.paused and record.state != "braked":
            self._lifecycle.announce("campaign_edit_ignored", "warning", campaign=campaign.id,
                                     reason="the campaign already started; only paused and "
                                     "removal take effect now")
        tracked.campaign = campaign
        tracked.state = record.state
        if record.state in FINISHED:
            return
        if campaign.paused:
            await self._pause(tracked)
        elif record.state == "failed" and self._engine.refused_for(campaign.account) is not None:
            return
        else:
            self._launch(tracked)

    async def _apply_unstarted(self, tracked: _Tracked, campaign: Campaign) -> None:
        """Before start, every edit re-plans: fresh snapshot, fresh timer."""
        tracked.campaign = campaign
        self._prepare(tracked)
        if campaign.paused:
            self._unschedule(campaign.id)
            tracked.state = "paused"
            self._spawn(self._mark_paused(tracked))
            return
        tracked.state = "scheduled"
        if campaign.send_at <= utcnow():
            self._launch(tracked)  # late (daemon was down): drive() applies the TTL rule
            return
        self._timer.add_job(
            self._fire, "date", run_date=campaign.send_at, args=[campaign.id],
            id=f"campaign:{campaign.id}", replace_existing=True,
        )
        self._lifecycle.announce("campaign_scheduled", campaign=campaign.id,
                                 send_at=campaign.send_at.isoformat(),
                                 deadline=campaign.deadline.isoformat())

    def _prepare(self, tracked: _Tracked) -> None:
        """(Re)build the snapshot in the background, ahead of send_at. A campaign already due
        (the daemon was down, or its file came late) streams it: the leader sends while its
        audience is still being read."""
        campaign = tracked.campaign
        stream = campaign.send_at <= utcnow() and self.leadership.may_send()
        task = asyncio.create_task(self._engine.prepare(campaign, stream=stream))
        task.add_done_callback(functools.partial(self._prepared, tracked.campaign.id))
        tracked.prepared = task

    def _prepared(self, cid: str, task: asyncio.Task[CampaignRecord]) -> None:
        """Say loudly when a snapshot could not be built (the CSV broke after `check`)."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        errors = [p.render() for p in exc.problems] if isinstance(exc, UserError) else [repr(exc)]
        self._lifecycle.announce("campaign_invalid", "error", campaign=cid, errors=errors)

    async def _mark_paused(self, tracked: _Tracked) -> None:
        assert tracked.prepared is not None
        with contextlib.suppress(UserError):
            await tracked.prepared
            await self._lifecycle.move(tracked.campaign.id, "paused")

    async def _invalid_file(self, check: CampaignCheck) -> str | None:
        """Unschedule what this file used to be and say so loudly, once per distinct problem."""
        cid = self._file_ids.get(check.file) or _declared_id(check.file)
        errors = [p.render() for p in check.problems if p.is_error]
        rendered = "\n".join(errors)
        known = self._invalid.get(check.file)
        self._invalid[check.file] = _Invalid(rendered, cid)
        if known is None or known.rendered != rendered:
            self.metrics.config_errors.inc()
            self._lifecycle.announce("campaign_invalid", "error", file=str(check.file),
                                     campaign=cid, errors=errors)
        tracked = self._campaigns.get(cid) if cid else None
        if tracked is None or tracked.removed:
            return cid  # (a removed one is being cancelled: it ends so, whatever this file is)
        record = await self._journal.campaign(tracked.campaign.id)
        if record is not None and record.state in FINISHED:
            return cid  # finished stays finished: its file no longer matters
        self._unschedule(tracked.campaign.id)
        tracked.state = "invalid"
        if tracked.run is not None:
            tracked.run.halt("invalid")
        elif record is not None:
            await self._lifecycle.move(tracked.campaign.id, "invalid")
        return cid

    async def _removed(self, cid: str) -> None:
        """The file is gone: stop after in-flight batches; restoring it resumes."""
        tracked = self._campaigns[cid]
        tracked.removed = True
        tracked.state = "cancelled"
        self._unschedule(cid)
        if tracked.task is not None and not tracked.task.done():
            if tracked.run is not None:
                tracked.run.halt("cancelled")
            return  # _drive forgets it once the in-flight batches are done
        del self._campaigns[cid]
        record = await self._journal.campaign(cid)
        if record is not None and record.state not in FINISHED:
            await self._lifecycle.move(cid, "cancelled")

    async def _pause(self, tracked: _Tracked) -> None:
        was = tracked.state
        tracked.state = "paused"
        tracked.resume_after = False
        if tracked.run is not None:
            tracked.run.halt("paused")
        elif was != "paused":
            await self._lifecycle.move(tracked.campaign.id, "paused")

    def _unschedule(self, cid: str) -> None:
        with contextlib.suppress(JobLookupError):
            self._timer.remove_job(f"campaign:{cid}")

    # ------------------------------------------------------------------ sending

    async def _fire(self, cid: str) -> None:
        """The APScheduler job: hand the campaign to our own task and return at once."""
        tracked = self._campaigns.get(cid)
        if tracked is not None and not tracked.campaign.paused:
            if self._previous_running(cid):  # a series' occurrence never overlaps (§13.1)
                async with self._lock:
                    await self._skip_occurrence(tracked.campaign, None)
                return
            if (series := run_of(cid)) is not None:
                self.metrics.occurrences.labels(series, "fired").inc()
            self._launch(tracked)

    def _launch(self, tracked: _Tracked) -> None:
        if tracked.task is not None and not tracked.task.done():
            if tracked.run is not None and tracked.run.stopped:
                tracked.resume_after = True  # halting right now: start again once it stopped
            return
        tracked.task = self._spawn(self._drive(tracked))

    async def _drive(self, tracked: _Tracked) -> None:
        campaign = tracked.campaign
        try:
            state: CampaignState = await self._engine.run_campaign(
                campaign, prepared=tracked.prepared,
                on_run=functools.partial(self._running, tracked))
            tracked.interruptions = 0
        except UserError as exc:  # the CSV changed under us and no longer reads
            self._lifecycle.announce("campaign_invalid", "error", campaign=campaign.id,
                                     errors=[p.render() for p in exc.problems])
            state = "invalid"
        except (JournalError, OSError) as exc:
            # the journal or the delivery log cannot be written (a full disk, a log folder
            # with the wrong owner): nothing more is sent, nothing is lost; try again later
            state = "running"
            self._retry_later(tracked, exc)
        except Exception:
            # one campaign's bug must not take the daemon and every other campaign down;
            # it is logged with its traceback, and the campaign waits for a reload
            self.log.exception("campaign_crashed", campaign=campaign.id)
            state = "failed"
        finally:
            tracked.run = None
        if tracked.removed:
            if self._campaigns.get(campaign.id) is tracked:
                del self._campaigns[campaign.id]
            self._upkeep.look_for_cancelled()
        else:
            tracked.state = state
        if tracked.resume_after and not tracked.removed and not self._stop.is_set():
            tracked.resume_after = False
            tracked.task = self._spawn(self._drive(tracked))
        self.notifier.status(self.status_line())
        self._check_idle()

    @staticmethod
    def _running(tracked: _Tracked, run: CampaignRun) -> None:
        """The campaign's run is open: it can be halted from now on."""
        tracked.run = run
        tracked.state = "running"

    def _retry_later(self, tracked: _Tracked, error: JournalError | OSError) -> None:
        """Announce the interruption and launch the campaign again after a growing wait."""
        tracked.interruptions += 1
        wait = min(RETRY_CAP, RETRY_FIRST * 2 ** (tracked.interruptions - 1))
        self._lifecycle.announce("campaign_interrupted", "error", campaign=tracked.campaign.id,
                                 error=str(error), retry_in=wait)
        self._spawn(self._relaunch(tracked, wait))

    async def _relaunch(self, tracked: _Tracked, wait: float) -> None:
        """After ``wait``, and once the delivery log takes lines again, send on."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)
            if self._stop.is_set() or self._runtime.log.writable():
                break
            wait = min(RETRY_CAP, wait * 2)
        current = self._campaigns.get(tracked.campaign.id)
        if current is tracked and not self._stop.is_set() and tracked.state == "running":
            self._launch(tracked)

    # ------------------------------------------------------------------ reporting

    def sending(self) -> bool:
        """A campaign sends now (its task is running)."""
        return any(t.task is not None and not t.task.done() for t in self._campaigns.values())

    def run_of(self, campaign_id: str) -> CampaignRun | None:
        """The campaign's run, while it has one."""
        tracked = self._campaigns.get(campaign_id)
        return None if tracked is None else tracked.run

    def tracked(self) -> Collection[str]:
        """The ids of the campaigns this daemon tracks."""
        return set(self._campaigns)

    def account_of(self, campaign_id: str) -> str | None:
        """The account a tracked campaign (or a tracked series' occurrence) is sent through."""
        tracked = self._campaigns.get(campaign_id) or self._campaigns.get(
            campaign_id.partition("@")[0])
        return None if tracked is None else tracked.campaign.account

    def state_counts(self) -> dict[str, int]:
        """How many campaigns this daemon tracks in each state (invalid files included)."""
        counts: dict[str, int] = {}
        for tracked in self._campaigns.values():
            if not tracked.removed:
                counts[tracked.state] = counts.get(tracked.state, 0) + 1
        invalid = sum(1 for i in self._invalid.values() if i.campaign_id not in self._campaigns)
        if invalid:
            counts["invalid"] = counts.get("invalid", 0) + invalid
        return counts

    def status_line(self) -> str:
        """One line for ``systemctl status``: leader or standby, campaigns in which state."""
        counts = self.state_counts()
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        return f"{self.leadership.role}: {summary or 'no campaigns'}"

    def _check_idle(self) -> None:
        """With ``until_idle`` (the demo), stop once nothing is scheduled or sending (and,
        while polling, once every sent message has its final delivery status)."""
        if not self.until_idle or self._idle_waiter is not None:
            return
        if not self._campaigns_idle():
            return
        if not self.config.delivery_reports.poll:
            self._stop.set()
            return
        self._idle_waiter = self._spawn(self._stop_when_polled())

    def _campaigns_idle(self) -> bool:
        busy: Iterable[str] = ("scheduled", "running", "backing_off")
        return not any(t.state in busy for t in self._campaigns.values())

    async def _stop_when_polled(self) -> None:
        """Stop once every sent message is indexed and final (or campaigns got busy again)."""
        far = utcnow() + timedelta(days=36_500)
        try:
            while not self._stop.is_set():
                if not self._campaigns_idle():
                    return  # a campaign started again: its end checks once more
                with contextlib.suppress(JournalError):
                    if (not await self._upkeep.index_some()
                            and not await self._journal.messages_awaiting_status(far, 1)):
                        self._stop.set()
                        return
                await asyncio.sleep(IDLE_POLL)
        finally:
            self._idle_waiter = None


def _judge_ids(
    checks: list[CampaignCheck], records: dict[str, CampaignRecord],
) -> list[CampaignCheck]:
    """Each valid file judged against the journal's campaign of its id (`identity.judged`)."""
    return [judged(c, records.get(c.campaign.id)) if c.campaign else c for c in checks]


#: why a series' occurrence was cancelled, as `report` shows it (SPEC §13.1)
_WHY = {
    MISSED: "missed: no daemon ran at its time, and a later occurrence was due (no catch-up)",
    PREVIOUS_RUNNING: "skipped_occurrence: the previous occurrence was still sending",
    NO_LONGER: "no longer an occurrence: the series file changed",
}


def _declared_id(path: Path) -> str | None:
    """The ``id`` an invalid campaign file declares, if it can be read at all (best effort)."""
    try:
        value = tomllib.loads(path.read_text("utf-8-sig")).get("id")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return value if isinstance(value, str) else None
