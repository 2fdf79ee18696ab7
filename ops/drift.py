"""`dupn drift`: how far incremental vectors drift from exact ones, and what each costs.

Runs the worker's own updater (in memory, no Kafka) over the same simulated
stream once per policy and compares the vector each policy publishes after
the same behavior of the same user.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from encoder.checkpoint import load_checkpoint
from encoder.streaming import StreamingEncoder, UpdatePolicy
from state.codec import decode_state, encode_state
from state.user_state import UserState
from streams.updater import Incoming, VectorUpdater
from training.simulator import SimConfig, Simulator


@dataclass(frozen=True)
class PolicyRun:
    name: str
    vectors: dict[tuple[str, int], np.ndarray]
    seconds: float
    events: int
    state_bytes: float
    written_bytes: int = 0  # all state writes (what the changelog receives)

    @property
    def us_per_event(self) -> float:
        return 1e6 * self.seconds / max(1, self.events)


def simulated_stream(users: int, events_per_user: int, seed: int) -> list[dict[str, Any]]:
    """Round-robin over users so each batch holds at most one event per user."""
    sim = Simulator(SimConfig(n_users=users, events_per_user=events_per_user, seed=seed)).generate()
    per_user = [h for h in sim.histories.values() if h]
    out: list[dict[str, Any]] = []
    for i in range(max(len(h) for h in per_user)):
        out.extend(h[i] for h in per_user if i < len(h))
    return out


def run_policy(encoder: StreamingEncoder, policy: UpdatePolicy, stream: list[dict[str, Any]], batch: int) -> PolicyRun:
    import json

    updater = VectorUpdater(encoder, policy, cache_capacity=1_000_000)
    store: dict[str, bytes] = {}
    vectors: dict[tuple[str, int], np.ndarray] = {}
    written = 0
    msgs = [Incoming(0, i, str(e["user_id"]).encode(), json.dumps(e).encode()) for i, e in enumerate(stream)]
    start = time.perf_counter()
    for lo in range(0, len(msgs), batch):
        result = updater.apply(msgs[lo : lo + batch], lambda u, _m: _decoded(u, store.get(u)))
        for up in result.updates:
            blob = encode_state(up.state)
            written += len(blob)
            store[up.state.user_id] = blob
            vectors[(up.state.user_id, up.state.events_seen)] = up.vector.vector
    seconds = time.perf_counter() - start
    name = policy.mode if policy.mode == "exact" else f"incremental R={policy.reanchor_every}"
    mean_bytes = float(np.mean([len(b) for b in store.values()]))
    return PolicyRun(name, vectors, seconds, len(msgs), mean_bytes, written)


def _decoded(user_id: str, blob: bytes | None) -> UserState | None:
    """The stored bytes decoded, as the worker's store reads them (the byte counts above are the point)."""
    return None if blob is None else decode_state(user_id, blob)


def cosine_stats(a: PolicyRun, b: PolicyRun, past_window: int) -> dict[str, float]:
    """Cosine between a's and b's vector after the same behavior, for behaviors past the window."""
    keys = [k for k in a.vectors if k in b.vectors and k[1] > past_window]
    if not keys:
        return {"n": 0}
    x = np.stack([a.vectors[k] for k in keys])
    y = np.stack([b.vectors[k] for k in keys])
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1) + 1e-12)
    return {
        "n": len(keys),
        "mean": float(cos.mean()),
        "p1": float(np.percentile(cos, 1)),
        "min": float(cos.min()),
    }


def measure_drift(
    model_dir: str, users: int, events_per_user: int, reanchor: list[int], seed: int = 0, batch: int = 256
) -> list[dict[str, Any]]:
    ckpt = load_checkpoint(model_dir)
    encoder = StreamingEncoder(ckpt.model, ckpt.model_version)
    stream = simulated_stream(users, events_per_user, seed)
    window = ckpt.config.window
    exact = run_policy(encoder, UpdatePolicy("exact", window=window), stream, batch)
    rows = [_row(exact, exact, window)]
    for r in reanchor:
        inc = run_policy(encoder, UpdatePolicy("incremental", r, window), stream, batch)
        rows.append(_row(inc, exact, window))
    return rows


def _row(run: PolicyRun, exact: PolicyRun, window: int) -> dict[str, Any]:
    return {
        "policy": run.name,
        "events": run.events,
        "us_per_event": round(run.us_per_event, 1),
        "speedup_vs_exact": round(exact.us_per_event / run.us_per_event, 2),
        "state_bytes_mean": round(run.state_bytes),
        "cosine_vs_exact": cosine_stats(run, exact, window),
    }


def render_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| policy | µs/event (encoder+state, in memory) | × faster than exact | state bytes/user (mean) "
        "| cosine vs exact: mean | p1 | min | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["cosine_vs_exact"]
        lines.append(
            f"| {r['policy']} | {r['us_per_event']} | {r['speedup_vs_exact']} | {r['state_bytes_mean']} | "
            f"{c.get('mean', float('nan')):.5f} | {c.get('p1', float('nan')):.5f} | "
            f"{c.get('min', float('nan')):.5f} | {c['n']} |"
        )
    return "\n".join(lines)
