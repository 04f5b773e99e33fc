"""The daemon config: frozen pydantic models read from TOML, plus credentials from the environment.

Lookup order for the file: ``--config``, then ``$CASCADE_CONFIG``, then ``./config.toml``, else the
built-in defaults (paths relative to the current directory). Relative paths in the file are
resolved against the file's own folder. Credentials never live in the file: they come from the
environment or from systemd's ``$CREDENTIALS_DIRECTORY``, and are held as `SecretStr`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from scheduler.errors import ConfigError, Problem, UserError
from scheduler.inflight import MAX_IN_FLIGHT
from scheduler.sandbox_options import SandboxOptions
from scheduler.tomlsource import TomlProblem, read_toml
from scheduler.vocabulary import DEFAULT_ACCOUNT
from scheduler.window import Window, parse_days, zone

if TYPE_CHECKING:
    from scheduler.journal import JournalLocation

Route = Literal["standard", "tg-viber"]
Delivery = Literal["at-least-once", "at-most-once"]
SANDBOX = "sandbox"
#: SMSBAT's status API (its "Check Message Status" page)
SMSBAT_STATUS_URL = "https://api.smsbat.com"
#: SMSBAT's domain: a send API there has its status API at `SMSBAT_STATUS_URL`
SMSBAT_HOST = "smsbat.com"

#: environment variable -> file in $CREDENTIALS_DIRECTORY -> HTTP header
CREDENTIAL_SOURCES: tuple[tuple[str, str, str], ...] = (
    ("CASCADE_API_KEY", "api-key", "X-Authorization-Key"),
    ("CASCADE_VIBER_TOKEN", "viber-token", "X-Viber-Auth-Token"),
    ("CASCADE_TG_BOT_KEY", "tg-bot-key", "X-Tg-Bot-Key"),
)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ApiConfig(_Section):
    """``[api]``: where the Cascade API is and how to reach it."""

    base_url: str = SANDBOX
    route: Route = "standard"
    timeout: float = Field(default=30, gt=0, le=600)

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _api_url(value, "https://restapi.smsbat.com")

    @property
    def is_sandbox(self) -> bool:
        """True when the embedded emulator stands in for the API."""
        return self.base_url == SANDBOX


class SendingConfig(_Section):
    """``[sending]``: batching, pacing and the delivery guarantee."""

    batch_size: int = Field(default=500, ge=1, le=1000)
    requests_per_second: float = Field(default=20, gt=0, le=1000)
    # requests in flight: unset, they follow the measured round trip (scheduler/inflight.py);
    # set, a hard cap
    concurrency: int | None = Field(default=None, ge=1, le=MAX_IN_FLIGHT)
    max_attempts: int = Field(default=6, ge=1, le=100)
    delivery: Delivery = "at-least-once"
    brake_rate: float = Field(default=0.05, gt=0, lt=1)  # share of recent messages rejected
    brake_window: int = Field(default=500, ge=0, le=1_000_000)  # recent messages; 0 = off

    @property
    def most_in_flight(self) -> int:
        """The most requests ever in flight at once: ``concurrency``, else the ceiling."""
        return self.concurrency if self.concurrency is not None else MAX_IN_FLIGHT

    @field_validator("brake_window")
    @classmethod
    def _check_window(cls, value: int) -> int:
        if 0 < value < 100:
            raise ValueError(
                f"{value} is too few to judge: write 100 or more (or 0 to turn the brake off)"
            )
        return value


#: an account's name: it is part of a file name (``api-key-{name}``) and of an environment
#: variable (``CASCADE_API_KEY_{NAME}``), so lower-case letters, digits, "-" and "_" only
ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


class AccountConfig(_Section):
    """One ``[[accounts]]`` entry (SPEC §13.3): an SMSBAT account with its own API key
    (`account_key_source`), rate limit and connection pool."""

    name: str
    requests_per_second: float = Field(gt=0, le=1000)
    # unset: the requests in flight follow the round trip, as for [sending] concurrency
    concurrency: int | None = Field(default=None, ge=1, le=MAX_IN_FLIGHT)
    #: None: ``[api] base_url``
    base_url: str | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not ACCOUNT_NAME.match(value):
            suggestion = re.sub(r"[^a-z0-9_-]+", "-", value.strip().lower()).strip("-_")[:40]
            example = f': write "{suggestion}"' if suggestion and ACCOUNT_NAME.match(
                suggestion) else ""
            raise ValueError(
                f'"{value}" is not an account name (lower-case letters, digits, "-" and "_", '
                f"at most 40, starting with a letter or digit: it names the api-key-NAME "
                f"credential){example}")
        return value

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return None if value is None else _api_url(value, "https://restapi.smsbat.com")

    @property
    def most_in_flight(self) -> int:
        """The most requests of this account ever in flight at once."""
        return self.concurrency if self.concurrency is not None else MAX_IN_FLIGHT


def account_key_source(name: str, *, declared: bool = True) -> tuple[str, str]:
    """(environment variable, file in $CREDENTIALS_DIRECTORY) of an account's API key:
    ``CASCADE_API_KEY_{NAME}`` (upper-cased, "-" written "_") and ``api-key-{name}``; the
    account of a config without ``[[accounts]]`` (``declared`` False) uses ``CASCADE_API_KEY``
    and ``api-key``."""
    if not declared:
        return "CASCADE_API_KEY", "api-key"
    return f"CASCADE_API_KEY_{name.upper().replace('-', '_')}", f"api-key-{name}"


class PathsConfig(_Section):
    """``[paths]``: every path absolute (resolved against the config file's folder)."""

    campaigns: Path = Path("campaigns")
    state: Path = Path("state/journal.sqlite3")
    delivery_log: Path = Path("logs/delivery.jsonl")
    suppression: Path | None = None
    audiences: Path | None = None

    @field_validator("suppression", "audiences", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    def resolved(self, base: Path) -> PathsConfig:
        """A copy with relative paths made absolute against ``base``."""

        def fix(p: Path | None) -> Path | None:
            return None if p is None else (base / p.expanduser()).resolve()

        return PathsConfig(
            campaigns=(base / self.campaigns).resolve(),
            state=(base / self.state).resolve(),
            delivery_log=(base / self.delivery_log).resolve(),
            suppression=fix(self.suppression),
            audiences=fix(self.audiences),
        )


class JournalConfig(_Section):
    """``[journal]``: a PostgreSQL journal shared by several daemons (absent: SQLite at
    ``[paths].state``, one daemon). The password is a credential, never written here."""

    url: str | None = None
    lease: float = Field(default=15, ge=3, le=300)  # seconds; renewed every lease / 3

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("postgresql", "postgres") or not (parts.hostname or parts.query):
            raise ValueError(
                f'"{value}" is not a PostgreSQL URL: write "postgresql://USER@HOST:5432/DB"'
            )
        if parts.password is not None:
            raise ValueError(
                "the URL holds a password: remove it and give it as the journal-password "
                "credential or CASCADE_JOURNAL_PASSWORD (or in PGPASSFILE)"
            )
        return value.strip()


class MetricsConfig(_Section):
    """``[metrics]``: Prometheus metrics and health checks over HTTP (off when absent)."""

    listen: str | None = None  # "HOST:PORT", e.g. "127.0.0.1:9464"

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, _, port = value.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f'"{value}" is not HOST:PORT: write "127.0.0.1:9464"')
        return value.strip()

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) to listen on, or None when off."""
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class LogConfig(_Section):
    """``[log]``: the operational log on stderr and how phones appear in the delivery log."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    phones: Literal["masked", "full"] = "masked"


