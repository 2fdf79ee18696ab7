"""Paced load through the worker, the floor hop or the model hop, measured per event by an independent reader.

One process set (a fresh broker, the app under test, the reader) runs a sequence of
load points: each point sends its events on schedule (``ts`` = the moment each is
sent), then waits until the app has taken every event sent so far, then rests a
gap, so no point inherits another's backlog. Starting the app once per set instead
of once per point saves a group join (8–10 s) per point; what carries over between
points is only the users' stored state (longer windows), not queueing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.settings import Settings
from ops.bench.common import BenchConfig, Stream, bench_env, note, ratio, worker_metrics
from ops.bench.perevent import ReceivedVectors, SentEvents, cpu_times, freshness_summary, idle_percent
from ops.harness import running_worker, worker_env

PROBE_ARGV = ("-m", "ops.bench_apps", "latency-probe")
HOP_ARGV = ("-m", "ops.bench_apps", "hop")
MODEL_HOP_ARGV = ("-m", "ops.bench_apps", "model-hop")
APPS = ("worker", "floor", "spin-hop", "model-hop")  # what a point set runs: the worker under test or a control
TICK_S = 0.005
HOP_PATH = (
    "aiokafka consume -> orjson.loads -> produce a vector message of zeros in the worker's encoding per user per "
    "fetched batch, events_seen = the user's events consumed so far (ops.bench_apps hop)"
)
SPIN_HOP_PATH = (
    "the floor hop holding its event loop in a busy wait of FIXED + PER_EVENT × events µs per fetched batch "
    "before producing (ops.bench_apps hop --spin-us): the model hop's CPU time in line, without the model"
)
MODEL_HOP_PATH = (
    "the floor's aiokafka consume -> produce, with the worker's VectorUpdater.apply in line on each fetched batch "
    "and the states kept encoded in memory: the worker's model and state work without Faust, its consumer "
    "thread, RocksDB or the changelog (ops.bench_apps model-hop)"
)


@dataclass(frozen=True)
class Timing:
    """How long each point runs: a warm-up (not measured), the steady window, and a rest after draining."""

    warmup_s: float
    steady_s: float
    gap_s: float = 0.0


class EventSource:
    """The stream's events as send templates, cycled as long as a run needs, with each user's running index.

    A template holds the event's JSON up to inside its ``event_id`` value; each pass
    over the stream after the first appends ``~<pass>`` to the id (the worker skips
    a repeated id) and every send appends the live ``ts``.
    """

    def __init__(self, stream: Stream) -> None:
        codes: dict[str, int] = {}
        self.keys: list[bytes] = []
        self.heads: list[bytes] = []
        users = []
        for ev in stream.events:
            user = str(ev["user_id"])
            users.append(codes.setdefault(user, len(codes)))
            body = {k: v for k, v in ev.items() if k not in ("event_id", "ts")}
            self.keys.append(user.encode())
            event_id = json.dumps(ev["event_id"]).encode()[:-1]  # open: a pass suffix may follow
            self.heads.append(json.dumps(body).encode()[:-1] + b', "event_id": ' + event_id)
        self.code_of = codes
        self.user = np.asarray(users, dtype=np.int64)
        self.counts = np.zeros(len(codes), dtype=np.int64)  # events sent so far per user
        self.cursor = 0

    def value(self, i: int, ts_ms: int) -> bytes:
        cycle = i // len(self.heads)
        suffix = b'", "ts": ' if not cycle else b"~%d\", \"ts\": " % cycle
        return self.heads[i % len(self.heads)] + suffix + b"%d}" % ts_ms


@dataclass(frozen=True)
class PointLog:
    """What one paced point sent: every event's user, index and ts, and how well the schedule was kept."""

    sent: SentEvents
    target: float
    start_ms: int
    steady_from_ms: int
    steady_sent: int
    steady_seconds: float
    max_behind_s: float
    idle_cpu_percent: float | None

    def to_json(self) -> dict[str, Any]:
        achieved = self.steady_sent / self.steady_seconds
        return {
            "target_events_per_s": round(self.target, 1),
            "achieved_events_per_s": round(achieved, 1),
            "achieved_over_target": ratio(achieved, self.target, 3),
            "producer_max_behind_ms": round(self.max_behind_s * 1000, 1),
            "steady_s": round(self.steady_seconds, 1),
            "events_sent": len(self.sent.user),
            "idle_cpu_percent": self.idle_cpu_percent,
        }


