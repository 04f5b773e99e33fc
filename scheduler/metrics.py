"""Prometheus metrics, and the daemon's /metrics, /livez and /readyz on ``[metrics] listen``.

One `Metrics` per process, on its own registry (prometheus-client writes the exposition).
Counters move per request or per batch, never per message (a label-less ``inc(n)`` per batch
costs a microsecond), and no label ever names a recipient or a phone. Gauges that describe
the present (campaigns by state, leader) are read from the daemon at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import get_args

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from scheduler import __version__
from scheduler.campaign import MESSAGE_TYPES
from scheduler.config import Route
from scheduler.vocabulary import (
    CHANNELS,
    DELIVERY_FINAL,
    NO_CHANNEL,
    NO_CURRENCY,
    OUTCOMES,
    SkipReason,
)

LIVE_WITHIN = 10.0  # /livez: the event loop ticked within this many seconds
TICK_EVERY = 1.0
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)
#: label values exported at 0 from the start (any other value appears at its first event):
#: the API's documented answers, and "no answer" (the engine's word for a request that got
#: none: a timeout, a lost connection)
API_CODES = ("200", "400", "401", "429", "500", "502", "503", "504", "no answer")
#: the status API's answers (`dlr.answer_code`: "error" when no answer came)
STATUS_CODES = ("200", "401", "404", "429", "500", "502", "503", "504", "error")
#: what became of webhook reports (`Journal.record_statuses`' results, then per request)
WEBHOOK_RESULTS = ("final", "moved", "unchanged", "unknown", "malformed", "wrong_token")


@dataclass
class Readiness:
    """What /readyz asks: each answers None (fine) or the one-line reason it is not ready."""

    checks: list[Callable[[], str | None]] = field(default_factory=list)

    def reason(self) -> str | None:
        """The first reason not to be ready, or None."""
        for check in self.checks:
            if (problem := check()) is not None:
                return problem
        return None


class _Present(Collector):
    """Gauges computed when scraped: campaigns by state, and whether this process leads."""

    def __init__(self) -> None:
        self.states: Callable[[], Mapping[str, int]] = dict
        self.leading: Callable[[], bool] = lambda: False

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One sample per campaign state this daemon tracks, and the leader flag."""
        campaigns = GaugeMetricFamily(
            "cascade_campaigns", "Campaigns this daemon tracks, by state", labels=["state"],
        )
        for state, count in sorted(self.states().items()):
            campaigns.add_metric([state], count)
        yield campaigns
        yield GaugeMetricFamily(
            "cascade_leader", "1 while this daemon holds the journal's lease and sends",
            value=1 if self.leading() else 0,
        )


