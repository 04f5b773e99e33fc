"""`demo`: the whole product in one command, on the embedded sandbox (no account, no network).

Writes a fresh workspace (config, four campaigns of every message type with their audiences, a
suppression list), due a few seconds from now; runs the daemon until every campaign is final;
returns the paths so the CLI can print the report.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import tomli_w

from scheduler.campaign import DEFAULT_TTL

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


def write_workspace(root: Path, now: datetime, seed: int = 7) -> Path:
    """Create the demo workspace under ``root``; return the config file's path."""
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
        "sending": {"batch_size": 250, "requests_per_second": 50, "concurrency": 4,
                    "max_attempts": 6, "delivery": "at-least-once"},
        "paths": {"campaigns": "campaigns", "state": "state/journal.sqlite3",
                  "delivery_log": "logs/delivery.jsonl", "suppression": "suppression.txt"},
        "log": {"level": "info", "format": "console", "phones": "masked"},
    }
    path = root / "config.toml"
    path.write_text(tomli_w.dumps(config), "utf-8")
    return path
