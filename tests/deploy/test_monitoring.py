"""Alert rules and the Grafana dashboard parse as PromQL and use the worker's metric names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import COMPOSE, DEPLOY, load_yaml, require_module

METRICS = {
    "syncworker_messages_total",
    "syncworker_handler_seconds_bucket",
    "syncworker_end_to_end_seconds_bucket",
    "syncworker_inflight",
    "syncworker_reclaimed_total",
    "syncworker_group_lag",
    "syncworker_group_pending",
    "syncworker_dead_letter_length",
    "syncworker_redis_errors_total",
    "syncworker_redis_unsafe",
}
"""The series the operations work exports (its issue lists them), plus the Redis safety gauge."""

OUTBOX_METRICS = {
    "syncworker_outbox_pending_rows",
    "syncworker_outbox_relay_lag_seconds",
    "syncworker_outbox_published_total",
    "syncworker_outbox_publish_errors_total",
    "syncworker_outbox_database_errors_total",
    "syncworker_outbox_leader",
}
"""The series `syncworker outbox run` exports (worker.outbox.stats)."""

EXPORTERS = ("worker.ops.metrics", "worker.outbox.stats")
"""The modules that define every series a worker or relay exports."""

OUTCOMES = {"ok", "retry", "dead_letter"}

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "syncworker.json"
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$group": ".*",
    "$stream": ".*",
}


def parse_promql(expr: str) -> None:
    require_module("promql_parser")
    import promql_parser

    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    try:
        promql_parser.parse(expr)
    except ValueError as exc:
        pytest.fail(f"invalid PromQL ({exc}): {expr}")


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bsyncworker_[a-z_]+\b", expr))


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> dict[str, list[str]]:
    return {
        panel["title"]: [t["expr"] for t in panel["targets"]] for panel in dashboard()["panels"]
    }


class TestAlerts:
    def test_each_alert_parses_and_uses_known_metrics(self) -> None:
        """Every alert expression is valid PromQL over series the workers export."""
        for rule in alert_rules():
            parse_promql(rule["expr"])
            names = metric_names(rule["expr"])
            assert names, rule["alert"]
            known = METRICS | OUTBOX_METRICS
            assert names <= known, f"{rule['alert']}: unknown {names - known}"
            for outcome in re.findall(r'outcome=~?"([^"]+)"', rule["expr"]):
                assert set(outcome.split("|")) <= OUTCOMES

    def test_the_four_required_alerts_exist_with_runbooks(self) -> None:
        """Lag growing, dead letters, no progress and Redis errors each have a runbook section."""
        rules = {rule["alert"]: rule for rule in alert_rules()}
        assert {
            "SyncworkerLagGrowing",
            "SyncworkerDeadLetters",
            "SyncworkerNoProgress",
            "SyncworkerRedisErrors",
        } <= set(rules)
        guide = (DEPLOY.parent / "docs" / "operations.md").read_text()
        anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", guide, flags=re.M)}
        for name, rule in rules.items():
            assert rule["labels"]["severity"] in {"info", "warning", "critical"}
            target = rule["annotations"]["runbook"]
            assert target.startswith("docs/operations.md#"), name
            assert target.partition("#")[2] in anchors, f"{name}: no section {target}"

    def test_outbox_relay_lag_alert(self) -> None:
        """An alert fires on the outbox relay's lag, per table, combining relays with max."""
        rules = {rule["alert"]: rule for rule in alert_rules()}
        expr = rules["SyncworkerOutboxLag"]["expr"]
        assert "max by (table) (syncworker_outbox_relay_lag_seconds)" in expr

    def test_group_gauges_are_combined_with_max(self) -> None:
        """Gauges every replica reports alike are never summed across replicas."""
        group_gauges = (
            "syncworker_group_lag",
            "syncworker_group_pending",
            "syncworker_dead_letter_length",
        )
        exprs = [r["expr"] for r in alert_rules()] + [
            e for exprs in dashboard_exprs().values() for e in exprs
        ]
        for expr in exprs:
            for gauge in group_gauges:
                summed = rf"sum\s*(?:(?:by|without)\s*\([^)]*\)\s*)?\(\s*{gauge}\b"
                assert not re.search(summed, expr), expr


