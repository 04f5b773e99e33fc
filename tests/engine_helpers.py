"""Helpers for tests that drive the sending engine: a workspace with one campaign, and driving
it to an end state with a real engine (its own client, journal and delivery log)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from scheduler.campaign import Campaign
from scheduler.cascade import ENDPOINTS
from scheduler.config import Config, load_config
from scheduler.journal import Journal, RecipientRow, Result
from scheduler.loader import load_campaign
from scheduler.sender import Engine
from scheduler.service import open_engine
from scheduler.vocabulary import CampaignState
from tests.helpers import read_jsonl, write_audience, write_campaign, write_config
from tests.journal_helpers import SyncJournal

KEY = "test-key-7f3a"
#: the status-API tests' request headers and snapshot time
STATUS_HEADERS = {"X-Authorization-Key": "k"}
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@dataclass
class Setup:
    """A workspace: its config and one campaign, ready to prepare and drive."""

    root: Path
    config: Config
    campaign: Campaign

    @property
    def journal_path(self) -> Path:
        """The journal file the config names."""
        return self.config.paths.state

    def journal_rows(self) -> list[RecipientRow]:
        """Every recipient with a final outcome, read back from the journal file."""
        with SyncJournal(self.journal_path) as journal:
            return list(journal.recipients(self.campaign.id))

    def counts(self) -> dict[str, int]:
        """The journal's outcome counts for the campaign."""
        with SyncJournal(self.journal_path) as journal:
            return journal.counts(self.campaign.id)

    def log_lines(self) -> list[dict[str, Any]]:
        """Every delivery-log line, parsed."""
        return read_jsonl(self.config.paths.delivery_log)


def make_setup(
    root: Path,
    base_url: str,
    count: int,
    *,
    key: str = KEY,
    extra_rows: tuple[tuple[str, str], ...] = (),
    ttl: int = 3600,
    phones: str = "masked",
    **sending: Any,
) -> Setup:
    """Write a config and a ``count``-recipient transaction campaign; load both."""
    config_path = write_config(root, base_url, phones=phones, **sending)
    write_audience(root / "campaigns" / "people.csv", count, extra_rows=extra_rows)
    now = datetime.now(UTC)
    file = write_campaign(root / "campaigns", "engine-test", "people.csv", send_at=now, ttl=ttl)
    config = load_config(config_path, env={"CASCADE_API_KEY": key})
    check = load_campaign(file, config, now)
    assert check.campaign is not None, check.problems
    # the deadline counts from this instant, as `send --now` does
    campaign = check.campaign.model_copy(update={"send_at": now})
    return Setup(root, config, campaign)


async def drive(setup: Setup, config: Config | None = None) -> CampaignState:
    """Prepare and drive the campaign with a fresh engine (own client, journal and log)."""
    async with open_engine(config or setup.config) as engine:
        return await drive_with(engine, setup.campaign)


async def drive_with(engine: Engine, campaign: Campaign) -> CampaignState:
    """Prepare ``campaign`` and send it with ``engine`` until it ends."""
    record = await engine.prepare(campaign)
    run = engine.open_run(campaign, record)
    return await engine.drive(run)


async def send_through(
    journal: Journal, base_url: str, campaign: str, count: int, *,
    deadline: datetime, text: str = "Hello there", index: bool = True,
) -> list[tuple[str, str, str]]:
    """Snapshot a campaign, post its batches to the sandbox, journal the answers, index
    (unless not ``index``)."""
    messages = [{"id": f"{campaign}-{n}", "fromName": "Shop", "toPhone": f"+38050{n:07d}",
                 "messageType": "transaction", "text": text} for n in range(count)]
    batches = [messages[i:i + 50] for i in range(0, count, 50)]
    await journal.prepare(campaign_id=campaign, type="transaction", file="/c.toml",
                          fingerprint="f", send_at=T0, deadline=deadline, batches=batches,
                          skips=[])
    sent = []
    async with aiohttp.ClientSession() as http:
        for seq, batch in enumerate(batches):
            async with http.post(base_url + ENDPOINTS["standard"], json=batch,
                                 headers=STATUS_HEADERS) as response:
                ids = {e["trackinId"]: e["messageId"] for e in await response.json()}
            results = [Result(m["id"], "sent", ids[m["id"]], 1, m["toPhone"]) for m in batch]
            await journal.record_results(campaign, seq, results)
            sent += [(m["id"], ids[m["id"]], m["toPhone"]) for m in batch]
    while index and await journal.index_messages(first_poll=0):
        pass
    return sent
