"""What every benchmark part shares: its configuration, the event stream, a broker, and the clocks."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.settings import Settings
from ops.harness import embedded_broker, isolated_settings, setup_topics


@dataclass(frozen=True)
class BenchConfig:
    """Sizes and durations of one benchmark run; ``quick()`` is the smoke-test size."""

    model_dir: Path
    users: int = 10_000
    events: int = 200_000
    partitions: int = 8
    seed: int = 0
    evicting_users: int | None = None  # None: users // 20 (windows fill and evict); 0: skip that stream
    freshness_rate: float | None = None  # events/s; None: half the measured incremental drain rate
    warmup_s: float = 15.0
    steady_s: float = 45.0
    throughput_reps: int = 3  # ceiling A and the worker's incremental drain, interleaved A, W, A, W, ...
    drain_rate: float | None = None  # sweep: 100 % load in events/s when the worker part does not run
    sweep_loads: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0, 75.0)  # % of the drain rate
    sweep_reps: int = 3  # repetitions of the 10 % and 25 % points (the others run once)
    sweep_model_hop: bool = False  # also run the model hop at every point (ops.bench.sweep)
    sweep_spin_hop: str = ""  # "FIXED_US,PER_EVENT_US": also run the spin hop at every point (ops.bench_apps)
    sweep_warmup_s: float = 5.0
    sweep_steady_s: float = 30.0
    sweep_gap_s: float = 3.0  # rest between points, after the app has drained the previous one
    query_rate: float = 200.0
    query_s: float = 20.0
    ready_timeout_s: float = 180.0
    timeout_s: float = 1800.0
    broker_url: str | None = None  # None: a fresh embedded broker for each part

    @classmethod
    def quick(cls, model_dir: Path, **overrides: Any) -> BenchConfig:
        base: dict[str, Any] = dict(
            users=200, events=2000, evicting_users=0, freshness_rate=300.0, warmup_s=2.0, steady_s=5.0,
            query_s=3.0, timeout_s=300.0, throughput_reps=1, sweep_loads=(5.0, 25.0), sweep_reps=1,
            sweep_warmup_s=1.0, sweep_steady_s=3.0, sweep_gap_s=0.5,
        )
        return cls(model_dir, **{**base, **overrides})

    def describe(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k not in ("model_dir", "broker_url")}
        out["model_dir"] = str(self.model_dir)
        out["sweep_loads"] = list(self.sweep_loads)
        return out


def note(message: str) -> None:
    """Progress on stderr (stdout carries the result)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Stream:
    """One synthetic event stream, pre-serialized once and produced to every part's own topic."""

    events: list[dict[str, Any]]
    pairs: list[tuple[bytes, bytes]] = field(repr=False)
    last_event_id: dict[str, str] = field(repr=False)

    @property
    def users(self) -> int:
        return len(self.last_event_id)

    def __len__(self) -> int:
        return len(self.events)


@functools.lru_cache(maxsize=4)
def make_stream(users: int, events: int, seed: int) -> Stream:
    from ops.replay import synthetic_events

    evs = list(synthetic_events(users, events, seed=seed, live_time=False))
    pairs = [(str(e["user_id"]).encode(), json.dumps(e).encode()) for e in evs]
    last = {str(e["user_id"]): str(e["event_id"]) for e in evs}
    return Stream(evs, pairs, last)


@contextlib.contextmanager
def bench_env(cfg: BenchConfig, name: str, **overrides: Any) -> Iterator[Settings]:
    """Settings with their own topics (created) and home dir, on a fresh embedded broker unless one is given."""
    with tempfile.TemporaryDirectory(prefix=f"dupn-bench-{name}-") as tmp, contextlib.ExitStack() as stack:
        home = Path(tmp)
        url = cfg.broker_url or stack.enter_context(embedded_broker(home / "broker"))
        opts: dict[str, Any] = {"partitions": cfg.partitions, "roles": "vectors", **overrides}
        s = isolated_settings(url, home, cfg.model_dir, **opts)
        setup_topics(s)
        yield s


def produce_pairs(s: Settings, pairs: Sequence[tuple[bytes, bytes]]) -> None:
    from ops.replay import producer

    prod = producer(s)
    try:
        for key, value in pairs:
            prod.send(s.kafka.events_topic, key=key, value=value)
        prod.flush()
    finally:
        prod.close()


def vector_consumer(s: Settings, topic: str | None = None) -> Any:
    """A kafka-python consumer assigned to every partition of ``topic`` (default: vectors), from the start."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=s.kafka.bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=20, max_partition_fetch_bytes=8 << 20, **s.kafka.kafka_client_options(),
    )
    name = topic or s.kafka.vectors_topic
    parts = consumer.partitions_for_topic(name) or set()
    if not parts:
        consumer.close()
        raise RuntimeError(f"topic {name} has no partitions; were the topics created?")
    consumer.assign([TopicPartition(name, p) for p in sorted(parts)])
    return consumer


WORKER_READY = "Worker ready"  # faust/tables/recovery.py, once fetching resumes after an assignment
_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def log_times(log_path: Path, marker: str) -> list[float]:
    """Wall times (epoch s) of the Faust log lines containing ``marker``."""
    return [t for t, _ in log_lines(log_path, marker)]


def log_lines(log_path: Path, marker: str) -> list[tuple[float, str]]:
    """(wall time in epoch s, line) of the Faust log lines containing ``marker``."""
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        m = _STAMP.match(line)
        if m and marker in line:
            out.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(), line))
    return out


def ready_time(log_paths: Sequence[Path], before: float) -> float | None:
    """When the last of these workers became ready (its latest "Worker ready" before ``before``)."""
    latest = []
    for path in log_paths:
        times = [t for t in log_times(path, WORKER_READY) if t <= before]
        if not times:
            return None
        latest.append(times[-1])
    return max(latest)


def worker_metrics(url: str) -> dict[str, float]:
    """The few Prometheus figures a benchmark reads back from a worker (applied events, batch sizes)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "dupn_events_total":
                values[f"events_{sample.labels['result']}"] = sample.value
            elif sample.name in ("dupn_encoder_batch_size_sum", "dupn_encoder_batch_size_count",
                                 "dupn_encoder_step_seconds_sum"):
                values[sample.name.removeprefix("dupn_")] = sample.value
    batches = values.get("encoder_batch_size_count", 0.0)
    if batches:
        values["events_per_batch_mean"] = round(values["encoder_batch_size_sum"] / batches, 1)
    return values


def percentiles_ms(samples: Sequence[float] | np.ndarray, qs: Sequence[float] = (50, 99, 99.9)) -> dict[str, float]:
    """{"p50": ..., "p99": ..., "p999": ...} in ms (NaN-free: empty input raises)."""
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size == 0:
        raise RuntimeError("no samples to take percentiles of")
    return {"p" + f"{q:g}".replace(".", ""): round(float(np.percentile(arr, q)), 2) for q in qs}


def ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
    return round(a / b, digits) if a is not None and b else None
