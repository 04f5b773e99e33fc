"""The sample alert rules and dashboard in contrib/ parse, and name only metrics we export."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from scheduler.metrics import Metrics

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
METRIC = re.compile(r"\bcascade_[a-z_]+")


def exported() -> set[str]:
    """Every sample name a daemon's /metrics can show (histogram and counter parts too)."""
    metrics = Metrics()
    metrics.present.states = lambda: {"running": 1}
    metrics.add_account("default", 20)
    metrics.api_requests.labels("default", "standard", "200").inc()
    metrics.api_duration.labels("default", "standard").observe(0.1)
    metrics.messages.labels("default", "promo", "sent").inc()
    metrics.skips.labels("duplicate").inc()
    text = metrics.exposition().decode()
    return {sample.name for family in text_string_to_metric_families(text)
            for sample in family.samples}


def test_alert_rules_parse_and_use_exported_metrics() -> None:
    """Every rule has a name, an expression and a summary; every metric it names exists."""
    rules = yaml.safe_load((CONTRIB / "prometheus-alerts.yml").read_text("utf-8"))
    found = [rule for group in rules["groups"] for rule in group["rules"]]
    assert {"CascadeNoLeader", "CascadeCampaignStuck", "CascadeBrakeTripped",
            "CascadeHighErrorRate", "CascadeScheduleLag"} <= {rule["alert"] for rule in found}
    names = exported()
    for rule in found:
        assert rule["annotations"]["summary"]
        used = set(METRIC.findall(rule["expr"]))
        assert used and used <= names, (rule["alert"], used - names)


def test_dashboard_parses_and_uses_exported_metrics() -> None:
    """The Grafana JSON loads; every panel query names only exported metrics."""
    dashboard: dict[str, Any] = json.loads(
        (CONTRIB / "grafana-dashboard.json").read_text("utf-8"))
    names = exported()
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(queries) >= 8
    for query in queries:
        used = set(METRIC.findall(query))
        assert used and used <= names, (query, used - names)
