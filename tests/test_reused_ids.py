"""A used campaign id never restarts the old campaign (issue 24, item 1).

A campaign that started and ended (finished, expired, or cancelled by removing its file) keeps
its id: the journal holds what it was (its file's keys and its audience's bytes). Restoring its
file resumes it; ``resume = true`` carries it on from another file; any other file with its id
is an error at `check`, and the daemon and `send` refuse it, sending nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from daemon_helpers import (
    API_KEY,
    DaemonProcess,
    RecordingApi,
    Workspace,
    expected_ids,
    poll,
    utc_seconds_from_now,
    write_atomic,
)

from scheduler.campaign import AudienceSpec, Campaign
from scheduler.config import load_config
from scheduler.identity import reuse_problem
from scheduler.journal import CampaignRecord
from scheduler.loader import content_key, load_campaign
from tests.helpers import read_jsonl, run_cli, write_audience, write_campaign, write_config

SLOW = {"batch_size": 50, "requests_per_second": 10, "concurrency": 2}
SIZE = 2000  # ~4 s at 500 messages/s: removed long before it ends

StartDaemon = Callable[..., DaemonProcess]


@pytest.fixture
def start_daemon() -> Iterator[StartDaemon]:
    """Start daemons (``start_daemon(workspace, **env)``); every one is killed at teardown."""
    started: list[DaemonProcess] = []

    def start(workspace: Workspace, **env: str) -> DaemonProcess:
        daemon = DaemonProcess(workspace, **env)
        started.append(daemon)
        return daemon.start()

    yield start
    for daemon in started:
        daemon.kill()


def _state_is(workspace: Workspace, cid: str, state: str, timeout: float = 20) -> None:
    poll(lambda: workspace.state(cid) == state, timeout, f"{cid} to be {state}")


def test_a_new_file_with_a_cancelled_campaigns_id_sends_nothing_until_the_old_file_returns(
    tmp_path: Path, start_daemon: StartDaemon,
) -> None:
    """The issue's scenario: a campaign cancelled half way (its file removed), then a new file
    with its id, another audience and another text. The daemon refuses the new file with a
    clear line and sends nothing (none of the old campaign, none of the new); `check` exits 1
    saying how to resume or pick a new id. Restoring the old file resumes the old campaign
    where it stopped, each recipient once, all with the old text."""
    with RecordingApi() as api:
        workspace = Workspace(tmp_path, base_url=api.url, sending=dict(SLOW))
        workspace.audience("old", SIZE)
        workspace.audience("new", 30)
        send_at = utc_seconds_from_now(0) - timedelta(seconds=1)
        path = workspace.write_campaign("promo", send_at, audience="old", text="Old {first_name}")
        original = path.read_text("utf-8")
        daemon = start_daemon(workspace, CASCADE_API_KEY=API_KEY)
        poll(lambda: len(api.messages()) >= 200, 20, "sending to be under way")
        path.unlink()
        _state_is(workspace, "promo", "cancelled", timeout=10)
        at_removal = len(api.messages())
        assert at_removal < SIZE, "it finished before the removal: nothing tested"

        later = utc_seconds_from_now(0) - timedelta(seconds=1)
        workspace.write_campaign("promo", later, audience="new", text="New {first_name}")
        refused = poll(lambda: [e for e in workspace.events("campaign_invalid")
                                if e.get("campaign") == "promo"], 10, "the refusal")
        daemon.wait_watching()  # one more reconcile: still nothing launched
        assert len(api.messages()) == at_removal, "the new file restarted a campaign"
        assert not workspace.events("campaign_resumed")
        assert workspace.state("promo") == "cancelled"
        error = refused[0]["errors"][0]
        assert "resume = true" in error and "new id" in error, error

        check = run_cli(["check", "--config", str(workspace.config), str(path)])
        assert check.returncode == 1, check.stdout + check.stderr
        assert "cancelled" in check.stdout + check.stderr
        assert "give it a new id" in check.stdout + check.stderr
        plan = run_cli(["plan", "--json", "--config", str(workspace.config)])
        (row,) = [r for r in orjson.loads(plan.stdout) if r["campaign"] == "promo"]
        assert row["state"] == "cancelled" and "refused" in row["note"], row

        write_atomic(path, original)
        _state_is(workspace, "promo", "done", timeout=30)
        messages = api.messages()
        assert daemon.stop() == 0
    assert Counter(m["id"] for _, m in messages) == Counter(expected_ids("promo", SIZE))
    assert {m["text"].split()[0] for _, m in messages} == {"Old"}


def test_resume_true_carries_a_cancelled_campaign_on_from_another_file(
    tmp_path: Path, start_daemon: StartDaemon,
) -> None:
    """With ``resume = true`` a file that differs from the cancelled campaign's (here: its text)
    carries the campaign on as it was planned: the old text, the old audience, nobody twice."""
    with RecordingApi() as api:
        workspace = Workspace(tmp_path, base_url=api.url, sending=dict(SLOW))
        workspace.audience("promo", SIZE)
        send_at = utc_seconds_from_now(0) - timedelta(seconds=1)
        path = workspace.write_campaign("promo", send_at, text="Old {first_name}")
        daemon = start_daemon(workspace, CASCADE_API_KEY=API_KEY)
        poll(lambda: len(api.messages()) >= 200, 20, "sending to be under way")
        path.unlink()
        _state_is(workspace, "promo", "cancelled", timeout=10)
        assert len(api.messages()) < SIZE, "it finished before the removal: nothing tested"

        edited = workspace.campaign_text("promo", send_at, audience="promo",
                                         text="Edited {first_name}")
        write_atomic(path, "resume = true\n" + edited)
        _state_is(workspace, "promo", "done", timeout=30)
        messages = api.messages()
        assert daemon.stop() == 0
    assert Counter(m["id"] for _, m in messages) == Counter(expected_ids("promo", SIZE))
    assert {m["text"].split()[0] for _, m in messages} == {"Old"}


# ---------------------------------------------------------------- check and send, on a finished id


@pytest.fixture
def finished(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace whose campaign "weekly" was sent to the end by `send --now`: (config, file)."""
    config = write_config(tmp_path, "sandbox")
    write_audience(tmp_path / "campaigns" / "people.csv", 5)
    path = write_campaign(tmp_path / "campaigns", "weekly", "people.csv",
                          text="Week 1 deals, {name}")
    sent = run_cli(["send", "--config", str(config), "--now", str(path)])
    assert sent.returncode == 0, sent.stdout + sent.stderr
    return config, path


