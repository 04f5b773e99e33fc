"""`plan`: every campaign with its state, send time, audience, progress and ETA at the set rate.

Reads the campaign files and the journal; a campaign the daemon has not snapshotted yet is counted
by streaming its audience, exactly as the daemon would. The ETAs share one rate limit as the
daemon does: campaigns that overlap take turns (transactional ones first), a paused campaign
has none, and a campaign that only waits for the daemon to start again says so instead.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from scheduler.audience import summarize
from scheduler.batching import snapshot_key
from scheduler.campaign import HORIZON, TRANSACTIONAL, Campaign, Rollout, utc_text
from scheduler.caps import caps_for
from scheduler.config import Config, SendingConfig
from scheduler.errors import UserError
from scheduler.forecast import (
    Forecast,
    capped_now,
    forecast,
    hour_text,
    source_text,
    zones_of_batches,
)
from scheduler.identity import judged, used
from scheduler.inflight import PLANNED_ROUND_TRIP, reachable
from scheduler.journal import CampaignRecord, JournalReader, open_journal
from scheduler.loader import CampaignCheck, broken_link, campaign_files, load_campaigns, real_path
from scheduler.report import awaiting_status, campaign_note
from scheduler.rows import AudienceSummary
from scheduler.series import local_text, run_id
from scheduler.suppression import Suppression
from scheduler.vocabulary import FINISHED, SENDING

STATUS_NOTE_FROM = 60  # seconds: a delivery report that takes longer to fill is said in the note
PLAN_COLUMNS = ("campaign", "type", "state", "send_at", "valid", "skipped", "sent",
                "awaiting_status", "eta", "note")
#: a campaign due already, with no journal to say whether it went out
NO_JOURNAL_NOTE = "no journal: cannot tell whether it was sent"


def no_journal_line(config: Config) -> str | None:
    """The one line `plan` prints when the config's journal does not exist (None when it
    does): the sent counts are unknown, not 0, and the usual cause is the wrong config."""
    if config.journal_location().exists:
        return None
    return (f"no journal at {config.paths.state}: nothing was ever sent with this config; if "
            "a daemon sends with another one, pass it with --config (sent is left blank: "
            "unknown, not 0)")


def _sending(config: Config, account: str | None) -> SendingConfig:
    """``[sending]`` with ``account``'s rate and concurrency (None: the default account's)."""
    return config.sending_for(account or config.default_account or config.account_names[0])


def _per_second(sending: SendingConfig) -> float:
    """Messages a second one account keeps up (each has its own rate limit, SPEC §13.3): its
    rate, unless a hard ``concurrency`` holds the requests in flight below what the round trip
    needs (`inflight.reachable`, SPEC §13.5)."""
    return reachable(sending.requests_per_second, sending.most_in_flight) * sending.batch_size


def _held_back(config: Config, sending: SendingConfig, account: str | None) -> str:
    """Why an account's ETAs are slower than its rate limit, or ""."""
    pace = reachable(sending.requests_per_second, sending.most_in_flight)
    if pace >= sending.requests_per_second:
        return ""
    name = account or config.default_account or config.account_names[0]
    whose = f'[[accounts]] "{name}":' if config.accounts else "[sending]"
    return (f"{whose} concurrency = {sending.concurrency} allows {pace:g} requests/s of the "
            f"{sending.requests_per_second:g} set at a {PLANNED_ROUND_TRIP * 1000:.0f} ms round "
            "trip: leave it unset and the in-flight requests follow the round trip")


@dataclass
class _Job:
    """A campaign's remaining messages in the ETA simulation."""

    row: dict[str, Any]
    start: datetime
    left: float
    priority: int  # 0: transactional (goes first), 1: the rest
    deadline: datetime
    #: roll-out: the messages of each stage after this one, and the hold before each
    stages: list[int] = field(default_factory=list)
    hold: float = 0.0
    account: str | None = None  # whose rate it shares (None: the default account's)


