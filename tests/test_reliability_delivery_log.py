"""The delivery log when it cannot be written (issue 8, item 3): a clear exception, never a
closed-file ``ValueError``; reported once; no line lost or cut; `writable` says when to go on.

Real files and folders throughout. The tests run as root, where permission bits do not stop a
write, so the failures are made with things that stop root too: a folder replaced by a regular
file (ENOTDIR), ``/dev/full`` (ENOSPC) and a file-size limit (EFBIG, after a short write).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from scheduler import delivery_log
from scheduler.delivery_log import DeliveryLog, DeliveryLogUnwritable, MessageOutcome
from scheduler.oplog import configure_logging

OUTCOMES = [
    MessageOutcome(f"c-{n}", "sent", f"+38050123456{n}", 1, message_id=f"id-{n}")
    for n in range(5)
]


def events(path: Path) -> list[str]:
    """The ``event`` of every line of a JSON-lines file (every line must parse)."""
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


def oplog_events(captured: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The captured operational-log entries called ``name``."""
    return [entry for entry in captured if entry["event"] == name]


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    """Where the delivery log goes: ``logs/delivery.jsonl`` under a fresh folder."""
    return tmp_path / "logs" / "delivery.jsonl"


@pytest.fixture
def delivery(log_path: Path) -> Iterator[DeliveryLog]:
    """A delivery log that checks for rotation on every write."""
    log = DeliveryLog(log_path, phones="masked", check_every=0)
    yield log
    log.close()


class Clock:
    """A monotonic clock the test moves by hand (the delivery log's rotation-check timer)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        """The current reading."""
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Give the delivery log module a hand-moved clock instead of `time`."""
    fake = Clock()
    monkeypatch.setattr(delivery_log, "time", fake)
    return fake


@pytest.fixture
def watched(log_path: Path, clock: Clock) -> Iterator[DeliveryLog]:
    """A delivery log that checks for rotation once a second of the hand-moved clock."""
    log = DeliveryLog(log_path, phones="masked", check_every=1.0)
    yield log
    log.close()


def rotate_into_a_blocked_folder(
    log_path: Path, name: str = "logs.rotated", blocker: str = "file"
) -> Path:
    """Move the log's folder away to ``name`` (the file with it) and block its place, so that
    reopening the path fails even for root; returns the moved file. ``blocker`` "file": a
    regular file (ENOTDIR); "gone": a link to a folder that is not there, as on an unmounted
    volume (ENOENT)."""
    folder = log_path.parent
    rotated = folder.with_name(name)
    folder.rename(rotated)
    if blocker == "file":
        folder.write_text("not a folder\n")
    else:
        folder.symlink_to(folder.with_name("unmounted") / "logs")
    return rotated / log_path.name


@pytest.mark.parametrize(("blocker", "code"), [("file", errno.ENOTDIR), ("gone", errno.ENOENT)])
def test_failed_reopen_after_rotation_raises_unwritable_and_recovers(
    watched: DeliveryLog, log_path: Path, clock: Clock, blocker: str, code: int
) -> None:
    """After a rotation whose reopen fails, every write raises DeliveryLogUnwritable (not
    ValueError), the rotated file is intact, the failure is logged once, `writable` is False;
    once the folder is back, `writable` is True (logged once) and lines land in the new file."""
    delivery = watched
    delivery.event("before")
    rotated = rotate_into_a_blocked_folder(log_path, blocker=blocker)
    clock.now += 2  # the next write checks the path
    with structlog.testing.capture_logs() as captured:
        with pytest.raises(DeliveryLogUnwritable) as raised:
            delivery.messages("summer", "standard", OUTCOMES)
        # within the check interval, with no usable handle: the old code wrote on into the
        # rotated file ("file"), or had closed it and raised "ValueError: write to closed
        # file" ("gone"), here and on every later write
        with pytest.raises(DeliveryLogUnwritable):
            delivery.event("still-blocked")
        assert not delivery.writable()
        assert not delivery.writable()
    error, reason = raised.value, os.strerror(code)
    assert isinstance(error, OSError) and error.errno == code
    assert error.path == log_path and error.reason == reason
    assert str(error) == (
        f"delivery log {log_path} cannot be written ({reason}): fix the folder's owner "
        "or permissions; sending waits until it can write"
    )
    (reported,) = oplog_events(captured, "delivery_log_unwritable")
    assert reported["log_level"] == "error"
    assert (reported["path"], reported["reason"]) == (str(log_path), reason)
    assert events(rotated) == ["before"]

    log_path.parent.unlink()
    log_path.parent.mkdir()
    with structlog.testing.capture_logs() as captured:
        assert delivery.writable()
        delivery.messages("summer", "standard", OUTCOMES)
        assert delivery.writable()
    assert [e["event"] for e in captured] == ["delivery_log_writable"]
    assert events(log_path) == ["message"] * len(OUTCOMES)
    assert events(rotated) == ["before"]


