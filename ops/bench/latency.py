"""Latency: per-event freshness at a paced load (worker and floor), and HTTP query latency at a paced request rate."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.settings import Settings
from ops.bench.common import BenchConfig, Stream, note, percentiles_ms, ratio
from ops.bench.paced import HOP_PATH, EventSource, Timing, run_point_set


def freshness(cfg: BenchConfig, stream: Stream, rate: float) -> dict[str, Any]:
    """Events at ``rate``/s with live ``ts``; per event: receive − ts and publish − ts, warm-up excluded.

    Every event is measured at the first vector covering it (``ops.bench.perevent``),
    so events that shared a batch with later events of their user count with their
    own, longer wait. The same paced load first runs through the floor
    (``ops.bench_apps hop``: one bare aiokafka consume → decode → produce hop), so
    the worker's figures sit next to what the broker and machine cost before any
    work of ours.
    """
    timing = Timing(cfg.warmup_s, cfg.steady_s)
    note(f"freshness: the floor (bare aiokafka hop) at {rate:.0f} events/s")
    floor = run_point_set(cfg, EventSource(stream), [rate], timing, app="floor")[0]
    note(f"freshness: the worker at {rate:.0f} events/s")
    out = run_point_set(cfg, EventSource(stream), [rate], timing, app="worker")[0]
    out["warmup_s"] = cfg.warmup_s
    out["worker_events_per_batch_mean"] = out.pop("worker_events_per_batch_mean_all_points", None)
    floor["path"] = HOP_PATH
    out["floor"] = floor
    for key in ("receive_minus_ts_ms", "publish_minus_ts_ms"):
        if key in out and key in floor:
            out[f"{key.removesuffix('_ms')}_over_floor"] = {
                q: ratio(out[key][q], floor[key][q]) for q in ("p50", "p99", "p999")
            }
    return out


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
