"""The operational log on stderr (journald in production), and the secret redaction it shares.

Separate from the delivery log: this one tells operators what the daemon is doing; structlog
renders it as one JSON object a line, or as coloured console text on a terminal. What the
libraries say through the standard `logging` module (psycopg's warnings about a lost
connection, asyncio's errors) comes through it too, as ``library_message`` events, so the log
stays one JSON object a line and is redacted like every other line.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any, Literal, cast

import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

REDACTED = "[REDACTED]"
#: field names whose value is a credential whatever it contains
_CREDENTIAL_KEY = re.compile(
    r"api[_-]?key|auth[_-]?key|bot[_-]?key|token|authorization|secret|password|passwd|credential",
    re.IGNORECASE,
)
_LEVELS = {
    "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
    "error": logging.ERROR, "critical": logging.CRITICAL,
}

#: a `logging` record's level as the logger method that logs at it, highest first
_METHODS = ((logging.CRITICAL, "critical"), (logging.ERROR, "error"),
            (logging.WARNING, "warning"), (logging.INFO, "info"))

#: secrets shorter than this are redacted only where they are a whole value: replacing a toy
#: key like "k" inside every word would make the logs unreadable (real API keys are long)
SUBSTRING_MIN = 8


def _scrub(value: object, secrets: tuple[str, ...]) -> object:
    """``value`` with every secret replaced, recursively; unknown objects become their text."""
    if isinstance(value, str):
        for secret in secrets:
            if value == secret:
                return REDACTED
            if len(secret) >= SUBSTRING_MIN and secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if value is None or isinstance(value, bool | int | float | date):
        return value
    if isinstance(value, Mapping):
        return _scrub_mapping(value, secrets)
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(item, secrets) for item in value]
    # Anything else (a Path, an exception, a model) is rendered as text anyway: scrub that text,
    # so a secret cannot slip out through a repr.
    return _scrub(str(value), secrets)


def _scrub_mapping(fields: Mapping[Any, Any], secrets: tuple[str, ...]) -> dict[Any, Any]:
    return {
        key: REDACTED if _looks_like_credential(key, value) else _scrub(value, secrets)
        for key, value in fields.items()
    }


def _looks_like_credential(key: object, value: object) -> bool:
    return isinstance(key, str) and value is not None and bool(_CREDENTIAL_KEY.search(key))


def redact_secrets(secrets: Sequence[str]) -> Processor:
    """A structlog processor that removes every secret (and credential-named field) from events."""
    known = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def redact(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        return _scrub_mapping(event_dict, known)

    return redact


def _orjson_text(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def _stderr_logger(*_: Any) -> structlog.PrintLogger:
    """A logger on the *current* ``sys.stderr`` (tests and daemons may swap it)."""
    return structlog.PrintLogger(sys.stderr)


def configure_logging(
    level: str = "info", fmt: Literal["json", "console"] = "json",
    secrets: Sequence[str] = (),
) -> None:
    """Send structlog output to stderr as JSON lines or console text, at ``level`` and above."""
    if level.lower() not in _LEVELS:
        raise ValueError(f"unknown log level {level!r}: use one of {', '.join(_LEVELS)}")
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_text)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback,
        )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,  # to text first, so redaction sees it
            redact_secrets(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level.lower()]),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    _route_library_logs(_LEVELS[level.lower()])


class LibraryHandler(logging.Handler):
    """Hands a library's `logging` records to the operational log: event ``library_message``,
    the library's logger as ``component``, its text as ``message`` (and its traceback as
    ``exception``), at the record's level."""

    def emit(self, record: logging.LogRecord) -> None:
        """Log ``record`` through structlog (a failure is `logging`'s to report)."""
        try:
            fields: dict[str, Any] = {"message": record.getMessage()}
            if record.exc_info and record.exc_info[0] is not None:
                fields["exception"] = "".join(traceback.format_exception(*record.exc_info))
            method = next((name for number, name in _METHODS if record.levelno >= number),
                          "debug")
            getattr(get_logger(record.name), method)("library_message", **fields)
        except Exception:  # noqa: BLE001 - logging's own contract: report it, never raise
            self.handleError(record)


def _route_library_logs(level: int) -> None:
    """Every `logging` record at ``level`` and above, and never below WARNING (libraries'
    INFO and DEBUG chatter is not for operators), through `LibraryHandler`, once."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, LibraryHandler)]:
        root.removeHandler(handler)
    root.addHandler(LibraryHandler())
    root.setLevel(max(level, logging.WARNING))


def get_logger(name: str | None = None) -> FilteringBoundLogger:
    """A logger for the operational log; ``name`` is added as its ``component`` field.

    The logger stays lazy: it follows the configuration in force when it logs, not when made.
    """
    # ("logger" would be the usual key, but structlog.get_logger reserves that keyword)
    fields = {"component": name} if name else {}
    return cast(FilteringBoundLogger, structlog.get_logger(**fields))
