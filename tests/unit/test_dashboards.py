"""The generated dashboard, alert rules and scrape config refer only to metrics a worker exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from core import metrics
from ops import dashboards
from ops.cli import main

SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def exported_names() -> set[str]:
    return {m.name for m in metrics.REGISTRY.collect()}


def base_name(series: str) -> str:
    for suffix in SUFFIXES:
        if series.endswith(suffix) and series.removesuffix(suffix) in exported_names():
            return series.removesuffix(suffix)
    return series


@pytest.mark.parametrize("expr", dashboards.all_expressions())
def test_every_expression_names_an_exported_metric(expr: str) -> None:
    names = set(re.findall(r"\b(dupn_[a-z_]+)", expr))
    assert names or 'up{job="dupn"}' in expr
    unknown = {n for n in names if base_name(n) not in exported_names()}
    assert not unknown, f"{expr} refers to metrics no worker exports: {unknown}"


def test_dashboard_has_one_panel_per_definition_with_its_queries() -> None:
    board = dashboards.dashboard_json()
    assert board["uid"] == dashboards.DASHBOARD_UID
    assert [p["title"] for p in board["panels"]] == [p.title for p in dashboards.PANELS]
    for built, panel in zip(board["panels"], dashboards.PANELS, strict=True):
        assert [t["expr"] for t in built["targets"]] == [expr for expr, _ in dashboards.panel_queries(panel)]
        assert [t["legendFormat"] for t in built["targets"]] == [line.legend for line in panel.lines]
        assert built["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert built["fieldConfig"]["defaults"]["unit"] == panel.unit
        assert built["options"], "a panel without options renders with Grafana's bare defaults"
    grid = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in board["panels"]]
    assert len(set(grid)) == len(grid), "panels overlap"


def test_required_panels_are_there() -> None:
    exprs = " ".join(dashboards.all_expressions())
    for metric in ("dupn_events_total", "dupn_event_to_vector_seconds", "dupn_consumer_lag_events",
                   "dupn_events_rejected_total", "dupn_encoder_step_seconds", "dupn_state_bytes",
                   "dupn_model_info", "dupn_users", "dupn_encoder_rebuilds_total", "dupn_state_decode_errors_total",
                   "dupn_http_requests_total", "dupn_http_request_duration_seconds_bucket"):
        assert metric in exprs
    titles = {p.title for p in dashboards.PANELS}
    assert {"Consumer lag, seconds", "Encoder rebuilds", "State decode errors", "HTTP requests", "HTTP p99 latency",
            "HTTP error share"} <= titles
    http_errors = next(p for p in dashboards.PANELS if p.key == "http_errors")
    assert [line.legend for line in http_errors.lines] == ["5xx", "503"]


def test_every_panel_query_is_narrowed_by_the_instance_variable() -> None:
    board = dashboards.dashboard_json()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    instance = variables["instance"]
    assert instance["type"] == "query" and instance["multi"] and instance["includeAll"]
    assert instance["allValue"] == ".*"
    assert instance["query"] == 'label_values(up{job="dupn"}, instance)'
    for panel in board["panels"]:
        for target in panel["targets"]:
            metric_refs = re.findall(r"\b(?:dupn_[a-z_]+|up)\b(?=[{\[ )])", target["expr"])
            assert target["expr"].count('instance=~"$instance"') == len(metric_refs), target["expr"]


def test_alert_rule_is_the_watched_series_compared_to_the_threshold() -> None:
    rules = {r["alert"]: r for r in dashboards.alert_rules()["groups"][0]["rules"]}
    assert set(rules) == {"DupnFreshnessP99High", "DupnConsumerLagGrowing", "DupnRejectsSpiking", "DupnWorkerDown"}
    fresh = rules["DupnFreshnessP99High"]
    assert fresh["expr"] == f"{dashboards.FRESHNESS_P99} > 5"
    assert fresh["labels"]["severity"] == "warning" and fresh["for"] == "10m"


def test_every_alert_has_summary_description_and_numbered_runbook_steps() -> None:
    for rule in dashboards.alert_rules()["groups"][0]["rules"]:
        notes = rule["annotations"]
        assert set(notes) == {"summary", "description", "runbook"}
        steps = notes["runbook"].splitlines()
        assert len(steps) >= 3 and all(step.startswith(f"{i}. ") for i, step in enumerate(steps, 1)), rule["alert"]


def test_for_override_shortens_the_alerts_for_tests() -> None:
    every = {r["alert"]: r["for"] for r in dashboards.alert_rules("2s")["groups"][0]["rules"]}
    assert set(every.values()) == {"2s"}
    one = {r["alert"]: r["for"] for r in dashboards.alert_rules({"DupnWorkerDown": "1s"})["groups"][0]["rules"]}
    assert one["DupnWorkerDown"] == "1s" and one["DupnRejectsSpiking"] == "5m"


def test_targets_from_worker_urls() -> None:
    assert dashboards.targets_from_urls("http://127.0.0.1:6066, http://w2:7000/") == ["127.0.0.1:6066", "w2:7000"]
    with pytest.raises(ValueError, match="--targets"):
        dashboards.targets_from_urls(" ")


def test_export_command_writes_the_three_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dash"
    assert main(["dashboards", "export", "--out", str(out), "--targets", "10.0.0.5:6066",
                 "--token-file", "/etc/dupn/token"]) == 0
    assert capsys.readouterr().out.count("wrote ") == 3
    board = json.loads((out / dashboards.DASHBOARD_FILE).read_text())
    assert len(board["panels"]) == len(dashboards.PANELS)
    prom = yaml.safe_load((out / dashboards.PROMETHEUS_FILE).read_text())
    job = prom["scrape_configs"][0]
    assert job["static_configs"] == [{"targets": ["10.0.0.5:6066"]}]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/etc/dupn/token"}
    assert prom["rule_files"] == [dashboards.ALERTS_FILE]
    assert yaml.safe_load((out / dashboards.ALERTS_FILE).read_text()) == dashboards.alert_rules()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_accepts_config_and_rules(tmp_path: Path) -> None:
    dashboards.export(tmp_path, ["127.0.0.1:6066"])
    done = subprocess.run(["promtool", "check", "config", str(tmp_path / dashboards.PROMETHEUS_FILE)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 rules found" in done.stdout
