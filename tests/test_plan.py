"""`plan` and `plan --json` (SPEC §9): every campaign's state, audience (valid/skipped), progress
and ETA at the configured rate, from the campaign files and a journal written by the real engine.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Workspace

from scheduler import cli
from scheduler.campaign_run import CampaignRun
from scheduler.config import Config, load_config
from scheduler.journal import JournalLocation, open_journal
from scheduler.loader import load_campaign
from scheduler.planning import PLAN_COLUMNS, plan_rows
from scheduler.service import open_engine

BATCH = 100
RATE = 5  # requests per second: 500 messages a second
NOW = datetime.now(UTC).replace(microsecond=0)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _eta(start: datetime, pending: int) -> str:
    """The expected finish: ``pending`` messages at RATE requests of BATCH messages a second."""
    return _iso(start + timedelta(seconds=pending / (RATE * BATCH)))


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """Six campaigns, one per state: done and running (sent by the engine), scheduled with
    skipped rows, paused, expired before it started, and an invalid file."""
    monkeypatch.delenv("CASCADE_CONFIG", raising=False)
    monkeypatch.delenv("CASCADE_API_KEY", raising=False)
    ws = Workspace(tmp_path, sending={"batch_size": BATCH, "requests_per_second": RATE,
                                      "concurrency": 1})
    for cid, rows, bad in (("a-done", 300, 0), ("b-running", 1000, 0), ("c-scheduled", 1000, 3),
                           ("d-paused", 500, 0), ("f-expired", 50, 0)):
        ws.audience(cid, rows, bad_rows=bad)
    ws.write_campaign("a-done", NOW - timedelta(minutes=2))
    ws.write_campaign("b-running", NOW - timedelta(minutes=1))
    ws.write_campaign("c-scheduled", NOW + timedelta(days=1), kind="promo", ttl=86400)
    ws.write_campaign("d-paused", NOW + timedelta(hours=2), paused=True)
    ws.write_campaign("f-expired", NOW - timedelta(hours=2), ttl=3600)
    (ws.campaigns / "e-broken.toml").write_text('id = "e-broken"\nsendat = 1\n', "utf-8")
    return ws


async def _send(config: Config, cid: str, *, halt_after_first_batch: bool) -> None:
    """Send a campaign with the real engine; optionally stop it after its first batch."""
    campaign = load_campaign(config.paths.campaigns / f"{cid}.toml", config, NOW).campaign
    assert campaign is not None
    async with open_engine(config) as engine:
        record = await engine.prepare(campaign)
        runs: list[CampaignRun] = []
        run = engine.open_run(campaign, record, (lambda _count: runs[0].halt(None))
                              if halt_after_first_batch else None)
        runs.append(run)
        await engine.drive(run)


@pytest.fixture
async def sent(workspace: Workspace) -> Config:
    """The workspace after a-done was sent whole and b-running stopped after one batch."""
    config = load_config(workspace.config)
    await _send(config, "a-done", halt_after_first_batch=False)
    await _send(config, "b-running", halt_after_first_batch=True)
    return config


def _by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["campaign"]: row for row in rows}


def test_plan_rows_every_state(sent: Config, workspace: Workspace) -> None:
    """States, valid/skipped counts, sent so far, the ETA at the configured rate and a note.
    No daemon holds the journal here, so the stopped campaign has no ETA: it says it resumes
    at the next start; a paused one has none either (it would move with every look)."""
    running = workspace.counts("b-running")
    assert 0 < running["sent"] < 1000, "the running campaign did not stop half way"
    rows = plan_rows(sent, NOW)
    assert [tuple(row) for row in rows] == [PLAN_COLUMNS] * len(rows)
    resumes = "not running now: resumes where it stopped when the daemon starts"
    # no delivery reports here: no count of messages awaiting a status
    assert [row.pop("awaiting_status") for row in rows] == [None] * len(rows)
    assert _by_id(rows) == {
        "a-done": {"campaign": "a-done", "type": "transaction", "state": "done",
                   "send_at": _iso(NOW - timedelta(minutes=2)), "valid": 300, "skipped": 0,
                   "sent": 300, "eta": None, "note": ""},
        "b-running": {"campaign": "b-running", "type": "transaction", "state": "running",
                      "send_at": _iso(NOW - timedelta(minutes=1)), "valid": 1000, "skipped": 0,
                      "sent": running["sent"], "eta": None, "note": resumes},
        "c-scheduled": {"campaign": "c-scheduled", "type": "promo", "state": "scheduled",
                        "send_at": _iso(NOW + timedelta(days=1)), "valid": 1000, "skipped": 3,
                        "sent": 0, "eta": _eta(NOW + timedelta(days=1), 1000), "note": ""},
        "d-paused": {"campaign": "d-paused", "type": "transaction", "state": "paused",
                     "send_at": _iso(NOW + timedelta(hours=2)), "valid": 500, "skipped": 0,
                     "sent": 0, "eta": None, "note": "paused: no ETA until paused = false"},
        "e-broken.toml": {"campaign": "e-broken.toml", "type": "", "state": "invalid",
                          "send_at": "", "valid": 0, "skipped": 0, "sent": 0, "eta": None,
                          "note": "run `check` for the errors"},
        "f-expired": {"campaign": "f-expired", "type": "transaction", "state": "expired",
                      "send_at": _iso(NOW - timedelta(hours=2)), "valid": 50, "skipped": 0,
                      "sent": 0, "eta": None, "note": ""},
    }
    order = [row["campaign"] for row in rows]
    assert order == ["f-expired", "a-done", "b-running", "d-paused", "c-scheduled",
                     "e-broken.toml"]


def test_plan_keeps_a_sent_campaign_whose_file_is_gone(sent: Config, workspace: Workspace) -> None:
    """A campaign known only to the journal (its file was removed) is still listed."""
    (workspace.campaigns / "a-done.toml").unlink()
    row = _by_id(plan_rows(sent, NOW))["a-done"]
    assert (row["state"], row["valid"], row["sent"], row["eta"]) == ("done", 300, 300, None)


def test_plan_json_and_table_cli(
    sent: Config, workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    """`plan --json` prints the rows as a JSON array; `plan` prints a table; both exit 0."""
    assert cli.main(["plan", "--json", "--config", str(workspace.config)]) == 0
    rows = _by_id(json.loads(capsys.readouterr().out))
    assert set(rows) == {"a-done", "b-running", "c-scheduled", "d-paused", "e-broken.toml",
                         "f-expired"}
    assert rows["c-scheduled"]["eta"] == _eta(NOW + timedelta(days=1), 1000)
    assert (rows["c-scheduled"]["valid"], rows["c-scheduled"]["skipped"]) == (1000, 3)
    assert rows["b-running"]["state"] == "running"
    assert cli.main(["plan", "--config", str(workspace.config)]) == 0
    table = capsys.readouterr().out
    for cid, state in (("a-done", "done"), ("d-paused", "paused"), ("e-broken", "invalid")):
        line = next(line for line in table.splitlines() if cid in line)
        assert state in line


def test_plan_without_journal(
    workspace: Workspace, capsys: pytest.CaptureFixture[str],
) -> None:
    """No journal at the config's path (the daemon never ran, or runs with another config):
    one line says so; the audiences are counted from the files, and nothing due already is
    shown as unsent: its state is unknown and no row says 0 sent (issue 24, item 4). No
    journal is created."""
    rows = _by_id(plan_rows(load_config(workspace.config), NOW))
    assert {row["sent"] for row in rows.values()} == {None}
    for due in ("a-done", "b-running", "f-expired"):
        assert (rows[due]["state"], rows[due]["eta"]) == ("unknown", None)
        assert rows[due]["note"] == "no journal: cannot tell whether it was sent"
    assert rows["a-done"]["valid"] == 300
    # not due yet: it cannot have gone out; its ETA is the configured rate's
    assert rows["c-scheduled"]["state"] == "scheduled"
    assert rows["c-scheduled"]["eta"] == _eta(NOW + timedelta(days=1), 1000)
    assert cli.main(["plan", "--config", str(workspace.config)]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"no journal at {workspace.journal_path}: nothing was ever sent with this config; if "
        "a daemon sends with another one, pass it with --config (sent is left blank: "
        "unknown, not 0)"]
    assert not workspace.journal_path.exists()


# --- issue 9, item 7: invalid files, the --json fields, shared ETAs, stopped campaigns --------


def test_a_finished_campaign_whose_file_turned_invalid_is_listed_once(
    sent: Config, workspace: Workspace,
) -> None:
    """Its row is the journal's (done, its counts), named by its id, with a note about the
    file: not a second "invalid" row under the file's name."""
    (workspace.campaigns / "a-done.toml").write_text(
        'id = "a-done"\ntype = "promos"\n', "utf-8")
    rows = plan_rows(sent, NOW)
    named = [row for row in rows if row["campaign"].startswith("a-done")]
    assert len(named) == 1, named
    (row,) = named
    assert (row["campaign"], row["type"], row["state"], row["sent"]) == (
        "a-done", "transaction", "done", 300)
    assert "its file is now invalid" in row["note"] and row["eta"] is None