class CapConfig(_Section):
    """One ``[[policy.caps]]``: at most ``max`` sent messages of ``types`` per phone in any
    ``days`` (rolling), across every campaign in the journal; with ``accounts``, only the
    campaigns of those ``[[accounts]]`` are capped, and only their messages count."""

    types: tuple[Literal["promo", "viber_survey"], ...] = Field(min_length=1)
    max: int = Field(ge=1, le=1000)
    days: float = Field(gt=0, le=366)
    #: the accounts whose campaigns it caps and counts (SPEC §13.3); None: every account
    accounts: tuple[str, ...] | None = Field(default=None, min_length=1)

    def covers(self, account: str) -> bool:
        """Whether the campaigns of ``account`` are capped (and counted) by this cap."""
        return self.accounts is None or account in self.accounts


class PolicyConfig(_Section):
    """``[policy]``: send windows and frequency caps that hold for every campaign (SPEC §11.4)."""

    #: the default send window of promo and viber_survey campaigns (None: no window)
    window: str | None = None
    window_days: tuple[str, ...] | None = None
    #: the zone of recipients whose own zone is unknown (no tz column, an unmapped phone)
    timezone: str = "UTC"
    caps: tuple[CapConfig, ...] = ()

    @field_validator("window")
    @classmethod
    def _check_window(cls, value: str | None) -> str | None:
        if value is not None:
            Window.parse(value)
        return value

    @field_validator("window_days")
    @classmethod
    def _check_days(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            parse_days(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        zone(value)
        return value

    def default_window(self) -> Window | None:
        """The window for promo and viber_survey campaigns whose file sets none."""
        return None if self.window is None else Window.parse(self.window, self.window_days)


POLL_RATE_MAX = 1000  # status requests/s: the most `poll_rate` may be, and its default


class DeliveryReportsConfig(_Section):
    """``[delivery_reports]``: follow each sent message to its delivery status (SPEC §11.3)."""

    poll: bool = False  # ask the status API about every sent message until it is final
    #: None: the embedded sandbox with ``[api] base_url = "sandbox"``, SMSBAT's with SMSBAT's
    #: send API, else ``[api] base_url`` itself (see `status_base`)
    status_url: str | None = None
    #: status requests/s, its own limit; None: `status_rate` (keep up with the sending)
    poll_rate: float | None = Field(default=None, gt=0, le=POLL_RATE_MAX)
    # not in config.example.toml (tests use seconds): the first poll this long after sending,
    # then the interval doubles up to max_interval
    first_poll: float = Field(default=30, gt=0, le=3600)
    max_interval: float = Field(default=1800, gt=0, le=86_400)
    #: "HOST:PORT" of the webhook receiver (off when absent); the path holds a secret token
    listen: str | None = None
    #: the account's currency (ISO 4217, e.g. "UAH"): a cost reported without one (the
    #: webhook's four fields carry none) is taken in it; else it is shown as "unknown"
    currency: str | None = None

    @field_validator("currency")
    @classmethod
    def _check_currency(cls, value: str | None) -> str | None:
        if value is None:
            return None
        code = value.strip().upper()
        if len(code) != 3 or not code.isascii() or not code.isalpha():
            raise ValueError(f'"{value}" is not a currency code: write three letters, like "UAH"')
        return code

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        return None if value is None else _host_port(value, "127.0.0.1:8088")

    @property
    def enabled(self) -> bool:
        """True when delivery statuses come: polled, or pushed to the webhook receiver."""
        return self.poll or self.listen is not None

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) of the webhook receiver, or None when off."""
        return None if self.listen is None else _address(self.listen)

    @field_validator("status_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return None if value is None else _api_url(value, SMSBAT_STATUS_URL)

    def status_rate(self, sending: SendingConfig) -> float:
        """Status requests a second: ``poll_rate``, else one per message the account may send
        a second (``requests_per_second`` x ``batch_size``) up to `POLL_RATE_MAX`: one poll
        per message finds most final, so the statuses fill about as fast as messages go out.
        The poller backs off when the status API answers 429 or 5xx."""
        if self.poll_rate is not None:
            return self.poll_rate
        return min(POLL_RATE_MAX, sending.requests_per_second * sending.batch_size)

    def status_base(self, api: ApiConfig) -> str:
        """The status API to poll: a URL, or "sandbox" (the embedded emulator).

        Unset, it follows ``[api] base_url``: SMSBAT's status API for SMSBAT's send API, else
        the same server (a standalone sandbox answers both; SMSBAT's status API would know
        none of its message ids, and would be sent its key)."""
        if self.status_url is not None:
            return self.status_url
        if api.is_sandbox:
            return SANDBOX
        host = urlsplit(api.base_url).hostname or ""
        return SMSBAT_STATUS_URL if host == SMSBAT_HOST or host.endswith("." + SMSBAT_HOST) \
            else api.base_url


class SandboxConfig(_Section):
    """``[sandbox]``: the faults of the embedded emulator (``[api] base_url = "sandbox"``), to
    see retries, the error brake and delivery reports at work without an account. Every fault
    is off by default; the names are those of the `sandbox` command's options."""

    fail_rate: float = Field(default=0.0, ge=0, le=1)  # share of requests answered 5xx
    rate_limit: float | None = Field(default=None, gt=0, le=100_000)  # requests/s, then 429
    latency_ms: float = Field(default=0.0, ge=0, le=60_000)  # added to every request
    reject_rate: float = Field(default=0.0, ge=0, le=1)  # share of phones answered 400
    reject_phones: tuple[str, ...] = ()  # these phones answered 400
    drop_rate: float = Field(default=0.0, ge=0, le=1)  # requests hung up on, no answer
    omit_rate: float = Field(default=0.0, ge=0, le=1)  # 200 answers missing one id
    seed: int | None = None  # the same faults every run
    dlr_delay: float = Field(default=SandboxOptions.dlr_delay, ge=0, le=86_400)
    undeliverable_rate: float = Field(default=SandboxOptions.undeliverable_rate, ge=0, le=1)
    permanent_error_rate: float = Field(default=SandboxOptions.permanent_error_rate, ge=0, le=1)
    status_fail_rate: float = Field(default=0.0, ge=0, le=1)
    status_rate_limit: float | None = Field(default=None, gt=0, le=100_000)

    @model_validator(mode="after")
    def _check_shares(self) -> SandboxConfig:
        if self.undeliverable_rate + self.permanent_error_rate > 1:
            raise ValueError("undeliverable_rate and permanent_error_rate add up to more than 1")
        return self

    def options(self, record: Path | None) -> SandboxOptions:
        """The emulator's options, recording accepted messages to ``record``."""
        return SandboxOptions(
            **{**self.model_dump(), "reject_phones": frozenset(self.reject_phones)},
            record=record,
        )


class Credentials(_Section):
    """The API credentials; `SecretStr` keeps them out of reprs, logs and errors."""

    api_key: SecretStr | None = None
    viber_token: SecretStr | None = None
    tg_bot_key: SecretStr | None = None
    journal_password: SecretStr | None = None
    webhook_token: SecretStr | None = None  # the secret in the delivery-report webhook's path
    #: each declared account's API key, by account name (``[[accounts]]``; absent: none set)
    account_keys: dict[str, SecretStr] = Field(default_factory=dict)

    def headers_for(self, account: str | None) -> dict[str, str]:
        """The headers of one account's requests: its API key (``None``, or the account of a
        config without ``[[accounts]]``: `api_key`) with the shared Viber and Telegram ones."""
        headers = self.headers()
        if account is not None:
            headers.pop("X-Authorization-Key", None)
            key = self.account_keys.get(account)
            if key is not None:
                headers["X-Authorization-Key"] = key.get_secret_value()
        return headers

    def headers(self) -> dict[str, str]:
        """Every configured credential as the header the API expects."""
        values = (self.api_key, self.viber_token, self.tg_bot_key)
        return {
            header: secret.get_secret_value()
            for (_, _, header), secret in zip(CREDENTIAL_SOURCES, values, strict=True)
            if secret is not None
        }

    def secrets(self) -> list[str]:
        """The raw secret values, for redaction filters."""
        others = (self.journal_password, self.webhook_token, *self.account_keys.values())
        return [*self.headers().values(), *(s.get_secret_value() for s in others if s)]

    def __bool__(self) -> bool:
        return bool(self.headers()) or bool(self.account_keys)


class Config(_Section):
    """The whole daemon config, validated once and then handed to the objects that run."""

    api: ApiConfig = ApiConfig()
    sending: SendingConfig = SendingConfig()
    paths: PathsConfig = PathsConfig()
    log: LogConfig = LogConfig()
    journal: JournalConfig = JournalConfig()
    metrics: MetricsConfig = MetricsConfig()
    delivery_reports: DeliveryReportsConfig = DeliveryReportsConfig()
    policy: PolicyConfig = PolicyConfig()
    sandbox: SandboxConfig = SandboxConfig()
    #: ``[[accounts]]`` (SPEC §13.3); none: one account, `DEFAULT_ACCOUNT`, from [api]/[sending]
    accounts: tuple[AccountConfig, ...] = ()
    credentials: Credentials = Field(default=Credentials(), repr=False, exclude=True)
    source: Path | None = None

    def account_list(self) -> tuple[AccountConfig, ...]:
        """Every account, with its base URL filled in (its own, else ``[api] base_url``);
        without ``[[accounts]]``, the one account `DEFAULT_ACCOUNT` of ``[api]`` and
        ``[sending]``."""
        if not self.accounts:
            return (AccountConfig(
                name=DEFAULT_ACCOUNT, requests_per_second=self.sending.requests_per_second,
                concurrency=self.sending.concurrency, base_url=self.api.base_url),)
        return tuple(a if a.base_url is not None else
                     a.model_copy(update={"base_url": self.api.base_url})
                     for a in self.accounts)

    def account(self, name: str) -> AccountConfig:
        """The account called ``name`` (base URL filled in); `KeyError` when none is."""
        for account in self.account_list():
            if account.name == name:
                return account
        raise KeyError(name)

    @property
    def account_names(self) -> tuple[str, ...]:
        """The configured accounts' names, in the file's order."""
        return tuple(a.name for a in self.account_list())

    @property
    def default_account(self) -> str | None:
        """The account of a campaign that names none: the only one, else the one called
        "default"; None when there are several and none is called so."""
        names = self.account_names
        if len(names) == 1:
            return names[0]
        return DEFAULT_ACCOUNT if DEFAULT_ACCOUNT in names else None

    def key_source(self, account: str) -> tuple[str, str]:
        """(environment variable, credential file) of ``account``'s API key."""
        return account_key_source(account, declared=bool(self.accounts))

    def account_headers(self, account: str) -> dict[str, str]:
        """The credential headers of ``account``'s requests."""
        return self.credentials.headers_for(account if self.accounts else None)

    def sending_for(self, account: str) -> SendingConfig:
        """``[sending]`` with ``account``'s rate limit and concurrency."""
        chosen = self.account(account)
        return self.sending.model_copy(update={
            "requests_per_second": chosen.requests_per_second,
            "concurrency": chosen.concurrency})

    def journal_location(self) -> JournalLocation:
        """Where this config's journal is: ``[journal] url`` (password from the credentials),
        else the SQLite file at ``[paths].state``."""
        from scheduler.journal import JournalLocation  # reading a config loads no backend

        password = self.credentials.journal_password
        return JournalLocation(
            self.paths.state, self.journal.url,
            None if password is None else password.get_secret_value(),
        )

    def require_credentials(self, accounts: Iterable[str] | None = None) -> None:
        """Raise `ConfigError` when an account of a real API (of ``accounts``; None: every
        one) has no API key (and, without ``[[accounts]]``, no credential at all)."""
        problems = []
        wanted = None if accounts is None else set(accounts)
        for account in self.account_list():
            if account.base_url == SANDBOX or (wanted is not None and account.name not in wanted):
                continue
            if not self.accounts:
                if self.credentials:
                    continue
                names = ", ".join(env for env, _, _ in CREDENTIAL_SOURCES)
                problems.append(Problem(
                    self.source, None, "api.base_url",
                    f"base_url {account.base_url} needs a credential: set one of {names} "
                    "(or LoadCredential= api-key in the systemd unit)"))
            elif account.name not in self.credentials.account_keys:
                variable, filename = self.key_source(account.name)
                problems.append(Problem(
                    self.source, None, "accounts",
                    f'account "{account.name}" has no API key: set {variable} (or '
                    f"LoadCredential= {filename} in the systemd unit)"))
        if problems:
            raise ConfigError(problems)

    def require_daemon(self) -> None:
        """Raise `ConfigError` for what `run` cannot start with: the sandbox's status API
        against a real API, a webhook listener without its token, no campaigns folder."""
        reports = self.delivery_reports
        if reports.poll and not self.api.is_sandbox and reports.status_base(self.api) == SANDBOX:
            raise ConfigError.single(
                'status_url = "sandbox" needs [api] base_url = "sandbox" (the embedded emulator '
                "answers both); write SMSBAT's status API URL, https://api.smsbat.com",
                file=self.source, field="delivery_reports.status_url",
            )
        if reports.listen is not None and self.credentials.webhook_token is None:
            raise ConfigError.single(
                "listen needs the webhook token: set CASCADE_WEBHOOK_TOKEN (or LoadCredential= "
                "webhook-token in the systemd unit); it is the secret part of the webhook's URL",
                file=self.source, field="delivery_reports.listen",
            )
        folder = self.paths.campaigns
        if not folder.is_dir():
            raise ConfigError.single(
                f"campaigns folder {folder} does not exist: create it or fix [paths].campaigns",
                file=self.source, field="paths.campaigns",
            )


def _api_url(value: str, example: str) -> str:
    """``value`` without a trailing slash when it is "sandbox" or an http(s) URL that keeps
    credentials off the network in clear text (http:// only to this machine)."""
    value = value.strip().rstrip("/")
    if value == SANDBOX:
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f'"{value}" is not a URL: write "sandbox" or "{example}"')
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(
            "plain http:// would send the API key in clear text: use https:// "
            "(http:// is only allowed for 127.0.0.1 / localhost)"
        )
    return value


