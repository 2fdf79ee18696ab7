"""Latency: freshness of published vectors at a paced load, and HTTP query latency at a paced request rate."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.settings import Settings
from ops.bench.common import (
    BenchConfig,
    Stream,
    bench_env,
    make_stream,
    note,
    percentiles_ms,
    ratio,
    worker_metrics,
)
from ops.harness import running_worker, worker_env

PROBE_ARGV = ("-m", "ops.bench_apps", "latency-probe")
HOP_ARGV = ("-m", "ops.bench_apps", "hop")
TICK_S = 0.005


@dataclass(frozen=True)
class Pacing:
    sent: int
    seconds: float
    start_ms: int  # wall clock when the first event was due
    steady_from_ms: int  # wall clock when warm-up ended
    steady_sent: int
    steady_seconds: float
    max_behind_s: float  # the furthest the producer fell behind its schedule


def freshness(cfg: BenchConfig, stream: Stream, rate: float) -> dict[str, Any]:
    """Events at ``rate``/s with live ``ts``; per vector: receive − ts and updated_at − ts, warm-up excluded.

    Each vector is measured for its user's last event (the one whose ts it carries);
    earlier events of that user in the same batch waited longer than that. The same
    paced load first runs through the floor (``ops.bench_apps hop``: one bare
    aiokafka consume → decode → produce hop), so the worker's figures sit next to
    what the broker and machine cost before any work of ours.
    """
    total_s = cfg.warmup_s + cfg.steady_s
    n = int(rate * total_s) + 1
    source = stream if n <= len(stream) else make_stream(cfg.users, n, cfg.seed)
    templates = [_template(ev) for ev in source.events[:n]]
    note(f"freshness: the floor (bare aiokafka hop) at {rate:.0f} events/s")
    floor = _paced_run(cfg, templates, rate, worker=False)
    note(f"freshness: the worker at {rate:.0f} events/s")
    out = _paced_run(cfg, templates, rate, worker=True)
    out["floor"] = floor
    out["publish_minus_ts_over_floor"] = {
        q: ratio(out["publish_minus_ts_ms"][q], floor["publish_minus_ts_ms"][q]) for q in ("p50", "p99", "p999")
    }
    return out


def _paced_run(
    cfg: BenchConfig, templates: Sequence[tuple[bytes, bytes, bytes]], rate: float, worker: bool
) -> dict[str, Any]:
    """The paced load through the worker (or the floor hop), measured by the probe on the vectors topic."""
    with bench_env(cfg, "freshness" if worker else "freshness-floor") as s, _app(cfg, s, worker):
        probe, out = _start_probe(s)
        try:
            pacing = _paced_send(s, templates, rate, cfg.warmup_s)
            consumed = pacing.sent
            if worker:
                _wait_applied(s, pacing.sent, timeout_s=max(30.0, cfg.steady_s))
            else:
                consumed = _wait_consumed(s, pacing.sent, timeout_s=max(30.0, cfg.steady_s))
            time.sleep(0.5)  # the probe's last fetch
        finally:
            probe.terminate()
            probe.wait(timeout=60)
        rows = np.load(out)
        metrics = worker_metrics(s.http.web_url) if worker else {}
    steady = rows[rows[:, 1] >= pacing.steady_from_ms]
    result: dict[str, Any] = {
        "target_events_per_s": round(rate, 1),
        "achieved_events_per_s": round(pacing.steady_sent / pacing.steady_seconds, 1),
        "achieved_over_target": ratio(pacing.steady_sent / pacing.steady_seconds, rate, 3),
        "producer_max_behind_ms": round(pacing.max_behind_s * 1000, 1),
        "warmup_s": cfg.warmup_s,
        "steady_s": round(pacing.steady_seconds, 1),
        "events_sent": pacing.sent,
        "vectors_measured": len(steady),
        "receive_minus_ts_ms": percentiles_ms(steady[:, 0] - steady[:, 1]),
        "publish_minus_ts_ms": percentiles_ms(steady[:, 2] - steady[:, 1]),
    }
    if worker:
        result["worker_events_per_batch_mean"] = metrics.get("events_per_batch_mean")
    else:
        result["path"] = (
            "aiokafka consume -> orjson.loads -> produce a vector-sized document per user per fetched batch "
            "(ops.bench_apps hop)"
        )
        result["consumed_over_sent"] = ratio(consumed, pacing.sent, 3)
    return result


@contextlib.contextmanager
def _app(cfg: BenchConfig, s: Settings, worker: bool) -> Iterator[None]:
    if worker:
        with running_worker(s, "worker", cfg.ready_timeout_s):
            yield
        return
    proc = _start_ready_process(s, HOP_ARGV, "hop")
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _template(ev: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    """(key, JSON before the ts value, JSON after it): the ts is filled in when the event is sent."""
    raw = json.dumps({**ev, "ts": -1}).encode()
    head, tail = raw.split(b'"ts": -1', 1)
    return str(ev["user_id"]).encode(), head + b'"ts": ', tail


def _start_probe(s: Settings) -> tuple[subprocess.Popen[bytes], Any]:
    out = s.home_path / "latency-probe.npy"
    return _start_ready_process(s, (*PROBE_ARGV, "--out", str(out)), "latency-probe"), out


def _start_ready_process(s: Settings, argv: Sequence[str], name: str) -> subprocess.Popen[bytes]:
    """A bench app that prints ``ready`` on stdout once it is assigned its partitions."""
    with open(s.home_path / f"{name}.log", "wb") as log:  # the child holds its own copy of the fd
        proc = subprocess.Popen([sys.executable, *argv], env=worker_env(s), stdout=subprocess.PIPE, stderr=log)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        proc.kill()
        raise RuntimeError(f"{name} did not start; see {s.home_path / f'{name}.log'}")
    return proc


def _paced_send(s: Settings, templates: Sequence[tuple[bytes, bytes, bytes]], rate: float, warmup_s: float) -> Pacing:
    return asyncio.run(_paced(s, templates, rate, warmup_s))


async def _paced(s: Settings, templates: Sequence[tuple[bytes, bytes, bytes]], rate: float, warmup_s: float) -> Pacing:
    """Keep the schedule: every tick, send every event due by now, each stamped ts = now as it is sent.

    ``send`` appends to the partition's open batch and never waits for the one in
    flight (``send_batch`` would, stalling the schedule while the broker is slow);
    batches up to 1 MiB make waiting for a full batch practically impossible.
    """
    from aiokafka import AIOKafkaProducer

    prod = AIOKafkaProducer(
        bootstrap_servers=s.kafka.bootstrap, linger_ms=0, max_batch_size=1 << 20, **s.kafka.kafka_client_options()
    )
    await prod.start()
    try:
        topic, n, sent, max_behind = s.kafka.events_topic, len(templates), 0, 0.0
        steady_at: tuple[float, int] | None = None
        start = time.monotonic()
        start_ms = time.time_ns() // 1_000_000
        while sent < n:
            now = time.monotonic()
            due = min(n, int((now - start) * rate) + 1)
            max_behind = max(max_behind, (due - sent - 1) / rate)
            if steady_at is None and now - start >= warmup_s:
                steady_at = (now, sent)
            for key, head, tail in templates[sent:due]:
                await prod.send(topic, key=key, value=head + str(time.time_ns() // 1_000_000).encode() + tail)
            sent = due
            ahead = start + (int((time.monotonic() - start) / TICK_S) + 1) * TICK_S - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        end = time.monotonic()
        await prod.flush()
    finally:
        await prod.stop()
    if steady_at is None:
        raise RuntimeError("the paced run ended before its warm-up did; raise steady_s")
    return Pacing(
        sent, end - start, start_ms, start_ms + int(warmup_s * 1000), sent - steady_at[1], end - steady_at[0],
        max_behind,
    )


def _wait_consumed(s: Settings, events: int, timeout_s: float) -> int:
    """Until the floor's hop has consumed every sent event (its ``hop.count`` file), or the timeout:
    how many it consumed. A hop that cannot keep up is a finding, reported, not an error."""
    from ops.bench_apps import HOP_COUNT_FILE

    deadline = time.monotonic() + timeout_s
    path = s.home_path / HOP_COUNT_FILE
    consumed = 0
    while consumed < events and time.monotonic() < deadline:
        time.sleep(0.1)
        consumed = int(path.read_text() or 0) if path.exists() else 0
    if consumed < events:
        note(f"freshness floor: the hop consumed {consumed} of {events} events {timeout_s:.0f}s after the last send")
    return consumed


def _wait_applied(s: Settings, events: int, timeout_s: float) -> None:
    """Until the worker counts every sent event as applied (its own Prometheus counter)."""
    deadline = time.monotonic() + timeout_s
    while worker_metrics(s.http.web_url).get("events_applied", 0) < events:
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker did not apply {events} events within {timeout_s:.0f}s of the last send")
        time.sleep(0.1)


def query_load(cfg: BenchConfig, s: Settings, users: Sequence[str]) -> dict[str, Any]:
    """GET /users/{id}/vector for random known users, open loop at ``cfg.query_rate``/s for ``cfg.query_s``.

    Latency counts from when each request was due, so a stalled server cannot hide
    its queueing by slowing the client down (no coordinated omission).
    """
    results = asyncio.run(_open_loop(s.http.web_url, list(users), cfg.query_rate, cfg.query_s, cfg.seed))
    due_ms = np.asarray([r[1] for r in results])
    ok = sum(1 for r in results if r[0] == 200)
    return {
        "target_requests_per_s": cfg.query_rate,
        "achieved_requests_per_s": round(len(results) / max(r[3] for r in results), 1),
        "requests": len(results),
        "ok": ok,
        "errors": len(results) - ok,
        "latency_ms": percentiles_ms(due_ms),
        "latency_from_send_ms": percentiles_ms([r[2] for r in results]),
        "users": len(users),
    }


async def _open_loop(url: str, users: list[str], rate: float, seconds: float, seed: int) -> list[tuple[float, ...]]:
    import aiohttp

    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30), connector=aiohttp.TCPConnector(limit=0)
    ) as http:
        for user in users[:20]:  # warm the connection pool and the route
            await _get(http, f"{url}/users/{user}/vector", loop.time(), 0.0)
        start = loop.time()
        tasks = []
        for i in range(int(rate * seconds)):
            due = start + i / rate
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            tasks.append(asyncio.create_task(_get(http, f"{url}/users/{rng.choice(users)}/vector", due, start)))
        return list(await asyncio.gather(*tasks))


async def _get(http: Any, url: str, due: float, start: float) -> tuple[float, ...]:
    """(status, ms since due, ms since sent, s since the run started at completion)."""
    loop = asyncio.get_running_loop()
    sent = loop.time()
    try:
        async with http.get(url) as resp:
            await resp.read()
            status = resp.status
    except (TimeoutError, OSError):
        status = 0
    done = loop.time()
    return status, (done - due) * 1000, (done - sent) * 1000, done - start


def fetch_all(url: str, expected: dict[str, str], concurrency: int = 16) -> int:
    """How many users' vectors the worker serves with their expected last_event_id."""
    return asyncio.run(_fetch_all(url, expected, concurrency))


async def _fetch_all(url: str, expected: dict[str, str], concurrency: int) -> int:
    import aiohttp

    users = iter(list(expected))
    good = 0

    async def fetcher(http: Any) -> None:
        nonlocal good
        for user in users:
            async with http.get(f"{url}/users/{user}/vector") as resp:
                if resp.status == 200 and (await resp.json()).get("last_event_id") == expected[user]:
                    good += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        await asyncio.gather(*(fetcher(http) for _ in range(concurrency)))
    if good < len(expected):
        note(f"only {good} of {len(expected)} users served with their last event")
    return good
