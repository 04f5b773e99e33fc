"""A campaign's snapshot into the journal: taken whole ahead of send_at, or streamed from a
reader child (`scheduler.streaming`) while the campaign already sends.

The pump appends each chunk the child sends to the journal, then marks the snapshot whole; the
driver asks `more` whether to wait for it to grow. A stream cut short (a crash, a stop) reads
on after what is stored at the next start, if its inputs did not change.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from scheduler.batching import Snapshot, snapshot_key
from scheduler.campaign import Campaign
from scheduler.campaign_run import CampaignRun
from scheduler.identity import content_fingerprint
from scheduler.journal import CampaignRecord, Journal, JournalError, JournalFenced
from scheduler.lifecycle import Lifecycle
from scheduler.oplog import get_logger
from scheduler.streaming import Reader, Resume, StreamFailed, StreamJob, StreamKilled
from scheduler.suppression import Suppression


@dataclass
class _Stream:
    """A streamed snapshot being appended to the journal while its campaign sends."""

    task: asyncio.Task[None] | None = None
    grew: asyncio.Event = field(default_factory=asyncio.Event)  # set by every append, and the end
    failure: Exception | None = None  # why it stopped short (`StreamFailed`, a journal error)
    whole: bool = False  # every batch and skip is in the journal, and it says so
    started: float = field(default_factory=time.monotonic)

    @property
    def ended(self) -> bool:
        """The child has finished, or failed (then ``failure`` says why)."""
        return self.task is None or self.task.done()


class Snapshots:
    """Takes campaigns' snapshots, and pumps the streamed ones into the journal."""

    def __init__(
        self, journal: Journal, lifecycle: Lifecycle, *, batch_size: int,
        suppression: Suppression | None = None, suppression_path: Path | None = None,
    ) -> None:
        self._journal, self._lifecycle = journal, lifecycle
        self._batch_size = batch_size
        self._suppression, self._suppression_path = suppression, suppression_path
        self._oplog = get_logger("engine")
        self._streams: dict[str, _Stream] = {}  # campaign id -> its snapshot being streamed

    async def close(self) -> None:
        """Stop every stream (a later start reads on where the journal is)."""
        for cid in list(self._streams):
            await self._stop(cid)

    async def prepare(
        self, campaign: Campaign, *, stream: bool = False, reader: Reader | None = None,
    ) -> CampaignRecord:
        """Snapshot the campaign's audience unless it already started (then it is frozen).

        ``stream`` (`send --now`): read the audience in a child process while the campaign
        sends (`scheduler.streaming`), unless a send window or a roll-out needs every batch
        known before the first one goes. ``reader``: one started already with this very job
        (`stream_job`), used if the stream starts here; its owner closes it either way."""
        key = snapshot_key(campaign, self._suppression_path, self._batch_size)
        record = await self._journal.campaign(campaign.id)
        if record is not None and record.started_at is not None:
            return record
        if record is not None and record.fingerprint == key:
            if record.state not in ("invalid", "cancelled"):
                return record  # prepared already, from these very inputs
            await self._lifecycle.move(campaign.id, "scheduled")  # valid (or back) again
        else:
            await self._stop(campaign.id)  # a newer file replaces what it was reading
            await self._snapshot(campaign, key, stream=stream and _streamable(campaign),
                                 reader=reader)
        fresh = await self._journal.campaign(campaign.id)
        assert fresh is not None  # prepare() just wrote it
        return fresh

    def stream_job(self, campaign: Campaign) -> StreamJob:
        """What a reader of this campaign's streamed snapshot is given."""
        return StreamJob(campaign, self._suppression_path, self._batch_size)

    async def _snapshot(
        self, campaign: Campaign, key: str, *, stream: bool, reader: Reader | None = None,
    ) -> None:
        """Snapshot the campaign anew: whole, or swapped in empty and streamed into."""
        content = await asyncio.to_thread(content_fingerprint, campaign)
        if stream:
            await self._journal.open_stream(
                campaign_id=campaign.id, type=campaign.type, file=str(campaign.file),
                fingerprint=key, send_at=campaign.send_at, deadline=campaign.deadline,
                content=content, account=campaign.account,
            )
            job = self.stream_job(campaign)
            if reader is None or reader.job != job:
                reader = Reader.start(job)
            reader.used = True
            self._start(campaign, reader, Resume())
            return
        # the engine runs threads (the journal's writer, asyncio's): it must not fork
        snapshot = Snapshot(campaign, self._suppression, self._batch_size, may_fork=False)
        await self._journal.prepare(
            campaign_id=campaign.id,
            type=campaign.type,
            file=str(campaign.file),
            fingerprint=key,
            send_at=campaign.send_at,
            deadline=campaign.deadline,
            content=content,
            account=campaign.account,
            batches=snapshot.batches(),
            skips=snapshot.skips,
            zones=snapshot.zones,
        )

    # ----------------------------------------------------------------- the pump

    def _start(self, campaign: Campaign, reader: Reader, resume: Resume) -> _Stream:
        stream = _Stream()
        stream.task = asyncio.create_task(self._pump(campaign.id, reader, resume, stream),
                                          name=f"stream-{campaign.id}")
        self._streams[campaign.id] = stream
        return stream

    async def _pump(self, cid: str, reader: Reader, resume: Resume, stream: _Stream) -> None:
        """Append the child's chunks to the journal as they come, then mark the snapshot whole."""
        appending: asyncio.Future[None] | None = None
        try:
            # aclosing: a pump cancelled between two chunks lets go of the pipe at once, not
            # whenever the abandoned generator is collected (the finally ends the reader)
            async with contextlib.aclosing(reader.chunks(resume)) as chunks:
                async for batches, skips in chunks:
                    # one append commits while the next chunk comes through the pipe: the
                    # child never waits for the journal's fsync; appends stay in order
                    if appending is not None:
                        await appending
                        stream.grew.set()
                    appending = asyncio.ensure_future(self._journal.extend(cid, batches, skips))
            if appending is not None:
                await appending
            await self._journal.close_stream(cid)
            stream.whole = True
            record = await self._journal.campaign(cid)
            if record is not None:
                self._lifecycle.announce(
                    "snapshot_streamed", campaign=cid, recipients=record.recipients,
                    skipped=record.skipped, batches=record.batches,
                    seconds=round(time.monotonic() - stream.started, 3),
                )
        except (StreamFailed, JournalError, OSError) as exc:
            stream.failure = exc
        except Exception as exc:  # noqa: BLE001 (a bug must stop the campaign, not end it)
            self._oplog.exception("snapshot_stream_crashed", campaign=cid)
            stream.failure = exc
        finally:
            if appending is not None and not appending.done():
                if stream.failure is None:  # cancelled with the pump (the journal may still
                    appending.cancel()  # apply it: the next start reads what is stored)
                else:
                    # the reader failed while the journal commits the last chunk: it settles
                    # before the stream ends, so the sender looks again after it and sends
                    # it in this run (ended early, a later run sent it, even if the inputs
                    # changed meanwhile and the campaign was to fail at once)
                    await asyncio.gather(appending, return_exceptions=True)
            stream.grew.set()  # a sender waiting for more also waits for this task's end
            await asyncio.to_thread(reader.close)  # the owner's close: the child is reaped

    async def _stop(self, cid: str) -> None:
        """Stop reading (the child is killed); a later `drive` resumes where the journal is."""
        stream = self._streams.pop(cid, None)
        if stream is not None and stream.task is not None:
            stream.task.cancel()
            await asyncio.gather(stream.task, return_exceptions=True)

    async def resume(self, run: CampaignRun, record: CampaignRecord) -> None:
        """A snapshot cut short mid-stream (a crash, a stop): read on after what is stored,
        if the inputs are still the ones it was read from (else the campaign fails)."""
        current = self._streams.get(run.campaign.id)
        # ``record`` may be older than this process's stream: read before its end, it says
        # streaming still, but a stream read whole here is never read again
        if not record.streaming or (current is not None and (current.whole or not current.ended)):
            return
        key = snapshot_key(run.campaign, self._suppression_path, self._batch_size,
                           send_at=record.send_at)
        if key != record.fingerprint:
            stream = self._streams[run.campaign.id] = _Stream()
            stream.failure = StreamFailed(
                "the campaign file, its audience CSV or the suppression list changed while its "
                f"snapshot was still being read ({record.recipients:,} recipients were read): "
                "restore them to finish it, or cancel it")
            return
        self._start(run.campaign, Reader.start(self.stream_job(run.campaign)),
                    Resume(record.batches, record.skipped))

    # ----------------------------------------------------------------- the driver's questions

    def reading(self, campaign_id: str) -> bool:
        """The campaign's snapshot is (or was, this process) streamed."""
        return campaign_id in self._streams

    def look_again(self, campaign_id: str) -> None:
        """Before a read of the open batches: an append after it wakes `more`."""
        stream = self._streams.get(campaign_id)
        if stream is not None:
            stream.grew.clear()

    async def more(self, run: CampaignRun) -> bool:
        """Wait until the campaign's streamed snapshot grows (True: read again), or it is
        whole (False). A stream that failed stops the campaign."""
        stream = self._streams.get(run.campaign.id)
        if stream is None:
            return False
        if not stream.ended:
            assert stream.task is not None  # not ended
            grew = asyncio.ensure_future(stream.grew.wait())
            stopped = run.until_stopped()
            # the pump's end counts as growth too, whatever it set before it ended
            await asyncio.wait((grew, stopped, stream.task), return_when=asyncio.FIRST_COMPLETED)
            grew.cancel()
            stopped.cancel()
            return not run.stopped
        if stream.whole:
            return False
        failure = stream.failure
        if failure is None or isinstance(failure, StreamKilled):
            # killed, or stopped with the engine: left running, the next start reads on
            reason = str(failure) if failure is not None else "the reader was stopped"
            self._lifecycle.announce("snapshot_stream_stopped", "warning",
                                     campaign=run.campaign.id, reason=reason)
            # what is stored is all queued by now: it goes before the halt (halted first,
            # the batches not yet taken stayed pending, and a later run sent them even if the
            # audience had changed meanwhile and the campaign was to fail at once)
            await run.settled()
            run.halt(None)
        elif isinstance(failure, JournalFenced):
            run.halt(None)
        elif isinstance(failure, JournalError | OSError):
            run.storage_failed(failure)
        elif isinstance(failure, StreamFailed):
            run.halt("failed", f"{failure} (the recipients read before it are final)")
        else:
            run.halt("failed", f"internal error while reading the audience: {failure!r}")
        return False

    async def whole(self, run: CampaignRun) -> bool:
        """The journal holds the whole snapshot (a last check before "done": a streamed one
        that is not whole must never look finished); a run whose is not is halted."""
        current = await self._journal.campaign(run.campaign.id)
        if current is None or not current.streaming:
            return True
        run.halt(None)
        return False

    async def wait_whole(self, campaign_id: str) -> None:
        """Return once the campaign's snapshot is whole (at once unless it is streaming), or
        its stream failed or stopped."""
        stream = self._streams.get(campaign_id)
        if stream is not None and stream.task is not None:
            await asyncio.gather(stream.task, return_exceptions=True)


def _streamable(campaign: Campaign) -> bool:
    """A snapshot may be streamed unless every batch must be known before the first goes: a
    send window cuts batches by zone group at the end, a roll-out's stages need the total."""
    return campaign.window is None and campaign.rollout is None and campaign.trigger is None
