"""Prometheus metrics of a worker (conventional names, base units)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector

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
EVENT_TO_VECTOR = Histogram(
    "dupn_event_to_vector_seconds",
    "Event time (ts) to the vector that reflects it being published",
    buckets=_FRESHNESS_BUCKETS,
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
