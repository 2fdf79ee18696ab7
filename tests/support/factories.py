"""Small, deterministic inputs: a tiny DUPN model and synthetic behavior events.

Tiny so that unit tests run the real encoder in milliseconds; seeded so that two
tests (or a worker and its offline reference) built from the same arguments see the
very same model and events.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from core.contracts import VectorMessage
from core.wire import partition_of
from encoder.checkpoint import save_checkpoint
from encoder.config import EncoderConfig
from encoder.model import DUPN
from streams.ppp import ModelRegistry, PurchasingPowerScorer
from streams.updater import Incoming

TINY = EncoderConfig(
    item_buckets=997,
    shop_buckets=101,
    brand_buckets=101,
    category_buckets=53,
    tag_buckets=61,
    query_buckets=31,
    talent_buckets=31,
    hidden=32,
    attention_dim=8,
    value_dim=16,
    pooled_dim=32,
    rep_dim=256,
)

T0 = 1_700_000_000_000
"""The first event time of :func:`make_events` (epoch ms, 2023-11-14)."""


def tiny_model(seed: int = 0, **overrides: object) -> DUPN:
    """A freshly initialised tiny DUPN in eval mode; the same seed gives the same weights."""
    torch.manual_seed(seed)
    return DUPN(dataclasses.replace(TINY, **overrides)).eval()  # type: ignore[arg-type]


def make_events(user: str, n: int, seed: int = 0) -> list[dict[str, object]]:
    """``n`` valid contract events of ``user``, ts increasing from :data:`T0` by 1 s .. 1 h."""
    rng = np.random.default_rng(seed)
    ts = T0 + np.cumsum(rng.integers(1_000, 3_600_000, size=n))
    types = ["click", "cart", "fav", "buy"]
    return [
        {
            "event_id": f"{user}-e{i}",
            "user_id": user,
            "ts": int(ts[i]),
            "event_type": types[int(rng.integers(4))],
            "item_id": f"i{rng.integers(50)}",
            "category_id": f"c{rng.integers(8)}",
            "tags": [f"t{rng.integers(5)}"],
            "scenario": "search",
        }
        for i in range(n)
    ]


def a_vector_message(
    user: str = "u1", model_version: str = "m1", seed: int = 0, events_seen: int = 5, dim: int = 256
) -> VectorMessage:
    """A ``user-vectors`` message with a tanh-range vector (what the model's representation layer gives)."""
    vec = np.tanh(np.random.default_rng(seed).normal(size=dim)).astype(np.float32)
    return VectorMessage(user, model_version, vec, events_seen, f"{user}-e{events_seen - 1}", T0 + events_seen,
                         T0 + events_seen + 100)


def interleave(*streams: list[dict[str, object]]) -> list[dict[str, object]]:
    """Several users' events merged in time order (ties by event id), as one partition would carry them."""
    return sorted((e for s in streams for e in s), key=lambda e: (e["ts"], e["event_id"]))


def keyed_messages(events: Sequence[dict[str, object]], partitions: int, offset0: int = 0) -> list[Incoming]:
    """Each event on its user's partition (as a producer keyed by user id puts it), offsets in order."""
    return [
        Incoming(partition_of(str(e["user_id"]).encode(), partitions), offset0 + i, str(e["user_id"]).encode(),
                 json.dumps(e).encode())
        for i, e in enumerate(events)
    ]


def ppp_scorer(tmp_path: Path) -> tuple[str, PurchasingPowerScorer]:
    """A purchasing-power scorer over a tiny model saved as the demo checkpoint; (model version, scorer)."""
    version = save_checkpoint(tiny_model(seed=1), tmp_path / "models" / "demo")
    return version, PurchasingPowerScorer(ModelRegistry(tmp_path / "models" / "demo", tmp_path / "models"))
