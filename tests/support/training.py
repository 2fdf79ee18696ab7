"""Small training worlds: a tiny encoder config and simulator, so training tests run in seconds."""

from __future__ import annotations

from encoder.config import EncoderConfig
from training.simulator import SimConfig

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
