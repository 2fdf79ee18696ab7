"""Prometheus metrics of a worker (conventional names, base units)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

REGISTRY = CollectorRegistry(auto_describe=True)
# process_cpu_seconds_total, process_resident_memory_bytes, open fds, start time (Linux /proc), and the
# Python version: what an operator checks first when a worker slows down or grows
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

_FRESHNESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

EVENTS = Counter(
    "dupn_events", "Behavior events consumed, by result (applied|duplicate|rejected)", ["result"],
    registry=REGISTRY,
)
REJECTED = Counter(
    "dupn_events_rejected", "Events sent to the DLQ, by reason code", ["reason"], registry=REGISTRY
)


class BatchHistogram:
    """A Prometheus histogram fed a whole array of observations at once.

    The freshness histogram gets one value per applied event, thousands per batch at drain rate.
    ``prometheus_client``'s ``Histogram.observe`` costs ~1.5 µs each (a lock and a bucket walk per
    value): ~3 ms per 2,000-event batch, measured, on the event loop. Here a batch is one
    ``searchsorted`` + ``bincount`` (~45 µs for 2,000 values). It exposes the same series as a
    ``Histogram`` with the same buckets (``_bucket{le}``, ``_sum``, ``_count``), so dashboards,
    alerts and ``histogram_quantile`` read it unchanged. Optional labels, like ``Histogram.labels``.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        labelnames: Sequence[str] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ValueError(f"{name}: buckets must be distinct and increasing, got {buckets}")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._lock = threading.Lock()
        # per label values: counts per bucket (the last one is +Inf, not cumulative) and the sum
        self._counts: dict[tuple[str, ...], np.ndarray] = {}
        self._sums: dict[tuple[str, ...], float] = {}
        if not self.labelnames:
            self._child(())  # an unlabelled histogram is exported (as zeros) before its first observation
        if registry is not None:
            registry.register(self)

    def _child(self, key: tuple[str, ...]) -> np.ndarray:
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = np.zeros(len(self._bounds) + 1, dtype=np.int64)
            self._sums[key] = 0.0
        return counts

    def observe_many(self, values: np.ndarray | Sequence[float], *labelvalues: str) -> None:
        """Observe every value of ``values`` (seconds), for the given label values (in ``labelnames`` order)."""
        if len(labelvalues) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {labelvalues}")
        arr = np.asarray(values, dtype=np.float64)
        if not arr.size:
            return
        per_bucket = np.bincount(np.searchsorted(self._bounds, arr, side="left"), minlength=len(self._bounds) + 1)
        total = float(arr.sum())
        with self._lock:
            self._child(labelvalues)[:] += per_bucket
            self._sums[labelvalues] += total

    def observe(self, value: float, *labelvalues: str) -> None:
        self.observe_many((value,), *labelvalues)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            children = [(key, counts.cumsum(), self._sums[key]) for key, counts in self._counts.items()]
        for key, cumulative, total in sorted(children):
            les = [*map(floatToGoString, self._bounds), "+Inf"]
            family.add_metric(list(key), list(zip(les, map(int, cumulative), strict=True)), total)
        yield family


EVENT_TO_VECTOR = BatchHistogram(
    "dupn_event_to_vector_seconds",
    "Per applied event: its time (ts) to the broker's acknowledgement of the batch's changelog and vector "
    "records (the vector reflecting it is published)",
    buckets=_FRESHNESS_BUCKETS,
    registry=REGISTRY,
)
STAGE_SECONDS = BatchHistogram(
    "dupn_stage_seconds",
    "Where an event's time goes, with DUPN_TRACE_STAGES=1 only. Per event: fetch (the record's broker timestamp "
    "to the lean intake), queue (intake to its batch taken). Per batch: hop (batch lock and encoder thread "
    "hand-offs), apply, write (local write and produce hand-off), ack (hand-off to the broker's "
    "acknowledgement), inflight (the batch loop waiting for earlier batches' acknowledgements)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    labelnames=("stage",),
    registry=REGISTRY,
)
VECTOR_AGE = Histogram(
    "dupn_vector_age_seconds",
    "Age (now - updated_at) of a vector when a reader gets it: served over HTTP, or read from the "
    "published topic by the purchasing-power agent",
    ["source"],
    buckets=(*_FRESHNESS_BUCKETS, 900, 3600, 21600, 86400),
    registry=REGISTRY,
)
ENCODER_STEP = Histogram(
    "dupn_encoder_step_seconds",
    "Encoder time per batch (steps, rebuilds and re-pooling)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
    registry=REGISTRY,
)
ENCODER_BATCH = Histogram(
    "dupn_encoder_batch_size",
    "Events per encoder batch",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
    registry=REGISTRY,
)
REBUILDS = Counter(
    "dupn_encoder_rebuilds", "LSTM runs rebuilt from stored behaviors (re-anchor, exact, miss)",
    registry=REGISTRY,
)
STATE_BYTES = Gauge("dupn_state_bytes", "Mean encoded bytes of the user states written in the last batch",
                    registry=REGISTRY)
USERS = Gauge("dupn_users", "Users with state in the table partitions this worker owns (counted)",
              registry=REGISTRY)
CONSUMER_LAG = Gauge(
    "dupn_consumer_lag_events",
    "Log-end offset minus committed offset, per assigned partition of a source topic",
    ["topic", "partition"],
    registry=REGISTRY,
)
MODEL_INFO = Gauge("dupn_model_info", "The model this worker serves (value 1)", ["model_version"],
                   registry=REGISTRY)
CORRUPT_STATES = Counter("dupn_state_decode_errors", "Stored user states that failed to decode",
                         registry=REGISTRY)
PPP_SCORED = Counter("dupn_ppp_scored", "Vectors given a purchasing-power level and published", registry=REGISTRY)
PPP_SKIPPED = Counter(
    "dupn_ppp_skipped", "Vectors not scored, by reason (unknown_model_version|bad_message|wrong_vector_size)",
    ["reason"],
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "dupn_http_requests",
    "HTTP requests answered, by route template (\"other\" for unmatched paths) and status code",
    ["route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "dupn_http_request_duration_seconds",
    "Time to answer an HTTP request (forwarding to the owner included), by route template",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
    registry=REGISTRY,
)
HTTP_READS_REFUSED = Counter(
    "dupn_http_reads_refused", "Re-pooling reads (?at, ?query, /explain) answered 429: DUPN_HTTP_MAX_CONCURRENT_READS",
    registry=REGISTRY,
)
