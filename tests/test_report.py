"""`report`: outcome tables, JSON and CSV from a real journal that real sends filled.

The journal is built once per module: two campaigns sent through a sandbox on loopback, one with
a refused phone and skipped rows, so every listing has known, exact contents.
"""

from __future__ import annotations

import asyncio
import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from scheduler import cli
from scheduler.config import load_config
from scheduler.loader import load_campaign
from scheduler.sandbox import Sandbox
from scheduler.sandbox_options import SandboxOptions
from scheduler.service import send_campaign
from tests.helpers import (
    MACHINE_VARIABLES,
    phone,
    read_jsonl,
    run_cli,
    write_audience,
    write_campaign,
    write_config,
)

REJECTED_INDEX = 7
INVALID_PHONE = "0501234567"


@dataclass(frozen=True)
class Sent:
    """The workspace with a filled journal, and what was put into it."""

    config: Path
    phones_a: list[str]
    phones_b: list[str]


async def _send_all(root: Path) -> tuple[list[str], list[str]]:
    sandbox = Sandbox(SandboxOptions(reject_phones=frozenset({phone(REJECTED_INDEX)})))
    base_url = await sandbox.start()
    try:
        config_path = write_config(root, base_url, batch_size=10, requests_per_second=500)
        folder = root / "campaigns"
        phones_a = write_audience(folder / "a.csv", 30, extra_rows=(
            (INVALID_PHONE, "Local"), (phone(2), "Twin"),
        ))
        phones_b = write_audience(folder / "b.csv", 12, start=500)
        now = datetime.now(UTC)
        config = load_config(config_path, env={"CASCADE_API_KEY": "report-key"})
        for name, csv_name in (("report-a", "a.csv"), ("report-b", "b.csv")):
            file = write_campaign(folder, name, csv_name, send_at=now)
            campaign = load_campaign(file, config, now).campaign
            assert campaign is not None
            outcome = await send_campaign(config, campaign, stop=asyncio.Event())
            assert outcome.complete, outcome
    finally:
        await sandbox.stop()
    return phones_a, phones_b


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory) -> Sent:
    """Two campaigns sent to completion: report-a (29 sent, 1 rejected, 2 skipped), report-b."""
    root = tmp_path_factory.mktemp("report")
    phones_a, phones_b = asyncio.run(_send_all(root))
    return Sent(root / "config.toml", phones_a, phones_b)