def test_check_and_send_refuse_a_new_campaign_under_a_finished_id(
    tmp_path: Path, finished: tuple[Path, Path],
) -> None:
    """Another text under the id of a finished campaign: `check` and `send` say to pick a new
    id (exit 1), and `send` sends nothing."""
    config, path = finished
    record = tmp_path / "state" / "sandbox.jsonl"
    before = len(read_jsonl(record))
    write_campaign(tmp_path / "campaigns", "weekly", "people.csv", text="Week 2 deals, {name}")
    check = run_cli(["check", "--config", str(config), str(path)])
    assert check.returncode == 1, check.stdout + check.stderr
    assert "never sent twice: give this campaign a new id" in check.stdout + check.stderr
    sent = run_cli(["send", "--config", str(config), "--now", str(path)])
    assert sent.returncode == 1, sent.stdout + sent.stderr
    assert "give this campaign a new id" in sent.stderr
    assert "Traceback" not in sent.stderr
    assert len(read_jsonl(record)) == before


def test_a_finished_campaigns_own_file_is_recognised_whatever_its_layout(
    tmp_path: Path, finished: tuple[Path, Path],
) -> None:
    """The finished campaign's own file, rewritten with a comment and ``paused = false``, is
    still that campaign (no error); a changed audience under the same file is only a warning:
    nothing is sent again, and the file may simply have been left in place."""
    config, path = finished
    path.write_text("# sent on Monday\npaused = false\n" + path.read_text("utf-8"), "utf-8")
    check = run_cli(["check", "--config", str(config), str(path)])
    assert check.returncode == 0, check.stdout + check.stderr
    assert "weekly" not in check.stderr

    write_audience(tmp_path / "campaigns" / "people.csv", 7)
    check = run_cli(["check", "--config", str(config), str(path)])
    assert check.returncode == 0, check.stdout + check.stderr
    assert "audience CSV has changed since: it is not sent again" in check.stdout + check.stderr