def run_point_set(
    cfg: BenchConfig, source: EventSource, rates: Sequence[float], timing: Timing, app: str
) -> list[dict[str, Any]]:
    """Every rate in order through one ``app`` (:data:`APPS`); per point: per-event freshness of its steady window."""
    if app not in APPS:
        raise ValueError(f"a paced app is one of {APPS}; got {app!r}")
    worker = app == "worker"
    logs: list[PointLog] = []
    with bench_env(cfg, f"{app}-paced") as s, _app(cfg, s, app):
        probe, out = _start_probe(s)
        try:
            for i, rate in enumerate(rates):
                note(f"{app}: point {i + 1}/{len(rates)} at {rate:.0f} events/s")
                logs.append(asyncio.run(_paced(s, source, rate, timing)))
                _wait_taken(s, int(source.counts.sum()), app, timeout_s=max(60.0, timing.steady_s))
                time.sleep(1.0 + timing.gap_s)  # the reader's last fetches, then the rest between points
            metrics = worker_metrics(s.http.web_url) if worker else {}
        finally:
            probe.terminate()
            probe.wait(timeout=120)
        received = _load_probe(out, source.code_of)
    results = []
    for log in logs:
        steady = log.sent.select(log.sent.ts_ms >= log.steady_from_ms)
        results.append({**log.to_json(), **freshness_summary(steady, received)})
    if worker and results:
        results[-1]["worker_events_per_batch_mean_all_points"] = metrics.get("events_per_batch_mean")
    return results


@contextlib.contextmanager
def _app(cfg: BenchConfig, s: Settings, app: str) -> Iterator[None]:
    if app == "worker":
        with running_worker(s, "worker", cfg.ready_timeout_s):
            yield
        return
    proc = start_ready_process(s, app_argv(cfg, app), app)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def app_argv(cfg: BenchConfig, app: str) -> tuple[str, ...]:
    """The control ``app``'s command line (every app but the worker)."""
    if app == "model-hop":
        return MODEL_HOP_ARGV
    if app == "spin-hop":
        if not cfg.sweep_spin_hop:
            raise ValueError("the spin hop needs its busy wait: BenchConfig.sweep_spin_hop = 'FIXED_US,PER_EVENT_US'")
        return (*HOP_ARGV, "--spin-us", cfg.sweep_spin_hop)
    return HOP_ARGV


def _start_probe(s: Settings) -> tuple[subprocess.Popen[bytes], Path]:
    out = s.home_path / "latency-probe.npz"
    return start_ready_process(s, (*PROBE_ARGV, "--out", str(out)), "latency-probe"), out


def start_ready_process(s: Settings, argv: Sequence[str], name: str) -> subprocess.Popen[bytes]:
    """A bench app that prints ``ready`` on stdout once it is assigned its partitions."""
    with open(s.home_path / f"{name}.log", "wb") as log:  # the child holds its own copy of the fd
        proc = subprocess.Popen([sys.executable, *argv], env=worker_env(s), stdout=subprocess.PIPE, stderr=log)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        proc.kill()
        raise RuntimeError(f"{name} did not start; see {s.home_path / f'{name}.log'}")
    return proc


