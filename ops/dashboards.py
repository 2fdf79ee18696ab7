"""Every PromQL expression about a dupn worker, once: the Grafana dashboard, the alert rules and the
Prometheus scrape config are all generated from here (``dupn dashboards export``), and the end-to-end
test evaluates exactly these expressions against a real Prometheus scraping a real worker.

An alert is a watched series (:attr:`Alert.expr`), a comparison and a threshold rather than one
opaque string, so a test can check that the series exists while the system is healthy (when the
full rule, rightly, returns nothing).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

JOB = "dupn"  # the Prometheus job name in the generated scrape config
DASHBOARD_UID = "dupn-stream"
DASHBOARD_FILE = "dupn-dashboard.json"
PROMETHEUS_FILE = "prometheus.yml"
ALERTS_FILE = "dupn-alerts.yml"


def _quantile(q: float, histogram: str, by: str = "le", window: str = "5m") -> str:
    return f"histogram_quantile({q}, sum by ({by}) (rate({histogram}_bucket[{window}])))"


# -- the expressions ------------------------------------------------------------------------
THROUGHPUT = "sum by (result) (rate(dupn_events_total[1m]))"
FRESHNESS_P50 = _quantile(0.5, "dupn_event_to_vector_seconds")
FRESHNESS_P99 = _quantile(0.99, "dupn_event_to_vector_seconds")
VECTOR_AGE_P50 = _quantile(0.5, "dupn_vector_age_seconds", by="le, source")
VECTOR_AGE_P99 = _quantile(0.99, "dupn_vector_age_seconds", by="le, source")
LAG = "sum by (topic) (dupn_consumer_lag_events)"
LAG_GROWTH = "sum by (topic) (deriv(dupn_consumer_lag_events[10m]))"
REJECTS = "sum by (reason) (rate(dupn_events_rejected_total[5m]))"
REJECT_RATIO = "sum(rate(dupn_events_rejected_total[5m])) / clamp_min(sum(rate(dupn_events_total[5m])), 1e-9)"
ENCODER_P50 = _quantile(0.5, "dupn_encoder_step_seconds")
ENCODER_P99 = _quantile(0.99, "dupn_encoder_step_seconds")
BATCH_MEAN = "sum(rate(dupn_encoder_batch_size_sum[5m])) / sum(rate(dupn_encoder_batch_size_count[5m]))"
STATE_BYTES = "avg(dupn_state_bytes)"
USERS = "sum(dupn_users)"
MODEL_VERSIONS = "count by (model_version) (dupn_model_info == 1)"
WORKERS_UP = f'sum(up{{job="{JOB}"}})'
WORKER_UP = f'up{{job="{JOB}"}}'


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    description: str  # what it shows and what a healthy value looks like
    unit: str  # Grafana unit id
    queries: tuple[Query, ...]
    kind: Literal["timeseries", "stat"] = "timeseries"
    width: int = 12


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

    @property
    def rule_expr(self) -> str:
        return f"{self.expr} {self.op} {self.threshold:g}"


PANELS: tuple[Panel, ...] = (
    Panel("Workers up", "Scraped workers answering /metrics. Healthy: the number you run.", "short",
          (Query(WORKERS_UP, "up"),), "stat", 6),
    Panel("Model version", "Workers per served model_version. Healthy: one version, except briefly during "
          "a rollout.", "short", (Query(MODEL_VERSIONS, "{{model_version}}"),), "stat", 6),
    Panel("Users", "Users with state in the table partitions the workers own.", "short",
          (Query(USERS, "users"),), "stat", 6),
    Panel("State bytes per user", "Mean encoded user state written in the last batch. Healthy: ≈ 7–8 KiB "
          "(incremental R=25), at most ≈ 8.4 KiB.", "bytes", (Query(STATE_BYTES, "bytes"),), "stat", 6),
    Panel("Throughput", "Events consumed per second by result. Healthy: applied ≈ the producers' rate, "
          "duplicate and rejected near 0.", "ops", (Query(THROUGHPUT, "{{result}}"),)),
    Panel("Freshness: event → vector", "Event time to the vector reflecting it being published. Healthy: p50 "
          "tens of ms, p99 well under a second; it grows with lag.", "s",
          (Query(FRESHNESS_P50, "p50"), Query(FRESHNESS_P99, "p99"))),
    Panel("Consumer lag", "Events on the log not yet committed, per source topic. Healthy: near 0 and "
          "flat; a steady climb means the workers are falling behind.", "short", (Query(LAG, "{{topic}}"),)),
    Panel("Rejected events", "Events sent to the DLQ per second, by reason. Healthy: 0; any value points "
          "at a producer breaking the contract (see the DLQ headers).", "ops", (Query(REJECTS, "{{reason}}"),)),
    Panel("Encoder time per batch", "Encoder time (LSTM steps, rebuilds, re-pooling) per batch. Healthy: "
          "ms, rising with batch size; compare with the mean batch.", "s",
          (Query(ENCODER_P50, "p50"), Query(ENCODER_P99, "p99"))),
    Panel("Mean encoder batch", "Events per encoder batch. Small under light load, up to DUPN_BATCH_MAX "
          "when catching up.", "short", (Query(BATCH_MEAN, "events"),)),
    Panel("Vector age when read", "Age (now − updated_at) of a vector when read: served over HTTP, or "
          "published and read by the purchasing-power agent. Published: under a second; served: how long "
          "users have been idle.", "s",
          (Query(VECTOR_AGE_P50, "p50 {{source}}"), Query(VECTOR_AGE_P99, "p99 {{source}}"))),
)

ALERTS: tuple[Alert, ...] = (
    Alert("DupnFreshnessP99High", FRESHNESS_P99, ">", 5, "10m", "warning",
          "p99 event-to-vector time above 5 s",
          "Vectors reflect events late: check consumer lag, the encoder time and the worker count."),
    Alert("DupnConsumerLagGrowing", LAG_GROWTH, ">", 1, "15m", "warning",
          "consumer lag on {{ $labels.topic }} growing",
          "The workers fall behind the producers: add workers (up to the partition count) or find a slow batch."),
    Alert("DupnRejectsSpiking", REJECT_RATIO, ">", 0.01, "5m", "warning",
          "over 1 % of events rejected to the DLQ",
          "A producer sends events that break the v1 contract; the DLQ headers dupn.reason/dupn.detail say why."),
    Alert("DupnWorkerDown", WORKER_UP, "==", 0, "1m", "critical",
          "worker {{ $labels.instance }} is down",
          "Prometheus cannot scrape the worker's /metrics: it crashed, hangs, or its port changed."),
)


def all_expressions() -> list[str]:
    """Every expression a dashboard panel or an alert evaluates (the test queries each)."""
    exprs = [q.expr for p in PANELS for q in p.queries] + [a.expr for a in ALERTS]
    return list(dict.fromkeys(exprs))


# -- rendering ------------------------------------------------------------------------------
def dashboard_json() -> dict[str, Any]:
    """The Grafana dashboard (grafana-foundation-sdk builders), with a Prometheus datasource variable."""
    from grafana_foundation_sdk.builders import common, prometheus, stat, timeseries
    from grafana_foundation_sdk.builders import dashboard as gd
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models.dashboard import DataSourceRef

    datasource = DataSourceRef(type_val="prometheus", uid="${datasource}")
    board = (
        gd.Dashboard("dupn-stream")
        .uid(DASHBOARD_UID)
        .description("Streaming DUPN user vectors: throughput, freshness, lag, rejects, encoder, state, model")
        .tags(["dupn"])
        .refresh("30s")
        .time("now-1h", "now")
        .with_variable(gd.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
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
        for ref, query in zip("ABCDEFGH", panel.queries, strict=False):
            target = prometheus.Dataquery().expr(query.expr).legend_format(query.legend).ref_id(ref)
            builder = builder.with_target(target.datasource(datasource))
        board = board.with_panel(builder)
    return _to_plain(board.build())


def _to_plain(obj: Any) -> dict[str, Any]:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    return dict(json.loads(json.dumps(obj, cls=JSONEncoder)))


def alert_rules() -> dict[str, Any]:
    """Prometheus rule file: one group, every alert of :data:`ALERTS`."""
    rules = [
        {
            "alert": a.name,
            "expr": a.rule_expr,
            "for": a.for_,
            "labels": {"severity": a.severity},
            "annotations": {"summary": a.summary, "description": a.description},
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
    out_dir: Path, targets: Sequence[str], scrape_interval: str = "15s", token_file: str | None = None
) -> list[Path]:
    """Write the dashboard JSON, prometheus.yml and the alert rules into ``out_dir``; return the paths."""
    import yaml

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        out_dir / DASHBOARD_FILE: json.dumps(dashboard_json(), indent=2) + "\n",
        out_dir / PROMETHEUS_FILE: yaml.safe_dump(scrape_config(targets, scrape_interval, token_file), sort_keys=False),
        out_dir / ALERTS_FILE: yaml.safe_dump(alert_rules(), sort_keys=False, allow_unicode=True),
    }
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return list(files)