class Metrics:
    """Every metric the product exports; hand it to the objects that count."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.present = _Present()
        self.registry.register(self.present)
        self.ticked = time.monotonic()
        r = self.registry
        self.api_requests = Counter(
            "cascade_api_requests", "Requests to the Cascade API by account, route and answer",
            ["account", "route", "code"], registry=r,
        )
        self.api_duration = Histogram(
            "cascade_api_request_duration_seconds", "Time to the API's answer, by account and "
            "route", ["account", "route"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.messages = Counter(
            "cascade_messages", "Recipients' final outcomes, by account and message type",
            ["account", "type", "outcome"], registry=r,
        )
        self.rate_limit = Gauge(
            "cascade_rate_limit_requests_per_second", "Each account's configured rate limit",
            ["account"], registry=r,
        )
        self.credentials_refused = Gauge(
            "cascade_credentials_refused", "1 while the API refuses an account's key (a 401 or "
            "403; its campaigns are failed until a reload brings a key it takes)",
            ["account"], registry=r,
        )
        self.resent = Counter(
            "cascade_resent_messages", "Messages posted again after an ambiguous outcome (a "
            "restart, a takeover, a timeout): each may have reached its recipient twice",
            registry=r,
        )
        self.skips = Counter(
            "cascade_skipped", "Audience rows skipped, by reason", ["reason"], registry=r,
        )
        self.schedule_lag = Histogram(
            "cascade_schedule_lag_seconds", "From a campaign's send_at to its first request",
            buckets=_LAG_BUCKETS, registry=r,
        )
        self.last_send = Gauge(
            "cascade_last_successful_send_timestamp_seconds",
            "When the API last accepted a request (Unix time)", registry=r,
        )
        self.journal_write = Histogram(
            "cascade_journal_write_duration_seconds",
            "Durable journal writes on the send path, as the engine waits for them",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.deliveries = Counter(
            "cascade_deliveries", "Final delivery statuses (SPEC 11.3), by status and channel",
            ["status", "channel"], registry=r,
        )
        self.cost = Counter(
            "cascade_cost", "What delivered messages cost, as the status reports say, by currency",
            ["currency"], registry=r,
        )
        self.webhook_reports = Counter(
            "cascade_webhook_reports", "Delivery reports received by the webhook, by what became "
            "of them (final, moved, unchanged, unknown; malformed and wrong_token per request)",
            ["result"], registry=r,
        )
        self.status_requests = Counter(
            "cascade_status_requests", "Requests to the status API, by answer",
            ["code"], registry=r,
        )
        self.lease_renew_failures = Counter(
            "cascade_lease_renew_failures", "Lease renewals that failed or went unanswered",
            registry=r,
        )
        self.late_answers = Counter(
            "cascade_late_answers", "Messages the API accepted after this daemon had lost the "
            "leadership lease (each a late_answer line: the new leader may send them again)",
            registry=r,
        )
        self.config_errors = Counter(
            "cascade_config_errors", "Campaign files found invalid (each distinct problem once)",
            registry=r,
        )
        self.occurrences = Counter(
            "cascade_series_occurrences", "Occurrences of each series (SPEC 13.1), by what "
            "became of them: fired (on time, or late under the TTL rule), skipped_occurrence "
            "(the previous one still sent), missed (no daemon ran)",
            ["series", "result"], registry=r,
        )
        Info("cascade_build", "The running release", registry=r).info({"version": __version__})
        self._start_at_zero()

    def _start_at_zero(self) -> None:
        """Create every labelled series whose label values are known in advance, at 0: a
        series born at its first event hides that event from ``rate()`` and ``increase()``,
        and an alert on it says nothing (not 0) on a healthy daemon."""
        for reason in get_args(SkipReason):
            self.skips.labels(reason)
        for status in sorted(DELIVERY_FINAL):
            for channel in (*CHANNELS, NO_CHANNEL):
                self.deliveries.labels(status, channel)
        self.cost.labels(NO_CURRENCY)
        for result in WEBHOOK_RESULTS:
            self.webhook_reports.labels(result)
        for code in STATUS_CODES:
            self.status_requests.labels(code)

    def add_account(self, account: str, requests_per_second: float) -> None:
        """Export an account's series at 0 from the start (its requests by route and answer,
        its messages by type and outcome, its 401 flag), and its rate limit."""
        for route in get_args(Route):
            self.api_duration.labels(account, route)
            for code in API_CODES:
                self.api_requests.labels(account, route, code)
        for kind in MESSAGE_TYPES:
            for outcome in OUTCOMES:
                self.messages.labels(account, kind, outcome)
        self.rate_limit.labels(account).set(requests_per_second)
        self.credentials_refused.labels(account).set(0)

    def tick(self) -> None:
        """The event loop is alive (called every `TICK_EVERY` s by the daemon)."""
        self.ticked = time.monotonic()

    def exposition(self) -> bytes:
        """The Prometheus text format of everything."""
        return generate_latest(self.registry)


class HealthServer:
    """/metrics, /livez and /readyz on one aiohttp site (loopback by default)."""

    def __init__(self, metrics: Metrics, readiness: Readiness, host: str, port: int) -> None:
        self.metrics = metrics
        self.readiness = readiness
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen; a port in use raises OSError (the caller names the config key)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _livez(self, _: web.Request) -> web.Response:
        quiet = time.monotonic() - self.metrics.ticked
        if quiet > LIVE_WITHIN:
            return web.Response(status=503, text=f"event loop quiet for {quiet:.0f} s\n")
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        reason = self.readiness.reason()
        if reason is not None:
            return web.Response(status=503, text=reason + "\n")
        return web.Response(text="ok\n")