def shared_etas(jobs: list[_Job], per_second: float, held_back: str = "") -> None:
    """Fill each job's row ``eta``: campaigns share the one rate; among those due, the higher
    priority takes it all and equals share it evenly (the daemon's queue, as a fluid). A
    staged campaign leaves the queue at the end of each stage and comes back after the hold.
    ``held_back``: why the rate is below the limit, added to the note of each row with an
    ETA."""
    waiting = sorted(jobs, key=lambda j: j.start)
    active: list[_Job] = []
    clock = waiting[0].start if waiting else None
    while clock is not None and (waiting or active):
        while waiting and waiting[0].start <= clock:
            active.append(waiting.pop(0))
        if not active:
            clock = waiting[0].start
            continue
        top = min(job.priority for job in active)
        group = [job for job in active if job.priority == top]
        share = per_second / len(group)
        step = min(job.left for job in group) / share
        if waiting:
            step = min(step, (waiting[0].start - clock).total_seconds())
        clock += timedelta(seconds=step)
        for job in group:
            job.left -= share * step
            if job.left <= 1e-6 and job.stages:  # a stage ends: its hold, then the next
                active.remove(job)
                job.start, job.left = clock + timedelta(seconds=job.hold), job.stages.pop(0)
                bisect.insort(waiting, job, key=lambda j: j.start)
            elif job.left <= 1e-6:
                active.remove(job)
                job.row["eta"] = utc_text(clock)
                if clock > job.deadline:
                    job.row["note"] = (f"at this rate it ends after send_at + ttl "
                                       f"({utc_text(job.deadline)}): the rest would expire")
                job.row["note"] = _joined(job.row["note"], held_back)


def plan_rows(config: Config, now: datetime) -> list[dict[str, Any]]:
    """One row per campaign file (and per journal-only campaign), in send order.

    A campaigns folder that does not exist is a `UserError`, as for `check`.
    """
    folder = config.paths.campaigns
    if not folder.is_dir():
        raise UserError.single(
            "no such file or folder: create it, or set [paths].campaigns in the config "
            "(--config FILE)", file=folder,
        )
    suppression = Suppression.load(config.paths.suppression)
    with contextlib.ExitStack() as stack:
        journal = None
        if config.journal_location().exists:
            journal = stack.enter_context(JournalReader(open_journal(config.journal_location())))
        planner = _Planner(config, journal, suppression, now)
        for check in load_campaigns(campaign_files(folder), config, now):
            # a file with the id of a campaign that ended is refused, as the daemon refuses it
            planner.add(judged(check, planner.records.get(check.campaign.id))
                        if check.campaign else check)
        rows = planner.finish()
    return sorted(rows, key=lambda r: (r["send_at"] or "~", r["campaign"]))


