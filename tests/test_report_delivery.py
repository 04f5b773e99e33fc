"""`report` with delivery statuses (SPEC §11.3): the summary's delivery part in every format,
and ``--status delivered|undeliverable|permanenterror|unknown`` listings, from a real journal.

The journal is built once: two campaigns sent through the sandbox on loopback, their messages
indexed and polled to the end by the real poller (one message of "mix" given up as unknown),
and a third campaign sent with nothing polled yet.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from scheduler import cli
from scheduler.config import load_config
from scheduler.delivery_log import DeliveryLog
from scheduler.dlr import Deliveries, Poller, PollSettings, StatusClient
from scheduler.journal import Journal, JournalLocation, open_journal
from scheduler.loader import load_campaign
from scheduler.metrics import Metrics
from scheduler.sandbox import PRICES, Sandbox
from scheduler.sandbox_options import SandboxOptions
from scheduler.service import send_campaign
from tests.helpers import MACHINE_VARIABLES, write_audience, write_campaign, write_config
from tests.journal_helpers import record_status

KEY = {"X-Authorization-Key": "report-key"}


@dataclass(frozen=True)
class Polled:
    """The workspace, and what the sandbox decided for each message of "mix"."""

    config: Path
    fates: dict[str, str]  # message id -> delivered | undeliverable | permanenterror
    channels: dict[str, str]  # message id -> the channel the sandbox chose
    unknown: str  # the message id given up as unknown


async def _build(root: Path) -> Polled:
    sandbox = Sandbox(SandboxOptions(dlr_delay=0, undeliverable_rate=0.2,
                                     permanent_error_rate=0.1, seed=21,
                                     record=root / "record.jsonl"))
    base_url = await sandbox.start()
    try:
        config_path = write_config(root, base_url, batch_size=20, requests_per_second=500)
        folder = root / "campaigns"
        config = load_config(config_path, env={"CASCADE_API_KEY": "report-key"})
        for name, size, start in (("mix", 80, 0), ("tiny", 5, 500), ("waiting", 7, 900)):
            write_audience(folder / f"{name}.csv", size, start=start)
            file = write_campaign(folder, name, f"{name}.csv", send_at=datetime.now(UTC))
            campaign = load_campaign(file, config, datetime.now(UTC)).campaign
            assert campaign is not None
            assert (await send_campaign(config, campaign, stop=asyncio.Event())).complete
        journal = open_journal(JournalLocation(config.paths.state))
        await journal.start(writer=True)
        try:
            while await journal.index_messages(first_poll=0):
                pass
            return await _poll(root, journal, base_url, sandbox)
        finally:
            await journal.close()
    finally:
        await sandbox.stop()


async def _poll(root: Path, journal: Journal, base_url: str, sandbox: Sandbox) -> Polled:
    """Give one "mix" message up as unknown, poll the rest of "mix" and "tiny" to the end."""
    due = await journal.messages_awaiting_status(datetime.now(UTC) + timedelta(days=1), 1000)
    mix = [a.message.message_id for a in due if a.message.campaign == "mix"]
    assert await record_status(journal, mix[0], "unknown")
    waiting = [(a.message.message_id, datetime.now(UTC) + timedelta(days=1))
               for a in due if a.message.campaign == "waiting"]
    await journal.schedule_polls(waiting)  # not due now: "waiting" stays without a status
    log = DeliveryLog(root / "logs" / "delivery.jsonl", phones="masked")
    try:
        async with StatusClient(base_url, lambda: KEY, timeout=5) as client:
            poller = Poller(journal, client, Deliveries(journal, log, Metrics()),
                            PollSettings(rate=1000))
            while await poller.round() == 0:
                pass
    finally:
        log.close()
    record = [orjson.loads(line) for line in (root / "record.jsonl").read_bytes().splitlines()]
    channels = {r["messageId"]: r["channel"] for r in record}
    fates = {mid: sandbox.fate(mid).status for mid in mix[1:]}
    return Polled(root / "config.toml", fates, channels, mix[0])


@pytest.fixture(scope="module")
def polled(tmp_path_factory: pytest.TempPathFactory) -> Polled:
    """The journal with delivery statuses (built once for the module)."""
    return asyncio.run(_build(tmp_path_factory.mktemp("delivery-report")))


@pytest.fixture(autouse=True)
def _no_machine_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads only the test's config and no credentials from the machine."""
    for variable in MACHINE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def report(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str]:
    """Run `report` in-process; (exit code, stdout)."""
    code = cli.main(["report", "--config", str(config), *args])
    return code, capsys.readouterr().out


