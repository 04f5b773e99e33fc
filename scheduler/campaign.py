"""Campaign models: the validated `Campaign`, its `AudienceSpec`, and the rules' constants.

Reading and validating campaign files into these models is `scheduler.loader`'s job.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from scheduler.config import Route
from scheduler.series import Repeat, run_id, wire_id
from scheduler.trigger import SPREAD, Trigger, day_run_id, parse_day_run
from scheduler.window import Window

MessageType = Literal["transaction", "promo", "viber_survey", "flashcall"]
MESSAGE_TYPES: tuple[MessageType, ...] = ("transaction", "promo", "viber_survey", "flashcall")

#: default TTL (seconds) by message type, SPEC §5
DEFAULT_TTL: dict[MessageType, int] = {
    "transaction": 3600,
    "promo": 86400,
    "viber_survey": 604800,
    "flashcall": 300,
}
#: the API's recommended TTL range by type (outside it: a warning), SPEC §3
RECOMMENDED_TTL: dict[MessageType, tuple[int, int]] = {
    "transaction": (3600, 86400),
    "promo": (86400, 259200),
    "viber_survey": (604800, 604800),
    "flashcall": (300, 600),
}
#: types that still go to suppressed phones (SPEC §5)
TRANSACTIONAL: frozenset[MessageType] = frozenset({"transaction", "flashcall"})
HORIZON = timedelta(days=30)
TTL_MAX = 30 * 24 * 3600  # the API keeps nothing longer than its 30-day scheduling horizon
SURVEY_TEXT_MAX = 85
#: an alphanumeric SMS sender name (GSM): the API's pages give no other limit for fromName, and
#: the cascade's last step is SMS
SENDER_NAME_MAX = 11
SURVEY_OPTION_MAX = 29  # "each under 30 characters"
TRACKING_ID_MAX = 254  # "under 255 characters"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class AudienceSpec(BaseModel):
    """``[audience]``: where the recipients are and how to read them (csv is absolute)."""

    model_config = ConfigDict(frozen=True)

    csv: Path
    phone_column: str = "phone"
    id_column: str | None = None
    delimiter: str | None = None  # None: sniffed from the header line among "," ";" "\t"
    tz_column: str | None = None  # each recipient's IANA zone (else the phone's, else policy)


class Rollout(BaseModel):
    """``[rollout]``: send in stages (cumulative shares of the audience, in snapshot order),
    waiting ``hold`` seconds between them so the brake can judge a small share first."""

    model_config = ConfigDict(frozen=True)

    stages: tuple[float, ...]  # increasing, each in (0, 1], the last 1.0
    hold: int  # seconds between one stage's end and the next one's start

    def messages(self, stage: int, total: int) -> int:
        """How many of ``total`` messages stages 0..``stage`` cover: the share asked for,
        rounded up (1% of 48,879 is 489), at least one a stage."""
        share = self.stages[stage] * total
        return min(total, max(stage + 1, math.ceil(share - share * 1e-12)))  # 0.1 x 200: 20

    def ends(self, total: int) -> list[int]:
        """Where each stage ends among ``total`` messages in snapshot order."""
        return [self.messages(stage, total) for stage in range(len(self.stages))]


class Campaign(BaseModel):
    """One validated campaign file. Row-level problems are the audience reader's business."""

    model_config = ConfigDict(frozen=True)

    id: str
    from_name: str
    type: MessageType
    send_at: datetime  # timezone-aware, UTC
    ttl: int
    text: str | None = None  # None for flashcall (never sent)
    survey_options: tuple[str, ...] | None = None
    route: Route | None = None
    paused: bool = False
    #: ``resume = true``: carry on the cancelled campaign of this id as it was planned, even
    #: though this file differs from the one it was planned from (`scheduler.identity`)
    resume: bool = False
    rollout: Rollout | None = None
    #: when recipients may be reached, in their local time (None: any time); see `window`
    window: Window | None = None
    #: True when `window` is ``[policy] window`` (the file sets none), False when the file's
    policy_window: bool = False
    timezone: str = "UTC"  # the zone of recipients whose own zone is unknown ([policy])
    audience: AudienceSpec
    file: Path  # absolute path of the campaign file
    fingerprint: str  # sha256 of the campaign file's bytes; changes when the file is edited
    #: sha256 of the file's keys and values, ``paused`` and ``resume`` aside: what the campaign
    #: says, whatever its layout and comments (with its audience: `identity.content_fingerprint`)
    content: str = ""
    #: ``[repeat]`` (SPEC §13.1): this file is a series, and ``send_at`` its next occurrence;
    #: each occurrence runs as a campaign of its own (`scheduler.series.occurrence`)
    repeat: Repeat | None = None
    #: the ``[[accounts]]`` entry it is sent through (SPEC §13.3; "default" without any)
    account: str = "default"
    #: ``[trigger]`` (SPEC §13.2): each recipient on their own date; ``send_at`` is the next
    #: day's first release, and each day runs as a campaign of its own (`day_run`)
    trigger: Trigger | None = None

    def day_run(self, day: date) -> Campaign:
        """This trigger's run for ``day`` as an ordinary campaign: id ``{id}@YYYY-MM-DD``,
        ``send_at`` the day's first release (``at`` in UTC+14); its deadline is the last
        release (UTC−12) + ttl."""
        assert self.trigger is not None
        return self.model_copy(update={"id": day_run_id(self.id, day),
                                       "send_at": self.trigger.first_release(day)})

    @property
    def trigger_day(self) -> date | None:
        """The day of a trigger's day run (None for anything else)."""
        if self.trigger is None:
            return None
        parsed = parse_day_run(self.id)
        return None if parsed is None else parsed.day

    def occurrence(self, fire_at: datetime) -> Campaign:
        """This series' occurrence at ``fire_at`` as an ordinary campaign: id the run id,
        ``send_at`` the fire time (its TTL counts from it), everything else the file's."""
        return self.model_copy(update={"id": run_id(self.id, fire_at), "send_at": fire_at})

    @property
    def wire_id(self) -> str:
        """The id the API sees, its tracking ids' prefix (a run id's ``@`` written ``.``)."""
        return wire_id(self.id)

    @property
    def deadline(self) -> datetime:
        """``send_at + ttl``: no message of this campaign may be sent after it."""
        if self.trigger is not None:  # a day's run: its last zone's release + ttl
            return self.send_at + SPREAD + timedelta(seconds=self.ttl)
        return self.send_at + timedelta(seconds=self.ttl)

    @property
    def is_transactional(self) -> bool:
        """Transactional traffic goes ahead of promo and ignores the suppression list."""
        return self.type in TRANSACTIONAL


def utc_text(moment: datetime) -> str:
    """``2026-12-01T09:00:00Z``: how we write (and ask people to write) a UTC moment."""
    return moment.astimezone(UTC).replace(tzinfo=None, microsecond=0).isoformat() + "Z"


