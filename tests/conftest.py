"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from encoder.config import EncoderConfig
from encoder.model import DUPN
from encoder.streaming import StreamingEncoder

# One intra-op thread: tiny tensors gain nothing from two, and a second busy
# process (a worker under test) turns torch's thread spinning into stalls.
torch.set_num_threads(1)

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


def tiny_model(seed: int = 0, **overrides: object) -> DUPN:
    torch.manual_seed(seed)
    return DUPN(dataclasses.replace(TINY, **overrides)).eval()  # type: ignore[arg-type]


@pytest.fixture
def tiny_encoder() -> StreamingEncoder:
    return StreamingEncoder(tiny_model(), "tiny-0")
