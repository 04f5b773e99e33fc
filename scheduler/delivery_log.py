"""The delivery log: JSON lines for people to read and grep, one per recipient outcome or event.

Per-message lines take a lean path (orjson, one write per batch; SPEC §12 measured structlog's
chain at ~16 µs a line); lifecycle events go through a structlog processor chain with secret
redaction. The file is reopened when logrotate moves it away.

A line is written whole or not at all: a write that fails (disk full, a folder that cannot be
written after a rotation) takes back what landed and raises `DeliveryLogUnwritable`; the caller
keeps the outcomes and writes them again once `DeliveryLog.writable` is True.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast

import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger

from scheduler.oplog import REDACTED, SUBSTRING_MIN, get_logger, redact_secrets

#: outcomes that are a problem worth a person's attention in the log
_WARNING_STATUSES = frozenset({"rejected", "expired", "in_doubt"})
_LEVELS = ("debug", "info", "warning", "error", "critical")
#: the operational log, where an unwritable delivery log is reported
_oplog = get_logger("delivery_log")


class DeliveryLogUnwritable(OSError):
    """The delivery log cannot take lines now; nothing of the failed write stays in the file.

    What the caller does: pause sending, keep the outcomes it tried to log (the journal still
    holds them as not yet logged), and write them again once `DeliveryLog.writable` is True.
    ``errno`` is the failure's (ENOSPC, EACCES, ENOTDIR, EIO...), when the system gave one.
    """

    def __init__(self, path: Path, reason: str, code: int | None = None) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"delivery log {path} cannot be written ({reason}): fix the folder's owner or "
            "permissions; sending waits until it can write"
        )
        self.errno = code


class MessageOutcome(NamedTuple):
    """One recipient's final outcome, as the sending engine reports it to the delivery log."""

    tracking_id: str
    status: str  # sent | rejected | expired | skipped | in_doubt
    phone: str
    attempts: int
    message_id: str | None = None  # for sent
    error_code: str | None = None  # for rejected
    reason: str | None = None  # why not sent (skip reason, expiry, doubt)
    line: int | None = None  # the CSV line of a skipped row
    resent: bool = False  # posted again after an ambiguous outcome: ``"resent": true``


class SentMessages(NamedTuple):
    """Messages the API accepted in one answer, as columns: a ``message`` line each."""

    tracking_ids: Sequence[str]
    message_ids: Sequence[str | None]
    phones: Sequence[str]
    attempts: int
    resent: bool = False  # posted again after an ambiguous outcome: ``"resent": true``


class DeliveryLine(NamedTuple):
    """One message's final delivery status (SPEC §11.3), for its one ``delivery`` line."""

    campaign: str
    tracking_id: str
    message_id: str
    status: str  # delivered | undeliverable | permanenterror | unknown
    channel: str | None
    cost: float | None
    currency: str | None
    phone: str
    seconds: float  # from sending to the final status


def mask_phone(phone: str) -> str:
    """Hide the middle of a phone number: ``+380501234567`` -> ``+380*****4567``.

    Keeps the ``+``, the first 3 digits and the last 4; a number too short to keep any of that
    private is masked whole.
    """
    if len(phone) >= 11 and phone[0] == "+" and phone[1:].isdigit():  # E.164: the hot path
        return phone[:4] + _STARS[len(phone) - 8] + phone[-4:]
    plus = "+" if phone.startswith("+") else ""
    digits = phone[len(plus):]
    if len(digits) < 10:
        return plus + "*" * len(digits)
    return plus + digits[:3] + "*" * (len(digits) - 7) + digits[-4:]


_STARS = tuple("*" * n for n in range(32))
#: what a message line posted again after an ambiguous outcome carries (SPEC §13.4)
_RESENT = ',"resent":true'
_DIGITS = b"0123456789"
#: printable ASCII but the quote and the backslash: text JSON keeps as it is
_SAFE_BYTES = bytes(b for b in range(0x20, 0x7F) if b not in b'"\\')