# ------------------------------------------------------------------------- the rules, one by one


def _campaign(tmp_path: Path, *, resume: bool = False, content: str = "k") -> Campaign:
    file = tmp_path / "c.toml"
    file.write_text('id = "c"\n', "utf-8")
    return Campaign(
        id="c", from_name="Shop", type="promo", send_at=datetime(2026, 12, 1, tzinfo=UTC),
        ttl=86400, text="Hi", audience=AudienceSpec(csv=tmp_path / "a.csv"), file=file,
        fingerprint="f", content=content, resume=resume,
    )


def _record(state: str, content: str | None, *, started: bool = True) -> CampaignRecord:
    moment = datetime(2026, 12, 1, tzinfo=UTC)
    return CampaignRecord(
        id="c", type="promo", file="c.toml", fingerprint="f", state=state,  # type: ignore[arg-type]
        send_at=moment, deadline=moment, recipients=1, skipped=0, batches=1, prepared_at=moment,
        started_at=moment if started else None, finished_at=moment, error=None,
        content=content,
    )


@pytest.mark.parametrize(("state", "stored", "now", "resume", "expected"), [
    ("cancelled", "k/a", "k/a", False, None),  # its own file, restored: resumes
    ("cancelled", "k/a", "x/a", False, "error"),  # another file
    ("cancelled", "k/a", "k/b", False, "error"),  # the same file over another audience
    ("cancelled", "k/a", "x/b", True, "warning"),  # resume = true: carried on as planned
    ("cancelled", None, "k/a", False, "error"),  # an earlier release's: cannot tell
    ("done", "k/a", "x/a", False, "error"),  # a new campaign under a finished id
    ("expired", "k/a", "x/a", True, "warning"),  # nothing left to resume
    ("done", "k/a", "k/b", False, "warning"),  # its own file, its CSV refreshed since
    ("done", None, "k/a", False, "warning"),  # an earlier release's own file, left in place
    ("running", "k/a", "x/b", False, None),  # not ended: an edit, ignored as SPEC §7 says
    ("paused", "k/a", "x/b", False, None),
])
def test_reuse_rules(
    tmp_path: Path, state: str, stored: str | None, now: str, resume: bool,
    expected: str | None,
) -> None:
    """What a file may do with the id of a campaign in each state, by what it is."""
    problem = reuse_problem(_campaign(tmp_path, resume=resume), _record(state, stored), now)
    assert (None if problem is None else problem.severity) == expected, problem


def test_an_id_cancelled_before_it_started_is_free(tmp_path: Path) -> None:
    """A campaign removed before its send time sent nothing: its id takes a new plan."""
    record = _record("cancelled", "k/a", started=False)
    assert reuse_problem(_campaign(tmp_path), record, "x/b") is None


def test_content_key_ignores_layout_paused_and_resume_but_not_what_is_sent(
    tmp_path: Path,
) -> None:
    """Comments, spacing, key order, ``paused`` and ``resume`` leave the campaign the same;
    the text (or any other key) makes it another one."""
    config = load_config(write_config(tmp_path), env={})
    write_audience(tmp_path / "campaigns" / "people.csv", 3)
    now = datetime.now(UTC)
    at = now + timedelta(days=1)
    base = write_campaign(tmp_path / "campaigns", "k", "people.csv", send_at=at)
    first = load_campaign(base, config, now).campaign
    assert first is not None
    text = base.read_text("utf-8")
    lines = text.splitlines()
    base.write_text("# moved\n" + "\n".join([lines[1], lines[0], *lines[2:]]) + "\n", "utf-8")
    base.write_text("paused = true\nresume = true\n" + base.read_text("utf-8"), "utf-8")
    second = load_campaign(base, config, now).campaign
    assert second is not None and second.content == first.content
    base.write_text(text.replace("Hello", "Hi"), "utf-8")
    third = load_campaign(base, config, now).campaign
    assert third is not None and third.content != first.content
    assert content_key({"id": "k", "paused": True}) == content_key({"id": "k"})
