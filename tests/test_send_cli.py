"""`send` end to end: real `python -m scheduler send` subprocesses against a real sandbox.

Covers the exit codes, `--dry-run`, resuming after SIGKILL in both delivery modes (checked
against the sandbox's record of every accepted message) and the rule that no secret reaches any
log, output or the journal file.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from scheduler.sandbox_options import SandboxOptions
from tests.helpers import (
    ThreadSandbox,
    clean_env,
    phone,
    read_jsonl,
    run_cli,
    sandbox_process,
    write_audience,
    write_campaign,
    write_config,
)
from tests.journal_helpers import SyncJournal

CAMPAIGN = "cli-send"


def workspace(root: Path, base_url: str, count: int, **sending: Any) -> tuple[Path, Path]:
    """A config and a ``count``-recipient campaign; returns (config file, campaign file)."""
    config = write_config(root, base_url, **sending)
    write_audience(root / "campaigns" / "people.csv", count,
                   extra_rows=(("not-a-phone", "Broken"),))
    campaign = write_campaign(root / "campaigns", CAMPAIGN, "people.csv")
    return config, campaign


def journal_of(root: Path) -> SyncJournal:
    """The workspace's journal, opened for reading."""
    return SyncJournal(root / "state" / "journal.sqlite3")


def record_lines(path: Path) -> int:
    """How many complete lines the sandbox record holds so far."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("delivery", ["at-least-once", "at-most-once"])
def test_sigkill_mid_campaign_then_resume(tmp_path: Path, delivery: str) -> None:
    """SIGKILL while sending, then `send` again: every recipient final once; duplicates bounded.

    Only batches in flight at the kill may be posted twice; at-most-once posts nothing twice,
    those become in_doubt. A batch stays in flight until its outcomes are journaled, which runs
    beside the worker's next request; the engine's per-campaign window (2 x concurrency + 2
    batches queued, posting or being recorded) bounds how many can be in flight at a kill.
    """
    count, batch_size, concurrency = 4000, 100, 4
    in_flight_bound = (2 * concurrency + 2) * batch_size
    record = tmp_path / "accepted.jsonl"
    with sandbox_process("--latency-ms", "50", "--record", str(record)) as url:
        config, campaign = workspace(
            tmp_path, url, count, batch_size=batch_size, concurrency=concurrency,
            requests_per_second=40, delivery=delivery,
        )
        env = clean_env(CASCADE_API_KEY="cli-key")
        args = [sys.executable, "-m", "scheduler", "send", str(campaign), "--now",
                "--config", str(config)]
        with (tmp_path / "first.out").open("w") as out:
            first = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
            deadline = time.monotonic() + 30
            while record_lines(record) < 1000 and time.monotonic() < deadline:
                assert first.poll() is None, (tmp_path / "first.out").read_text()
                time.sleep(0.005)
            first.send_signal(signal.SIGKILL)
            assert first.wait(10) == -signal.SIGKILL
        with journal_of(tmp_path) as journal:
            assert journal.counts(CAMPAIGN)["pending"] > 0  # the kill really was mid-campaign
        second = run_cli(["send", str(campaign), "--now", "--config", str(config)], env=env)
        assert second.returncode == 0, second.stderr
        assert f"{CAMPAIGN}: done" in second.stdout

    with journal_of(tmp_path) as journal:
        counts = journal.counts(CAMPAIGN)
        rows = list(journal.recipients(CAMPAIGN))
    assert counts["pending"] == 0 and counts["skipped"] == 1
    sent_rows = [row for row in rows if row.outcome == "sent"]
    assert len({row.tracking_id for row in rows if row.outcome != "skipped"}) == count
    recorded = Counter(line["trackinId"] for line in read_jsonl(record))
    twice = {tid for tid, times in recorded.items() if times > 1}
    assert {row.tracking_id for row in sent_rows} <= set(recorded)
    if delivery == "at-least-once":
        assert counts["sent"] == count and set(recorded) == {row.tracking_id for row in rows
                                                            if row.tracking_id}
        assert len(twice) <= in_flight_bound
        assert len(twice) % batch_size == 0  # the sandbox accepts whole batches
        assert max(recorded.values()) <= 2
    else:
        assert not twice
        assert counts["sent"] + counts["in_doubt"] == count
        assert counts["in_doubt"] <= in_flight_bound
        assert counts["in_doubt"] % batch_size == 0  # whole batches were in flight


def logged_outcomes(log: Path) -> Counter[tuple[str, str]]:
    """(tracking_id, status) of every non-skipped message line of the delivery log."""
    return Counter(
        (line["tracking_id"], line["status"]) for line in read_jsonl(log)
        if line["event"] == "message" and line["status"] != "skipped"
    )


def final_count(root: Path) -> int:
    """How many messages have a final outcome in the journal (skipped rows aside)."""
    with journal_of(root) as journal:
        counts = journal.counts(CAMPAIGN)
    return counts["sent"] + counts["rejected"] + counts["expired"] + counts["in_doubt"]


@pytest.mark.timeout(90)
def test_delivery_log_complete_after_sigkill(tmp_path: Path) -> None:
    """A crash after an outcome is journaled but before it is logged must not lose its line.

    The process is frozen (SIGSTOP) until the journal holds outcomes the delivery log lacks,
    then killed right there; after the resume every final outcome has exactly one line
    (SPEC §8: one message event per recipient final outcome).
    """
    record = tmp_path / "accepted.jsonl"
    log = tmp_path / "logs" / "delivery.jsonl"
    with sandbox_process("--latency-ms", "50", "--record", str(record)) as url:
        config, campaign = workspace(tmp_path, url, 6000, batch_size=100, concurrency=4,
                                     requests_per_second=40)
        env = clean_env(CASCADE_API_KEY="cli-key")
        args = [sys.executable, "-m", "scheduler", "send", str(campaign), "--now",
                "--config", str(config)]
        first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env=env)
        caught = False
        while first.poll() is None and record_lines(record) < 300:
            time.sleep(0.005)
        for _ in range(3000):
            first.send_signal(signal.SIGSTOP)
            caught = final_count(tmp_path) > sum(logged_outcomes(log).values())
            if caught or first.poll() is not None:
                break
            first.send_signal(signal.SIGCONT)
            time.sleep(0.001)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = run_cli(["send", str(campaign), "--now", "--config", str(config)], env=env)
        assert second.returncode == 0, second.stderr
    with journal_of(tmp_path) as journal:
        journaled: Counter[tuple[str, str]] = Counter(
            (row.tracking_id, row.outcome) for row in journal.recipients(CAMPAIGN)
            if row.outcome != "skipped"
        )
    assert sum(journaled.values()) == 6000
    lost = journaled - logged_outcomes(log)
    assert not lost, f"{sum(lost.values())} outcomes have no delivery-log line (caught={caught})"
    assert logged_outcomes(log) == journaled


@pytest.mark.timeout(60)
def test_sigterm_finishes_in_flight_then_resume_sends_nothing_twice(tmp_path: Path) -> None:
    """SIGTERM: in-flight batches finish and are recorded, exit 1; the rerun completes, no dups."""
    count = 4000
    with ThreadSandbox(SandboxOptions(api_key="term-key", latency_ms=50)) as server:
        config, campaign = workspace(tmp_path, server.base_url, count, batch_size=100,
                                     concurrency=4, requests_per_second=40)
        env = clean_env(CASCADE_API_KEY="term-key")
        args = [sys.executable, "-m", "scheduler", "send", str(campaign), "--now",
                "--config", str(config)]
        first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env)
        deadline = time.monotonic() + 30
        while len(server.sandbox.accepted) < 500 and time.monotonic() < deadline:
            assert first.poll() is None
            time.sleep(0.005)
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=20)
        assert first.returncode == 1, err
        assert "interrupted: run the same command again" in err
        assert "Traceback" not in out + err
        with journal_of(tmp_path) as journal:
            counts = journal.counts(CAMPAIGN)
            states = {batch.state for batch in journal.open_batches(CAMPAIGN, -1, 100)}
            record = journal.campaign(CAMPAIGN)
        assert states == {"pending"}  # nothing left in flight: a clean stop
        assert 0 < counts["pending"] < count
        assert counts["sent"] == len(server.sandbox.accepted)  # every answer was recorded
        assert record is not None and record.state == "running"

        second = run_cli(["send", str(campaign), "--now", "--config", str(config)], env=env)
        assert second.returncode == 0, second.stderr
        assert len(server.sandbox.accepted) == count
        assert set(server.sandbox.accepted.values()) == {1}
    with journal_of(tmp_path) as journal:
        assert journal.counts(CAMPAIGN)["sent"] == count


@pytest.mark.timeout(60)
def test_no_secret_in_any_log_output_or_journal(tmp_path: Path) -> None:
    """A distinctive key, faults on: it appears in no log, no output and no journal byte."""
    secret = "sk-LEAKCHECK-5e1d7c9a04b2"
    bad = phone(17)
    # one request at a time: the seeded faults then fall on the same requests every run
    with sandbox_process("--api-key", secret, "--fail-rate", "0.2", "--reject-phone", bad,
                         "--seed", "1") as url:
        config, campaign = workspace(tmp_path, url, 300, batch_size=100, concurrency=1,
                                     requests_per_second=100, max_attempts=20)
        result = run_cli(["send", str(campaign), "--now", "--config", str(config)],
                         env=clean_env(CASCADE_API_KEY=secret))
    assert result.returncode == 0, result.stderr
    with journal_of(tmp_path) as journal:
        counts = journal.counts(CAMPAIGN)
    assert (counts["sent"], counts["rejected"], counts["skipped"]) == (299, 1, 1)
    log = tmp_path / "logs" / "delivery.jsonl"
    events = Counter(line["event"] for line in read_jsonl(log))
    assert events["batch_retry"] >= 1 and events["message"] == 301
    files = [log, *sorted((tmp_path / "state").iterdir())]
    assert any(path.name == "journal.sqlite3" for path in files)
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in result.stdout and secret not in result.stderr


def test_dry_run_sends_nothing_then_send_sends(tmp_path: Path) -> None:
    """`--dry-run` shows the first messages and posts nothing; the real `send` then sends all."""
    with ThreadSandbox(SandboxOptions(api_key="dry-key")) as server:
        config, campaign = workspace(tmp_path, server.base_url, 50, batch_size=20)
        env = clean_env(CASCADE_API_KEY="dry-key")
        dry = run_cli(["send", str(campaign), "--dry-run", "--config", str(config)], env=env)
        assert dry.returncode == 0, dry.stderr
        assert server.sandbox.requests == 0
        assert not (tmp_path / "state" / "journal.sqlite3").exists()
        assert "dry run: nothing sent" in dry.stdout
        assert "Hello Name0, your order is on its way" in dry.stdout
        assert "Hello Name2, your order" in dry.stdout and "Name3," not in dry.stdout
        assert phone(0) not in dry.stdout and "+380*****0000" in dry.stdout  # masked
        assert f"{CAMPAIGN}: transaction to 50 recipients" in dry.stdout
        assert "invalid_phone 1: line 52" in dry.stdout and "first 3 messages, " in dry.stdout

        real = run_cli(["send", str(campaign), "--now", "--config", str(config)], env=env)
        assert real.returncode == 0, real.stderr
        assert server.sandbox.requests == 3
        assert len(server.sandbox.accepted) == 50
    assert f"{CAMPAIGN}: done" in real.stdout and "sent 50" in real.stdout
    assert "Traceback" not in real.stderr


def test_refused_credentials_exit_1(tmp_path: Path) -> None:
    """A wrong key: exit 1, one clear sentence, no traceback, the wrong key not echoed."""
    wrong = "sk-WRONG-91ab77"
    with ThreadSandbox(SandboxOptions(api_key="the-right-one")) as server:
        config, campaign = workspace(tmp_path, server.base_url, 40, batch_size=10,
                                     concurrency=2)
        result = run_cli(["send", str(campaign), "--now", "--config", str(config)],
                         env=clean_env(CASCADE_API_KEY=wrong))
        assert server.sandbox.requests <= 2 and not server.sandbox.accepted
    assert result.returncode == 1
    assert "refused the credentials (HTTP 401)" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert f"{CAMPAIGN}: failed" in result.stdout
    assert wrong not in result.stderr + result.stdout
    assert wrong.encode() not in (tmp_path / "logs" / "delivery.jsonl").read_bytes()
    with journal_of(tmp_path) as journal:
        assert journal.counts(CAMPAIGN)["pending"] == 40


def test_missing_credentials_exit_1(tmp_path: Path) -> None:
    """A real base_url and no credential at all: exit 1 naming the variable, no traceback."""
    with ThreadSandbox(SandboxOptions()) as server:
        config, campaign = workspace(tmp_path, server.base_url, 5)
        result = run_cli(["send", str(campaign), "--now", "--config", str(config)])
        assert server.sandbox.requests == 0
    assert result.returncode == 1
    assert "CASCADE_API_KEY" in result.stderr and "Traceback" not in result.stderr


def test_invalid_campaign_file_exit_1(tmp_path: Path) -> None:
    """An invalid campaign file: exit 1, located errors on stderr, nothing sent."""
    with ThreadSandbox(SandboxOptions()) as server:
        config, campaign = workspace(tmp_path, server.base_url, 5)
        text = campaign.read_text("utf-8").replace('type = "transaction"', 'type = "promotion"')
        campaign.write_text(text.replace("ttl = 3600", "ttl = -5"), "utf-8")
        result = run_cli(["send", str(campaign), "--now", "--config", str(config)],
                         env=clean_env(CASCADE_API_KEY="k"))
        assert server.sandbox.requests == 0
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert f"{campaign.name}:3: type:" in result.stderr
    assert f"{campaign.name}:5: ttl:" in result.stderr
    assert not (tmp_path / "state" / "journal.sqlite3").exists()


def test_deadline_already_passed_expires_everything(tmp_path: Path) -> None:
    """send_at + ttl in the past: nothing is posted, every recipient expired, exit 0."""
    with ThreadSandbox(SandboxOptions(api_key="late-key")) as server:
        config = write_config(tmp_path, server.base_url, batch_size=10)
        write_audience(tmp_path / "campaigns" / "people.csv", 25)
        campaign = write_campaign(tmp_path / "campaigns", CAMPAIGN, "people.csv",
                                  send_at=datetime.now(UTC) - timedelta(hours=2), ttl=3600)
        result = run_cli(["send", str(campaign), "--config", str(config)],
                         env=clean_env(CASCADE_API_KEY="late-key"))
        assert server.sandbox.requests == 0
    assert result.returncode == 0, result.stderr
    assert f"{CAMPAIGN}: expired (expired 25)" in result.stdout
    with journal_of(tmp_path) as journal:
        assert journal.counts(CAMPAIGN)["expired"] == 25
        record = journal.campaign(CAMPAIGN)
    assert record is not None and record.state == "expired"


def test_a_snapshot_longer_than_the_lease_does_not_stop_send(tmp_path: Path) -> None:
    """`send --now` renews its lease from the start: with the shortest lease (3 s, the leader
    acts for 2.4 s of it) and a snapshot that takes longer, it still sends everyone."""
    count = 300_000
    with sandbox_process() as url:
        config, campaign = workspace(tmp_path, url, count, batch_size=1000, concurrency=4,
                                     requests_per_second=1000)
        with config.open("a", encoding="utf-8") as extra:
            extra.write("\n[journal]\nlease = 3\n")
        done = run_cli(["send", str(campaign), "--now", "--config", str(config)],
                       env=clean_env(CASCADE_API_KEY="cli-key"), timeout=120)
    assert done.returncode == 0, done.stderr
    with journal_of(tmp_path) as journal:
        assert journal.counts(CAMPAIGN)["sent"] == count


def test_the_embedded_sandbox_takes_its_faults_from_the_config(tmp_path: Path) -> None:
    """``[sandbox] reject_rate = 0.3`` with ``base_url = "sandbox"``: a third of the phones
    are refused and the error brake stops the campaign, no flags needed; a bad value is a
    located config error (issue 24, item 16)."""
    config = write_config(tmp_path, batch_size=50, requests_per_second=1000)
    with config.open("a", encoding="utf-8") as out:
        out.write("[sandbox]\nreject_rate = 0.3\nseed = 7\n")
    write_audience(tmp_path / "campaigns" / "people.csv", 1000)
    campaign = write_campaign(tmp_path / "campaigns", CAMPAIGN, "people.csv")
    result = run_cli(["send", str(campaign), "--now", "--config", str(config)])
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{CAMPAIGN}: braked" in result.stdout and "INVALID_PHONE" in result.stderr
    with journal_of(tmp_path) as journal:
        counts = journal.counts(CAMPAIGN)
    assert counts["rejected"] > 0 and counts["pending"] > 0

    config.write_text(config.read_text("utf-8").replace("reject_rate = 0.3", "fail_rate = 2"),
                      "utf-8")
    checked = run_cli(["check", "--config", str(config)])
    assert checked.returncode == 1
    assert "config.toml:18: sandbox.fail_rate: Input should be less than or equal to 1" in \
        checked.stderr
    config.write_text(config.read_text("utf-8").replace(
        'base_url = "sandbox"', 'base_url = "https://restapi.smsbat.com"').replace(
        "fail_rate = 2", "fail_rate = 0.5"), "utf-8")
    real = run_cli(["check", "--config", str(config)])
    assert real.returncode == 0, real.stdout + real.stderr
    assert 'sandbox: is for the embedded sandbox only (base_url = "sandbox")' in real.stdout
