"""The series a dupn dashboard shows, defined once for both dashboards.

A :class:`Series` is a small structured expression over the worker's metrics
(:mod:`core.metrics`): a summed rate, a histogram quantile over a rate window, a
summed gauge, or a ratio of two of them. :meth:`Series.promql` renders it as
PromQL for the Grafana export and the alert rules (``ops/dashboards.py``), and
:meth:`Series.spec` gives the same definition as JSON to the live page
(``GET /dashboard``, ``streams/static/dashboard.js``), which evaluates it on the
workers' own ``/metrics`` samples the way Prometheus would (rate = the increase
between the first and the last sample in the window over the time between them,
counter resets handled; Prometheus also extrapolates to the window's edges, which
changes nothing for a steady rate; ``histogram_quantile`` = linear interpolation
inside the bucket holding the rank). So the page and Grafana cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

JOB = "dupn"  # the Prometheus job name of the workers (generated scrape config)

Kind = Literal["rate", "quantile", "sum", "avg", "ratio", "up", "count_by", "deriv"]
# (label, operator, value); operators as in PromQL
Matcher = tuple[str, Literal["=", "!=", "=~", "!~"], str]


@dataclass(frozen=True)
class Series:
    kind: Kind
    metric: str = ""  # base name; ``rate`` adds nothing (pass the ``_total`` name), ``quantile`` adds ``_bucket``
    by: tuple[str, ...] = ()  # grouping labels (the page draws one line per group)
    window: str = "5m"  # rate / quantile / deriv window
    q: float = 0.0  # quantile
    match: tuple[Matcher, ...] = ()
    num: Series | None = None  # ratio: num / clamp_min(den, floor)
    den: Series | None = None
    floor: float = 1e-9

    def promql(self, selector: str = "") -> str:
        """PromQL; ``selector`` (e.g. ``instance=~"$instance"``) is added to every metric's matchers."""
        if self.kind == "ratio":
            assert self.num is not None and self.den is not None
            return f"{self.num.promql(selector)} / clamp_min({self.den.promql(selector)}, {self.floor:g})"
        if self.kind == "up":
            return f"up{{{_join(f'job={_quote(JOB)}', selector)}}}"
        sel = self._selector(selector)
        by = ", ".join(self.by)
        if self.kind == "rate":
            return f"{_agg('sum', by)}(rate({self.metric}{sel}[{self.window}]))"
        if self.kind == "deriv":
            return f"{_agg('sum', by)}(deriv({self.metric}{sel}[{self.window}]))"
        if self.kind == "quantile":
            inner = f"sum by ({', '.join(('le', *self.by))}) (rate({self.metric}_bucket{sel}[{self.window}]))"
            return f"histogram_quantile({self.q:g}, {inner})"
        if self.kind in ("sum", "avg"):
            return f"{_agg(self.kind, by)}({self.metric}{sel})"
        if self.kind == "count_by":
            return f"count by ({by}) ({self.metric}{sel} == 1)"
        raise ValueError(f"unknown series kind {self.kind!r}")

    def _selector(self, extra: str) -> str:
        inner = _join(*(f"{label}{op}{_quote(value)}" for label, op, value in self.match), extra)
        return f"{{{inner}}}" if inner else ""

    def metrics(self) -> set[str]:
        """Base metric names the series reads (the page fetches only these)."""
        if self.kind == "ratio":
            assert self.num is not None and self.den is not None
            return self.num.metrics() | self.den.metrics()
        if self.kind == "quantile":
            return {f"{self.metric}_bucket"}
        return {self.metric} if self.metric else set()

    def spec(self) -> dict[str, Any]:
        """The definition as JSON for the page's evaluator."""
        out: dict[str, Any] = {"kind": self.kind, "promql": self.promql()}
        if self.kind == "ratio":
            assert self.num is not None and self.den is not None
            out.update(num=self.num.spec(), den=self.den.spec(), floor=self.floor)
            return out
        out.update(metric=self.metric, by=list(self.by), window_s=parse_duration(self.window), q=self.q,
                   match=[list(m) for m in self.match])
        if self.kind == "quantile":
            out["metric"] = f"{self.metric}_bucket"
        return out


def _agg(op: str, by: str) -> str:
    return f"{op} by ({by}) " if by else op


def _join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return float(text[:-1]) * units[text[-1]]


def rate(metric: str, by: tuple[str, ...] = (), window: str = "5m", match: tuple[Matcher, ...] = ()) -> Series:
    return Series("rate", metric, by, window, match=match)


def quantile(q: float, metric: str, by: tuple[str, ...] = (), window: str = "5m") -> Series:
    return Series("quantile", metric, by, window, q=q)


