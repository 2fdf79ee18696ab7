"""In-process parts, no Kafka: the encoder's per-event cost and the bytes a user's state costs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_BATCHES = (1, 64, 256, 1024)


def encoder_costs(
    model_dir: Path, batch_sizes: Sequence[int] = DEFAULT_BATCHES, repeats: int = 5
) -> list[dict[str, Any]]:
    """Per-event encoder cost: incremental step (+ re-pool) vs exact 100-window recompute, and the bare cell.

    All at the same batch size, on states built from full 100-behavior windows, median of ``repeats``.
    The bare torch cell (one LSTM step, no Python around it) is the compute floor.
    """
    from encoder.checkpoint import load_checkpoint
    from encoder.features import records_from_events
    from encoder.streaming import StreamingEncoder
    from ops.replay import synthetic_events

    ckpt = load_checkpoint(model_dir)
    enc = StreamingEncoder(ckpt.model, ckpt.model_version)
    stream = list(synthetic_events(200, 200 * (enc.window + 1), seed=1, live_time=False))
    by_user: dict[str, list[dict[str, Any]]] = {}
    for ev in stream:
        by_user.setdefault(str(ev["user_id"]), []).append(ev)
    histories = [records_from_events(evs) for evs in by_user.values() if len(evs) > enc.window]
    return [_encoder_row(enc, histories, b, repeats) for b in sorted(set(batch_sizes))]


def _encoder_row(enc: Any, histories: list[Any], b: int, repeats: int) -> dict[str, Any]:
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


def state_sizes(model_dir: Path, users: int = 2000, events: int = 100_000, reanchor: int = 25) -> dict[str, Any]:
    """Bytes a user costs in the changelogged state, and changelog bytes written per event (in process).

    The updater's own batches of 2,000 events over an in-memory store: one state write
    per user per batch, as the worker writes the changelog.
    """
    from encoder.checkpoint import load_checkpoint
    from encoder.streaming import StreamingEncoder, UpdatePolicy
    from ops.drift import run_policy
    from ops.replay import synthetic_events

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