def _host_port(value: str, example: str) -> str:
    """``value`` when it is HOST:PORT with a port of 1..65535."""
    host, _, port = value.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'"{value}" is not HOST:PORT: write "{example}"')
    return value.strip()


def _address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: the journal's password: environment variable, file in $CREDENTIALS_DIRECTORY
JOURNAL_PASSWORD_SOURCE = ("CASCADE_JOURNAL_PASSWORD", "journal-password")
#: the delivery-report webhook's token: environment variable, file in $CREDENTIALS_DIRECTORY
WEBHOOK_TOKEN_SOURCE = ("CASCADE_WEBHOOK_TOKEN", "webhook-token")


def load_credentials(env: Mapping[str, str]) -> Credentials:
    """Credentials from the environment, else from files in ``$CREDENTIALS_DIRECTORY``.

    One trailing newline (as ``echo`` writes it) and surrounding spaces are dropped; any other
    line break or control character is a `ConfigError` naming the credential, never showing it:
    sent on, it would break the HTTP header (or the password) far from its cause.
    """
    directory = env.get("CREDENTIALS_DIRECTORY")
    found: dict[str, SecretStr] = {}
    problems: list[Problem] = []
    sources = [(variable, filename) for variable, filename, _ in CREDENTIAL_SOURCES]
    for field_name, (variable, filename) in zip(
        ("api_key", "viber_token", "tg_bot_key", "journal_password", "webhook_token"),
        [*sources, JOURNAL_PASSWORD_SOURCE, WEBHOOK_TOKEN_SOURCE], strict=True,
    ):
        try:
            value = _credential(env, variable, directory, filename)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if value:
            found[field_name] = SecretStr(value)
    if problems:
        raise ConfigError(problems)
    return Credentials(**found)


