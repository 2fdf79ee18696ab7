"""Checks a checkpoint must pass before a running worker swaps it in.

A rollout replaces the model under live traffic: a checkpoint whose hash verifies can still be
unservable (trained with another window or vector size, or diverged to NaN/inf weights). Readers
(rankers, the purchasing-power agent, caches) depend on the vector's size and on finite values,
so these are checked on the weights and on one probe vector, before the switch.
"""

from __future__ import annotations

import numpy as np
import torch

from encoder.features import records_from_events
from encoder.model import DUPN
from encoder.streaming import StreamingEncoder

_PROBE_EVENTS = (
    {"event_id": "probe-1", "user_id": "probe", "ts": 1_700_000_000_000, "event_type": "click", "item_id": "i1"},
    {"event_id": "probe-2", "user_id": "probe", "ts": 1_700_000_060_000, "event_type": "cart", "item_id": "i2",
     "shop_id": "s1", "brand_id": "b1", "category_id": "c1", "tags": ["t1"], "scenario": "search"},
    {"event_id": "probe-3", "user_id": "probe", "ts": 1_700_000_600_000, "event_type": "buy", "item_id": "i2"},
)


def serving_problems(model: DUPN, *, window: int, rep_dim: int) -> list[str]:
    """Why ``model`` cannot replace one serving ``window``-behavior runs and ``rep_dim``-d vectors ([] = it can)."""
    problems: list[str] = []
    if model.cfg.window != window:
        problems.append(f"window {model.cfg.window}, workers run {window}")
    if model.cfg.rep_dim != rep_dim:
        problems.append(f"vector size {model.cfg.rep_dim}, readers expect {rep_dim}")
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        problems.append(f"non-finite weights in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    if problems:
        return problems
    history = records_from_events(_PROBE_EVENTS)
    vector = StreamingEncoder(model, "probe").encode_window(history, int(history[-1]["ts"]))
    if vector.shape != (rep_dim,):
        problems.append(f"probe vector has shape {vector.shape}, expected ({rep_dim},)")
    elif not np.isfinite(vector).all():
        problems.append("probe vector is not finite")
    return problems
