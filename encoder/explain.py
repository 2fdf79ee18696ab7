"""Seeing inside a user's vector: which behaviors the attention pooled, and how much.

The vector is ``tanh(W [Σ α_t v_t; u])``, so the attention weights α over the
window are the most direct answer to "what does this vector remember?". This
module turns α into per-behavior rows (for ``GET /users/{id}/explain``) and
aggregates many users' α by behavior type × age bucket, the view of the DUPN
talk's attention analysis. Numpy and the streaming encoder only, no Kafka.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.contracts import EVENT_TYPES, SCENARIOS
from encoder.features import TIME_BUCKET_EDGES_MS, time_bucket
from encoder.model import UserContext
from encoder.streaming import StreamingEncoder


def _short_duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


#: Human labels of the age buckets, one per column: "<10s", "<1m", ..., "≥30d".
AGE_BUCKET_LABELS: tuple[str, ...] = (
    *(f"<{_short_duration(e)}" for e in TIME_BUCKET_EDGES_MS),
    f"≥{_short_duration(TIME_BUCKET_EDGES_MS[-1])}",
)


def age_bucket_index(age_ms: np.ndarray | int) -> np.ndarray:
    """Column of each age in :data:`AGE_BUCKET_LABELS` (the model's own time buckets, 0-based)."""
    return time_bucket(age_ms).astype(np.int64) - 1


def explain_behaviors(records: np.ndarray, alpha: np.ndarray, as_of: int) -> list[dict[str, Any]]:
    """One JSON-ready row per window behavior, oldest first.

    Only hashes of the item and category ids exist here: the state store keeps
    the 32-bit hashes the model consumes, never the raw ids.
    """
    if len(records) != len(alpha):
        raise ValueError(f"{len(records)} behaviors but {len(alpha)} attention weights")
    ages = as_of - records["ts"].astype(np.int64)
    buckets = age_bucket_index(ages)
    return [
        {
            "position": i,
            "ts": int(r["ts"]),
            "age_ms": int(ages[i]),
            "age_bucket": AGE_BUCKET_LABELS[int(buckets[i])],
            "event_type": EVENT_TYPES[int(r["event_type"])],
            "scenario": SCENARIOS[int(r["scenario"])],
            "attention": float(alpha[i]),
            "item_hash": int(r["item"]),
            "category_hash": int(r["category"]),
        }
        for i, r in enumerate(records)
    ]


@dataclass
class AttentionTable:
    """Mean per-user-normalised attention (α × window length; 1.0 = uniform) by type × age bucket.

    Normalising per user makes windows of different lengths comparable: a raw
    α of 0.05 is a lot in a 100-behavior window and little in a 5-behavior one.
    """

    sums: np.ndarray = field(default_factory=lambda: np.zeros((len(EVENT_TYPES), len(AGE_BUCKET_LABELS))))
    counts: np.ndarray = field(
        default_factory=lambda: np.zeros((len(EVENT_TYPES), len(AGE_BUCKET_LABELS)), np.int64)
    )
    users: int = 0

    def add(self, event_type: np.ndarray, age_ms: np.ndarray, alpha: np.ndarray) -> None:
        """Add one user's window (parallel arrays, one entry per behavior)."""
        alpha = np.asarray(alpha, np.float64)
        if not len(alpha):
            return
        rows = np.asarray(event_type, np.int64)
        cols = age_bucket_index(np.asarray(age_ms, np.int64))
        np.add.at(self.sums, (rows, cols), alpha * len(alpha))
        np.add.at(self.counts, (rows, cols), 1)
        self.users += 1

    @property
    def mean(self) -> np.ndarray:
        """(types, buckets) mean normalised attention; NaN where no behavior fell."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.counts > 0, self.sums / np.maximum(self.counts, 1), np.nan)

    def render(self) -> str:
        """Fixed-width text table: rows = behavior types, columns = age buckets, '·' = no data."""
        head = f"{'type':<6}" + "".join(f"{b:>7}" for b in AGE_BUCKET_LABELS)
        lines = [head]
        for name, row in zip(EVENT_TYPES, self.mean, strict=True):
            cells = "".join(f"{'·':>7}" if np.isnan(x) else f"{x:7.2f}" for x in row)
            lines.append(f"{name:<6}{cells}")
        lines.append(f"{self.users} users, {int(self.counts.sum())} behaviors; 1.00 = uniform attention")
        return "\n".join(lines)


def table_from_behaviors(behaviors: Iterable[dict[str, Any]]) -> AttentionTable:
    """The aggregate of one ``/explain`` answer's behaviors (for a single-user heat map)."""
    rows = list(behaviors)
    table = AttentionTable()
    table.add(
        np.array([EVENT_TYPES.index(b["event_type"]) for b in rows], np.int64),
        np.array([b["age_ms"] for b in rows], np.int64),
        np.array([b["attention"] for b in rows], np.float64),
    )
    return table


def attention_report(
    encoder: StreamingEncoder,
    histories: Iterable[np.ndarray],
    min_events: int = 20,
    context: UserContext | None = None,
    batch: int = 64,
) -> AttentionTable:
    """Aggregate α over users, each as of their last behavior, on the exact window (no stream needed).

    Users with fewer than ``min_events`` behaviors are skipped: their short
    windows say little about how attention spreads over age.
    """
    table = AttentionTable()
    windows = [h[-encoder.window :] for h in histories if len(h) >= min_events]
    for lo in range(0, len(windows), batch):
        chunk = windows[lo : lo + batch]
        for recs, state in zip(chunk, encoder.replay(chunk), strict=True):
            as_of = int(recs["ts"][-1])
            alpha = encoder.attention_weights(state, as_of, context)
            table.add(recs["event_type"], as_of - recs["ts"].astype(np.int64), alpha)
    return table
