"""What the sandbox (`scheduler.sandbox`) is asked to do: its faults and its status API's story.

Apart from the server so that the CLI reads its defaults without importing aiohttp.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SandboxOptions:
    """How the emulator behaves; every fault is off by default."""

    api_key: str | None = None  # None: any non-empty credential header is accepted
    #: more keys accepted beside ``api_key`` (several accounts on one sandbox, SPEC §13.3)
    api_keys: frozenset[str] = frozenset()
    #: a file of accepted keys, one a line, read again whenever it changes (revoke a key
    #: while a client sends); with it, only its keys, ``api_key`` and ``api_keys`` pass
    api_keys_file: Path | None = None
    fail_rate: float = 0.0  # share of requests answered 500/502/503 (body read first)
    rate_limit: float | None = None  # requests/s, token bucket with burst max(1, rate * 1.5)
    latency_ms: float = 0.0  # added to every request
    reject_phones: frozenset[str] = frozenset()  # these toPhone values fail validation (400)
    #: share of phones refused as invalid (400), each phone always the same way (by a hash
    #: of it and ``seed``): numbers that do not exist, to try the error brake
    reject_rate: float = 0.0
    drop_rate: float = 0.0  # share of requests read, then hung up on without an answer
    omit_rate: float = 0.0  # share of 200 answers that leave out one message's id
    record: Path | None = None  # JSONL, one line per accepted message
    seed: int | None = None  # for reproducible fault injection (and message fates)
    # the status API
    dlr_delay: float = 5.0  # mean seconds from acceptance to a final status (0.5x to 1.5x)
    # (together well under the error brake's default 5%, which a daemon polling the
    # embedded sandbox applies to these statuses too)
    undeliverable_rate: float = 0.02  # share of messages no channel delivers
    permanent_error_rate: float = 0.005  # share refused for good (a number that does not exist)
    status_fail_rate: float = 0.0  # share of status requests answered 500/502/503
    status_rate_limit: float | None = None  # status requests/s, then 429 with Retry-After
    # webhooks: push each final status to this URL, with faults
    dlr_url: str | None = None
    dlr_duplicate_rate: float = 0.0  # share of final reports pushed twice
    dlr_reorder_rate: float = 0.0  # share of messages whose "processing" comes after the final
    dlr_missing_rate: float = 0.0  # share of final reports never pushed

    def __post_init__(self) -> None:
        for name in ("fail_rate", "reject_rate", "drop_rate", "omit_rate", "undeliverable_rate",
                     "permanent_error_rate", "status_fail_rate", "dlr_duplicate_rate",
                     "dlr_reorder_rate", "dlr_missing_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value}")
        if self.undeliverable_rate + self.permanent_error_rate > 1.0:
            raise ValueError("undeliverable_rate and permanent_error_rate add up to more than 1")
        for name in ("rate_limit", "status_rate_limit"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, not {value}")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must not be negative, not {self.latency_ms}")
        if not 0 <= self.dlr_delay <= 86_400:
            raise ValueError(f"dlr_delay must be 0 to 86400 seconds, not {self.dlr_delay}")
        if self.dlr_url is not None and not self.dlr_url.startswith(("http://", "https://")):
            raise ValueError(f"dlr_url must be an http(s) URL, not {self.dlr_url!r}")
