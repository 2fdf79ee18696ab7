"""Small training worlds: a tiny encoder config and simulator, so training tests run in seconds."""

from __future__ import annotations

import functools

from encoder.config import EncoderConfig
from training.data import Batch, MultiTaskBatches
from training.simulator import SimConfig, Simulator, split_by_time
from training.train import Prepared, TrainData, prepare

TINY_ENC = EncoderConfig(
    item_buckets=1 << 10,
    shop_buckets=1 << 8,
    brand_buckets=1 << 8,
    category_buckets=1 << 6,
    tag_buckets=1 << 7,
    query_buckets=1 << 6,
    talent_buckets=1 << 6,
    hidden=32,
    attention_dim=16,
    value_dim=16,
    pooled_dim=32,
    window=30,
)
TINY_SIM = SimConfig(
    n_users=80,
    n_items=400,
    n_categories=12,
    n_shops=30,
    n_brands=20,
    n_talents=12,
    events_per_user=40,
    seed=3,
)


@functools.cache
def tiny_prepared() -> Prepared:
    """The tiny world's training examples, prepared once per test session (shared, read-only)."""
    sim = Simulator(TINY_SIM).generate()
    train_ex, _ = split_by_time(sim, 0.8)
    return prepare(TrainData(sim.histories, sim.users, train_ex), TINY_ENC)


def tiny_batch(cfg: EncoderConfig = TINY_ENC, size: int = 16) -> Batch:
    """One seeded multi-task mini-batch (every task) of the tiny world, for a model with ``cfg``'s buckets."""
    prep = tiny_prepared()
    return next(MultiTaskBatches(prep.store, dict(prep.tables), cfg, size, seed=0))