def ratio(num: Series, den: Series, floor: float = 1e-9) -> Series:
    return Series("ratio", num=num, den=den, floor=floor)


# -- the series -------------------------------------------------------------------------------
THROUGHPUT = rate("dupn_events_total", ("result",), "1m")
EVENTS_RATE = rate("dupn_events_total", (), "1m")
FRESHNESS_P50 = quantile(0.5, "dupn_event_to_vector_seconds")
FRESHNESS_P99 = quantile(0.99, "dupn_event_to_vector_seconds")
VECTOR_AGE_P50 = quantile(0.5, "dupn_vector_age_seconds", ("source",))
VECTOR_AGE_P99 = quantile(0.99, "dupn_vector_age_seconds", ("source",))
LAG = Series("sum", "dupn_consumer_lag_events", ("topic",))
LAG_TOTAL = Series("sum", "dupn_consumer_lag_events")
# lag in seconds: the events not yet committed over the rate they are consumed at (floored at 1 event/s,
# so a stalled worker shows its lag in events as seconds rather than infinity): the time to drain it
LAG_SECONDS = ratio(LAG_TOTAL, EVENTS_RATE, floor=1.0)
LAG_GROWTH = Series("deriv", "dupn_consumer_lag_events", ("topic",), "10m")
REJECTS = rate("dupn_events_rejected_total", ("reason",))
REJECT_RATIO = ratio(rate("dupn_events_rejected_total"), rate("dupn_events_total"))
ENCODER_P50 = quantile(0.5, "dupn_encoder_step_seconds")
ENCODER_P99 = quantile(0.99, "dupn_encoder_step_seconds")
BATCH_MEAN = ratio(rate("dupn_encoder_batch_size_sum"), rate("dupn_encoder_batch_size_count"), floor=1e-9)
REBUILDS = rate("dupn_encoder_rebuilds_total")
DECODE_ERRORS = rate("dupn_state_decode_errors_total")
STATE_BYTES = Series("avg", "dupn_state_bytes")
USERS = Series("sum", "dupn_users")
MODEL_VERSIONS = Series("count_by", "dupn_model_info", ("model_version",))
WORKERS_UP = Series("sum", "up", match=(("job", "=", JOB),))
WORKER_UP = Series("up")
HTTP_RATE = rate("dupn_http_requests_total", ("route",), "1m")
HTTP_P99 = quantile(0.99, "dupn_http_request_duration_seconds", ("route",))
HTTP_ERROR_SHARE = ratio(rate("dupn_http_requests_total", match=(("status", "=~", "5.."),)),
                         rate("dupn_http_requests_total"))
HTTP_503_SHARE = ratio(rate("dupn_http_requests_total", match=(("status", "=", "503"),)),
                       rate("dupn_http_requests_total"))


@dataclass(frozen=True)
class Line:
    series: Series
    legend: str = ""  # Grafana legend format: ``{{label}}`` for a grouping label


@dataclass(frozen=True)
class Chart:
    """One chart: a Grafana panel, and (``live``) a chart of the worker's own page."""

    key: str
    title: str
    description: str  # what it shows and what a healthy value looks like
    unit: str  # Grafana unit id (the page formats s, ops, short, bytes, percentunit)
    lines: tuple[Line, ...]
    kind: Literal["timeseries", "stat"] = "timeseries"
    width: int = 12
    live: bool = False  # also on GET /dashboard

    def spec(self) -> dict[str, Any]:
        return {
            "key": self.key, "title": self.title, "description": self.description, "unit": self.unit,
            "lines": [{"legend": line.legend, "series": line.series.spec()} for line in self.lines],
        }


