"""Every PromQL expression about a dupn worker, once: the Grafana dashboard, the alert rules and the
Prometheus scrape config are all generated from here (``dupn dashboards export``), and the end-to-end
test evaluates exactly these expressions against a real Prometheus scraping a real worker.

The series and charts themselves live in :mod:`core.series`, shared with the worker's live page
(``GET /dashboard``): this module renders them for Grafana (each metric selector narrowed by the
``$instance`` template variable) and adds the alerts.

An alert is a watched series (:attr:`Alert.expr`), a comparison and a threshold rather than one
opaque string, so a test can check that the series exists while the system is healthy (when the
full rule, rightly, returns nothing). Each alert carries its runbook: the steps an on-call engineer
takes, exported as the ``runbook`` annotation beside ``summary`` and ``description``.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from core import series as S
from core.series import CHARTS, JOB, Chart

DASHBOARD_UID = "dupn-stream"
DASHBOARD_FILE = "dupn-dashboard.json"
PROMETHEUS_FILE = "prometheus.yml"
ALERTS_FILE = "dupn-alerts.yml"
INSTANCE_SELECTOR = 'instance=~"$instance"'  # the dashboard's per-instance template variable

# -- the expressions (PromQL of core.series, as Prometheus evaluates them) -------------------
THROUGHPUT = S.THROUGHPUT.promql()
FRESHNESS_P50 = S.FRESHNESS_P50.promql()
FRESHNESS_P99 = S.FRESHNESS_P99.promql()
LAG = S.LAG.promql()
LAG_SECONDS = S.LAG_SECONDS.promql()
LAG_GROWTH = S.LAG_GROWTH.promql()
REJECTS = S.REJECTS.promql()
REJECT_RATIO = S.REJECT_RATIO.promql()
USERS = S.USERS.promql()
WORKERS_UP = S.WORKERS_UP.promql()
WORKER_UP = S.WORKER_UP.promql()
HTTP_ERROR_SHARE = S.HTTP_ERROR_SHARE.promql()

PANELS: tuple[Chart, ...] = CHARTS


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str  # the watched series: returns data whenever workers are scraped
    op: Literal[">", "<", "=="]
    threshold: float
    for_: str
    severity: Literal["warning", "critical"]
    summary: str
    description: str
    runbook: tuple[str, ...]  # the on-call steps, in order

    @property
    def rule_expr(self) -> str:
        return f"{self.expr} {self.op} {self.threshold:g}"

    @property
    def runbook_text(self) -> str:
        return "\n".join(f"{i}. {step}" for i, step in enumerate(self.runbook, 1))


ALERTS: tuple[Alert, ...] = (
    Alert("DupnFreshnessP99High", FRESHNESS_P99, ">", 5, "10m", "warning",
          "p99 event-to-vector time above 5 s",
          "Vectors reflect events late: 1 % of applied events took over {{ $value | humanizeDuration }} from "
          "their ts to the broker's acknowledgement of their vector; rankers see stale users.",
          ("Open the worker dashboard (GET /dashboard on any worker, or Grafana): is the consumer lag growing?",
           "If lag grows: the workers fall behind; see DupnConsumerLagGrowing (add workers up to the "
           "partition count).",
           "If lag is flat: compare the encoder time per batch and the mean batch; a slow host or a larger "
           "model shows there first.",
           "Check the producers' clocks: freshness starts at the event's ts, so a producer whose clock runs "
           "behind (or that sends old events) shows here without any fault of the workers.",
           "To see which stage holds events (fetch, intake queue, encoder hand-off, apply, write, broker "
           "acknowledgement), restart one worker with DUPN_TRACE_STAGES=1 and read dupn_stage_seconds.")),
    Alert("DupnConsumerLagGrowing", LAG_GROWTH, ">", 1, "15m", "warning",
          "consumer lag on {{ $labels.topic }} growing",
          "The workers fall behind the producers on {{ $labels.topic }} by {{ $value | printf \"%.1f\" }} "
          "events/s.",
          ("Check every worker is up (DupnWorkerDown) and not rebalancing in a loop (faust_total_rebalances).",
           "Compare events/s per worker on the dashboard with the producers' rate.",
           "Add workers, up to DUPN_PARTITIONS of them; beyond that more workers stay idle.",
           "If one worker is slow alone, look at its host (CPU steal, disk) and its encoder time.")),
    Alert("DupnRejectsSpiking", REJECT_RATIO, ">", 0.01, "5m", "warning",
          "over 1 % of events rejected to the DLQ",
          "{{ $value | humanizePercentage }} of consumed events break the v1 contract and go to the DLQ.",
          ("See which reason grows on the Rejected events panel (label reason).",
           "Read a few DLQ records: the headers dupn.reason and dupn.detail name the field and the "
           "problem; the value is the producer's original bytes.",
           "Find the producer (the record's key is its user id; check recent deploys) and fix it; the "
           "workers need no action.",
           "Once fixed, replay the DLQ records worth keeping into the events topic (dupn replay).")),
    Alert("DupnWorkerDown", WORKER_UP, "==", 0, "1m", "critical",
          "worker {{ $labels.instance }} is down",
          "Prometheus cannot scrape {{ $labels.instance }}/metrics: the worker crashed, hangs, or its "
          "port changed. Its partitions move to the other workers (standbys take over).",
          ("curl http://{{ $labels.instance }}/healthz: no answer means the process is gone or hung.",
           "Read the worker's log (its last lines before the stop) and restart it (dupn worker); it "
           "restores its table from the changelog.",
           "While it is down, the others serve its partitions after a rebalance; check on the dashboard "
           "that their lag drains.",
           "If it runs but is not scraped: compare DUPN_WEB_PORT with the scrape target and the bearer "
           "token file with DUPN_API_TOKEN.")),
)


def all_expressions() -> list[str]:
    """Every expression a dashboard panel or an alert evaluates (the test queries each)."""
    exprs = [line.series.promql() for p in PANELS for line in p.lines] + [a.expr for a in ALERTS]
    return list(dict.fromkeys(exprs))


def panel_queries(panel: Chart) -> list[tuple[str, str]]:
    """(PromQL as on the Grafana panel, legend) per line of a chart."""
    return [(line.series.promql(INSTANCE_SELECTOR), line.legend) for line in panel.lines]


# -- rendering ------------------------------------------------------------------------------
def dashboard_json() -> dict[str, Any]:
    """The Grafana dashboard (grafana-foundation-sdk builders), with a Prometheus datasource variable."""
    from grafana_foundation_sdk.builders import common, prometheus, stat, timeseries
    from grafana_foundation_sdk.builders import dashboard as gd
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableOption, VariableRefresh

    datasource = DataSourceRef(type_val="prometheus", uid="${datasource}")
    board = (
        gd.Dashboard("dupn-stream")
        .uid(DASHBOARD_UID)
        .description("Streaming DUPN user vectors: throughput, freshness, lag, rejects, encoder, state, model")
        .tags(["dupn"])
        .refresh("30s")
        .time("now-1h", "now")
        .with_variable(gd.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(
            gd.QueryVariable("instance")
            .label("Worker")
            .description("Workers (scrape targets) the panels sum over")
            .datasource(datasource)
            .query(f'label_values(up{{job="{JOB}"}}, instance)')
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(VariableOption(selected=True, text="All", value="$__all"))
        )
    )
    for panel in PANELS:
        builder: Any
        if panel.kind == "timeseries":
            legend = common.VizLegendOptions().show_legend(True).display_mode(cm.LegendDisplayMode.LIST)
            tooltip = common.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI)
            builder = timeseries.Panel().legend(legend.placement(cm.LegendPlacement.BOTTOM)).tooltip(tooltip)
        else:  # the latest value, named by the legend (so a model version shows as text)
            builder = stat.Panel().reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
            builder = builder.text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        builder = builder.title(panel.title).description(panel.description).unit(panel.unit)
        builder = builder.datasource(datasource).span(panel.width).height(8)
        for ref, (expr, legend_format) in zip("ABCDEFGH", panel_queries(panel), strict=False):
            target = prometheus.Dataquery().expr(expr).legend_format(legend_format).ref_id(ref)
            builder = builder.with_target(target.datasource(datasource))
        board = board.with_panel(builder)
    return _to_plain(board.build())


def _to_plain(obj: Any) -> dict[str, Any]:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    return dict(json.loads(json.dumps(obj, cls=JSONEncoder)))


def alert_rules(for_override: Mapping[str, str] | str | None = None) -> dict[str, Any]:
    """Prometheus rule file: one group, every alert of :data:`ALERTS`.

    ``for_override`` replaces the alerts' ``for:`` (one duration for all, or by alert name): the
    end-to-end test makes alerts fire within seconds this way.
    """

    def for_of(a: Alert) -> str:
        if isinstance(for_override, str):
            return for_override
        return (for_override or {}).get(a.name, a.for_)

    rules = [
        {
            "alert": a.name,
            "expr": a.rule_expr,
            "for": for_of(a),
            "labels": {"severity": a.severity},
            "annotations": {"summary": a.summary, "description": a.description, "runbook": a.runbook_text},
        }
        for a in ALERTS
    ]
    return {"groups": [{"name": "dupn", "rules": rules}]}


def scrape_config(
    targets: Sequence[str], scrape_interval: str = "15s", token_file: str | None = None
) -> dict[str, Any]:
    """A complete prometheus.yml: scrape every worker's /metrics, load the alert rules beside it."""
    job: dict[str, Any] = {
        "job_name": JOB,
        "metrics_path": "/metrics",
        "static_configs": [{"targets": list(targets)}],
    }
    if token_file:
        job["authorization"] = {"type": "Bearer", "credentials_file": token_file}
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [ALERTS_FILE],
        "scrape_configs": [job],
    }


def targets_from_urls(worker_urls: str) -> list[str]:
    """``http://host:port`` worker URLs (DUPN_WORKER_URLS) as Prometheus targets."""
    out = []
    for url in worker_urls.split(","):
        parsed = urllib.parse.urlsplit(url.strip())
        if parsed.hostname:
            out.append(f"{parsed.hostname}:{parsed.port or 80}")
    if not out:
        raise ValueError(f"no worker URL in {worker_urls!r}; pass --targets host:port or set DUPN_WORKER_URLS")
    return out


def export(
    out_dir: Path, targets: Sequence[str], scrape_interval: str = "15s", token_file: str | None = None,
    alert_for: Mapping[str, str] | str | None = None,
) -> list[Path]:
    """Write the dashboard JSON, prometheus.yml and the alert rules into ``out_dir``; return the paths."""
    import yaml

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        out_dir / DASHBOARD_FILE: json.dumps(dashboard_json(), indent=2) + "\n",
        out_dir / PROMETHEUS_FILE: yaml.safe_dump(scrape_config(targets, scrape_interval, token_file), sort_keys=False),
        out_dir / ALERTS_FILE: yaml.safe_dump(alert_rules(alert_for), sort_keys=False, allow_unicode=True),
    }
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return list(files)