def _expected(polled: Polled) -> dict[str, Any]:
    fates = Counter(polled.fates.values())
    delivered = [mid for mid, fate in polled.fates.items() if fate == "delivered"]
    by_channel = Counter(polled.channels[mid] for mid in delivered)
    cost = round(sum(PRICES[polled.channels[mid]] for mid in delivered), 2)
    return {"fates": fates, "by_channel": by_channel, "cost": cost}


def test_summary_json_has_a_delivery_object_per_campaign(
    polled: Polled, capsys: pytest.CaptureFixture[str],
) -> None:
    """Counts per final status, awaiting, delivered per channel, cost, median time."""
    code, out = report(capsys, polled.config, "--format", "json")
    assert code == 0
    rows = {row["campaign"]: row for row in orjson.loads(out)}
    expected = _expected(polled)
    mix = rows["mix"]["delivery"]
    assert rows["mix"]["sent"] == 80
    assert {s: mix[s] for s in ("delivered", "undeliverable", "permanenterror")} == {
        s: expected["fates"][s] for s in ("delivered", "undeliverable", "permanenterror")}
    assert (mix["unknown"], mix["awaiting"]) == (1, 0)
    assert mix["by_channel"] == dict(expected["by_channel"])
    assert list(mix["by_channel"].values()) == sorted(mix["by_channel"].values(), reverse=True)
    assert mix["cost"] == {"UAH": pytest.approx(expected["cost"])}
    assert mix["median_delivery"] is not None and 0 <= mix["median_delivery"] < 60
    assert rows["waiting"]["delivery"]["awaiting"] == 7
    assert rows["waiting"]["delivery"]["delivered"] == 0
    assert sum(rows["tiny"]["delivery"][s] for s in ("delivered", "undeliverable",
                                                      "permanenterror")) == 5


def test_summary_table_and_csv_show_channels_shares_and_cost(
    polled: Polled, capsys: pytest.CaptureFixture[str],
) -> None:
    """The table gets a "Delivery status" table; the CSV gets the same as more columns."""
    expected = _expected(polled)
    code, out = report(capsys, polled.config)
    assert code == 0
    assert "Campaign outcomes" in out and "Delivery status" in out
    delivered = expected["fates"]["delivered"]
    channel, count = expected["by_channel"].most_common(1)[0]
    assert f"{channel} {count} ({count / delivered:.0%})" in out
    assert f"{expected['cost']:,.2f} UAH" in out
    code, out = report(capsys, polled.config, "--format", "csv")
    rows = {row["campaign"]: row for row in csv.DictReader(io.StringIO(out))}
    assert rows["mix"]["delivered"] == str(delivered) and rows["mix"]["unknown"] == "1"
    assert rows["mix"]["cost"] == f"{expected['cost']:,.2f} UAH"
    assert rows["waiting"]["awaiting"] == "7" and rows["waiting"]["by_channel"] == ""
    assert rows["mix"]["note"] == ""  # the outcome columns are all still there


@pytest.mark.parametrize("status", ["delivered", "undeliverable", "permanenterror"])
def test_status_lists_the_recipients_with_channel_and_cost(
    polled: Polled, capsys: pytest.CaptureFixture[str], status: str,
) -> None:
    """``--status S --format csv``: exactly the messages in that final status, full phones,
    the channel (for a failure, the last one tried) and the cost."""
    code, out = report(capsys, polled.config, "--status", status, "--campaign", "mix",
                       "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {row["message_id"] for row in rows} == {
        mid for mid, fate in polled.fates.items() if fate == status}
    for row in rows:
        assert row["status"] == status and row["phone"].startswith("+38050")
        assert row["sent_at"].endswith("Z") and row["status_at"].endswith("Z")
        assert row["currency"] == "UAH"
        if status == "delivered":
            assert row["channel"] == polled.channels[row["message_id"]]
            assert float(row["cost"]) == PRICES[row["channel"]]
        else:
            assert float(row["cost"]) == 0
        if status == "undeliverable":
            assert row["channel"] == "sms"  # every channel of the standard route failed


