"""The product's words, defined once: campaign states and their legal moves, outcomes, skip
reasons and delivery statuses.

Every other module imports these instead of spelling its own sets; `lifecycle` is the one place
that moves a campaign from one state to another, and `may_move` is the rule it enforces.
"""

from __future__ import annotations

from typing import Literal, get_args

CampaignState = Literal[
    "scheduled",    # valid, snapshotted, waiting for send_at
    "running",      # sending (or resumable after a stop: the journal says where it is)
    "backing_off",  # an outage outlasted a batch's retries: the whole campaign waits
    "paused",       # ``paused = true`` in its file
    "done",         # every recipient has a final outcome
    "expired",      # send_at + ttl passed; what was left is ``expired``
    "failed",       # the API refused the credentials; resumes after a reload with new ones
    "invalid",      # its file (or CSV) no longer validates
    "cancelled",    # its file was removed before it finished; restoring the file resumes it
    "braked",       # the error brake stopped it (too many refused); saving its file resumes it
]
CAMPAIGN_STATES: tuple[CampaignState, ...] = get_args(CampaignState)

#: a campaign in these states is over: nothing will ever be sent for it again
FINISHED: frozenset[CampaignState] = frozenset({"done", "expired"})
#: a campaign in these states has sent (or begun to send): its snapshot is frozen. "paused"
#: is not here: a campaign paused before its send time has sent nothing and may be re-planned
#: (the journal's ``started_at`` is what really tells)
STARTED: frozenset[CampaignState] = frozenset(
    {"running", "backing_off", "done", "expired", "failed", "braked"}
)
#: a campaign in these states sends while a daemon leads, and resumes when one starts again
SENDING: frozenset[CampaignState] = frozenset({"running", "backing_off"})
#: states the journal stamps with ``finished_at`` (cancelled counts: nothing more is planned)
ENDED: frozenset[CampaignState] = frozenset({"done", "expired", "cancelled"})
#: states the journal stamps in ``finished_at``: when it ended, or when the brake stopped it
#: (a braked campaign resumes only if its file was saved after that moment)
STAMPED: frozenset[CampaignState] = ENDED | {"braked"}

#: the legal moves; staying in a state is always allowed. A finished campaign never moves;
#: "scheduled" is re-entered only by a fresh snapshot (the journal refuses one once started);
#: only a running campaign backs off, finishes or expires
_STOPPED: frozenset[CampaignState] = frozenset({"paused", "failed", "invalid", "cancelled"})
TRANSITIONS: dict[CampaignState, frozenset[CampaignState]] = {
    "scheduled": _STOPPED | {"running"},
    "running": _STOPPED | FINISHED | {"backing_off", "braked"},
    "backing_off": _STOPPED | FINISHED | {"running", "braked"},
    "paused": _STOPPED | {"scheduled", "running"},
    "failed": _STOPPED | {"running"},
    "invalid": _STOPPED | {"scheduled", "running"},
    "cancelled": _STOPPED | {"scheduled", "running"},
    "braked": _STOPPED | {"running"},
    "done": frozenset(),
    "expired": frozenset(),
}


def may_move(current: CampaignState, target: CampaignState) -> bool:
    """True when a campaign in ``current`` may be put in ``target`` (or stays where it is)."""
    return current == target or target in TRANSITIONS[current]


Outcome = Literal["sent", "rejected", "expired", "skipped", "in_doubt"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)

SkipReason = Literal[
    "invalid_phone", "duplicate", "suppressed", "invalid_id", "text_too_long",
    "invalid_timezone",  # the audience's tz_column holds no IANA zone name
    "frequency_cap",  # decided when the message was about to go: [[policy.caps]]
    "already_messaged",  # an evergreen series: an earlier occurrence messaged this recipient
    "invalid_date",  # a trigger's date column holds no date in the accepted format
]
#: the reason an ``expired`` outcome carries (journal detail, delivery-log ``reason``)
EXPIRED_REASON = "send_at + ttl passed"
#: the reason of a message whose send window did not open before send_at + ttl
OUTSIDE_WINDOW = "outside_window"
#: the reason of a cancelled campaign's message still unsent at its send_at + ttl
CANCELLED_REASON = "cancelled"

#: SMSBAT's delivery statuses (its "Check Message Status" page); ``unknown`` is ours: given up
DeliveryStatus = Literal[
    "scheduled", "processing", "delivered", "undeliverable", "permanenterror", "unknown",
]
#: statuses after which nothing changes any more
DELIVERY_FINAL: frozenset[DeliveryStatus] = frozenset(
    {"delivered", "undeliverable", "permanenterror", "unknown"}
)
DELIVERY_STATUSES: tuple[DeliveryStatus, ...] = get_args(DeliveryStatus)
#: the cascade's channels, in the order it tries them, as status reports name them in
#: ``extendedStatuses`` (the sandbox uses the same names)
CHANNELS: tuple[str, ...] = ("telegram", "viber", "viber_bm", "rcs", "sms")
#: the one word, in the delivery log, the metric labels and `report` alike, for what a status
#: report did not say: the channel (no ``extendedStatuses``), the currency of a cost (SPEC
#: §11.3's webhook carries ``cost`` alone) when the config names none
NO_CHANNEL = "unknown"
NO_CURRENCY = "unknown"
#: the account of a config without ``[[accounts]]``, and of a campaign journaled before
#: campaigns kept theirs (SPEC §13.3)
DEFAULT_ACCOUNT = "default"
#: how far along each status is; a message's status only ever moves to a higher rank (a late
#: "processing" after "delivered", or a second final status, changes nothing)
DELIVERY_RANK: dict[DeliveryStatus, int] = {
    "scheduled": 1, "processing": 2,
    "delivered": 3, "undeliverable": 3, "permanenterror": 3, "unknown": 3,
}


def may_advance(current: DeliveryStatus | None, reported: DeliveryStatus) -> bool:
    """True when a report of ``reported`` moves a message whose status is ``current`` (None:
    nothing heard yet) forward."""
    return DELIVERY_RANK[reported] > (0 if current is None else DELIVERY_RANK[current])