def _plain(values: Sequence[str | None]) -> bool:
    """True when no value is None or empty and none needs JSON escaping (C-level passes over
    them all: no Python code per value)."""
    if not all(values):
        return False
    joined = "".join(cast(Sequence[str], values))  # all() just ruled out None
    return joined.isascii() and not joined.encode().translate(None, _SAFE_BYTES)


def _masked(phones: Sequence[str]) -> list[str]:
    """`mask_phone` of every phone. When all are E.164 of one length (the usual batch: one
    country's numbers), with C-level passes over their joined text: each hidden digit's column
    is overwritten with stars in one slice assignment."""
    lengths = set(map(len, phones))
    if len(lengths) != 1:
        return list(map(mask_phone, phones))
    length, count = lengths.pop(), len(phones)
    stride = length + 1  # a phone and its newline
    text = bytearray("\n".join(phones).encode())
    # E.164 (what mask_phone masks as first 4 + stars + last 4): a "+" where each phone
    # starts, and nothing else but digits and the newlines
    if not (11 <= length < 8 + len(_STARS) and text[::stride] == b"+" * count
            and text.translate(None, _DIGITS) == b"+\n" * (count - 1) + b"+"):
        return list(map(mask_phone, phones))
    stars = b"*" * count
    for column in range(4, length - 4):
        text[column::stride] = stars
    return text.decode().split("\n")


def _interleave(count: int, *columns: str | Sequence[str]) -> str:
    """``count`` lines, each the concatenation of every column's next value (a str column is
    the same in every line): one join, the columns laid in by slice assignments."""
    width = len(columns)
    pieces = [""] * (width * count)
    for place, column in enumerate(columns):
        pieces[place::width] = [column] * count if isinstance(column, str) else column
    return "".join(pieces)


def _timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _lead_fields(_: object, __: str, event_dict: EventDict) -> EventDict:
    """Put ``timestamp``, ``level`` and ``event`` first, as in the message lines."""
    keys = ("timestamp", "level", "event")
    lead = {key: event_dict.pop(key) for key in keys if key in event_dict}
    return {**lead, **event_dict}


class _Sink:
    """The structlog "logger" for lifecycle events: hands rendered lines to the DeliveryLog."""

    def __init__(self, owner: DeliveryLog) -> None:
        self._owner = owner

    def msg(self, message: str) -> None:
        """Write one rendered event line."""
        self._owner.write(message.encode() + b"\n")

    debug = info = warning = error = critical = msg


