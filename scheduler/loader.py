"""The campaign loader: reads and validates campaign TOML files into a `CampaignCheck`."""

from __future__ import annotations

import difflib
import errno
import hashlib
import itertools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal, cast, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from scheduler.audience import read_header
from scheduler.campaign import (
    DEFAULT_TTL,
    HORIZON,
    ID_PATTERN,
    MESSAGE_TYPES,
    RECOMMENDED_TTL,
    SENDER_NAME_MAX,
    SURVEY_OPTION_MAX,
    SURVEY_TEXT_MAX,
    TRANSACTIONAL,
    TTL_MAX,
    AudienceSpec,
    Campaign,
    MessageType,
    Rollout,
    utc_text,
)
from scheduler.config import Config, Route
from scheduler.errors import CampaignError, Problem
from scheduler.series import REPEAT_KEYS, Repeat, RepeatReader
from scheduler.template import Template, TemplateError
from scheduler.tomlsource import TomlDocument, TomlProblem, parse_toml
from scheduler.trigger import TRIGGER_KEYS, Trigger, TriggerReader
from scheduler.window import Window, parse_days


@dataclass(frozen=True)
class CampaignCheck:
    """The result of loading one campaign file: the campaign when valid, and every problem."""

    file: Path
    campaign: Campaign | None  # None when there is any error
    problems: list[Problem]  # errors and warnings, in line order

    @property
    def ok(self) -> bool:
        """True when the file has no errors (warnings are allowed)."""
        return not any(p.is_error for p in self.problems)

    @property
    def errors(self) -> list[Problem]:
        """Only the errors."""
        return [p for p in self.problems if p.is_error]

    @property
    def warnings(self) -> list[Problem]:
        """Only the warnings."""
        return [p for p in self.problems if not p.is_error]


def campaign_files(folder: Path) -> list[Path]:
    """The campaign files (``*.toml``, not hidden, not recursive) of ``folder``, sorted.

    A symbolic link that loops or points nowhere is listed too (see `broken_link`): loading it
    reports the problem, where skipping it would make its campaign vanish without a word.
    """
    return sorted(
        p for p in folder.glob("*.toml")
        if not p.name.startswith(".") and (p.is_file() or broken_link(p) is not None)
    )


def broken_link(path: Path) -> str | None:
    """What is wrong when ``path`` is a symbolic link that cannot be followed ("it is a
    symbolic link that loops"), else None (a file, a folder, or missing altogether)."""
    try:
        path.stat()
    except OSError as exc:
        return _link_failure(path, exc)
    return None


def _link_failure(path: Path, exc: OSError) -> str | None:
    """``exc`` (from following ``path``) in words, when a symbolic link is the cause."""
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link that loops"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR) and path.is_symlink():
        target = real_path(path)  # links followed as far as they lead
        return f"it is a symbolic link that points to {target}, which does not exist"
    return None


def real_path(path: Path) -> Path:
    """``path`` with its symbolic links resolved, or only made absolute when they loop."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return path.absolute()


def load_campaign(path: Path, config: Config, now: datetime) -> CampaignCheck:
    """Read and validate one campaign file (and its CSV header), reporting every problem."""
    return _load(path, config, now, _Shared(config)).check


def load_campaigns(paths: Iterable[Path], config: Config, now: datetime) -> list[CampaignCheck]:
    """Load every file; an id used by several files is an error on each of them."""
    shared = _Shared(config)
    loaded = [_load(path, config, now, shared) for path in paths]
    by_id: dict[str, list[_Loaded]] = {}
    for item in loaded:
        if item.id is not None:
            by_id.setdefault(item.id, []).append(item)
    checks = []
    for item in loaded:
        others = [o.check.file for o in by_id.get(item.id or "", []) if o is not item]
        checks.append(item.with_duplicates(others) if others else item.check)
    return checks


@dataclass(frozen=True)
class _Loaded:
    """A check plus the raw id (even from an invalid file) and its line, for duplicate ids."""

    check: CampaignCheck
    id: str | None = None
    id_line: int | None = None

    def with_duplicates(self, others: list[Path]) -> CampaignCheck:
        """This file's check, with an error naming the other files that use the same id."""
        names = ", ".join(str(o) for o in others)
        problem = Problem(
            self.check.file, self.id_line, "id",
            f'id "{self.id}" is also used by {names}: every campaign needs its own id',
        )
        return CampaignCheck(self.check.file, None, _in_line_order([*self.check.problems, problem]))