class _Planner:
    """Builds the plan's rows from the files, then the journal, then the shared ETAs."""

    def __init__(
        self, config: Config, journal: JournalReader | None, suppression: Suppression,
        now: datetime,
    ) -> None:
        self.config = config
        self.journal = journal
        self.suppression = suppression
        self.now = now
        self.records = {r.id: r for r in journal.campaigns()} if journal is not None else {}
        self.leading = journal is not None and journal.leader() is not None
        reports = config.delivery_reports
        self.reports = reports.enabled  # delivery statuses come
        self.poll_rate = reports.status_rate(config.sending) if reports.poll else None
        self.rows: list[dict[str, Any]] = []
        self.jobs: list[_Job] = []
        self.seen: set[str] = set()
        self.last_opens: list[tuple[dict[str, Any], datetime]] = []  # held till then at least
        self.counted: dict[Hashable, AudienceSummary] = {}  # `count`'s, by what decides them

    def add(self, check: CampaignCheck) -> None:
        """The row of one campaign file."""
        if check.campaign is None:
            self.add_invalid(check)
            return
        self.seen.add(check.campaign.id)
        if check.campaign.repeat is not None:  # a series (SPEC §13.1)
            self.add_series(check.campaign)
            return
        if check.campaign.trigger is not None:  # a trigger (SPEC §13.2)
            self.add_trigger(check.campaign)
            return
        record = self.records.get(check.campaign.id)
        if record is not None and record.started_at is not None:
            self.add_record(record, check.campaign)
        else:
            self.add_unstarted(check.campaign)

    def add_invalid(self, check: CampaignCheck) -> None:
        """An invalid file: the journal's campaign when it has one (a finished campaign stays
        finished), else a row named after the file."""
        record = self._record_of(check.file)
        why = _why_invalid(check)
        if record is None:
            self.rows.append({
                "campaign": check.file.name, **self._account(None), "type": "",
                "state": "invalid", "send_at": "",
                "valid": 0, "skipped": 0, "sent": self._unsent(), "awaiting_status": None,
                "eta": None, "note": why,
            })
            return
        self.seen.add(record.id)
        row = self.add_record(record, None)
        if record.state in FINISHED:
            row["note"] = f"its file is now invalid ({why}); a finished campaign stays as it is"
        elif used(record):
            row["note"] = f"the file with its id is refused ({why}); it stays {record.state}"
        else:
            row.update(state="invalid", eta=None, note=f"stopped: {why}")

    def _account(self, campaign: Campaign | CampaignRecord | None) -> dict[str, str]:
        """``{"account": ...}`` with several accounts (SPEC §13.3): a journaled campaign's as
        the journal kept it when it was planned, a file's as it says ("" for an invalid file),
        else nothing: a config of one account plans as before."""
        if not self.config.accounts:
            return {}
        return {"account": campaign.account if campaign is not None else ""}

    def _record_of(self, file: Path) -> CampaignRecord | None:
        path = str(real_path(file))
        return next((r for r in self.records.values() if r.file == path), None)

    def add_record(self, record: CampaignRecord, campaign: Campaign | None) -> dict[str, Any]:
        """A campaign the journal has started (or knows only from the journal)."""
        assert self.journal is not None  # a record came from it
        counts = self.journal.counts(record.id)
        pending, sent = counts.get("pending", 0), counts.get("sent", 0)
        row: dict[str, Any] = {
            "campaign": record.id, **self._account(record),
            "type": record.type, "state": record.state,
            "send_at": utc_text(record.send_at), "valid": record.recipients,
            "skipped": record.skipped, "sent": sent,
            "awaiting_status": awaiting_status(self.journal, record.id, sent, self.reports),
            "eta": None,
            "note": campaign_note(record, pending, self.leading),
        }
        if campaign is not None and campaign.rollout is not None:
            row["note"] = _joined(row["note"], _stage_note(campaign, record, self.now))
        self._statuses_note(row, pending + (row["awaiting_status"] or 0))
        if campaign is not None and campaign.window is not None and pending:
            open_by_zone = zones_of_batches(
                (batch.zones, batch.size - len(batch.decided))
                for batch in self.journal.open_batches(record.id)
            )
            self._window_note(row, campaign, open_by_zone)
        paused = campaign is not None and campaign.paused
        if record.state in SENDING and self.leading and pending and not paused:
            job = self._job(row, self.now, pending, record.type, record.deadline,
                            record.account)
            if campaign is not None and campaign.rollout is not None:
                _stage_on(job, campaign.rollout, record, self.now)
        self.rows.append(row)
        return row

    def add_series(self, series: Campaign) -> None:
        """A series: its next occurrences within 30 days (`HORIZON`), UTC and local; the
        occurrences that ran are the journal's campaigns, rows of their own."""
        repeat = series.repeat
        assert repeat is not None
        times = repeat.within(self.now, HORIZON)
        row: dict[str, Any] = {
            "campaign": series.id, **self._account(series), "type": series.type,
            "state": "paused" if series.paused else "series",
            "send_at": utc_text(series.send_at), "valid": 0, "skipped": 0, "sent": None,
            "awaiting_status": None, "eta": None,
            "note": _joined(
                f'repeats "{repeat.cron}" in {repeat.timezone}: {len(times)} '
                f"occurrence{'' if len(times) == 1 else 's'} within 30 days",
                "evergreen: only those no earlier occurrence messaged"
                if repeat.audience == "new" else ""),
            "occurrences": [{"run": run_id(series.id, t), "fire_at": utc_text(t),
                             "local": local_text(t, repeat.timezone)} for t in times],
        }
        self.rows.append(row)
        occurrence = series.occurrence(series.send_at)
        snapshot = self._snapshotted(occurrence)
        if snapshot is not None:  # the daemon's, of these very files
            row.update(valid=snapshot.recipients, skipped=snapshot.skipped)
            return
        try:
            summary = self.count(occurrence)
        except UserError:
            row.update(state="invalid", note="its audience cannot be read: run `check`")
            return
        row.update(valid=summary.valid, skipped=sum(summary.skipped.values()))

    def add_trigger(self, trigger: Campaign) -> None:
        """A trigger: its next day's run (the one ``send_at`` starts), how many are due in it
        and when each zone group goes; the day runs that ran are the journal's campaigns, rows
        of their own."""
        spec = trigger.trigger
        assert spec is not None
        day = next(spec.days_from(trigger.send_at))
        run = trigger.day_run(day)
        row: dict[str, Any] = {
            "campaign": trigger.id, "type": trigger.type,
            "state": "paused" if trigger.paused else "trigger",
            "send_at": utc_text(trigger.send_at), "valid": 0, "skipped": 0, "sent": None,
            "awaiting_status": None, "eta": None, "note": "",
        }
        self.rows.append(row)
        snapshot = self._snapshotted(run)
        if snapshot is not None:  # the daemon's, of these very files
            valid, skipped, zones = snapshot.recipients, snapshot.skipped, self._zones(snapshot)
        else:
            try:
                summary = self.count(run)
            except UserError:
                row.update(state="invalid", note="its audience cannot be read: run `check`")
                return
            valid, skipped, zones = (summary.valid, sum(summary.skipped.values()),
                                     summary.zones)
        groups = sorted(((spec.release(day, group), group, count)
                         for group, count in zones.items()))
        row.update(valid=valid, skipped=skipped)
        row["next_run"] = {
            "run": run.id, "day": day.isoformat(), "due": valid,
            "groups": [{"zones": group, "due": count, "at": utc_text(moment)}
                       for moment, group, count in groups],
        }
        shown = ", ".join(f"{group} {count:,} at {utc_text(moment)}"
                          for moment, group, count in groups[:TRIGGER_GROUPS_SHOWN])
        more = (f", and {len(groups) - TRIGGER_GROUPS_SHOWN} more zone groups"
                if len(groups) > TRIGGER_GROUPS_SHOWN else "")
        row["note"] = (f"on {spec.column} at {spec.at_text} local: next run {run.id}, "
                       f"{valid:,} due" + (f" ({shown}{more})" if groups else ""))

    def _snapshotted(self, run: Campaign) -> CampaignRecord | None:
        """The journal's record of a series' occurrence or a trigger's day run that the daemon
        has snapshotted already from the files as they are now (the snapshot's key matches:
        same file, CSV, suppression list and batch size): its counts are the daemon's, read
        instead of the whole CSV (a million rows take seconds to count)."""
        record = self.records.get(run.id)
        if self.journal is None or record is None or record.state != "scheduled":
            return None
        key = snapshot_key(run, self.config.paths.suppression, self.config.sending.batch_size)
        return record if record.fingerprint == key else None

    def _zones(self, record: CampaignRecord) -> dict[str, int]:
        """A snapshotted day run's recipients per zone group, from its open batches (a few:
        a day run holds a day's rows)."""
        assert self.journal is not None  # `_snapshotted` found the record there
        return zones_of_batches((batch.zones, batch.size - len(batch.decided))
                                for batch in self.journal.open_batches(record.id))

    def count(self, campaign: Campaign) -> AudienceSummary:
        """``campaign``'s audience counted (`summarize`), once per audience file and what
        decides the counts: campaigns that send the same CSV the same way (a list shared by
        many campaigns) read it once. The file's signature is part of the key, so a CSV
        replaced meanwhile is read again. A `UserError` is not kept: each campaign raises its
        own."""
        spec = campaign.audience
        try:
            st = spec.csv.stat()
        except OSError:
            st = None
        # what the counts depend on besides the rows: the columns and the row rules (type:
        # suppression and survey lengths; text: placeholders; window and zone: zone groups;
        # the id's length: how long an id may be); not the id itself, the times or paused
        key = (spec, None if st is None else (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns),
               campaign.type, campaign.text, campaign.window, campaign.timezone,
               len(campaign.wire_id), campaign.trigger, campaign.trigger_day)
        summary = self.counted.get(key) if st is not None else None
        if summary is None:
            # `plan` starts no thread, but an open journal may run one (SQLite's writer):
            # big audiences use forked helpers only without a journal
            summary = summarize(campaign, self.suppression, may_fork=self.journal is None)
            if st is not None:
                self.counted[key] = summary
        return summary

    def _unsent(self) -> int | None:
        """``sent`` of a campaign the journal has not started: 0, or None (unknown) when
        there is no journal (a daemon with another config may have sent it)."""
        return 0 if self.journal is not None else None

    def add_unstarted(self, campaign: Campaign) -> None:
        """A campaign that has sent nothing yet: its audience counted from the files."""
        row: dict[str, Any] = {
            "campaign": campaign.id, **self._account(campaign), "type": campaign.type,
            "state": "scheduled",
            "send_at": utc_text(campaign.send_at), "valid": 0, "skipped": 0,
            "sent": self._unsent(), "awaiting_status": None, "eta": None, "note": "",
        }
        self.rows.append(row)
        try:
            summary = self.count(campaign)
        except UserError:
            row.update(state="invalid", note="its audience cannot be read: run `check`")
            return
        row.update(valid=summary.valid, skipped=sum(summary.skipped.values()))
        if self.journal is None and campaign.send_at <= self.now:
            row.update(state="unknown", note=NO_JOURNAL_NOTE)
            return
        if campaign.rollout is not None:
            row["note"] = (f"in {len(campaign.rollout.stages)} stages, "
                           f"{campaign.rollout.hold} s apart")
        seen = self._window_note(row, campaign, summary.zones)
        self._caps_note(row, campaign)
        self._statuses_note(row, summary.valid)
        if campaign.deadline <= self.now:
            row["state"] = "expired"
        elif campaign.paused:
            row.update(state="paused", note="paused: no ETA until paused = false")
        elif summary.valid:
            start, count = max(self.now, campaign.send_at), summary.valid
            if seen is not None:  # the window decides when they start, and who never does
                count -= seen.unreachable
                start = start if seen.at_once or not seen.held else min(seen.held)
            if count:
                job = self._job(row, start, count, campaign.type, campaign.deadline,
                                campaign.account)
                if campaign.rollout is not None:
                    _stages(job, campaign.rollout, count, 0)

    def _window_note(
        self, row: dict[str, Any], campaign: Campaign, zones: Mapping[str, int],
    ) -> Forecast | None:
        """A windowed campaign: how many are held and till when, how many cannot be reached."""
        seen = forecast(campaign, zones, self.now)
        if seen is None:
            return None
        row.update(held=seen.held_total, unreachable=seen.unreachable)
        note = f"window {seen.window} ({source_text(seen)}): {seen.held_total:,} held"
        if seen.held:
            first, last = min(seen.held), max(seen.held)
            self.last_opens.append((row, last))
            note += f" ({hour_text(first)}" + (f" to {hour_text(last)})" if last != first else ")")
        if seen.unreachable:
            note += f", {seen.unreachable:,} cannot be reached in the ttl"
        row["note"] = _joined(row["note"], note)
        return seen

    def _statuses_note(self, row: dict[str, Any], polls: int) -> None:
        """With status polling: how long asking about ``polls`` messages takes at the poll
        rate (one request each at least), said when it is over a minute."""
        if self.poll_rate is None or not polls:
            return
        seconds = polls / self.poll_rate
        row["statuses_fill_s"] = round(seconds)
        if seconds >= STATUS_NOTE_FROM:
            row["note"] = _joined(row["note"], (
                f"delivery statuses take {_duration(seconds)} to fill after sending "
                f"({polls:,} polls at {self.poll_rate:g}/s; raise poll_rate "
                "or use the webhook)"))

    def _caps_note(self, row: dict[str, Any], campaign: Campaign) -> None:
        """How many recipients the frequency caps would skip if the campaign sent now."""
        if self.journal is None or not caps_for(campaign, self.config.policy.caps):
            return
        capped = capped_now(campaign, self.config.policy.caps, self.journal, self.suppression,
                            self.now)
        row["capped"] = capped
        if capped:
            row["note"] = _joined(row["note"], f"caps would skip {capped:,} now")

    def _job(
        self, row: dict[str, Any], start: datetime, pending: int, kind: str, deadline: datetime,
        account: str | None = None,
    ) -> _Job:
        priority = 0 if kind in TRANSACTIONAL else 1
        job = _Job(row, start, float(pending), priority, deadline, account=account)
        self.jobs.append(job)
        return job

    def finish(self) -> list[dict[str, Any]]:
        """Every row, with the journal-only campaigns and the shared ETAs."""
        for record in self.records.values():
            if record.id not in self.seen:
                self.add_record(record, None)
        accounts: dict[str | None, list[_Job]] = {}
        for job in self.jobs:  # each account has its own rate: its campaigns share only it
            accounts.setdefault(job.account, []).append(job)
        for account, jobs in accounts.items():
            sending = _sending(self.config, account)
            shared_etas(jobs, _per_second(sending), _held_back(self.config, sending, account))
        for row, opens in self.last_opens:  # the last zone to open ends no sooner
            if row["eta"] is not None and row["eta"] < utc_text(opens):
                row["eta"] = utc_text(opens)
        return self.rows