def test_plan_json_eta_is_a_time_or_null(
    sent: Config, workspace: Workspace, capsys: pytest.CaptureFixture[str],
) -> None:
    """`plan --json`: ``eta`` holds a UTC time or null, never advice; advice is in ``note``."""
    assert cli.main(["plan", "--json", "--config", str(workspace.config)]) == 0
    rows = json.loads(capsys.readouterr().out)
    for row in rows:
        assert row["eta"] is None or re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["eta"])
    broken = _by_id(rows)["e-broken.toml"]
    assert (broken["eta"], broken["note"]) == (None, "run `check` for the errors")


def test_campaigns_due_together_share_the_rate(workspace: Workspace) -> None:
    """Three campaigns due at the same time: the transactional one goes first, the two promo
    ones share what is left, as the daemon's one rate limit makes them."""
    due = NOW + timedelta(hours=1)
    for cid, rows, kind in (("p1", 1000, "promo"), ("p2", 1000, "promo"),
                            ("t1", 500, "transaction")):
        workspace.audience(cid, rows)
        workspace.write_campaign(cid, due, kind=kind, ttl=86400 if kind == "promo" else 3600)
    for name in ("a-done", "b-running", "c-scheduled", "d-paused", "f-expired"):
        (workspace.campaigns / f"{name}.toml").unlink()
    rows = _by_id(plan_rows(load_config(workspace.config), NOW))
    per_second = RATE * BATCH  # 500 messages a second
    assert rows["t1"]["eta"] == _iso(due + timedelta(seconds=500 / per_second))
    both = due + timedelta(seconds=(500 + 2000) / per_second)
    assert rows["p1"]["eta"] == rows["p2"]["eta"] == _iso(both)


