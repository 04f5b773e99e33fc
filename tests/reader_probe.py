"""A process that reads a campaign's streamed snapshot through a `Reader` and prints what came,
as one JSON line: the tests of the forked reader (`stream_reader.fork`) run it, so that
the fork happens in a process that runs no other thread, as in `send --now`.

    python tests/reader_probe.py CONFIG CAMPAIGN_FILE fork|spawn [--kill] [--remove-audience]

``--kill``: SIGKILL the reader (the OOM killer, an operator) before its stream is read: it is
reading the audience, or waiting for the resume point, never done (it cannot end without that).
``--remove-audience``: delete the audience CSV once the campaign is loaded, before the reader
starts (its reading fails).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pickle
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scheduler import stream_reader
from scheduler.config import load_config
from scheduler.loader import load_campaign
from scheduler.streaming import Reader, Resume, StreamFailed, StreamJob, StreamKilled


async def read(reader: Reader, kill: bool) -> dict[str, Any]:
    """Every chunk's batches and skips, counted and hashed; how the stream ended."""
    batches = skips = 0
    digest = hashlib.sha256()
    failure: str | None = None
    killed = False
    if kill:
        os.kill(reader._child.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    try:
        async for chunk_batches, chunk_skips in reader.chunks(Resume()):
            batches += len(chunk_batches)
            skips += len(chunk_skips)
            digest.update(pickle.dumps((chunk_batches, chunk_skips)))
    except StreamKilled as exc:
        failure, killed = str(exc), True
    except StreamFailed as exc:
        failure = str(exc)
    return {"batches": batches, "skips": skips, "digest": digest.hexdigest(),
            "failure": failure, "killed": killed}


def main() -> None:
    """Load the campaign, start its reader as asked, read it, close it, print the result."""
    config_path, campaign_file, mode = sys.argv[1:4]
    config = load_config(Path(config_path), env={"CASCADE_API_KEY": "probe-key-000000"})
    check = load_campaign(Path(campaign_file), config, datetime.now(UTC))
    assert check.campaign is not None, check.problems
    if "--remove-audience" in sys.argv:
        check.campaign.audience.csv.unlink()
    threads = threading.active_count()
    job = StreamJob.of(check.campaign, config)
    reader = stream_reader.fork(job) if mode == "fork" else Reader.start(job)
    try:
        result = asyncio.run(read(reader, "--kill" in sys.argv))
    finally:
        reader.close()
    kind = type(reader._child).__name__
    print(json.dumps({**result, "threads_at_start": threads, "child": kind,
                      "ended": reader.ended}))


if __name__ == "__main__":
    main()