def test_report_phone_shows_each_sent_messages_delivery_status_and_channel(
    polled: Polled, capsys: pytest.CaptureFixture[str],
) -> None:
    """`report --phone` of a "mix" recipient: its sent row with the final delivery status
    and channel the poller recorded; `--status delivered` keeps only delivered rows (issue
    24, item 15)."""
    code, out = report(capsys, polled.config, "--status", "delivered", "--campaign", "mix",
                       "--format", "json")
    listed = orjson.loads(out)[0]
    code, out = report(capsys, polled.config, "--phone", listed["phone"], "--format", "json")
    assert code == 0
    (row,) = orjson.loads(out)
    assert (row["campaign"], row["status"], row["delivery"], row["channel"]) == (
        "mix", "sent", "delivered", listed["channel"])
    assert row["tracking_id"] == listed["tracking_id"] and row["at"].endswith("Z")
    for status in ("undeliverable", "delivered"):
        code, out = report(capsys, polled.config, "--phone", listed["phone"], "--status",
                           status, "--format", "json")
        assert len(orjson.loads(out)) == (status == "delivered")


def test_status_unknown_and_a_table_with_its_total(
    polled: Polled, capsys: pytest.CaptureFixture[str],
) -> None:
    """``--status unknown`` names the message given up; the table counts every campaign."""
    code, out = report(capsys, polled.config, "--status", "unknown", "--format", "json")
    assert code == 0
    assert [row["message_id"] for row in orjson.loads(out)] == [polled.unknown]
    code, out = report(capsys, polled.config, "--status", "delivered")
    assert code == 0 and "Recipients: delivered" in out


def test_without_statuses_the_summary_is_as_before(
    capsys: pytest.CaptureFixture[str], polled: Polled,
) -> None:
    """A journal whose messages have no delivery status yet (polling off): no delivery part
    in any format; a bad --status names the delivery statuses too."""
    code, out = report(capsys, polled.config, "--campaign", "waiting", "--format", "json")
    assert code == 0
    assert "delivery" not in orjson.loads(out)[0]
    code, out = report(capsys, polled.config, "--campaign", "waiting")
    assert "Delivery status" not in out
    assert cli.main(["report", "--config", str(polled.config), "--status", "lost"]) == 2
    assert "undeliverable, permanenterror, unknown" in capsys.readouterr().err


def test_plan_shows_how_many_messages_await_a_status(
    polled: Polled, capsys: pytest.CaptureFixture[str],
) -> None:
    """`plan` counts, per campaign, the sent messages without a final status (as `report`
    does); with delivery reports off, only where some status came."""
    code = cli.main(["plan", "--config", str(polled.config), "--json"])
    assert code == 0
    rows = {row["campaign"]: row for row in orjson.loads(capsys.readouterr().out)}
    assert {cid: rows[cid]["awaiting_status"] for cid in ("mix", "tiny", "waiting")} == {
        "mix": 0, "tiny": 0, "waiting": None}
    polling = polled.config.with_name("polling.toml")
    polling.write_text(polled.config.read_text("utf-8") + "\n[delivery_reports]\npoll = true\n",
                       "utf-8")
    assert cli.main(["plan", "--config", str(polling), "--json"]) == 0
    rows = {row["campaign"]: row for row in orjson.loads(capsys.readouterr().out)}
    assert {cid: rows[cid]["awaiting_status"] for cid in ("mix", "tiny", "waiting")} == {
        "mix": 0, "tiny": 0, "waiting": 7}
    assert cli.main(["plan", "--config", str(polling)]) == 0
    assert "awaiting status" in capsys.readouterr().out