def test_a_running_campaign_has_an_eta_while_a_daemon_leads(
    sent: Config, workspace: Workspace,
) -> None:
    """With the journal's lease held (a daemon is running), the stopped-half-way campaign is
    really running: it gets an ETA from now and no note."""
    pending = workspace.counts("b-running")["pending"]

    async def check_while_leading() -> dict[str, Any]:
        journal = open_journal(JournalLocation(workspace.journal_path))
        await journal.start(writer=True)
        try:
            epoch = await journal.acquire_lease("host:1:plan", 60)
            assert epoch is not None
            try:
                return _by_id(await asyncio.to_thread(plan_rows, sent, NOW))["b-running"]
            finally:
                await journal.release_lease("host:1:plan", epoch)
        finally:
            await journal.close()

    row = asyncio.run(check_while_leading())
    assert (row["state"], row["note"]) == ("running", "")
    assert row["eta"] == _eta(NOW, pending)


async def test_an_interrupted_send_now_shows_the_time_it_was_sent_at(
    workspace: Workspace,
) -> None:
    """`send --now` of a campaign whose file says tomorrow, interrupted after one batch: the
    plan shows the time it was sent at (the journal's), and that it resumes, not tomorrow."""
    workspace.audience("now", 500)
    workspace.write_campaign("now", NOW + timedelta(days=1))
    config = load_config(workspace.config)
    campaign = load_campaign(workspace.campaigns / "now.toml", config, NOW).campaign
    assert campaign is not None
    campaign = campaign.model_copy(update={"send_at": NOW})  # what `send --now` does
    async with open_engine(config) as engine:
        runs: list[CampaignRun] = []
        run = engine.open_run(campaign, await engine.prepare(campaign),
                              lambda _count: runs[0].halt(None))
        runs.append(run)
        await engine.drive(run)
    row = _by_id(await asyncio.to_thread(plan_rows, config, NOW))["now"]
    assert (row["state"], row["send_at"], row["eta"]) == ("running", _iso(NOW), None)
    assert "resumes" in row["note"]


