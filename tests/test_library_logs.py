"""What libraries log (psycopg, asyncio, aiohttp) reaches the operational log as JSON lines,
redacted like every other line (issue 23, item 4): never plain text between the JSON objects.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import (
    API_KEY,
    DaemonProcess,
    SandboxProcess,
    Workspace,
    expected_ids,
    poll,
    utc_seconds_from_now,
)
from psycopg import sql

from scheduler.config import load_config
from scheduler.journal import JournalReader, open_journal
from scheduler.oplog import REDACTED, configure_logging
from tests.helpers import clean_env
from tests.pg_helpers import PostgresServer

SECRET = "sk-live-library-0123456789"


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as a JSON object (a line that is not one fails the test)."""
    found = []
    for line in text.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a line of the operational log is not JSON: {line!r}")
    return found


def state(workspace: Workspace, cid: str) -> str | None:
    """The campaign's state in the workspace's journal (PostgreSQL here)."""
    location = load_config(workspace.config).journal_location()
    with JournalReader(open_journal(location)) as journal:
        record = journal.campaign(cid)
        return None if record is None else record.state


def test_library_records_are_events_of_the_operational_log(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A library's warning is a ``library_message`` event (its logger as component, its text
    as message, its traceback as exception), redacted; its INFO chatter stays out."""
    configure_logging("info", "json", secrets=[SECRET])
    logging.getLogger("aiohttp.client").warning("retrying with key %s", SECRET)
    logging.getLogger("psycopg").info("connection attempt: host=db")
    try:
        raise ConnectionResetError("peer went away")
    except ConnectionResetError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
    captured = capsys.readouterr()
    warning, error = json_lines(captured.err)
    assert (warning["event"], warning["level"], warning["component"]) == (
        "library_message", "warning", "aiohttp.client")
    assert warning["message"] == f"retrying with key {REDACTED}"
    assert (error["level"], error["component"], error["message"]) == (
        "error", "asyncio", "Task exception was never retrieved")
    assert "ConnectionResetError: peer went away" in error["exception"]
    assert SECRET not in captured.err + captured.out


def test_the_handler_does_not_outlive_the_test_that_configured_it() -> None:
    """The test above configured the operational log; conftest took its `logging` handler
    away again, so later tests' library records do not go through a stale structlog setup."""
    from scheduler.oplog import LibraryHandler

    root = logging.getLogger()
    assert not [h for h in root.handlers if isinstance(h, LibraryHandler)]
    assert root.level == logging.WARNING


def test_a_real_psycopg_warning_is_a_json_line(postgres_url: str) -> None:
    """psycopg warns when a pipeline ends on a connection the server cut: in a process that
    configured the operational log, that warning is one JSON line like the others."""
    script = textwrap.dedent("""
        import asyncio, sys
        import psycopg
        from scheduler.oplog import configure_logging, get_logger

        async def cut(url):
            db = await psycopg.AsyncConnection.connect(url)
            try:
                async with db.pipeline():
                    await db.execute("SELECT pg_terminate_backend(pg_backend_pid())")
                    await db.execute("SELECT 1")
                    raise RuntimeError("the block fails while the connection is gone")
            except (RuntimeError, psycopg.Error):  # the cut may surface inside the block too
                get_logger("test").info("block_failed")

        configure_logging("info", "json")
        asyncio.run(cut(sys.argv[1]))
    """)
    done = subprocess.run([sys.executable, "-c", script, postgres_url], capture_output=True,
                          text=True, timeout=60, env=clean_env(), check=False)
    assert done.returncode == 0, done.stderr
    lines = json_lines(done.stderr)
    warned = [line for line in lines if line["event"] == "library_message"]
    assert [line["component"] for line in warned] == ["psycopg"]
    assert "error ignored terminating" in warned[0]["message"]
    assert lines[-1]["event"] == "block_failed"


def test_a_daemon_whose_connections_are_cut_logs_json_only(
    tmp_path: Path, postgres_url: str, postgres_server: PostgresServer,
) -> None:
    """The database cuts the daemon's connections again and again while it sends: every line
    it writes on stderr is still a JSON object (the driver's warnings included), and the
    campaign still ends with every recipient accepted."""
    sandbox = SandboxProcess(tmp_path / "record.jsonl", "--latency-ms", "50")
    workspace = Workspace(tmp_path / "ws", base_url=sandbox.url, journal_url=postgres_url,
                          sending={"batch_size": 50, "requests_per_second": 10})
    workspace.audience("cut", 2000)
    workspace.write_campaign("cut", utc_seconds_from_now(2), kind="promo", ttl=600)
    daemon = DaemonProcess(workspace, CASCADE_API_KEY=API_KEY).start()
    cut = sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                  " WHERE datname = {}").format(sql.Literal(postgres_url.rsplit("/", 1)[1]))
    try:
        for round_ in range(1, 16):  # after every second batch the API accepted
            poll(lambda r=round_: len(sandbox.record()) >= 100 * r or None, 30,
                 f"batch {2 * round_} to be accepted")
            postgres_server.execute(cut)
        poll(lambda: state(workspace, "cut") == "done" or None, 60, "the campaign to finish",
             step=0.3)
        accepted = {r["trackinId"] for r in sandbox.record()}
        assert accepted == expected_ids("cut", 2000)
        assert daemon.stop() == 0
        lines = json_lines(daemon.stderr())
        assert not [line for line in lines if line["event"] == "campaign_failed"]
    finally:
        daemon.kill()
        sandbox.close()