@pytest.fixture(autouse=True)
def _no_machine_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads only the test's config and no credentials from the machine."""
    for variable in MACHINE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def report(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str, str]:
    """Run `report` in-process; returns (exit code, stdout, stderr)."""
    code = cli.main(["report", "--config", str(config), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------------------------


def test_summary_json(sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
    """JSON summary: one row per campaign with its state and exact counts."""
    code, out, _ = report(capsys, sent.config, "--format", "json")
    assert code == 0
    rows = {row["campaign"]: row for row in orjson.loads(out)}
    assert set(rows) == {"report-a", "report-b"}
    a, b = rows["report-a"], rows["report-b"]
    assert (a["state"], a["type"], a["recipients"]) == ("done", "transaction", 30)
    assert (a["sent"], a["rejected"], a["skipped"], a["pending"]) == (29, 1, 2, 0)
    assert (a["expired"], a["in_doubt"]) == (0, 0)
    assert (b["state"], b["sent"], b["rejected"], b["skipped"]) == ("done", 12, 0, 0)
    assert a["send_at"].endswith("Z")


def test_summary_table_and_csv(sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
    """The table names both campaigns with their counts; the CSV parses with the same numbers."""
    code, out, _ = report(capsys, sent.config)
    assert code == 0
    assert "Campaign outcomes" in out
    line_a = next(line for line in out.splitlines() if "report-a" in line)
    assert "done" in line_a and "transaction" in line_a
    # skipped, sent, rejected, expired, in doubt, pending, resent
    assert [cell for cell in line_a.split() if cell.isdigit()][-7:] == ["2", "29", "1", "0",
                                                                      "0", "0", "0"]
    code, out, _ = report(capsys, sent.config, "--format", "csv")
    assert code == 0
    rows = {row["campaign"]: row for row in csv.DictReader(io.StringIO(out))}
    assert rows["report-b"]["sent"] == "12" and rows["report-a"]["rejected"] == "1"


def test_status_sent_csv_lists_full_phones(sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
    """`--status sent --format csv`: exactly the sent recipients, with full phones for re-use."""
    code, out, _ = report(capsys, sent.config, "--status", "sent", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    expected = [p for i, p in enumerate(sent.phones_a) if i != REJECTED_INDEX] + sent.phones_b
    assert sorted(row["phone"] for row in rows) == sorted(expected)
    assert {row["status"] for row in rows} == {"sent"}
    assert all("*" not in row["phone"] for row in rows)
    assert all(row["detail"] and row["attempts"] == "1" for row in rows)
    assert len({row["tracking_id"] for row in rows}) == 41


def test_status_sent_has_the_time_of_each_outcome(
    sent: Sent, capsys: pytest.CaptureFixture[str],
) -> None:
    """`--status sent` (and rejected) lists when each message's outcome came, a UTC time
    (issue 24, item 15: the listing had no time column)."""
    code, out, _ = report(capsys, sent.config, "--status", "sent", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    times = [datetime.fromisoformat(row["at"].replace("Z", "+00:00")) for row in rows]
    assert all(at.tzinfo is not None and at <= datetime.now(UTC) for at in times)
    code, out, _ = report(capsys, sent.config, "--status", "rejected")
    assert code == 0 and " at " in out.splitlines()[2] and "Z " in out


def test_report_phone_lists_every_row_of_one_phone(
    sent: Sent, capsys: pytest.CaptureFixture[str],
) -> None:
    """`report --phone` with the number as people write it: that phone's sent row and its
    duplicate (skipped) row, with the time; the refused one; none for an unknown number;
    a word that is no phone is a usage error (issue 24, item 15: the delivery log masks
    phones, and nothing else answered "did this number get it?")."""
    twin = sent.phones_a[2]
    spaced = f"{twin[:4]} {twin[4:6]} {twin[6:9]}-{twin[9:11]}-{twin[11:]}"
    code, out, _ = report(capsys, sent.config, "--phone", spaced, "--format", "json")
    assert code == 0
    rows = orjson.loads(out)
    assert [(r["campaign"], r["status"], r["phone"]) for r in rows] == [
        ("report-a", "sent", twin), ("report-a", "skipped", twin)]
    assert rows[0]["at"].endswith("Z") and rows[0]["detail"]  # the messageId
    assert rows[1]["at"] == "" and rows[1]["detail"] == "duplicate (CSV line 33)"
    code, out, _ = report(capsys, sent.config, "--phone", sent.phones_a[REJECTED_INDEX][1:])
    assert code == 0 and "rejected" in out and "report-a" in out
    code, out, err = report(capsys, sent.config, "--phone", "+380999999999")
    assert code == 0 and err == "no row of +380999999999 in the journal\n"
    code, _, err = report(capsys, sent.config, "--phone", "call me")
    assert code == 2 and "is not a phone number with its country code" in err


def test_status_rejected_and_skipped(sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
    """`--status rejected` lists the refused phone with its code; `skipped` the two bad rows."""
    code, out, _ = report(capsys, sent.config, "--status", "rejected", "--format", "json")
    assert code == 0
    rows = orjson.loads(out)
    assert [(r["campaign"], r["tracking_id"], r["phone"], r["detail"]) for r in rows] == [
        ("report-a", f"report-a-{REJECTED_INDEX + 1}", phone(REJECTED_INDEX), "INVALID_PHONE"),
    ]
    code, out, _ = report(capsys, sent.config, "--status", "skipped", "--format", "csv",
                          "--campaign", "report-a")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert sorted((r["phone"], r["detail"]) for r in rows) == [
        (phone(2), "duplicate"), (INVALID_PHONE, "invalid_phone"),
    ]


def test_campaign_filter(sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
    """`--campaign` limits both the summary and the recipient listing to one campaign."""
    code, out, _ = report(capsys, sent.config, "--campaign", "report-b", "--format", "json")
    assert code == 0
    assert [row["campaign"] for row in orjson.loads(out)] == ["report-b"]
    code, out, _ = report(capsys, sent.config, "--campaign", "report-b", "--status", "sent",
                          "--format", "csv")
    assert sorted(r["phone"] for r in csv.DictReader(io.StringIO(out))) == sorted(sent.phones_b)


def test_unknown_campaign_exit_1(sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown `--campaign`: exit 1 and one sentence naming it."""
    code, out, err = report(capsys, sent.config, "--campaign", "no-such-thing")
    assert code == 1 and out == ""
    assert 'no campaign "no-such-thing" in the journal' in err


def test_unknown_status_is_a_usage_error(sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
    """A `--status` that is no outcome: usage error (exit 2) listing the valid ones."""
    code, _, err = report(capsys, sent.config, "--status", "lost")
    assert code == 2
    assert "sent, rejected, expired, skipped, in_doubt" in err


def test_no_journal_yet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before anything was sent: exit 0 and a message saying so, and no journal is created."""
    config = write_config(tmp_path)
    code, out, err = report(capsys, config)
    assert code == 0 and out == ""
    assert "nothing has been sent" in err
    assert not (tmp_path / "state" / "journal.sqlite3").exists()


def test_report_subprocess_pipe(sent: Sent) -> None:
    """Through a pipe, as people use it (`report | grep`): full cells, no traceback."""
    result = run_cli(["report", "--config", str(sent.config), "--status", "rejected"])
    assert result.returncode == 0, result.stderr
    assert f"report-a-{REJECTED_INDEX + 1}" in result.stdout
    assert phone(REJECTED_INDEX) in result.stdout and "INVALID_PHONE" in result.stdout


def test_skipped_rows_name_their_csv_line(sent: Sent, capsys: pytest.CaptureFixture[str]) -> None:
    """Every skipped row can be found again: `--status skipped` (every format) and its
    delivery-log line carry the CSV line and the reason (issue 9, item 6)."""
    code, out, _ = report(capsys, sent.config, "--status", "skipped", "--format", "json",
                          "--campaign", "report-a")
    assert code == 0
    rows = orjson.loads(out)
    # the header is line 1 and the 30 valid rows lines 2-31: the bad rows are 32 and 33
    assert [(r["line"], r["phone"], r["detail"]) for r in rows] == [
        (32, INVALID_PHONE, "invalid_phone"), (33, phone(2), "duplicate"),
    ]
    code, out, _ = report(capsys, sent.config, "--status", "skipped", "--campaign", "report-a")
    assert code == 0 and "line" in out.splitlines()[2]  # the table's header row
    log = read_jsonl(sent.config.parent / "logs" / "delivery.jsonl")
    skipped = [e for e in log if e["event"] == "message" and e["status"] == "skipped"]
    assert sorted((e["line"], e["reason"]) for e in skipped) == [
        (32, "invalid_phone"), (33, "duplicate"),
    ]