def _credential(
    env: Mapping[str, str], variable: str, directory: str | None, filename: str
) -> str:
    """One credential's cleaned value ("" when unset): the variable, else the file."""
    noun = filename.rpartition("-")[2]  # api-key -> key, journal-password -> password
    value = _one_line(env.get(variable, ""), variable, noun)
    if value or not directory:
        return value
    name = f"{filename} in $CREDENTIALS_DIRECTORY"
    try:
        text = (Path(directory) / filename).read_bytes().decode("utf-8-sig")
    except OSError:
        return ""
    except UnicodeDecodeError:
        raise ConfigError.single(
            f"{name} is not UTF-8 text: write only the {noun}, as plain text"
        ) from None
    return _one_line(text, name, noun)


def _one_line(text: str, name: str, noun: str) -> str:
    """``text`` without one trailing newline and surrounding spaces; `ConfigError` (naming
    ``name``, never the value) if a line break or another control character remains."""
    text = text.rstrip(" ")
    text = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
    if any(_is_control(char) for char in text):
        raise ConfigError.single(
            f"{name} contains a line break or another control character: "
            f"keep only the {noun} on one line"
        )
    return text.strip()  # spaces only: every other kind of whitespace was refused above


def _is_control(char: str) -> bool:
    """Control, format and unassigned characters (C*), and the Unicode line separators."""
    category = unicodedata.category(char)
    return category.startswith("C") or category in ("Zl", "Zp")