CHARTS: tuple[Chart, ...] = (
    Chart("workers_up", "Workers up", "Scraped workers answering /metrics. Healthy: the number you run.", "short",
          (Line(WORKERS_UP, "up"),), "stat", 6),
    Chart("model_version", "Model version", "Workers per served model_version. Healthy: one version, except "
          "briefly during a rollout.", "short", (Line(MODEL_VERSIONS, "{{model_version}}"),), "stat", 6),
    Chart("users", "Users", "Users with state in the table partitions the workers own.", "short",
          (Line(USERS, "users"),), "stat", 6, live=True),
    Chart("state_bytes", "State bytes per user", "Mean encoded user state written in the last batch. Healthy: "
          "≈ 7–8 KiB (incremental R=25), at most ≈ 8.4 KiB.", "bytes", (Line(STATE_BYTES, "bytes"),), "stat", 6),
    Chart("throughput", "Throughput", "Events consumed per second by result. Healthy: applied ≈ the producers' "
          "rate, duplicate and rejected near 0.", "ops", (Line(THROUGHPUT, "{{result}}"),), live=True),
    Chart("freshness", "Freshness: event → vector", "Per applied event: its time (ts) to the broker's "
          "acknowledgement of the vector reflecting it (every event of a batch counts, not one per vector). "
          "Healthy: p50 tens of ms, p99 well under a second; it grows with lag.", "s",
          (Line(FRESHNESS_P50, "p50"), Line(FRESHNESS_P99, "p99")), live=True),
    Chart("lag", "Consumer lag", "Events on the log not yet committed, per source topic. Healthy: near 0 and "
          "flat; a steady climb means the workers are falling behind.", "short", (Line(LAG, "{{topic}}"),),
          live=True),
    Chart("lag_seconds", "Consumer lag, seconds", "The lag (all source topics) over the rate events are "
          "consumed at (floored at 1 event/s): how long the workers need to drain it. Healthy: a few seconds "
          "(commits trail processing by ~3 s).", "s", (Line(LAG_SECONDS, "lag"),), live=True),
    Chart("rejects", "Rejected events", "Events sent to the DLQ per second, by reason. Healthy: 0; any value "
          "points at a producer breaking the contract (see the DLQ headers).", "ops",
          (Line(REJECTS, "{{reason}}"),), live=True),
    Chart("encoder", "Encoder time per batch", "Encoder time (LSTM steps, rebuilds, re-pooling) per batch. "
          "Healthy: ms, rising with batch size; compare with the mean batch.", "s",
          (Line(ENCODER_P50, "p50"), Line(ENCODER_P99, "p99"))),
    Chart("batch", "Mean encoder batch", "Events per encoder batch. Small under light load, up to "
          "DUPN_BATCH_MAX when catching up.", "short", (Line(BATCH_MEAN, "events"),)),
    Chart("rebuilds", "Encoder rebuilds", "LSTM runs rebuilt from stored behaviors per second (re-anchor, exact "
          "mode, cache miss). Healthy (incremental): about 1 per R applied events; more after a restart or "
          "rebalance.", "ops", (Line(REBUILDS, "rebuilds"),), width=6),
    Chart("decode_errors", "State decode errors", "Stored user states that failed to decode per second (each "
          "rebuilt from scratch). Healthy: 0; any value means a corrupt or foreign record in the table.", "ops",
          (Line(DECODE_ERRORS, "errors"),), width=6),
    Chart("vector_age", "Vector age when read", "Age (now − updated_at) of a vector when read: served over "
          "HTTP, or published and read by the purchasing-power agent. Published: under a second; served: how "
          "long users have been idle.", "s",
          (Line(VECTOR_AGE_P50, "p50 {{source}}"), Line(VECTOR_AGE_P99, "p99 {{source}}"))),
    Chart("http_rate", "HTTP requests", "Requests per second by route template (/metrics scrapes included). "
          "Unmatched paths count as route=\"other\".", "reqps", (Line(HTTP_RATE, "{{route}}"),), width=8),
    Chart("http_p99", "HTTP p99 latency", "p99 request time by route template. Healthy: milliseconds; "
          "forwarded user reads add one hop to the owner.", "s", (Line(HTTP_P99, "{{route}}"),), width=8),
    Chart("http_errors", "HTTP error share", "Share of requests answered 5xx, and of 503s alone (no owner "
          "can answer: rebalance, restore, shutdown, dead owner). Healthy: 0 except briefly during a "
          "rebalance.", "percentunit", (Line(HTTP_ERROR_SHARE, "5xx"), Line(HTTP_503_SHARE, "503")), width=8),
)


def live_spec() -> dict[str, Any]:
    """What the page needs: its charts, the metric families they read, and the per-worker table's series."""
    charts = [c.spec() for c in CHARTS if c.live]
    table = (  # label, unit, series
        ("events/s", "ops", EVENTS_RATE), ("freshness p50", "s", FRESHNESS_P50),
        ("freshness p99", "s", FRESHNESS_P99), ("lag (events)", "short", LAG_TOTAL),
        ("lag (s)", "s", LAG_SECONDS), ("rejects/s", "ops", rate("dupn_events_rejected_total", window="1m")),
        ("users", "short", USERS),
    )
    needed: set[str] = set()
    for chart in CHARTS:
        if chart.live:
            for line in chart.lines:
                needed |= line.series.metrics()
    for _, _, series in table:
        needed |= series.metrics()
    return {
        "charts": charts,
        "table": [{"label": label, "unit": unit, "series": series.spec()} for label, unit, series in table],
        "metrics": sorted(needed),
    }