def _load_probe(path: Path, code_of: dict[str, int]) -> ReceivedVectors:
    """The reader's rows with its user names mapped to the sender's codes (unknown users dropped)."""
    with np.load(path) as data:
        names, cols = data["users"], {k: data[k] for k in ("user", "events_seen", "receive_ms", "updated_ms")}
    mapping = np.asarray([code_of.get(str(n), -1) for n in names], dtype=np.int64)
    user = mapping[cols["user"]] if len(mapping) else np.zeros(0, dtype=np.int64)
    keep = user >= 0
    return ReceivedVectors(user[keep], cols["events_seen"][keep], cols["receive_ms"][keep], cols["updated_ms"][keep])


def _proc_stat() -> tuple[int, int] | None:
    try:
        return cpu_times(Path("/proc/stat").read_text())
    except (OSError, ValueError):
        return None  # not Linux: the figure is reported as missing


async def _paced(s: Settings, source: EventSource, rate: float, timing: Timing) -> PointLog:
    """Keep the schedule: every tick, send every event due by now, each stamped ts = now as it is sent.

    ``send`` appends to the partition's open batch and never waits for the one in
    flight (``send_batch`` would, stalling the schedule while the broker is slow);
    batches up to 1 MiB make waiting for a full batch practically impossible.
    """
    from aiokafka import AIOKafkaProducer

    n = int(rate * (timing.warmup_s + timing.steady_s)) + 1
    users, index, ts = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    prod = AIOKafkaProducer(
        bootstrap_servers=s.kafka.bootstrap, linger_ms=0, max_batch_size=1 << 20, **s.kafka.kafka_client_options()
    )
    await prod.start()
    try:
        topic, first, sent, max_behind = s.kafka.events_topic, source.cursor, 0, 0.0
        steady_at: tuple[float, int, tuple[int, int] | None] | None = None
        start = time.monotonic()
        start_ms = time.time_ns() // 1_000_000
        while sent < n:
            now = time.monotonic()
            due = min(n, int((now - start) * rate) + 1)
            max_behind = max(max_behind, (due - sent - 1) / rate)
            if steady_at is None and now - start >= timing.warmup_s:
                steady_at = (now, sent, _proc_stat())
            for j in range(sent, due):
                i = first + j
                u = int(source.user[i % len(source.user)])
                source.counts[u] += 1
                stamp = time.time_ns() // 1_000_000
                users[j], index[j], ts[j] = u, source.counts[u], stamp
                await prod.send(topic, key=source.keys[i % len(source.keys)], value=source.value(i, stamp))
            sent = due
            ahead = start + (int((time.monotonic() - start) / TICK_S) + 1) * TICK_S - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        end = time.monotonic()
        cpu_end = _proc_stat()
        await prod.flush()
    finally:
        await prod.stop()
        source.cursor = first + sent
    if steady_at is None:
        raise RuntimeError("the paced run ended before its warm-up did; raise the steady seconds")
    idle = idle_percent(steady_at[2], cpu_end) if steady_at[2] and cpu_end else None
    return PointLog(
        SentEvents(users, index, ts), rate, start_ms, start_ms + int(timing.warmup_s * 1000), sent - steady_at[1],
        end - steady_at[0], max_behind, idle,
    )


def _wait_taken(s: Settings, events: int, app: str, timeout_s: float) -> None:
    """Until the app has taken every event sent so far: the worker's applied counter, a hop's count file.

    An app that cannot keep up is a finding: noted, and the next point starts anyway
    (its uncovered events and its latencies show it).
    """
    from ops.bench_apps import HOP_COUNT_FILE

    deadline = time.monotonic() + timeout_s
    taken = 0
    while taken < events and time.monotonic() < deadline:
        time.sleep(0.1)
        if app == "worker":
            taken = int(worker_metrics(s.http.web_url).get("events_applied", 0))
        else:
            path = s.home_path / HOP_COUNT_FILE
            taken = int(path.read_text() or 0) if path.exists() else 0
    if taken < events:
        note(f"{app}: took {taken} of {events} events {timeout_s:.0f}s after the last send")