#: zone groups a trigger's plan note names (``plan --json`` lists them all)
TRIGGER_GROUPS_SHOWN = 4


def with_occurrences(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The plan's rows for its table: each series row followed by a row per occurrence the
    journal has not planned yet (``plan --json`` keeps them in the series row's
    ``occurrences``)."""
    table: list[dict[str, Any]] = []
    journaled = {row["campaign"] for row in rows}  # planned already: the journal's row says
    for row in rows:
        table.append(row)
        for item in row.get("occurrences", ()):
            if item["run"] in journaled:
                continue
            table.append({
                "campaign": item["run"], "type": row["type"],
                "state": "paused" if row["state"] == "paused" else "scheduled",
                "send_at": item["fire_at"], "valid": row["valid"], "skipped": row["skipped"],
                "sent": None, "awaiting_status": None, "eta": None,
                "note": f"{item['local']}",
            })
    return table


def _why_invalid(check: CampaignCheck) -> str:
    """What the plan says about an invalid file: the problem itself when it is a symbolic link
    that loops or points nowhere (`check` skips those in a folder), else where to look."""
    link = broken_link(check.file)
    return f"{check.file.name}: cannot read: {link}" if link else "run `check` for the errors"


def _stage_note(campaign: Campaign, record: CampaignRecord, now: datetime) -> str:
    """Roll-out: the stage in progress, and when it starts if it is still on hold."""
    assert campaign.rollout is not None
    note = f"stage {record.stage + 1}/{len(campaign.rollout.stages)}"
    if record.stage_at is not None and record.stage_at > now:
        note += f", starts {utc_text(record.stage_at)}"
    return note


def _stages(job: _Job, rollout: Rollout, total: int, decided: int, stage: int = 0) -> None:
    """Split ``job`` (the ``total - decided`` messages left) into the roll-out's stages from
    ``stage`` on: the rest of that stage now, each later one after a hold."""
    ends = rollout.ends(total)[stage:]
    sizes = [end - start for start, end in zip([decided, *ends], ends, strict=False)]
    sizes = [size for size in sizes if size > 0]
    if sizes:
        job.left, job.stages, job.hold = float(sizes[0]), sizes[1:], float(rollout.hold)


def _stage_on(job: _Job, rollout: Rollout, record: CampaignRecord, now: datetime) -> None:
    """A started staged campaign: the rest of the stage under way (after its hold, if that is
    still running), then the later stages."""
    pending = int(job.left)
    stage = min(record.stage, len(rollout.stages) - 1)
    _stages(job, rollout, record.recipients, record.recipients - pending, stage)
    if record.stage_at is not None and record.stage_at > now:
        job.start = record.stage_at


def _duration(seconds: float) -> str:
    """``50 s``, ``14 min``, ``2.3 h``: a wait as people say it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _joined(*notes: str) -> str:
    return "; ".join(n for n in notes if n)