def config_path(explicit: Path | None, env: Mapping[str, str]) -> Path | None:
    """Which config file to read: ``--config``, ``$CASCADE_CONFIG``, ``./config.toml`` or none."""
    if explicit is not None:
        return explicit
    if env.get("CASCADE_CONFIG"):
        return Path(env["CASCADE_CONFIG"])
    default = Path("config.toml")
    return default if default.is_file() else None


def load_config(explicit: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Find, read and validate the config; raise `ConfigError` listing every problem."""
    env = os.environ if env is None else env
    path = config_path(explicit, env)
    credentials = load_credentials(env)
    if path is None:
        return Config(paths=PathsConfig().resolved(Path.cwd()), credentials=credentials)
    if not path.is_file():
        what = "is not a file" if path.exists() else "config file not found"
        raise ConfigError.single(
            f"{what}: pass --config PATH or set CASCADE_CONFIG", file=path
        )
    try:
        document = read_toml(path)
    except TomlProblem as exc:
        raise ConfigError([exc.problem]) from None
    stray = [_not_from_file(key, path, document.line_of(key))
             for key in document.data if key in _NOT_FROM_FILE]
    try:
        config = Config.model_validate(
            {k: v for k, v in document.data.items() if k not in _NOT_FROM_FILE})
    except ValidationError as exc:
        raise ConfigError(
            stray + pydantic_problems(exc, path, document.line_of, Config)
        ) from None
    if stray:
        raise ConfigError(stray)
    if problems := (_account_problems(config, path, document.line_of)
                    + _cap_problems(config, path, document.line_of)):
        raise ConfigError(problems)
    if config.accounts:
        credentials = credentials.model_copy(update={
            "account_keys": load_account_keys(env, config.account_names)})
    try:
        paths = config.paths.resolved(path.resolve().parent)
    except RuntimeError as exc:  # a symbolic link loop on one of the paths
        raise ConfigError.single(
            f"a path in [paths] cannot be used: {exc}: fix the symbolic link", file=path,
            field="paths",
        ) from None
    return config.model_copy(
        update={"paths": paths, "credentials": credentials, "source": path}
    )


def _account_problems(
    config: Config, path: Path, line_of: Callable[[str], int | None],
) -> list[Problem]:
    """``[[accounts]]`` that cannot be told apart (a name twice, two names with one
    environment variable) or that leave ``[sending]``'s rate ambiguous."""
    if not config.accounts:
        return []
    problems = []
    seen: dict[str, int] = {}
    for index, account in enumerate(config.accounts):
        where = f"accounts.{index}.name"
        variable = account_key_source(account.name)[0]
        if account.name in seen:
            first = line_of(f"accounts.{seen[account.name]}.name")
            problems.append(Problem(
                path, line_of(where), where, f'account "{account.name}" is configured twice'
                + (f" (first at line {first})" if first else "") + ": give each its own name"))
        elif (twin := next((other for other in seen if account_key_source(other)[0] ==
                            variable), None)) is not None:
            problems.append(Problem(
                path, line_of(where), where, f'accounts "{twin}" and "{account.name}" would '
                f"both read their key from {variable}: rename one"))
        seen.setdefault(account.name, index)
    for key in ("requests_per_second", "concurrency"):
        if key in config.sending.model_fields_set:
            problems.append(Problem(
                path, line_of(f"sending.{key}"), f"sending.{key}",
                f"with [[accounts]], each account has its own {key}: write it in each "
                "[[accounts]] entry and remove it from [sending]"))
    return problems


def _cap_problems(
    config: Config, path: Path, line_of: Callable[[str], int | None],
) -> list[Problem]:
    """``[[policy.caps]]`` ``accounts`` that name an account the config does not have."""
    import difflib

    names = config.account_names
    problems = []
    for index, cap in enumerate(config.policy.caps):
        where = f"policy.caps.{index}.accounts"
        for name in dict.fromkeys(cap.accounts or ()):
            if name in names:
                continue
            close = difflib.get_close_matches(name, names, n=1)
            if not config.accounts:
                why = (f'unknown account "{name}": without [[accounts]] the one account is '
                       f'"{DEFAULT_ACCOUNT}"')
            elif close:
                why = (f'unknown account "{name}" (no [[accounts]] entry has that name): '
                       f'did you mean "{close[0]}"?')
            else:
                why = (f'unknown account "{name}" (no [[accounts]] entry has that name): the '
                       "accounts are " + ", ".join(f'"{n}"' for n in names))
            problems.append(Problem(path, line_of(where), where, why))
    return problems


def load_account_keys(env: Mapping[str, str], names: Iterable[str]) -> dict[str, SecretStr]:
    """Each declared account's API key (`account_key_source`), from the environment, else from
    ``$CREDENTIALS_DIRECTORY``; an account called "default" falls back to the plain
    ``CASCADE_API_KEY`` / ``api-key`` (a config that grew ``[[accounts]]`` keeps its key)."""
    directory = env.get("CREDENTIALS_DIRECTORY")
    keys: dict[str, SecretStr] = {}
    problems: list[Problem] = []
    for name in names:
        sources = [account_key_source(name)]
        if name == DEFAULT_ACCOUNT:
            sources.append(account_key_source(name, declared=False))
        for variable, filename in sources:
            try:
                value = _credential(env, variable, directory, filename)
            except ConfigError as exc:
                problems.extend(exc.problems)
                break
            if value:
                keys[name] = SecretStr(value)
                break
    if problems:
        raise ConfigError(problems)
    return keys


#: fields of `Config` that the file cannot set: the process fills them in
_NOT_FROM_FILE = frozenset({"credentials", "source"})


def _not_from_file(key: str, path: Path, line: int | None) -> Problem:
    """A top-level key that names a field the process fills in, never the file."""
    if key != "credentials":
        return Problem(path, line, key, "unknown key")
    names = ", ".join(env for env, _, _ in CREDENTIAL_SOURCES)
    return Problem(path, line, key, "credentials never live in the config file: remove them "
                   f"and set {names} (or LoadCredential= in the systemd unit)")


def pydantic_problems(
    exc: ValidationError,
    path: Path,
    line_of: Any,
    model: type[BaseModel],
) -> list[Problem]:
    """Turn a pydantic `ValidationError` into located problems, with "did you mean" hints
    taken from ``model`` itself (the keys of the table where the unknown one was written)."""
    import difflib

    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        dotted = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            known = table_keys(model, error["loc"][:-1])
            close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
            hint = f': did you mean "{close[0]}"?' if close else ""
            message = f"unknown key{hint}"
        elif error["type"] == "missing":
            message = "required key is missing"
        problems.append(Problem(path, line_of(dotted), dotted, message))
    return problems


def table_keys(model: type[BaseModel], where: Sequence[int | str]) -> list[str]:
    """The keys the table at ``where`` (a pydantic error location, list indexes included)
    takes, read from the models, so a hint can never name a key that does not exist or miss
    one that does; [] where no table of the model is."""
    for part in where:
        if isinstance(part, int):
            continue  # an entry of an array of tables: the same model as the array's
        field = model.model_fields.get(part)
        inner = None if field is None else _model_in(field.annotation)
        if inner is None:
            return []
        model = inner
    return sorted(name for name in model.model_fields
                  if not (model is Config and name in _NOT_FROM_FILE))


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The model a field holds: itself, or inside a tuple, a list or an optional."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for arg in get_args(annotation) if (m := _model_in(arg)) is not None), None)


def postgres_url(url: str) -> str:
    """``url`` checked as ``[journal] url`` is (postgresql://, no password in it), or a
    `UserError` for ``--to`` that never shows a password."""
    try:
        checked = JournalConfig(url=url).url
    except ValidationError as exc:
        message = str(exc.errors(include_url=False)[0]["msg"]).removeprefix("Value error, ")
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            message = message.replace(password, "***")
        raise UserError.single(message, field="--to") from None
    assert checked is not None  # a URL was given
    return checked
