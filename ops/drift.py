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
    written_bytes: int = 0  # all full-state writes (what local RocksDB receives; the changelog: state.changelog)

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


def trained_vectors(
    model: Any, stream: list[dict[str, Any]], keys: list[tuple[str, int]], anchor_every: int | None, chunk: int = 256
) -> PolicyRun:
    """The function the model was trained on, computed by the *training* code path.

    For each (user, n): the LSTM over the run ``training.data.run_starts`` gives (the
    anchored run for a model trained with ``anchor_every``, else the exact window), attention
    over the last W, unknown profile, no query, as of the n-th behavior: what
    ``training.train.encode_batch`` computes in training, independent of the streaming code.
    """
    import torch

    from encoder.model import BehaviorTensors, UserContext
    from training.data import HistoryStore, left_padded, run_starts

    histories: dict[str, list[dict[str, Any]]] = {}
    for e in stream:
        histories.setdefault(str(e["user_id"]), []).append(e)
    store = HistoryStore(histories)
    window = model.cfg.window
    vectors: dict[tuple[str, int], np.ndarray] = {}
    model.train(False)
    for lo in range(0, len(keys), chunk):
        part = keys[lo : lo + chunk]
        users = np.array([store.index(u) for u, _ in part], dtype=np.int64)
        lengths = np.array([n for _, n in part], dtype=np.int64)
        block = left_padded(store, users, lengths, window, anchor_every)
        cols = np.arange(block.shape[1])[None, :]
        mask = cols >= (block.shape[1] - (lengths - run_starts(lengths, window, anchor_every)))[:, None]
        pool = cols >= (block.shape[1] - np.minimum(lengths, window))[:, None]
        now = torch.tensor([int(histories[u][n - 1]["ts"]) for u, n in part], dtype=torch.int64)
        with torch.no_grad():
            rep = model.encode(
                BehaviorTensors.from_records(block, model.cfg), torch.from_numpy(mask), now, UserContext(),
                torch.from_numpy(pool),
            )
        vectors.update(zip(part, rep.numpy(), strict=True))
    name = f"trained (anchored R={anchor_every})" if anchor_every else "trained (exact window)"
    return PolicyRun(name, vectors, 0.0, 0, 0.0)


def measure_drift(
    model_dir: str, users: int, events_per_user: int, reanchor: list[int], seed: int = 0, batch: int = 256,
    sample: int = 5000,
) -> list[dict[str, Any]]:
    """One row per policy: cost, cosine vs the exact policy and vs the trained function.

    The trained function is computed by the training code path (:func:`trained_vectors`) on a
    seeded sample of ``sample`` (user, behavior) keys past the window; a checkpoint written by
    ``dupn eval`` records the run it was trained on (``train_anchor_every``), older ones were
    trained on exact windows.
    """
    ckpt = load_checkpoint(model_dir)
    encoder = StreamingEncoder(ckpt.model, ckpt.model_version)
    stream = simulated_stream(users, events_per_user, seed)
    window = ckpt.config.window
    exact = run_policy(encoder, UpdatePolicy("exact", window=window), stream, batch)
    anchor = ckpt.meta.get("train_anchor_every")
    keys = [k for k in exact.vectors if k[1] > window]
    rng = np.random.default_rng(seed)
    picked = [keys[i] for i in sorted(rng.choice(len(keys), min(sample, len(keys)), replace=False).tolist())]
    trained = trained_vectors(ckpt.model, stream, picked, int(anchor) if anchor else None)
    rows = [_row(exact, exact, window, trained)]
    for r in reanchor:
        inc = run_policy(encoder, UpdatePolicy("incremental", r, window), stream, batch)
        rows.append(_row(inc, exact, window, trained))
    return rows


def _row(run: PolicyRun, exact: PolicyRun, window: int, trained: PolicyRun) -> dict[str, Any]:
    return {
        "policy": run.name,
        "events": run.events,
        "us_per_event": round(run.us_per_event, 1),
        "speedup_vs_exact": round(exact.us_per_event / run.us_per_event, 2),
        "state_bytes_mean": round(run.state_bytes),
        "cosine_vs_exact": cosine_stats(run, exact, window),
        "trained": trained.name,
        "cosine_vs_trained": cosine_stats(run, trained, window),
    }


def render_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| policy | µs/event (encoder+state, in memory) | × faster than exact | state bytes/user (mean) "
        "| cosine vs exact: mean | p1 | min | n | cosine vs trained: mean | p1 | min | n |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    nan = float("nan")
    for r in rows:
        c, t = r["cosine_vs_exact"], r.get("cosine_vs_trained", {"n": 0})
        lines.append(
            f"| {r['policy']} | {r['us_per_event']} | {r['speedup_vs_exact']} | {r['state_bytes_mean']} | "
            f"{c.get('mean', nan):.5f} | {c.get('p1', nan):.5f} | {c.get('min', nan):.5f} | {c['n']} | "
            f"{t.get('mean', nan):.5f} | {t.get('p1', nan):.5f} | {t.get('min', nan):.5f} | {t['n']} |"
        )
    if rows and "trained" in rows[0]:
        lines.append(f"\nTrained function: {rows[0]['trained']}, computed by the training code path.")
    return "\n".join(lines)