def test_plan_without_a_campaigns_folder_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Like `check`: a campaigns folder that does not exist is exit 1 and one sentence naming
    it (issue 9, item 17), not an empty plan."""
    monkeypatch.delenv("CASCADE_CONFIG", raising=False)
    config = tmp_path / "config.toml"
    config.write_text('[paths]\ncampaigns = "nowhere"\n', "utf-8")
    assert cli.main(["plan", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err and "no such file or folder" in err


@pytest.mark.parametrize(("poll_rate", "note"), [
    (10, "delivery statuses take 2 min to fill after sending (1,200 polls at 10/s; raise "
         "poll_rate or use the webhook)"),
    (None, None),  # the default keeps up: 1,200 polls at 500/s
])
def test_plan_says_how_long_the_delivery_report_takes_to_fill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, poll_rate: int | None, note: str | None,
) -> None:
    """With status polling on, each campaign's row says how many seconds of polls its report
    needs (``statuses_fill_s``), and the note says it when that is over a minute."""
    monkeypatch.delenv("CASCADE_CONFIG", raising=False)
    reports: dict[str, Any] = {"poll": True} | ({"poll_rate": poll_rate} if poll_rate else {})
    ws = Workspace(tmp_path, sending={"batch_size": BATCH, "requests_per_second": RATE},
                   delivery_reports=reports)
    ws.audience("promo", 1200)
    ws.write_campaign("promo", NOW + timedelta(hours=1))
    (row,) = plan_rows(load_config(ws.config, env={}), NOW)
    assert row["statuses_fill_s"] == (120 if poll_rate else 2)
    assert (row["note"] or None) == note


def test_check_of_a_started_campaign_says_what_the_journal_says(
    sent: Config, workspace: Workspace, capsys: pytest.CaptureFixture[str],
) -> None:
    """`check` of a finished campaign (and of one stopped half way) does not warn "send time
    has passed: the daemon sends at once": it says what the journal knows instead; a campaign
    due that never started keeps the warning (issue 24, item 11)."""
    workspace.audience("g-late", 10)
    workspace.write_campaign("g-late", NOW - timedelta(minutes=5))
    assert cli.main(["check", "--config", str(workspace.config)]) == 1  # e-broken.toml
    out = capsys.readouterr().out
    blocks = {block.split()[1].rsplit("/", 1)[-1]: block
              for block in re.split(r"\n(?=OK|INVALID)", out)}
    done, running = blocks["a-done.toml"], blocks["b-running.toml"]
    assert "send time has passed" not in done + running
    assert "finished in the journal (done, 300 sent): the daemon sends nothing more" in done
    sent_so_far = workspace.counts("b-running")["sent"]
    assert f"started in the journal (running, {sent_so_far:,} sent so far)" in running
    assert "send time has passed: the daemon sends at once" in blocks["g-late.toml"]


def test_campaigns_sharing_a_list_count_it_once_per_way_they_send_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three campaigns on one CSV: the two promo ones (the suppression list applies) read it
    once between them, the transactional one (it does not) on its own; each row says its own
    counts. Then the CSV is replaced: the next plan counts the new one."""
    from scheduler import planning

    workspace = Workspace(tmp_path)
    config_text = workspace.config.read_text("utf-8")
    workspace.config.write_text(config_text.replace("[paths]\n", '[paths]\nsuppression = '
                                                    '"optout.txt"\n'), "utf-8")
    (tmp_path / "optout.txt").write_text("+380500000001\n+380500000002\n", "utf-8")
    workspace.audience("shared", 10, bad_rows=1)
    due = NOW + timedelta(hours=1)
    for cid, kind in (("promo-a", "promo"), ("promo-b", "promo"), ("tx", "transaction")):
        workspace.write_campaign(cid, due, kind=kind, audience="shared", ttl=86400)
    reads: list[str] = []

    def counted(campaign: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(campaign.id)
        return summarize(campaign, *args, **kwargs)

    summarize = planning.summarize
    monkeypatch.setattr(planning, "summarize", counted)
    rows = _by_id(plan_rows(load_config(workspace.config), NOW))
    assert [(rows[c]["valid"], rows[c]["skipped"]) for c in ("promo-a", "promo-b", "tx")] == [
        (8, 3), (8, 3), (10, 1)]
    assert sorted(reads) == ["promo-a", "tx"]
    workspace.audience("shared", 4)
    rows = _by_id(plan_rows(load_config(workspace.config), NOW))
    assert [(rows[c]["valid"], rows[c]["skipped"]) for c in ("promo-a", "promo-b", "tx")] == [
        (2, 2), (2, 2), (4, 0)]


def test_plan_json_loads_no_table_library(workspace: Workspace) -> None:
    """`plan --json` (scripts, the bench) does not import rich, which only draws tables: its
    start-up is part of every `plan`'s time."""
    import subprocess
    import sys

    from tests.helpers import clean_env

    code = ("import sys; from scheduler import cli; "
            f"code = cli.main(['plan', '--json', '--config', {str(workspace.config)!r}]); "
            "print('rich' in sys.modules, file=sys.stderr); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, env=clean_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "False"
    assert json.loads(done.stdout)


@pytest.mark.parametrize(("concurrency", "requests_per_second"), [(None, 100), (4, 20)])
def test_the_eta_follows_the_requests_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, concurrency: int | None,
    requests_per_second: float,
) -> None:
    """SPEC §13.5: unset, the requests in flight follow the round trip and the limit is
    reached; a hard ``concurrency`` of 4 at the assumed 200 ms round trip keeps 20 requests a
    second of the 100 set, and the note says so."""
    monkeypatch.delenv("CASCADE_CONFIG", raising=False)
    ws = Workspace(tmp_path, sending={"batch_size": BATCH, "requests_per_second": 100,
                                      "concurrency": concurrency})
    due = NOW + timedelta(hours=1)
    ws.audience("big", 10_000)
    ws.write_campaign("big", due, kind="promo", ttl=86400)
    row = _by_id(plan_rows(load_config(ws.config), NOW))["big"]
    assert row["eta"] == _iso(due + timedelta(seconds=10_000 / (requests_per_second * BATCH)))
    held = "concurrency = 4 allows 20 requests/s of the 100 set at a 200 ms round trip"
    assert (held in row["note"]) == (concurrency is not None)