def test_the_tail_of_a_blocked_log_is_unwritable_not_empty(
    delivery: DeliveryLog, log_path: Path
) -> None:
    """`recent_message_ids` (the crash-resume check) cannot read a blocked log: it raises
    DeliveryLogUnwritable rather than answer "no lines", which would write them twice."""
    delivery.messages("summer", "standard", OUTCOMES)
    assert delivery.recent_message_ids("summer", 10_000) == {o.tracking_id for o in OUTCOMES}
    rotate_into_a_blocked_folder(log_path)
    with structlog.testing.capture_logs(), pytest.raises(DeliveryLogUnwritable):
        delivery.recent_message_ids("summer", 10_000)


def test_a_second_outage_is_reported_again(delivery: DeliveryLog, log_path: Path) -> None:
    """"Once" is per outage: after a recovery, the next failure is reported again."""
    with structlog.testing.capture_logs() as captured:
        for number in range(2):
            rotate_into_a_blocked_folder(log_path, f"logs.{number}")
            with pytest.raises(DeliveryLogUnwritable):
                delivery.event("blocked")
            log_path.parent.unlink()
            log_path.parent.mkdir()
            assert delivery.writable()
    reported = [entry["event"] for entry in captured]
    assert reported == ["delivery_log_unwritable", "delivery_log_writable"] * 2


def test_a_failed_write_on_a_full_disk_is_unwritable_and_reported_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ENOSPC from the write itself (``/dev/full``) is DeliveryLogUnwritable, with one error
    line on the operational log's stderr; pointing the path at a real file recovers."""
    configure_logging("info", "json")
    log_path = tmp_path / "delivery.jsonl"
    log_path.symlink_to("/dev/full")
    log = DeliveryLog(log_path, phones="masked", check_every=0)
    for _ in range(3):
        with pytest.raises(DeliveryLogUnwritable) as raised:
            log.messages("summer", "standard", OUTCOMES)
        assert raised.value.errno == errno.ENOSPC
    (line,) = [json.loads(text) for text in capsys.readouterr().err.splitlines()]
    assert (line["event"], line["level"], line["component"]) == (
        "delivery_log_unwritable", "error", "delivery_log")
    assert line["reason"] == "No space left on device" and line["path"] == str(log_path)

    log_path.unlink()
    assert log.writable()
    log.messages("summer", "standard", OUTCOMES)
    log.close()
    assert not log_path.is_symlink()
    assert events(log_path) == ["message"] * len(OUTCOMES)


@contextlib.contextmanager
def file_size_limit(size: int) -> Iterator[None]:
    """Limit file sizes to ``size`` bytes within the block (RLIMIT_FSIZE stops root too); SIGXFSZ
    is ignored meanwhile, so a write past the limit fails with EFBIG instead of killing us."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_write_that_fails_halfway_leaves_no_cut_line(
    delivery: DeliveryLog, log_path: Path
) -> None:
    """A batch that only partly fits (a short write, then EFBIG) is taken back whole: the file
    is byte for byte what it was, and the batch written again later gives whole lines."""
    delivery.event("before")
    before = log_path.read_bytes()
    with (
        structlog.testing.capture_logs(), file_size_limit(len(before) + 100),
        pytest.raises(DeliveryLogUnwritable) as raised,
    ):
        delivery.messages("summer", "standard", OUTCOMES)
    assert raised.value.errno == errno.EFBIG
    assert log_path.read_bytes() == before
    delivery.messages("summer", "standard", OUTCOMES)
    assert events(log_path) == ["before", *["message"] * len(OUTCOMES)]
