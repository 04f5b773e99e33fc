"""/metrics, /livez and /readyz of a real daemon, compared with what its journal says."""

from __future__ import annotations

import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from daemon_helpers import (
    API_KEY,
    DaemonProcess,
    SandboxProcess,
    Workspace,
    poll,
    utc_seconds_from_now,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(url: str) -> tuple[int, str]:
    """Status and body of a GET (an HTTP error status is an answer too)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(base: str) -> Samples:
    """Every sample of /metrics, by name and sorted labels."""
    status, text = get(base + "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent, as Prometheus treats a missing counter)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[SandboxProcess]:
    """The sandbox as its own process, with the test key."""
    process = SandboxProcess(tmp_path / "record.jsonl", "--latency-ms", "20")
    try:
        yield process
    finally:
        process.close()


def test_metrics_agree_with_the_journal(tmp_path: Path, sandbox: SandboxProcess) -> None:
    """Counters per outcome, skip reason and API answer match the journal and the batches;
    the present gauges show the campaign done and this daemon the leader; live and ready."""
    base = f"http://127.0.0.1:{free_port()}"
    workspace = Workspace(tmp_path / "ws", base_url=sandbox.url, metrics_listen=base[7:],
                          sending={"batch_size": 50, "requests_per_second": 100})
    workspace.audience("measured", 500, bad_rows=3)
    workspace.write_campaign("measured", utc_seconds_from_now(2))
    daemon = DaemonProcess(workspace, CASCADE_API_KEY=API_KEY).start()
    try:
        assert get(base + "/livez") == (200, "ok\n")
        poll(lambda: workspace.state("measured") == "done", 30, "the campaign")
        samples = scrape(base)
        counts = workspace.counts("measured")
        assert value(samples, "cascade_messages_total", account="default", type="transaction",
                     outcome="sent") == counts["sent"] == 500
        assert value(samples, "cascade_skipped_total", reason="invalid_phone") == 3
        assert value(samples, "cascade_api_requests_total", account="default", route="standard",
                     code="200") == 10
        assert value(samples, "cascade_api_request_duration_seconds_count", account="default",
                     route="standard") == 10
        assert value(samples, "cascade_rate_limit_requests_per_second", account="default") == 100
        assert value(samples, "cascade_credentials_refused", account="default") == 0
        assert value(samples, "cascade_campaigns", state="done") == 1
        assert value(samples, "cascade_leader") == 1
        assert value(samples, "cascade_schedule_lag_seconds_count") == 1
        assert value(samples, "cascade_last_successful_send_timestamp_seconds") > 0
        assert value(samples, "cascade_build_info", version="0.1.0") == 1
        assert not any("+380" in name + str(labels) for name, labels in samples)
        assert get(base + "/readyz") == (200, "ok\n")
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_readyz_fails_while_the_key_is_refused_and_recovers_on_reload(
    tmp_path: Path, sandbox: SandboxProcess,
) -> None:
    """503 with the reason while the API refuses the credentials; 200 after the fix + SIGHUP."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "api-key").write_text("not-the-right-key\n")
    base = f"http://127.0.0.1:{free_port()}"
    workspace = Workspace(tmp_path / "ws", base_url=sandbox.url, metrics_listen=base[7:])
    workspace.audience("keyed", 60)
    workspace.write_campaign("keyed", utc_seconds_from_now(0) - timedelta(seconds=1))
    daemon = DaemonProcess(workspace, CREDENTIALS_DIRECTORY=str(credentials)).start()
    try:
        poll(lambda: workspace.state("keyed") == "failed", 30, "the refusal")
        status, reason = get(base + "/readyz")
        assert status == 503 and "refused the credentials" in reason
        assert "not-the-right-key" not in reason
        (credentials / "api-key").write_text(API_KEY + "\n")
        daemon.signal(signal.SIGHUP)
        poll(lambda: workspace.state("keyed") == "done", 30, "the resumed campaign")
        assert get(base + "/readyz") == (200, "ok\n")
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_labelled_counters_start_at_zero(tmp_path: Path, sandbox: SandboxProcess) -> None:
    """Before anything happened, every labelled counter already has its known series at 0, so
    ``increase()`` counts the first events and an alert on errors reads 0 on a healthy
    daemon, not nothing."""
    from scheduler.vocabulary import DELIVERY_FINAL, OUTCOMES

    base = f"http://127.0.0.1:{free_port()}"
    workspace = Workspace(tmp_path / "ws", base_url=sandbox.url, metrics_listen=base[7:])
    workspace.audience("tomorrow", 10)
    workspace.write_campaign("tomorrow", utc_seconds_from_now(86_400))
    daemon = DaemonProcess(workspace, CASCADE_API_KEY=API_KEY).start()
    try:
        samples = scrape(base)
        assert daemon.stop() == 0
    finally:
        daemon.kill()

    def series(name: str, label: str) -> dict[str, float]:
        return {dict(labels)[label]: count for (found, labels), count in samples.items()
                if found == name and label in dict(labels)}

    messages = {(dict(labels)["type"], dict(labels)["outcome"]): count
                for (name, labels), count in samples.items() if name == "cascade_messages_total"}
    assert set(messages) == {(kind, outcome) for kind in ("transaction", "promo",
                                                          "viber_survey", "flashcall")
                             for outcome in OUTCOMES}
    assert set(messages.values()) == {0.0}
    codes = series("cascade_api_requests_total", "code")
    assert {"200", "400", "401", "429", "500", "503", "no answer"} <= set(codes)
    assert set(codes.values()) == {0.0}
    assert {"standard", "tg-viber"} == set(series("cascade_api_requests_total", "route"))
    assert {"invalid_phone", "duplicate", "suppressed", "frequency_cap"} <= set(
        series("cascade_skipped_total", "reason"))
    assert set(series("cascade_deliveries_total", "status")) == DELIVERY_FINAL
    assert {"sms", "viber", "unknown"} <= set(series("cascade_deliveries_total", "channel"))
    assert "unknown" in series("cascade_cost_total", "currency")
    assert {"final", "unknown", "malformed", "wrong_token"} <= set(
        series("cascade_webhook_reports_total", "result"))
    assert {"200", "404", "429", "error"} <= set(series("cascade_status_requests_total", "code"))
