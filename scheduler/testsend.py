"""`send FILE --test PHONE[,PHONE…]`: see the real message on your own phone before a million do.

The campaign's first valid row (or CSV line ``--row N``) is rendered exactly as the campaign
would render it, and sent to the listed phones only, with tracking ids
``{campaign}-test-{n}-{unix time}``. Nothing touches the journal: the campaign is neither
counted nor started. Each message is written to the delivery log as a ``test_message`` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from scheduler.audience import iter_rows
from scheduler.batching import Message, message_maker
from scheduler.campaign import Campaign
from scheduler.cascade import Accepted, CascadeClient, PostResult, Rejected, Unauthorized
from scheduler.config import Config
from scheduler.delivery_log import DeliveryLog, mask_phone
from scheduler.errors import UserError
from scheduler.phones import E164
from scheduler.records import Skip
from scheduler.rows import ValidRow
from scheduler.service import api_endpoint
from scheduler.suppression import Suppression


@dataclass(frozen=True)
class TestSend:
    """What was sent (the messages) and how the API answered."""

    messages: list[Message]
    line: int  # the CSV line the text was rendered from
    reply: PostResult

    @property
    def message_ids(self) -> dict[str, str]:
        """The API's messageId per test tracking id (empty unless accepted)."""
        return self.reply.message_ids if isinstance(self.reply, Accepted) else {}

    @property
    def accepted(self) -> bool:
        """True when the API accepted every test message."""
        return isinstance(self.reply, Accepted) and all(
            m["id"] in self.reply.message_ids for m in self.messages)


def parse_phones(text: str) -> list[str]:
    """``+380…,+48…`` as a list; a phone that is not E.164 is a `UserError` naming it."""
    phones = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in phones if not E164.fullmatch(p)]
    if not phones or bad:
        raise UserError.single(
            f"--test: {', '.join(bad) or 'no phone'} is not an E.164 phone: write it like "
            "+380501234567, several separated by commas"
        )
    return phones


def pick_row(campaign: Campaign, config: Config, line: int | None) -> ValidRow:
    """The first valid row of the audience, or the one on CSV ``line``."""
    suppression = Suppression.load(config.paths.suppression)
    # `send --test` reads the audience before it starts anything: no other thread runs yet
    for row in iter_rows(campaign, suppression, may_fork=True):
        if isinstance(row, Skip):
            if row.line == line:
                raise UserError.single(
                    f"--row {line}: that row is skipped ({row.reason}): pick a valid row")
            continue
        if line is None or row[0] == line:
            return row
    where = f"no row on CSV line {line}" if line is not None else "no valid row"
    raise UserError.single(f"{campaign.audience.csv}: {where}: nothing to render for a test")


def test_messages(campaign: Campaign, row: ValidRow, phones: list[str], now: datetime) -> list[
        Message]:
    """The row's rendered message, once per test phone, with test tracking ids and a ttl."""
    make = message_maker(campaign)
    stamp = int(now.timestamp())
    messages = [make(f"{campaign.id}-test-{n}-{stamp}", phone, row[3])
                for n, phone in enumerate(phones, 1)]
    for message in messages:
        message["ttl"] = campaign.ttl
    return messages


def describe(reply: PostResult) -> str:
    """The API's answer in a few words, for people."""
    if isinstance(reply, Accepted):
        return "accepted (HTTP 200)"
    if isinstance(reply, Rejected):
        return f"rejected (HTTP {reply.status} {reply.code or ''}: {reply.message})".replace(
            " :", ":")
    if isinstance(reply, Unauthorized):
        return f"credentials refused (HTTP {reply.status}): fix the key"
    return f"failed: {reply.reason}" + (f" (HTTP {reply.status})" if reply.status else "")


async def send_test(
    config: Config, campaign: Campaign, phones: list[str], line: int | None = None,
) -> TestSend:
    """Render, post once to the campaign's route, log each message as ``test_message``."""
    row = pick_row(campaign, config, line)
    messages = test_messages(campaign, row, phones, datetime.now(UTC))
    route = campaign.route or config.api.route
    async with api_endpoint(config, campaign.account) as (base_url, headers):  # noqa: SIM117 (needs its URL)
        async with CascadeClient(base_url, headers, timeout=config.api.timeout,
                                 pool_size=1) as client:
            reply = await client.post(route, orjson.dumps(messages))
    log = DeliveryLog(config.paths.delivery_log, phones=config.log.phones,
                      secrets=config.credentials.secrets())
    try:
        ids = reply.message_ids if isinstance(reply, Accepted) else {}
        for message in messages:
            log.event("test_message", campaign=campaign.id, tracking_id=message["id"],
                      phone=message["toPhone"] if config.log.phones == "full"
                      else mask_phone(message["toPhone"]),
                      message_id=ids.get(message["id"]), line=row[0], answer=describe(reply))
    finally:
        log.close()
    return TestSend(messages, row[0], reply)
