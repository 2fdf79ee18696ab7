"""`dupn bench`: worker throughput on the embedded broker (the first part of the benchmark suite).

Pre-produces a synthetic stream, starts one worker, and times how long the
worker takes until every user's published vector reflects that user's last
event (read back from ``user-vectors``). The broker, producer, worker and
reader share this machine's cores, as in production on one box.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.config import Settings
from ops.replay import synthetic_events
from ops.testing import embedded_broker, isolated_settings, produce, running_worker, setup_topics
from ops.vectors import follow_vectors


@dataclass(frozen=True)
class DrainResult:
    events: int
    users: int
    seconds: float
    settings: dict[str, Any]

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds


def drain_rate(model_dir: Path, users: int, events: int, seed: int = 0, **overrides: Any) -> DrainResult:
    with tempfile.TemporaryDirectory(prefix="dupn-bench-") as tmp:
        home = Path(tmp)
        with embedded_broker(home / "broker") as url:
            s = isolated_settings(url, home, model_dir, **overrides)
            setup_topics(s)
            stream = list(synthetic_events(users, events, seed=seed, live_time=False))
            last = {str(e["user_id"]): str(e["event_id"]) for e in stream}
            produce(s, stream)
            with running_worker(s):
                seconds = _time_until_current(s, last)
    keys = ("update_mode", "reanchor_every", "intake", "roles", "batch_max", "partitions")
    picked = {k: getattr(s, k) for k in keys}
    return DrainResult(len(stream), len(last), seconds, picked)


def _time_until_current(s: Settings, last: dict[str, str], timeout_s: float = 900.0) -> float:
    from tqdm import tqdm

    start = time.monotonic()
    seen: dict[str, str] = {}
    behind = set(last)
    with tqdm(total=len(last), unit="user", desc="users current", smoothing=0.1, leave=False) as bar:
        for batch in follow_vectors(s):
            for msg, _ in batch:
                seen[msg.user_id] = msg.last_event_id
                if msg.user_id in behind and seen[msg.user_id] == last[msg.user_id]:
                    behind.discard(msg.user_id)
                    bar.update(1)
            if not behind:
                return time.monotonic() - start
            if time.monotonic() - start > timeout_s:
                raise TimeoutError(f"{len(behind)} users still behind after {timeout_s:.0f}s")
    raise RuntimeError("vector reader stopped")


def encoder_costs(
    model_dir: Path, batch_sizes: tuple[int, ...] = (1, 64, 256, 1024), repeats: int = 5
) -> list[dict[str, Any]]:
    """Per-event encoder cost: incremental step (+ re-pool) vs exact 100-window recompute, and the bare cell.

    All at the same batch size, on states built from full 100-behavior windows, median of ``repeats``.
    """
    from encoder.checkpoint import load_checkpoint
    from encoder.features import records_from_events
    from encoder.streaming import StreamingEncoder

    ckpt = load_checkpoint(model_dir)
    enc = StreamingEncoder(ckpt.model, ckpt.model_version)
    stream = list(synthetic_events(200, 200 * (enc.window + 1), seed=1, live_time=False))
    by_user: dict[str, list[dict[str, Any]]] = {}
    for ev in stream:
        by_user.setdefault(str(ev["user_id"]), []).append(ev)
    histories = [records_from_events(evs) for evs in by_user.values() if len(evs) > enc.window]
    return [_encoder_row(enc, histories, b, repeats) for b in batch_sizes]


def _encoder_row(enc: Any, histories: list[Any], b: int, repeats: int) -> dict[str, Any]:
    import statistics

    import numpy as np
    import torch

    w = enc.window
    hist = [histories[i % len(histories)] for i in range(b)]
    windows = [h[-w - 1 : -1] for h in hist]
    nxt = np.stack([h[-1] for h in hist])
    now = [int(h[-1]["ts"]) for h in hist]
    shifted = [np.concatenate([win[1:], nxt[i : i + 1]]) for i, win in enumerate(windows)]
    states = enc.replay(windows)
    cfg = enc.cfg
    e, p, h0 = torch.randn(b, cfg.item_vec_dim), torch.randn(b, cfg.prop_vec_dim), torch.zeros(b, cfg.hidden)
    runs = {
        "incremental_step": lambda: enc.step(states, nxt),
        "incremental_step_and_repool": lambda: enc.represent(enc.step(states, nxt), now),
        "exact_recompute": lambda: enc.represent(enc.replay(shifted), now),
        "bare_torch_cell": lambda: _no_grad(enc.model.cell, e, p, h0),
    }
    med = {}
    for name, fn in runs.items():
        fn()
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        med[name] = statistics.median(samples) / b * 1e6
    row: dict[str, Any] = {"batch": b, **{f"{k}_us_per_event": round(v, 2) for k, v in med.items()}}
    row["exact_over_step"] = round(med["exact_recompute"] / med["incremental_step"], 1)
    row["exact_over_step_and_repool"] = round(med["exact_recompute"] / med["incremental_step_and_repool"], 1)
    return row


def _no_grad(cell: Any, e: Any, p: Any, h: Any) -> Any:
    import torch

    with torch.inference_mode():
        return cell(e, p, h, h)


def state_sizes(model_dir: Path, users: int = 2000, events: int = 200_000, reanchor: int = 25) -> dict[str, Any]:
    """Bytes a user costs in the changelogged state, and changelog bytes written per event (in process)."""
    from encoder.checkpoint import load_checkpoint
    from encoder.streaming import StreamingEncoder, UpdatePolicy
    from ops.drift import run_policy

    ckpt = load_checkpoint(model_dir)
    enc = StreamingEncoder(ckpt.model, ckpt.model_version)
    stream = list(synthetic_events(users, events, seed=2, live_time=False))
    run = run_policy(enc, UpdatePolicy("incremental", reanchor, enc.window), stream, batch=2000)
    return {
        "users": len({e["user_id"] for e in stream}),
        "events": run.events,
        "reanchor_every": reanchor,
        "state_bytes_per_user_mean": round(run.state_bytes),
        "changelog_bytes_per_event": round(run.written_bytes / run.events),
        "changelog_bytes_per_event_over_state": round(run.written_bytes / run.events / run.state_bytes, 2),
    }


def aiokafka_ceiling(users: int, events: int, seed: int = 0, partitions: int = 8) -> DrainResult:
    """Ceiling A: bare aiokafka consume -> JSON decode -> produce passthrough of the same stream."""
    import asyncio

    with tempfile.TemporaryDirectory(prefix="dupn-bench-") as tmp:
        home = Path(tmp)
        with embedded_broker(home / "broker") as url:
            s = isolated_settings(url, home, home / "no-model", partitions=partitions)
            setup_topics(s)
            stream = list(synthetic_events(users, events, seed=seed, live_time=False))
            produce(s, stream)
            seconds = asyncio.run(_passthrough(s, len(stream)))
    return DrainResult(len(stream), len({e["user_id"] for e in stream}), seconds, {"path": "aiokafka passthrough"})


async def _passthrough(s: Settings, expected: int) -> float:
    import json

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, linger_ms=2)
    await consumer.start()
    await producer.start()
    try:
        parts = consumer.partitions_for_topic(s.events_topic) or set()
        consumer.assign([TopicPartition(s.events_topic, p) for p in parts])
        await consumer.seek_to_beginning()
        done = 0
        start = time.monotonic()
        while done < expected:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                for r in records:
                    doc = json.loads(r.value)
                    await producer.send(s.vectors_topic, key=r.key, value=json.dumps(doc).encode())
                done += len(records)
        await producer.flush()
        return time.monotonic() - start
    finally:
        await consumer.stop()
        await producer.stop()


def run_all(model_dir: Path, users: int, events: int, partitions: int) -> dict[str, Any]:
    """Every measured part on the same machine in one run, with the ratios between them."""
    ceiling = aiokafka_ceiling(users, events, partitions=partitions)
    lean = drain_rate(model_dir, users, events, intake="lean", roles="vectors", partitions=partitions)
    agent = drain_rate(model_dir, users, events, intake="stream", roles="vectors", partitions=partitions)
    few = max(50, users // 20)  # users with > 100 events each, so windows fill and evict
    inc = drain_rate(model_dir, few, events, update_mode="incremental", roles="vectors", partitions=partitions)
    exact = drain_rate(model_dir, few, events, update_mode="exact", roles="vectors", partitions=partitions)
    return {
        "ceiling_a_aiokafka_events_per_s": round(ceiling.events_per_s),
        "worker_lean_events_per_s": round(lean.events_per_s),
        "worker_faust_agent_events_per_s": round(agent.events_per_s),
        "lean_over_ceiling_a": round(lean.events_per_s / ceiling.events_per_s, 3),
        "lean_over_faust_agent": round(lean.events_per_s / agent.events_per_s, 2),
        f"evicting_{few}_users_incremental_events_per_s": round(inc.events_per_s),
        f"evicting_{few}_users_exact_events_per_s": round(exact.events_per_s),
        "incremental_over_exact": round(inc.events_per_s / exact.events_per_s, 2),
        "encoder": encoder_costs(model_dir),
        "state": state_sizes(model_dir, users=min(users, 2000), events=min(events, 100_000)),
        "events": events,
        "users": users,
    }