class _Shared:
    """What the files of one `load_campaigns` would each work out again: the folders an
    audience CSV must be in, and the header of each CSV (by its signature: a CSV replaced
    meanwhile is read again). Problems are not kept: each file reports its own."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._roots: list[Path] | None = None
        self._headers: dict[tuple[Path, str | None, tuple[int, ...]], list[str]] = {}
        self._resolved: dict[tuple[Path, str], Path] = {}

    def roots(self) -> list[Path]:
        """The campaigns folder and ``[paths].audiences``, symbolic links resolved."""
        if self._roots is None:
            roots = [self.config.paths.campaigns.resolve()]
            if self.config.paths.audiences is not None:
                roots.append(self.config.paths.audiences.resolve())
            self._roots = roots
        return self._roots

    def resolve(self, folder: Path, written: str) -> Path:
        """``folder / written`` with its symbolic links resolved (``folder`` is already): once
        for the files of one folder that name the same CSV."""
        key = (folder, written)
        if key not in self._resolved:
            self._resolved[key] = (folder / written).resolve()
        return self._resolved[key]

    def header(self, spec: AudienceSpec, campaign_file: Path) -> list[str]:
        """`read_header`, once per CSV, delimiter and signature."""
        try:
            st = spec.csv.stat()
        except OSError:
            return read_header(spec, campaign_file)  # which says why
        key = (spec.csv, spec.delimiter, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        if key not in self._headers:
            self._headers[key] = read_header(spec, campaign_file)
        return list(self._headers[key])


def _load(path: Path, config: Config, now: datetime, shared: _Shared) -> _Loaded:
    try:
        raw = path.read_bytes()
        # Parse and hash the same bytes: the fingerprint must describe what was validated.
        document = parse_toml(path, raw)
    except TomlProblem as exc:
        return _Loaded(CampaignCheck(path, None, [exc.problem]))
    except OSError as exc:
        link = _link_failure(path, exc)
        message = f"cannot read: {link}" if link else f"cannot read file: {exc.strerror}"
        return _Loaded(CampaignCheck(path, None, [Problem(path, None, None, message)]))
    fingerprint = hashlib.sha256(raw).hexdigest()
    reader = _CampaignReader(document, config, now, shared)
    campaign = reader.build(fingerprint, content_key(document.data))
    raw_id = document.data.get("id")
    return _Loaded(
        CampaignCheck(path, campaign, _in_line_order(reader.problems)),
        raw_id if isinstance(raw_id, str) else None,
        document.line_of("id"),
    )


def _in_line_order(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: p.line or 0)


_TOP_KEYS = (
    "id", "from_name", "type", "send_at", "ttl", "text", "survey_options", "route", "paused",
    "resume", "audience", "rollout", "window", "window_days", "repeat", "trigger", "account",
)
#: keys that change what happens to a campaign, not what it is (`content_key` leaves them out)
_CONTROL_KEYS = frozenset({"paused", "resume"})


def content_key(data: dict[str, Any]) -> str:
    """A digest of a campaign file's keys and values, ``paused`` and ``resume`` aside: the same
    for a file restored from a backup or re-typed with other comments and spacing, different
    as soon as the text, the send time, the audience's path or any other setting differs."""
    kept = {key: value for key, value in data.items() if key not in _CONTROL_KEYS}
    canonical = json.dumps(kept, sort_keys=True, default=_canonical, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _canonical(value: object) -> str:
    """TOML's dates and times as JSON: their ISO text (``Z`` and ``+00:00`` read the same)."""
    if isinstance(value, date | time):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a TOML value")
_ROLLOUT_KEYS = ("stages", "hold")
_ROLLOUT_EXAMPLE = "stages = [0.01, 0.1, 1.0] and hold = 900"
_AUDIENCE_KEYS = ("csv", "phone_column", "id_column", "delimiter", "tz_column")
_DELIMITERS = (",", ";", "\t")
_ROUTES: tuple[str, ...] = get_args(Route)
_EXAMPLE_TIME = "2026-12-01T09:00:00Z"


def _kind(value: object) -> str:
    """How a TOML value's type reads to a person."""
    kinds: tuple[tuple[type, str], ...] = (
        (bool, "true/false"), (int, "a whole number"), (float, "a decimal number"),
        (str, "text"), (list, "an array"), (dict, "a table"), (datetime, "a date-time"),
        (date, "a date"), (time, "a time of day"),
    )
    return next((name for cls, name in kinds if isinstance(value, cls)), type(value).__name__)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f': did you mean "{close[0]}"?' if close else ""


def _quoted_list(values: Iterable[str]) -> str:
    return ", ".join(f'"{v}"' for v in values)


class _CampaignReader:
    """Validates a parsed campaign file key by key, collecting problems instead of stopping."""

    def __init__(
        self, document: TomlDocument, config: Config, now: datetime, shared: _Shared,
    ) -> None:
        self.doc = document
        self.data = document.data
        self.config = config
        self.now = now
        self.shared = shared
        self.real_file: Path | None = None  # the file's path, resolved (once: `csv_path`)
        self.problems: list[Problem] = []
        self.text_fields: frozenset[str] = frozenset()  # of an invalid text's good placeholders

    # -- reporting ------------------------------------------------------------------------

    def error(self, key: str, message: str) -> None:
        """Record an error at the line where ``key`` is written."""
        self.problems.append(Problem(self.doc.path, self.doc.line_of(key), key, message))

    def warn(self, key: str, message: str) -> None:
        """Record a warning at the line where ``key`` is written."""
        self.problems.append(
            Problem(self.doc.path, self.doc.line_of(key), key, message, "warning")
        )

    @property
    def failed(self) -> bool:
        """True once any error has been recorded."""
        return any(p.is_error for p in self.problems)

    # -- the whole file -------------------------------------------------------------------

    def build(self, fingerprint: str, content: str = "") -> Campaign | None:
        """Check every key; return the `Campaign`, or None when any error was found."""
        self.unknown_keys(self.data, "", _TOP_KEYS)
        campaign_id = self.campaign_id()
        from_name = self.from_name()
        kind = self.message_type()
        ttl = self.ttl(kind)
        repeat = self.repeat()  # series (SPEC §13.1): send_at is the next occurrence
        trigger = self.trigger()  # triggers (SPEC §13.2): send_at is the next day's run
        if "trigger" in self.data:
            send_at = self.trigger_send_at(trigger)
        elif "repeat" in self.data:
            send_at = self.series_send_at(repeat)
        else:
            send_at = self.send_at(ttl)
        route = self.route()
        account = self.account()
        paused = self.flag("paused")
        resume = self.flag("resume")
        rollout = self.rollout()
        window = self.window(kind)
        template = self.text(kind)
        options = self.survey_options(kind)
        audience = self.audience(template.fields if template else self.text_fields, trigger)
        if (
            self.failed or campaign_id is None or from_name is None or kind is None
            or ttl is None or send_at is None or audience is None or account is None
        ):
            return None
        return Campaign(
            id=campaign_id, from_name=from_name, type=kind, send_at=send_at, ttl=ttl,
            text=None if template is None else template.source, survey_options=options,
            route=route, paused=paused, resume=resume, rollout=rollout, window=window,
            policy_window=window is not None and "window" not in self.data,
            timezone=self.config.policy.timezone, audience=audience,
            file=self.real_file or real_path(self.doc.path), fingerprint=fingerprint,
            content=content, repeat=repeat, trigger=trigger, account=account,
        )

    def unknown_keys(self, table: dict[str, Any], prefix: str, known: tuple[str, ...]) -> None:
        """Every key not in ``known`` is an error, with a "did you mean" or a hint where it goes."""
        for key in table:
            if key in known:
                continue
            dotted = f"{prefix}.{key}" if prefix else key
            if not prefix and key in _AUDIENCE_KEYS:
                hint = ": it belongs in the [audience] table (write it below [audience])"
            elif prefix and key in _TOP_KEYS:
                hint = (": it must be written above [audience] "
                        "(every key after a [table] line belongs to that table)")
            else:
                hint = _did_you_mean(key, known)
            hint = hint or f"; the keys are {', '.join(known)}"
            self.error(dotted, f"unknown key{hint}")

    def rollout(self) -> Rollout | None:
        """``[rollout]``: ``stages`` increasing shares in (0, 1] ending at 1.0, ``hold`` s."""
        table = self.data.get("rollout")
        if table is None:
            return None
        if not isinstance(table, dict):
            self.error("rollout", f"must be a table ([rollout] with {_ROLLOUT_EXAMPLE})")
            return None
        self.unknown_keys(table, "rollout", _ROLLOUT_KEYS)
        stages, hold = self._stages(table.get("stages")), self._hold(table.get("hold", 900))
        return None if stages is None or hold is None else Rollout(stages=stages, hold=hold)

    def _stages(self, value: object) -> tuple[float, ...] | None:
        shares = value if isinstance(value, list) else None
        if not shares or any(isinstance(v, bool) or not isinstance(v, int | float)
                             for v in shares):
            self.error("rollout.stages", "must be an array of shares of the audience, like "
                       "[0.01, 0.1, 1.0]")
            return None
        floats = tuple(float(v) for v in shares)
        if any(b <= a for a, b in itertools.pairwise(floats)) or not (
                floats[0] > 0 and floats[-1] == 1.0):
            self.error("rollout.stages", f"{list(floats)} must grow from above 0 to exactly 1.0 "
                       "(cumulative shares: the last stage sends everyone)")
            return None
        return floats

    def _hold(self, value: object) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 86_400:
            self.error("rollout.hold", "must be a whole number of seconds from 0 to 86400 "
                       "(the wait between stages), like 900")
            return None
        return value

    # -- series (SPEC §13.1; the rules live in scheduler.series) ---------------------------

    def repeat(self) -> Repeat | None:
        """``[repeat]``: a series' cron, zone, bounds and audience; None for a one-off."""
        table = self.data.get("repeat")
        if table is None:
            return None
        if not isinstance(table, dict):
            self.error("repeat", '[repeat] must be a table: write [repeat] on its own line, '
                       'then cron = "0 10 * * MON" and timezone = "Europe/Kyiv"')
            return None
        self.unknown_keys(table, "repeat", REPEAT_KEYS)
        return RepeatReader(table, self.error, self.utc_moment, self.now, HORIZON).read()

    def series_send_at(self, repeat: Repeat | None) -> datetime | None:
        """A series has no ``send_at`` of its own: its next occurrence stands for it."""
        if "send_at" in self.data:
            self.error("send_at", "a file has send_at or [repeat], never both: remove send_at "
                       "for a series (its [repeat] says when it goes), or [repeat] for a "
                       "one-off campaign")
            return None
        return None if repeat is None else next(repeat.occurrences(self.now), None)

    # -- triggers (SPEC §13.2; the rules live in scheduler.trigger) --------------------------

    def trigger(self) -> Trigger | None:
        """``[trigger]``: the date column and when around it to send; None otherwise."""
        table = self.data.get("trigger")
        if table is None:
            return None
        if not isinstance(table, dict):
            self.error("trigger", '[trigger] must be a table: write [trigger] on its own line, '
                       'then column = "birthday" and at = "10:00"')
            return None
        self.unknown_keys(table, "trigger", TRIGGER_KEYS)
        return TriggerReader(table, self.error, self.utc_moment).read()

    def trigger_send_at(self, trigger: Trigger | None) -> datetime | None:
        """A trigger has no ``send_at`` of its own (each recipient's date says when) and is
        never a series: its next day's run stands for it."""
        if "send_at" in self.data:
            self.error("send_at", "a file has send_at or [trigger], never both: remove send_at "
                       "(each recipient's date in the [trigger] column says when), or "
                       "[trigger] for a one-off campaign")
        if "repeat" in self.data:
            self.error("repeat", "a file has [repeat] or [trigger], never both: a series sends "
                       "to everyone on its schedule, a trigger to each recipient on their own "
                       "date; keep one of the two tables")
        if trigger is None or "send_at" in self.data or "repeat" in self.data:
            return None
        first = next(trigger.days_from(self.now), None)
        if first is None:
            until = trigger.until
            assert until is not None  # without it the days never end
            self.error("trigger.until", f"{utc_text(until)} leaves no day to run: the next "
                       f"day's first release would be after it")
            return None
        return trigger.first_release(first)

    def window(self, kind: MessageType | None) -> Window | None:
        """``window`` / ``window_days`` in the file, else ``[policy] window`` for promo and
        viber_survey (transaction and flashcall have none unless their file sets one)."""
        text, days = self.data.get("window"), self.data.get("window_days")
        if days is not None and not (
            isinstance(days, list) and all(isinstance(d, str) for d in days)
        ):
            self.error("window_days", 'must be an array of days, like ["mon", "tue", "wed", '
                       '"thu", "fri", "sat"]')
            return None
        if text is None:
            if days is not None:
                self.error("window_days", 'needs a window: add window = "09:00-20:00"')
                return None
            if kind is None or kind in TRANSACTIONAL:
                return None
            return self.config.policy.default_window()
        if not isinstance(text, str):
            self.error("window", f'must be text like "09:00-20:00", not {_kind(text)}')
            return None
        try:
            hours = Window.parse(text)
        except ValueError as exc:
            self.error("window", str(exc))
            return None
        try:
            return hours if days is None else replace(hours, days=parse_days(days))
        except ValueError as exc:
            self.error("window_days", str(exc))
            return None

    # -- typed values ---------------------------------------------------------------------

    def string(
        self, key: str, *, required: bool, table: dict[str, Any] | None = None, prefix: str = ""
    ) -> str | None:
        """The text value of ``key``; missing, non-text or blank values are errors."""
        source = self.data if table is None else table
        dotted = f"{prefix}.{key}" if prefix else key
        value = source.get(key)
        if value is None:
            if required:
                self.error(dotted, "required key is missing")
            return None
        if not isinstance(value, str):
            self.error(dotted, f'must be text in quotes (like "abc"), not {_kind(value)}')
            return None
        if not value.strip():
            self.error(dotted, "must not be empty")
            return None
        return value

    def from_name(self) -> str | None:
        """``from_name``: required; longer than an SMS sender name can be is a warning."""
        value = self.string("from_name", required=True)
        if value is not None and len(value) > SENDER_NAME_MAX:
            self.warn(
                "from_name",
                f'"{value}" has {len(value)} characters: a sender name shown by SMS has at most '
                f"{SENDER_NAME_MAX} (letters and digits), so the SMS step of the cascade may "
                "cut or refuse it; use the short name registered with SMSBAT",
            )
        return value

    def campaign_id(self) -> str | None:
        """``id``: required, letters, digits, ``.``, ``_``, ``-``; at most 64 characters."""
        value = self.string("id", required=True)
        if value is not None and not re.fullmatch(ID_PATTERN.strip("^$"), value):
            self.error(
                "id",
                f'"{value}" is not a valid id: use 1 to 64 letters, digits, ".", "_" or "-", '
                "starting with a letter or digit",
            )
            return None
        return value

    def message_type(self) -> MessageType | None:
        """``type``: one of the four message types."""
        value = self.string("type", required=True)
        if value is None:
            return None
        for known in MESSAGE_TYPES:
            if value == known:
                return known
        self.error(
            "type",
            f'unknown type "{value}"{_did_you_mean(value, MESSAGE_TYPES)} '
            f"(the types are {', '.join(MESSAGE_TYPES)})",
        )
        return None

    def ttl(self, kind: MessageType | None) -> int | None:
        """``ttl``: a positive whole number of seconds; by default the type's usual TTL."""
        value = self.data.get("ttl")
        if value is None:
            return None if kind is None else DEFAULT_TTL[kind]
        if isinstance(value, bool) or not isinstance(value, int):
            self.error("ttl", f"must be a whole number of seconds (like 3600), not {_kind(value)}")
            return None
        if value <= 0 or value > TTL_MAX:
            self.error("ttl", f"{value} is out of range: write 1 to {TTL_MAX} seconds (30 days)")
            return None
        if kind is not None:
            low, high = RECOMMENDED_TTL[kind]
            wanted = f"{low} s" if low == high else f"{low}–{high} s"
            if not low <= value <= high:
                self.warn("ttl", f"{value} s is outside the recommended {wanted} for {kind}")
        return value

    def send_at(self, ttl: int | None) -> datetime | None:
        """``send_at``: a UTC moment, not more than 30 days ahead; in the past is a warning."""
        value = self.data.get("send_at")
        if value is None:
            self.error("send_at", f"required key is missing: write send_at = {_EXAMPLE_TIME}, "
                       "or add a [repeat] table for a series")
            return None
        moment = self.utc_moment("send_at", value)
        if moment is None:
            return None
        latest = (self.now + HORIZON).replace(microsecond=0)
        if moment > latest:
            self.error(
                "send_at",
                f"{utc_text(moment)} is more than 30 days ahead (the API refuses that): "
                f"the latest allowed now is {utc_text(latest)}",
            )
            return None
        if moment <= self.now:
            self.warn_passed(moment, ttl)
        return moment

    def warn_passed(self, moment: datetime, ttl: int | None) -> None:
        """Explain what the daemon will do with a send time that has passed."""
        if ttl is None:
            self.warn("send_at", "send time has passed: the daemon sends at once if "
                      "send_at + ttl is still ahead, else the campaign expires")
            return
        deadline = moment + timedelta(seconds=ttl)
        if deadline <= self.now:
            self.warn("send_at", f"send time has passed and so has send_at + ttl "
                      f"({utc_text(deadline)}): the daemon would mark every message expired")
        else:
            self.warn("send_at", "send time has passed: the daemon sends at once, until "
                      f"send_at + ttl ({utc_text(deadline)})")

    def utc_moment(self, key: str, value: object) -> datetime | None:
        """A TOML date-time or an ISO string as an aware UTC datetime; anything else is an
        error on ``key`` (``send_at``, ``repeat.start``, ``repeat.until``)."""
        if isinstance(value, str):
            value = _parse_iso(value.strip())
            if value is None:
                self.error(key, f"is not a date and time: write {_EXAMPLE_TIME} (UTC)")
                return None
        if isinstance(value, datetime):
            return self.checked_utc(key, value)
        if isinstance(value, date):
            self.error(key, f"needs a time of day too: write {value.isoformat()}T09:00:00Z")
        elif isinstance(value, time):
            self.error(key, f"needs a date too: write 2026-12-01T{value.isoformat()}Z")
        else:
            self.error(key, f"must be a date-time like {_EXAMPLE_TIME}, not {_kind(value)}")
        return None

    def checked_utc(self, key: str, value: datetime) -> datetime | None:
        """``value`` if it is UTC (Z or +00:00); else an error with the fix."""
        offset = value.utcoffset()
        if offset is None:
            self.error(key, naive_time_hint(value).replace("send_at", key))
            return None
        try:
            utc = value.astimezone(UTC)
        except OverflowError:
            self.error(key, f"{value.isoformat()} is out of range")
            return None
        if offset:
            self.error(key, f"{value.isoformat()} is not UTC: write {utc_text(utc)}")
            return None
        return utc

    def route(self) -> Route | None:
        """``route``: optional, "standard" or "tg-viber"."""
        value = self.string("route", required=False)
        if value is None or value in _ROUTES:
            return cast("Route | None", value)
        self.error(
            "route",
            f'unknown route "{value}"{_did_you_mean(value, _ROUTES)} '
            f"(the routes are {_quoted_list(_ROUTES)})",
        )
        return None

    def account(self) -> str | None:
        """``account`` (SPEC §13.3): one of the config's ``[[accounts]]``; unset, the only
        one, or the one called "default"."""
        names = self.config.account_names
        value = self.string("account", required=False)
        if value is None:
            if "account" in self.data:
                return None  # not text, or blank: said already
            default = self.config.default_account
            if default is None:
                self.error("account", f"the config has several accounts ({_quoted_list(names)})"
                           f' and none called "default": choose one, like account = '
                           f'"{names[0]}"')
            return default
        if value in names:
            return value
        self.error("account", f'unknown account "{value}"{_did_you_mean(value, names)} '
                   f"(the config's accounts are {_quoted_list(names)})")
        return None

    def flag(self, key: str) -> bool:
        """``paused`` or ``resume``: optional true/false."""
        value = self.data.get(key, False)
        if isinstance(value, bool):
            return value
        self.error(key, f"must be true or false (without quotes), not {_kind(value)}")
        return False

    # -- the message ----------------------------------------------------------------------

    def text(self, kind: MessageType | None) -> Template | None:
        """``text``: required and a valid template, except for flashcall (warned, dropped)."""
        if kind == "flashcall":
            if "text" in self.data:
                self.warn("text", "flashcall messages carry no text: it is not sent; remove it")
            return None
        value = self.string("text", required=kind is not None)
        if value is None:
            return None
        try:
            template = Template(value)
        except TemplateError as exc:
            for message in exc.messages:
                self.error("text", message)
            self.text_fields = exc.fields
            return None
        if kind == "viber_survey":
            self.survey_text_length(template)
        return template

    def survey_text_length(self, template: Template) -> None:
        """Survey text over 85 characters: an error when no personalisation can change it."""
        fixed = len(template.render(dict.fromkeys(template.fields, "")))
        if fixed <= SURVEY_TEXT_MAX:
            return
        what = "is" if not template.fields else "is already, without its placeholders,"
        self.error(
            "text", f"survey text {what} {fixed} characters: Viber allows {SURVEY_TEXT_MAX}"
        )

    def survey_options(self, kind: MessageType | None) -> tuple[str, ...] | None:
        """``survey_options``: 2–5 short texts, for viber_survey and nothing else."""
        value = self.data.get("survey_options")
        if kind != "viber_survey":
            if value is not None and kind is not None:
                self.error("survey_options", f"only viber_survey campaigns have survey options, "
                           f"not {kind}: remove it")
            return None
        if value is None:
            self.error("survey_options", 'required for viber_survey: write '
                       'survey_options = ["Yes", "No"] (2 to 5 options)')
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error("survey_options", 'must be an array of texts, like ["Yes", "No"]')
            return None
        return self.checked_options(value)

    def checked_options(self, options: list[str]) -> tuple[str, ...] | None:
        """Count and length rules for survey options."""
        bad = False
        if not 2 <= len(options) <= 5:
            self.error("survey_options", f"has {len(options)} options: write 2 to 5")
            bad = True
        for option in options:
            if not option.strip() or len(option) > SURVEY_OPTION_MAX:
                self.error("survey_options", f'option "{option}" has {len(option)} characters: '
                           f"each must have 1 to {SURVEY_OPTION_MAX}")
                bad = True
        return None if bad else tuple(options)

    # -- the audience ---------------------------------------------------------------------

    def audience(
        self, fields: frozenset[str], trigger: Trigger | None = None,
    ) -> AudienceSpec | None:
        """``[audience]``: a readable CSV inside an allowed folder, with the named columns."""
        table = self.data.get("audience")
        if table is None:
            self.error("audience", 'required table is missing: add a line [audience] and '
                       'below it csv = "audiences/your-list.csv"')
            return None
        if not isinstance(table, dict):
            self.error("audience", f"must be a table ([audience] on its own line, then "
                       f'csv = "..."), not {_kind(table)}')
            return None
        self.unknown_keys(table, "audience", _AUDIENCE_KEYS)
        spec = self.audience_spec(table)
        if spec is None:
            return None
        header = self.header(spec)
        if header is None:
            return None
        self.columns(spec, header, str(table["csv"]), fields, trigger)
        return spec

    def audience_spec(self, table: dict[str, Any]) -> AudienceSpec | None:
        """The ``[audience]`` values, with the CSV path resolved and confined."""
        before = len(self.problems)
        written = self.string("csv", required=True, table=table, prefix="audience")
        phone = self.string("phone_column", required=False, table=table, prefix="audience")
        id_column = self.string("id_column", required=False, table=table, prefix="audience")
        delimiter = self.delimiter(table)
        tz_column = self.string("tz_column", required=False, table=table, prefix="audience")
        csv = None if written is None else self.csv_path(written)
        if csv is None or any(p.is_error for p in self.problems[before:]):
            return None
        return AudienceSpec(
            csv=csv, phone_column=phone or "phone", id_column=id_column,
            delimiter=delimiter if isinstance(delimiter, str) else None, tz_column=tz_column,
        )

    def delimiter(self, table: dict[str, Any]) -> str | Literal[False] | None:
        """``delimiter``: None (sniff), or one of "," ";" tab; False when invalid."""
        value = table.get("delimiter")
        if value is None or value in _DELIMITERS:
            return cast("str | None", value)
        shown = f'"{value}"' if isinstance(value, str) else _kind(value)
        self.error("audience.delimiter",
                   f'{shown} is not a delimiter: write "," or ";" or "\\t" (tab)')
        return False

    def csv_path(self, written: str) -> Path | None:
        """The CSV's real path (symlinks resolved), if inside an allowed folder."""
        try:
            if self.real_file is None:
                self.real_file = self.doc.path.resolve()
            resolved = self.shared.resolve(self.real_file.parent, written)
            roots = self.shared.roots()
        except (OSError, ValueError, RuntimeError) as exc:  # NUL bytes, symlink loops
            self.error("audience.csv", f'"{written}" is not a usable path: {exc}')
            return None
        if any(resolved.is_relative_to(root) for root in roots):
            return resolved
        self.error(
            "audience.csv",
            f'"{written}" is {resolved}: audience CSV must be inside {roots[0]} '
            "(the campaigns folder) or [paths].audiences"
            + ("" if len(roots) == 1 else f" ({roots[1]})"),
        )
        return None

    def header(self, spec: AudienceSpec) -> list[str] | None:
        """The CSV's column names; an unreadable CSV is an error."""
        try:
            return self.shared.header(spec, self.doc.path)
        except CampaignError as exc:
            line = self.doc.line_of("audience.csv")
            self.problems.extend(
                replace(p, line=line) if p.line is None and p.file == self.doc.path else p
                for p in exc.problems
            )
            return None

    def columns(
        self, spec: AudienceSpec, header: list[str], csv: str, fields: frozenset[str],
        trigger: Trigger | None = None,
    ) -> None:
        """The phone and id columns, and every ``{placeholder}``, must be columns of the CSV."""
        listing = f"its columns are {_quoted_list(header)}" if header else "it has no columns"
        needed = [("audience.phone_column", spec.phone_column)]
        if spec.id_column is not None:
            needed.append(("audience.id_column", spec.id_column))
        if spec.tz_column is not None:
            needed.append(("audience.tz_column", spec.tz_column))
        if trigger is not None:
            needed.append(("trigger.column", trigger.column))
        for key, column in needed:
            if column not in header:
                hint = _did_you_mean(column, header)
                self.error(key, f'"{column}" is not a column of {csv}{hint} ({listing})')
        for name in sorted(fields):
            if name not in header:
                self.error("text", f"{{{name}}} is not a column of {csv}"
                           f"{_did_you_mean(name, header)} ({listing}; write {{{{ and }}}} "
                           "for literal braces)")


def naive_time_hint(value: datetime) -> str:
    """What to say about a send time written without a zone: it must be UTC, and here is the
    UTC time it is on this machine's clock (or, on a UTC machine, in Kyiv, for the example),
    so that following the hint never sends hours early or late."""
    shown = value.replace(microsecond=0).isoformat()
    as_utc = f"{shown}Z"
    clock = value.strftime("%H:%M")
    try:
        local = value.astimezone()  # a naive time is read as this machine's, DST included
    except (OverflowError, OSError, ValueError):
        local = value.replace(tzinfo=UTC)
    head = f"{shown} has no time zone, and send_at must be UTC"
    if local.utcoffset():
        zone = f"{local.tzname()}, UTC{_offset(local)}"
        return (f"{head}: {clock} on this machine's clock ({zone}) is "
                f"{utc_text(local)}: write that; if {clock} was meant as UTC, write {as_utc}")
    example = _kyiv_example(value)
    return (f"{head}: if {clock} is UTC, write {as_utc}; if it is a local time, convert it "
            f"to UTC first{example}")


def _offset(moment: datetime) -> str:
    """``+02:00`` for a moment two hours ahead of UTC."""
    text = moment.strftime("%z")
    return f"{text[:3]}:{text[3:]}"


def _kyiv_example(value: datetime) -> str:
    """`` (11:00 in Kyiv on 2026-11-28 is 2026-11-28T09:00:00Z)`` when the zone is known."""
    for key in ("Europe/Kyiv", "Europe/Kiev"):
        try:
            zone = ZoneInfo(key)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            continue
        moment = value.replace(tzinfo=zone)
        return (f" ({value.strftime('%H:%M')} in Kyiv on {value.date().isoformat()} is "
                f"{utc_text(moment)})")
    return ""


def _parse_iso(text: str) -> datetime | date | None:
    """An ISO 8601 date or date-time string; None when it is neither."""
    try:
        return date.fromisoformat(text) if len(text) <= 10 else datetime.fromisoformat(text)
    except ValueError:
        return None
