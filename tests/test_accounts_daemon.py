"""Several accounts in a real daemon (issue 29, SPEC §13.3): one brand's key revoked while
both brands send stops only that brand's campaign; a reload (SIGHUP) with its new key resumes
it, and every message went once, with its own account's key.

The daemon is ``python -m scheduler run``; the API is the `sandbox` command in its own
process, accepting the keys of a file it re-reads when it changes (so a key is revoked while
the daemon sends), and recording which key sent each message."""

from __future__ import annotations

import signal
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import (
    DaemonProcess,
    SandboxProcess,
    Workspace,
    accepted,
    expected_ids,
    parse_ts,
    poll,
    utc_seconds_from_now,
)
from prometheus_client.parser import text_string_to_metric_families

from scheduler.sandbox import key_id
from tests.helpers import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base: str) -> Samples:
    """Every sample of the daemon's /metrics, by name and sorted labels."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)

KEY_A, KEY_B, KEY_B2 = "brand-a-key-0001", "brand-b-key-0002", "brand-b-key-0003"
ACCOUNTS = """
[[accounts]]
name = "brand-a"
requests_per_second = 10
concurrency = 2

[[accounts]]
name = "brand-b"
requests_per_second = 10
concurrency = 2
"""


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    """The keys the sandbox accepts, one a line (rewritten to revoke one)."""
    path = tmp_path / "accepted-keys"
    path.write_text(f"{KEY_A}\n{KEY_B}\n")
    return path


@pytest.fixture
def sandbox(tmp_path: Path, keys_file: Path) -> Iterator[SandboxProcess]:
    process = SandboxProcess(tmp_path / "record.jsonl", "--latency-ms", "50",
                             "--api-keys-file", str(keys_file))
    try:
        yield process
    finally:
        process.close()


def accounts_workspace(root: Path, base_url: str, metrics: str, **fields: Any) -> Workspace:
    """A workspace whose config has two accounts (and no rate in [sending])."""
    workspace = Workspace(root, base_url=base_url, metrics_listen=metrics, **fields)
    text = workspace.config.read_text()
    text = "\n".join(line for line in text.splitlines()
                     if not line.startswith(("requests_per_second", "concurrency")))
    workspace.config.write_text(text + "\n" + ACCOUNTS)
    return workspace


def write_for(workspace: Workspace, cid: str, account: str, rows: int) -> None:
    workspace.audience(cid, rows)
    text = workspace.campaign_text(cid, utc_seconds_from_now(0) - timedelta(seconds=1),
                                   audience=cid)
    (workspace.campaigns / f"{cid}.toml").write_text(f'account = "{account}"\n' + text)


def test_a_revoked_key_stops_only_its_brand_and_a_reload_resumes_it(
    tmp_path: Path, sandbox: SandboxProcess, keys_file: Path,
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "api-key-brand-a").write_text(KEY_A + "\n")
    (credentials / "api-key-brand-b").write_text(KEY_B + "\n")
    metrics = f"127.0.0.1:{free_port()}"
    workspace = accounts_workspace(tmp_path / "ws", sandbox.url, metrics)
    write_for(workspace, "alpha", "brand-a", 3000)  # ~6 s at 10 requests of 50 a second
    write_for(workspace, "beta", "brand-b", 1500)
    daemon = DaemonProcess(workspace, CREDENTIALS_DIRECTORY=str(credentials))
    try:
        daemon.start()
        # every account's series is there from the start (at 0 until it moves)
        first = scrape(f"http://{metrics}")
        for account, rate in (("brand-a", 10), ("brand-b", 10)):
            assert (("cascade_api_requests_total", (("account", account), ("code", "401"),
                                                    ("route", "tg-viber")))) in first
            assert value(first, "cascade_rate_limit_requests_per_second", account=account) == rate
        poll(lambda: len(accepted(sandbox.record(), "beta")) >= 100, 30, "beta to send")
        keys_file.write_text(f"{KEY_A}\n")  # brand-b's key is revoked
        poll(lambda: workspace.state("beta") == "failed", 30, "beta to fail")
        failed = workspace.events("campaign_failed")
        assert [e["campaign"] for e in failed] == ["beta"]
        assert "CASCADE_API_KEY_BRAND_B" in failed[0]["error"]
        assert 'account "brand-b"' in failed[0]["error"]
        poll(lambda: workspace.state("alpha") == "done", 60, "alpha to finish")
        assert workspace.state("beta") == "failed"  # no reload yet: still stopped
        samples = scrape(f"http://{metrics}")
        assert value(samples, "cascade_credentials_refused", account="brand-b") == 1
        assert value(samples, "cascade_credentials_refused", account="brand-a") == 0
        assert value(samples, "cascade_api_requests_total", account="brand-b",
                     route="standard", code="401") >= 1
        assert value(samples, "cascade_api_requests_total", account="brand-a",
                     route="standard", code="401") == 0
        assert value(samples, "cascade_messages_total", account="brand-a",
                     type="transaction", outcome="sent") == 3000
        # alpha kept sending after beta stopped: one brand's 401 never held the other
        failed_at = parse_ts(failed[0]["timestamp"])
        assert any(parse_ts(line["ts"]) > failed_at for line in sandbox.record()
                   if line["trackinId"].startswith("alpha-"))

        keys_file.write_text(f"{KEY_A}\n{KEY_B2}\n")
        (credentials / "api-key-brand-b").write_text(KEY_B2 + "\n")
        daemon.signal(signal.SIGHUP)
        poll(lambda: workspace.state("beta") == "done", 60, "beta to finish after the reload")
        samples = scrape(f"http://{metrics}")
        assert value(samples, "cascade_credentials_refused", account="brand-b") == 0
        assert value(samples, "cascade_messages_total", account="brand-b",
                     type="transaction", outcome="sent") == 1500
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    record = sandbox.record()
    assert accepted(record, "alpha") == Counter(expected_ids("alpha", 3000))
    assert accepted(record, "beta") == Counter(expected_ids("beta", 1500))
    keys = {cid: Counter(line["key"] for line in record
                         if line["trackinId"].startswith(cid + "-")) for cid in ("alpha", "beta")}
    assert keys["alpha"] == Counter({key_id(KEY_A): 3000})
    assert set(keys["beta"]) == {key_id(KEY_B), key_id(KEY_B2)}
    assert keys["beta"][key_id(KEY_B2)] > 0
    text = workspace.delivery_log.read_text() + daemon.stderr()
    assert not any(key in text for key in (KEY_A, KEY_B, KEY_B2))


def test_statuses_are_asked_with_the_campaigns_own_key_after_its_file_is_gone(
    tmp_path: Path, keys_file: Path,
) -> None:
    """The poller asks about a campaign's messages with the account the journal kept for it,
    not the one its file names now: a file removed after sending (once the default account's
    key: the sandbox, like the API, shows each key only its own messages) still gets its
    statuses, and with brand-b's key."""
    sandbox = SandboxProcess(tmp_path / "record.jsonl", "--api-keys-file", str(keys_file),
                             "--dlr-delay", "0.2", "--undeliverable-rate", "0",
                             "--permanent-error-rate", "0")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "api-key-brand-a").write_text(KEY_A + "\n")
    (credentials / "api-key-brand-b").write_text(KEY_B + "\n")
    workspace = accounts_workspace(
        tmp_path / "ws", sandbox.url, f"127.0.0.1:{free_port()}",
        delivery_reports={"poll": True, "status_url": sandbox.url, "first_poll": 4,
                          "max_interval": 2, "poll_rate": 200})
    write_for(workspace, "beta", "brand-b", 20)
    daemon = DaemonProcess(workspace, CREDENTIALS_DIRECTORY=str(credentials))
    try:
        daemon.start()
        poll(lambda: workspace.state("beta") == "done", 30, "beta to be sent")
        (workspace.campaigns / "beta.toml").unlink()  # before its first poll, 4 s after sending
        poll(lambda: len([line for line in workspace.events("delivery")
                          if line["campaign"] == "beta"]) == 20, 60, "beta's 20 statuses")
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        sandbox.close()
    statuses = Counter(line["status"] for line in workspace.events("delivery"))
    assert statuses == Counter({"delivered": 20})