class TestDashboard:
    def test_each_panel_parses_and_uses_known_metrics(self) -> None:
        """Every panel query is valid PromQL over series the workers export."""
        for title, exprs in dashboard_exprs().items():
            assert exprs, title
            for expr in exprs:
                parse_promql(expr)
                unknown = metric_names(expr) - METRICS - OUTBOX_METRICS
                assert not unknown, f"{title}: {unknown}"

    def test_shows_what_operators_need(self) -> None:
        """Throughput by outcome, latency percentiles, lag, pending, dead letters and in-flight."""
        exprs = " ".join(e for exprs in dashboard_exprs().values() for e in exprs)
        assert "sum by (outcome) (rate(syncworker_messages_total" in exprs
        histograms = ("syncworker_handler_seconds_bucket", "syncworker_end_to_end_seconds_bucket")
        for histogram in histograms:
            for q in ("0.5", "0.95", "0.99"):
                assert f"histogram_quantile({q}, sum by (le" in exprs and histogram in exprs
        for series in (
            "syncworker_group_lag",
            "syncworker_group_pending",
            "syncworker_dead_letter_length",
            "syncworker_inflight",
        ):
            assert series in exprs

    def test_shows_the_outbox_relay(self) -> None:
        """Pending rows, relay lag and publish errors of the outbox relay each have a panel."""
        exprs = dashboard_exprs()
        for series in (
            "syncworker_outbox_pending_rows",
            "syncworker_outbox_relay_lag_seconds",
            "syncworker_outbox_publish_errors_total",
        ):
            assert [t for t, e in exprs.items() if any(series in x for x in e)], series

    def test_panels_use_the_datasource_variable_and_do_not_overlap(self) -> None:
        """Panels query the ${datasource} variable and sit on distinct grid cells."""
        board = dashboard()
        assert board["uid"] == "syncworker"
        variables = {v["name"] for v in board["templating"]["list"]}
        assert {"datasource", "group", "stream"} <= variables
        cells: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}"
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                    cells.add((x, y))

    def test_grafana_provisioning_matches_the_compose_mounts(self) -> None:
        """Grafana loads the dashboard directory and data source that compose mounts."""
        grafana = load_yaml(COMPOSE)["services"]["grafana"]
        mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
        provisioning = DEPLOY / "grafana" / "provisioning"
        providers = load_yaml(provisioning / "dashboards" / "syncworker.yaml")
        (provider,) = providers["providers"]
        assert mounts["./grafana/dashboards"] == provider["options"]["path"]
        assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
        home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        assert home == provider["options"]["path"] + "/" + DASHBOARD.name
        sources = load_yaml(provisioning / "datasources" / "prometheus.yaml")
        (source,) = sources["datasources"]
        assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


class TestExportedNames:
    def test_every_queried_metric_is_exported(self) -> None:
        """Each series the alerts and dashboard query is defined in worker.ops.metrics (a
        worker's) or worker.outbox.stats (the outbox relay's)."""
        import importlib.util

        source = ""
        for module in EXPORTERS:
            spec = importlib.util.find_spec(module)
            assert spec is not None and spec.origin is not None
            source += Path(spec.origin).read_text()
        exprs = [r["expr"] for r in alert_rules()] + [
            e for exprs in dashboard_exprs().values() for e in exprs
        ]
        used = {re.sub(r"_(bucket|sum|count)$", "", n) for e in exprs for n in metric_names(e)}
        missing = {name for name in used if f'"{name}"' not in source}
        assert not missing, f"queried but not exported by {EXPORTERS}: {sorted(missing)}"