class DeliveryLog:
    """Appends delivery lines to one file, reopening it after logrotate moved it.

    The old handle is closed only once a new one is open: when the reopen fails, writes raise
    `DeliveryLogUnwritable` (never a closed-file ``ValueError``) until `writable` succeeds.
    """

    def __init__(
        self, path: Path, *, phones: Literal["masked", "full"],
        secrets: Sequence[str] = (), check_every: float = 1.0,
    ) -> None:
        self.path = path
        self._mask = phones == "masked"
        self._check_every = check_every
        self._checked = time.monotonic()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._open()
        self._stale = False  # the path names another file (or none) and the reopen failed
        self._broken: str | None = None  # why writing fails, while it does (reported once)
        self._cut = False  # a failed write left a cut line that could not be taken back
        self._secrets: tuple[str, ...] = ()
        self._secret_bytes: list[bytes] = []
        self._events: FilteringBoundLogger = self._event_logger()
        self.add_secrets(secrets)

    def add_secrets(self, secrets: Sequence[str]) -> None:
        """Also redact these (e.g. credentials loaded again on SIGHUP) from now on."""
        known = sorted({*self._secrets, *(s for s in secrets if s)}, key=len, reverse=True)
        self._secrets = tuple(known)
        # a secret as it appears in raw JSON bytes, plain and escaped
        self._secret_bytes = [
            form for s in known if len(s) >= SUBSTRING_MIN
            for form in dict.fromkeys((s.encode(), orjson.dumps(s)[1:-1]))
        ]
        self._events = self._event_logger()

    def _event_logger(self) -> FilteringBoundLogger:
        logger: FilteringBoundLogger = structlog.wrap_logger(
            _Sink(self),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
                redact_secrets(self._secrets),
                _lead_fields,
                structlog.processors.JSONRenderer(
                    serializer=lambda obj, **_: orjson.dumps(obj, default=str).decode(),
                ),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
            cache_logger_on_first_use=True,
        )
        return logger

    def _open(self) -> io.FileIO:
        # unbuffered: one write per batch, and nothing left in a buffer when a write fails
        return io.FileIO(self.path, "ab")

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def messages(self, campaign: str, route: str, rows: Iterable[MessageOutcome]) -> None:
        """Write one ``message`` line per row, with ONE write for the whole batch.

        Raises `DeliveryLogUnwritable` when the batch could not be written (none of it was).
        """
        lines = self._lines(_timestamp(), campaign, route, rows)
        if lines:
            self.write(lines)

    def _lines(
        self, stamp: str, campaign: str, route: str, rows: Iterable[MessageOutcome],
    ) -> bytes:
        """``message`` lines, each ending in a newline."""
        return b"".join(
            orjson.dumps(self._message(stamp, campaign, route, row)) + b"\n" for row in rows
        )

    def sent(self, campaign: str, route: str, runs: Iterable[SentMessages]) -> None:
        """The hot path: a ``message`` line per message the API accepted, with ONE write.

        The same JSON as `messages` writes, built per run from a template with C-level passes
        (no Python code per line): tracking ids and phones of sent rows were validated
        (``[A-Za-z0-9._-]``, E.164) and need no escaping; a run with a message id that is not
        plainly safe goes through orjson (SPEC §12: ~5x cheaper than a dict per line, write
        included).
        """
        stamp = _timestamp()
        head = f'{{"timestamp":"{stamp}","level":"info","event":"message","campaign":'
        head += orjson.dumps(campaign).decode() + ',"tracking_id":"'
        tail = ',"channel_route":' + orjson.dumps(route).decode() + "}\n"
        chunks = [
            self._templated(head, tail, run) if _plain(run.message_ids)
            else self._lines(stamp, campaign, route, [  # an odd message id: the careful path
                MessageOutcome(tid, "sent", phone, run.attempts, message_id=mid or "",
                               resent=run.resent)
                for tid, mid, phone in zip(run.tracking_ids, run.message_ids, run.phones,
                                           strict=True)
            ])
            for run in runs
        ]
        data = b"".join(chunks)
        if data:
            self.write(data)

    def _templated(self, head: str, tail: str, run: SentMessages) -> bytes:
        """``run``'s lines: the template's pieces and the columns, interleaved and joined."""
        return _interleave(
            len(run.tracking_ids), head, run.tracking_ids, '","status":"sent","message_id":"',
            cast(Sequence[str], run.message_ids),  # _plain ruled out None
            '","phone":"', _masked(run.phones) if self._mask else run.phones,
            f'","attempts":{run.attempts}{_RESENT if run.resent else ""}{tail}',
        ).encode()

    def late_answers(self, campaign: str, runs: Iterable[SentMessages]) -> None:
        """One ``late_answer`` line (a warning) per message the API accepted after this
        process lost the leadership lease: its answer could not be journaled, the new leader
        may send the message again, and these lines name what went out here. ONE write."""
        stamp = _timestamp()
        lines = [orjson.dumps({
            "timestamp": stamp, "level": "warning", "event": "late_answer", "campaign": campaign,
            "tracking_id": tracking_id, "message_id": message_id,
        }) for run in runs for tracking_id, message_id in zip(
            run.tracking_ids, run.message_ids, strict=True)]
        if lines:
            lines.append(b"")
            self.write(b"\n".join(lines))

    def deliveries(self, rows: Iterable[DeliveryLine]) -> None:
        """Write one ``delivery`` line per final delivery status, with ONE write for them all
        (a status that is not "delivered" is a warning). Raises `DeliveryLogUnwritable`."""
        stamp = _timestamp()
        mask = self._mask
        lines = [orjson.dumps({
            "timestamp": stamp, "level": "info" if row.status == "delivered" else "warning",
            "event": "delivery", "campaign": row.campaign, "tracking_id": row.tracking_id,
            "message_id": row.message_id, "status": row.status, "channel": row.channel,
            "cost": row.cost, "currency": row.currency,
            "phone": mask_phone(row.phone) if mask else row.phone,
            "seconds": round(row.seconds, 3),
        }) for row in rows]
        if lines:
            lines.append(b"")
            self.write(b"\n".join(lines))

    def _message(
        self, stamp: str, campaign: str, route: str, row: MessageOutcome,
    ) -> dict[str, object]:
        line: dict[str, object] = {
            "timestamp": stamp,
            "level": "warning" if row.status in _WARNING_STATUSES else "info",
            "event": "message", "campaign": campaign, "tracking_id": row.tracking_id,
            "status": row.status,
        }
        if row.message_id is not None:
            line["message_id"] = row.message_id
        if row.error_code is not None:
            line["error_code"] = row.error_code
        if row.reason is not None:
            line["reason"] = row.reason
        if row.line is not None:
            line["line"] = row.line
        line["phone"] = mask_phone(row.phone) if self._mask else row.phone
        line["attempts"] = row.attempts
        if row.resent:
            line["resent"] = True
        line["channel_route"] = route
        return line

    def event(self, event: str, level: str = "info", **fields: Any) -> None:
        """Write one lifecycle event (campaign_started, batch_retry, ...), redacted and flushed."""
        if level not in _LEVELS:
            raise ValueError(f"unknown log level {level!r}: use one of {', '.join(_LEVELS)}")
        getattr(self._events, level)(event, **fields)

    def write(self, data: bytes) -> None:
        """Append raw line bytes in one write, after the rotation check and redaction.

        All of ``data`` lands, or none of it does and `DeliveryLogUnwritable` is raised.
        """
        for secret in self._secret_bytes:
            if secret in data:  # a cheap byte search: secrets should never be here at all
                data = data.replace(secret, REDACTED.encode())
        handle = self._current()
        self._append(handle, data)
        self._recovered()

    def writable(self) -> bool:
        """True when writing can go on: the file is open (reopened, or created in its existing
        folder, after a rotation) and its disk has room. Logs ``delivery_log_writable`` once
        when writing recovers after a failure."""
        self._checked = time.monotonic()
        try:
            if self._stale or not self._names_current():
                self._reopen()
            self._check_space()
        except DeliveryLogUnwritable:
            return False
        self._recovered()
        return True

    def recent_message_ids(self, campaign: str, max_bytes: int) -> set[str]:
        """Tracking ids of ``campaign``'s message lines in the last ``max_bytes`` of the file.

        Used after a crash, to write the lines that may be missing without doubling those that
        made it to the file just before the process died. A file that cannot be read (say its
        folder is blocked) raises `DeliveryLogUnwritable`: guessing "none" would double lines.
        """
        needle = orjson.dumps(campaign)
        found = set()
        for raw in self._tail(max_bytes):
            if b'"event":"message"' not in raw or needle not in raw:
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # the first (cut) line, or a line the crash cut short
            if isinstance(line, dict) and line.get("campaign") == campaign:
                found.add(str(line.get("tracking_id")))
        return found

    def recent_delivery_ids(self, max_bytes: int) -> set[str]:
        """Message ids of the ``delivery`` lines in the last ``max_bytes`` of the file (after
        a crash: which final statuses made it to the file before the process died)."""
        found = set()
        for raw in self._tail(max_bytes):
            if b'"event":"delivery"' in raw:
                with contextlib.suppress(orjson.JSONDecodeError):  # a line cut short
                    line = orjson.loads(raw)
                    if isinstance(line, dict):
                        found.add(str(line.get("message_id")))
        return found

    def _tail(self, max_bytes: int) -> list[bytes]:
        """The lines of the file's last ``max_bytes`` (the first one may be cut; none when
        there is no file). A file that cannot be read raises `DeliveryLogUnwritable`:
        guessing "nothing there" after a crash would double lines."""
        try:
            with self.path.open("rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - max_bytes))
                return handle.read().split(b"\n")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._unwritable(exc) from exc

    def _current(self) -> io.FileIO:
        """The handle to write to; the path is re-checked at most once per ``check_every``
        seconds (like logging's WatchedFileHandler), and on every write while it is stale."""
        now = time.monotonic()
        if not self._stale and now - self._checked < self._check_every:
            return self._file
        self._checked = now
        if not self._names_current():
            self._reopen()
        self._stale = False
        return self._file

    def _names_current(self) -> bool:
        """True when the path still names the open file (not rotated away or deleted)."""
        try:
            on_disk = self.path.stat()
            current = os.fstat(self._file.fileno())
        except OSError:  # missing, a folder that is now a file, a symlink loop, EIO...
            return False
        return (on_disk.st_dev, on_disk.st_ino) == (current.st_dev, current.st_ino)

    def _reopen(self) -> None:
        """Open the path anew; the old handle is closed only once the new one is open."""
        try:
            handle = self._open()
        except OSError as exc:
            self._stale = True
            raise self._unwritable(exc) from exc
        old, self._file, self._stale = self._file, handle, False
        with contextlib.suppress(OSError):  # the old file's late errors are not this file's
            old.close()

    def _append(self, handle: io.FileIO, data: bytes) -> None:
        """Write all of ``data``, or take back what landed and raise `DeliveryLogUnwritable`."""
        start = None
        try:
            start = os.fstat(handle.fileno()).st_size
            view = memoryview(b"\n" + data if self._cut else data)
            while view:  # a short write (disk nearly full) is followed by the rest, or an error
                written = handle.write(view)
                if not written:
                    raise OSError(errno.EIO, "the file took no bytes")
                view = view[written:]
        except OSError as exc:
            if start is not None:
                self._take_back(handle, start)
            raise self._unwritable(exc) from exc
        self._cut = False

    def _take_back(self, handle: io.FileIO, size: int) -> None:
        """Cut the file back to ``size`` so a failed write leaves no half line behind."""
        try:
            if os.fstat(handle.fileno()).st_size > size:
                os.ftruncate(handle.fileno(), size)
        except OSError:  # the cut line stays: the next write starts on a line of its own
            self._cut = True

    def _check_space(self) -> None:
        """Raise `DeliveryLogUnwritable` when the log's disk has no free block for this user."""
        try:
            stats = os.fstatvfs(self._file.fileno())
        except OSError as exc:
            raise self._unwritable(exc) from exc
        free = stats.f_bfree if os.geteuid() == 0 else stats.f_bavail
        if stats.f_blocks and not free:  # f_blocks 0: a file system that does not say
            raise self._unwritable(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    def _unwritable(self, exc: OSError) -> DeliveryLogUnwritable:
        """The exception for ``exc``; the first failure of an outage goes to the operational log."""
        reason = exc.strerror or str(exc)
        if self._broken is None:
            _oplog.error("delivery_log_unwritable", path=str(self.path), reason=reason)
        self._broken = reason
        return DeliveryLogUnwritable(self.path, reason, exc.errno)

    def _recovered(self) -> None:
        if self._broken is not None:
            self._broken = None
            _oplog.info("delivery_log_writable", path=str(self.path))

