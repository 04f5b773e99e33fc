"""`report` on larger journals and narrow terminals: listings stream, a terminal table stops
and says to use CSV, numbers are never cut, a closed pipe ends quietly, and every row of a
stopped or cancelled campaign is accounted for (issue 9, items 1, 5, 7, 8 and 14).

The journal is filled through the `Journal` interface (what the engine writes), so the
listings are exact and quick to build.
"""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from scheduler import cli
from scheduler.config import load_config
from scheduler.journal import Journal, JournalLocation, Result, open_journal
from scheduler.records import Skip
from scheduler.report import SUMMARY_COLUMNS, TABLE_ROWS, write_rows
from tests.helpers import MACHINE_VARIABLES, clean_env, write_config

BIG = 2_500  # sent rows of "big": more than a terminal table shows
CUT = 300  # rows of "cut": 100 sent, then its file was removed
SEND_AT = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def _messages(campaign: str, first: int, count: int) -> list[dict[str, Any]]:
    return [{"id": f"{campaign}-{n}", "fromName": "Brand", "toPhone": f"+38050{n:07d}",
             "messageType": "promo", "text": "Hi"} for n in range(first, first + count)]


async def _fill(path: Path) -> None:
    """"big": BIG sent and 3 skipped; "cut": 100 sent, cancelled; "stopped": running, 50 of 200
    sent, its daemon gone (no lease)."""
    journal = open_journal(JournalLocation(path))
    await journal.start(writer=True)
    try:
        for cid, rows, sent, state, skips in (
            ("big", BIG, BIG, "done", [Skip(7, None, "0501234567", "invalid_phone", "x"),
                                       Skip(9, None, "+380500000001", "duplicate", "y"),
                                       Skip(12, "big-c12", "+380500000012", "suppressed")]),
            ("cut", CUT, 100, "cancelled", []),
            ("stopped", 200, 50, "running", []),
        ):
            await journal.prepare(
                campaign_id=cid, type="promo", file=f"/c/{cid}.toml", fingerprint="f",
                send_at=SEND_AT, deadline=SEND_AT + timedelta(days=1),
                batches=(_messages(cid, b, 50) for b in range(0, rows, 50)), skips=skips,
            )
            await journal.set_state(cid, "running")
            for seq in range(sent // 50):
                await journal.mark_in_flight(cid, [seq])
                await journal.record_results(cid, seq, [
                    Result(m["id"], "sent", f"mid-{m['id']}", 1, m["toPhone"])
                    for m in _messages(cid, seq * 50, 50)
                ])
            if state != "running":
                await journal.set_state(cid, state)  # type: ignore[arg-type]
    finally:
        await journal.close()


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace whose journal holds "big", "cut" and "stopped" (see `_fill`)."""
    root = tmp_path_factory.mktemp("listing")
    path = write_config(root)
    asyncio.run(_fill(load_config(path).paths.state))
    return path


@pytest.fixture(autouse=True)
def _no_machine_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in MACHINE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def report(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str]:
    """Run `report` in-process; returns (exit code, stdout)."""
    code = cli.main(["report", "--config", str(config), *args])
    return code, capsys.readouterr().out


# --- item 1: listings stream; a terminal table stops and says to use CSV --------------------


def test_table_listing_stops_and_says_to_use_csv(
    config: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """`--status sent` as a table: at most TABLE_ROWS rows, then how many more and how to get
    them all; CSV and JSON list every row."""
    code, out = report(capsys, config, "--status", "sent", "--campaign", "big")
    assert code == 0
    listed = [line for line in out.splitlines() if "big-" in line]
    assert len(listed) == TABLE_ROWS
    assert f"… {BIG - TABLE_ROWS:,} more: use --format csv" in out
    code, out = report(capsys, config, "--status", "sent", "--format", "csv")
    assert code == 0 and len(list(csv.DictReader(io.StringIO(out)))) == BIG + 100 + 50
    code, out = report(capsys, config, "--status", "sent", "--format", "json",
                       "--campaign", "big")
    assert code == 0 and len(orjson.loads(out)) == BIG


def test_table_reads_no_more_rows_than_it_shows() -> None:
    """A table of a million rows takes the first TABLE_ROWS from the stream and no more (the
    count of the rest comes from the journal's counts): memory stays flat."""
    taken = 0

    def million() -> Iterator[dict[str, Any]]:
        nonlocal taken
        for n in range(1_000_000):
            taken += 1
            assert taken <= TABLE_ROWS, "the table read past what it shows"
            yield {"campaign": "c", "tracking_id": f"c-{n}", "phone": "+380500000000",
                   "status": "sent", "detail": "m", "attempts": 1}

    out = io.StringIO()
    write_rows(million(), ("campaign", "tracking_id", "phone", "status", "detail", "attempts"),
               "table", out, total=1_000_000)
    assert taken == TABLE_ROWS
    assert f"… {1_000_000 - TABLE_ROWS:,} more" in out.getvalue()


# --- item 14: narrow terminals hide columns, never cut a number --------------------------


def test_narrow_terminal_hides_columns_and_never_cuts_a_number(
    config: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """At 80 columns every count, time and id is whole ("2,500", not "2,5…"); columns that do
    not fit are hidden and named; a terminal too narrow for any table gets one line a field."""
    rows = [{"campaign": "winter-sale-2026", "type": "promo", "state": "done",
             "send_at": "2026-12-01T09:00:00Z", "recipients": 4_977, "skipped": 23,
             "sent": 4_977, "rejected": 0, "expired": 0, "in_doubt": 0, "pending": 0,
             "note": ""}]
    for width in (80, 60):
        out = io.StringIO()
        write_rows(rows, SUMMARY_COLUMNS, "table", out, "Campaign outcomes", width=width)
        text = out.getvalue()
        assert "…" not in text, text
        assert all(len(line) <= width for line in text.splitlines()), text
        assert "4,977" in text and "winter-sale-2026" in text
        assert "not shown at this width:" in text
    out = io.StringIO()
    write_rows(rows, SUMMARY_COLUMNS, "table", out, "Campaign outcomes", width=30)
    assert "sent        4,977" in out.getvalue() and "…" not in out.getvalue()


def test_report_at_80_columns_through_the_cli(config: Path) -> None:
    """The real command on an 80-column terminal: no cut cell in the summary or the plan."""
    env = clean_env(COLUMNS="80", TTY_COMPATIBLE="1", NO_COLOR="1")
    for command in (["report"], ["plan"]):
        result = subprocess.run(
            [sys.executable, "-m", "scheduler", *command, "--config", str(config)],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "…" not in result.stdout, result.stdout
        assert "2,500" in result.stdout or command == ["plan"]


# --- item 5: a closed stdout ends quietly ---------------------------------------------------


def test_a_closed_pipe_ends_quietly(config: Path) -> None:
    """`report --status sent --format csv | head -1`: no "Broken pipe" sentence, no traceback;
    the exit code of a process ended by SIGPIPE, as `yes | head -1` gives."""
    for fmt in ("csv", "json", "table"):
        process = subprocess.Popen(
            [sys.executable, "-m", "scheduler", "report", "--config", str(config), "--status",
             "sent", "--format", fmt],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
        )
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline()
        process.stdout.close()  # what `head -1` does after its line
        err = process.stderr.read().decode()
        process.stderr.close()
        assert process.wait(60) == 141, err
        assert err == "", err


# --- items 7 and 8: stopped and cancelled campaigns account for every row --------------------


def test_every_row_of_a_cancelled_campaign_is_accounted_for(
    config: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A campaign cancelled by removing its file: the summary says its unsent rows are not sent
    because it was cancelled (and come back with the file); `--status pending` lists them."""
    code, out = report(capsys, config, "--format", "json", "--campaign", "cut")
    assert code == 0
    (row,) = orjson.loads(out)
    assert (row["state"], row["sent"], row["pending"]) == ("cancelled", 100, CUT - 100)
    assert "200 not sent" in row["note"] and "restoring the file" in row["note"]
    code, out = report(capsys, config, "--status", "pending", "--format", "csv",
                       "--campaign", "cut")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["tracking_id"] for r in rows] == [f"cut-{n}" for n in range(100, CUT)]
    assert {r["status"] for r in rows} == {"pending"}
    assert all("cancelled" in r["detail"] and "restoring the file" in r["detail"] for r in rows)


def test_a_running_campaign_with_no_daemon_says_it_will_resume(
    config: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """After SIGTERM the journal still says "running": with no daemon holding the lease the
    report says it resumes at the next start; while one holds it, it says nothing more."""
    code, out = report(capsys, config, "--format", "json", "--campaign", "stopped")
    (row,) = orjson.loads(out)
    assert code == 0 and row["state"] == "running" and "resumes" in row["note"]

    async def lead() -> tuple[Journal, int]:
        journal = open_journal(JournalLocation(load_config(config).paths.state))
        await journal.start(writer=True)
        epoch = await journal.acquire_lease("host:1:test", 60)
        assert epoch is not None
        return journal, epoch

    loop = asyncio.new_event_loop()
    try:
        journal, epoch = loop.run_until_complete(lead())
        try:
            code, out = report(capsys, config, "--format", "json", "--campaign", "stopped")
            (row,) = orjson.loads(out)
            assert code == 0 and row["state"] == "running" and row["note"] == ""
        finally:
            loop.run_until_complete(journal.release_lease("host:1:test", epoch))
            loop.run_until_complete(journal.close())
    finally:
        loop.close()


def test_summary_counts_add_up(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each campaign's recipients are exactly its final outcomes plus its pending rows."""
    _, out = report(capsys, config, "--format", "json")
    for row in orjson.loads(out):
        finals = sum(row[k] for k in ("sent", "rejected", "expired", "in_doubt"))
        assert finals + row["pending"] == row["recipients"], row


@pytest.fixture(autouse=True)
def _plain_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs see no terminal settings from the machine running the tests."""
    for variable in ("COLUMNS", "TTY_COMPATIBLE", "FORCE_COLOR"):
        monkeypatch.delenv(variable, raising=False)
