"""`demo`: the whole product in one command, on the embedded sandbox (no account, no network).

Writes a fresh workspace (config, four campaigns of every message type with their audiences, a
suppression list, delivery reports polled), due a few seconds from now; runs the daemon until
every campaign is final and every sent message has its delivery status; returns the paths so
the CLI can print the report (with delivery by channel and cost).

It writes only into a new or empty folder, or into the workspace of an earlier demo (which it
starts afresh): never over someone's own config or campaigns.
"""

from __future__ import annotations

import csv
import random
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import tomli_w

from scheduler.campaign import DEFAULT_TTL
from scheduler.errors import UserError

FIRST_NAMES = ("Olena", "Taras", "Iryna", "Andrii", "Sofiia", "Dmytro", "Mariia", "Bohdan")


@dataclass(frozen=True)
class DemoCampaign:
    """One demo campaign: its file keys and the size of its audience."""

    id: str
    type: str
    text: str | None
    rows: int
    delay_s: int
    extra: dict[str, Any]


CAMPAIGNS = (
    DemoCampaign("order-updates", "transaction",
                 "Hi {first_name}, your order {order} has shipped.", 400, 3, {}),
    DemoCampaign("winter-sale", "promo",
                 "{first_name}, winter sale: up to 40% off until Sunday. Reply STOP to opt out.",
                 5000, 4, {"route": "tg-viber"}),
    DemoCampaign("service-survey", "viber_survey", "How was your last delivery?", 300, 5,
                 {"survey_options": ["Great", "OK", "Poor"]}),
    DemoCampaign("login-check", "flashcall", None, 60, 6, {}),
)


def _phone(rng: random.Random) -> str:
    return f"+380{rng.choice((50, 63, 67, 68, 73, 93, 97))}{rng.randrange(10**6, 10**7)}"


def _write_audience(path: Path, spec: DemoCampaign, rng: random.Random) -> list[str]:
    phones: list[str] = []
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["customer_id", "phone", "first_name", "order"])
        for row in range(1, spec.rows + 1):
            phone = _phone(rng)
            if row % 997 == 0:
                phone = phone[1:]  # a few rows without the +: skipped as invalid_phone
            if row % 1499 == 0 and phones:
                phone = phones[0]  # and a duplicate
            phones.append(phone)
            writer.writerow([f"c{row:06d}", phone, rng.choice(FIRST_NAMES), f"#{40000 + row}"])
    return phones


#: the file that marks a folder as a demo's workspace (so a second run may start it afresh)
MARK = ".cascade-demo"
#: what a demo workspace holds at its top, and in its campaigns folder
_TOP = frozenset({MARK, "config.toml", "suppression.txt", "campaigns", "state", "logs"})
_CAMPAIGN_FILES = frozenset({"audiences", *(f"{c.id}.toml" for c in CAMPAIGNS)})
_AUDIENCES = frozenset(f"{c.id}.csv" for c in CAMPAIGNS)


def prepare_folder(root: Path) -> None:
    """Make ``root`` ready for a fresh demo: create it, use it empty, or clear an earlier demo's
    workspace; a folder holding anything else is a `UserError` (nothing is touched)."""
    if not root.exists():
        root.mkdir(parents=True)
        return
    if not root.is_dir():
        raise UserError.single("is not a folder: give the demo a new or empty folder",
                               file=root)
    entries = {p.name for p in root.iterdir()}
    if not entries:
        return
    if not _is_earlier_demo(root, entries):
        raise UserError.single(
            "is not empty: the demo writes its own config.toml, campaigns and journal, so it "
            "only uses a new or empty folder (or leave out --dir for a temporary one)",
            file=root,
        )
    for name in entries - {MARK}:
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _is_earlier_demo(root: Path, entries: set[str]) -> bool:
    """True when ``root`` holds an earlier demo's files and nothing else."""
    if MARK not in entries or not entries <= _TOP:
        return False
    campaigns, audiences = root / "campaigns", root / "campaigns" / "audiences"
    if campaigns.is_dir() and not {p.name for p in campaigns.iterdir()} <= _CAMPAIGN_FILES:
        return False
    return not audiences.is_dir() or {p.name for p in audiences.iterdir()} <= _AUDIENCES


def write_workspace(root: Path, now: datetime, seed: int = 7) -> Path:
    """Create the demo workspace in ``root`` (see `prepare_folder`); return the config file."""
    prepare_folder(root)
    (root / MARK).write_text("a cascade-scheduler demo workspace: `demo --dir` may clear it\n",
                             "utf-8")
    rng = random.Random(seed)
    campaigns = root / "campaigns"
    (campaigns / "audiences").mkdir(parents=True, exist_ok=True)
    opted_out: list[str] = []
    for spec in CAMPAIGNS:
        phones = _write_audience(campaigns / "audiences" / f"{spec.id}.csv", spec, rng)
        if spec.type == "promo":
            opted_out = phones[10:25]
        document: dict[str, Any] = {
            "id": spec.id,
            "from_name": "DemoShop",
            "type": spec.type,
            "send_at": (now + timedelta(seconds=spec.delay_s)).replace(microsecond=0),
            "ttl": DEFAULT_TTL[spec.type],  # type: ignore[index]
        }
        if spec.text is not None:
            document["text"] = spec.text
        document.update(spec.extra)
        document["audience"] = {
            "csv": f"audiences/{spec.id}.csv", "phone_column": "phone", "id_column": "customer_id",
        }
        (campaigns / f"{spec.id}.toml").write_text(tomli_w.dumps(document), "utf-8")
    (root / "suppression.txt").write_text(
        "# phones that opted out of marketing\n" + "\n".join(opted_out) + "\n", "utf-8"
    )
    config = {
        "api": {"base_url": "sandbox", "route": "standard", "timeout": 10},
        "sending": {"batch_size": 250, "requests_per_second": 50,
                    "max_attempts": 6, "delivery": "at-least-once"},
        "paths": {"campaigns": "campaigns", "state": "state/journal.sqlite3",
                  "delivery_log": "logs/delivery.jsonl", "suppression": "suppression.txt"},
        "log": {"level": "info", "format": "console", "phones": "masked"},
        # what became of each message: the sandbox settles it in 2.5-7.5 s; the demo asks
        # from 1 s after sending, every 2 s (a real account: the defaults, 30 s doubling)
        "delivery_reports": {"poll": True, "poll_rate": 1000, "first_poll": 1,
                             "max_interval": 2},
    }
    path = root / "config.toml"
    path.write_text(tomli_w.dumps(config), "utf-8")
    return path
