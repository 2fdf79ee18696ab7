"""The purchasing-power scorer: right head per model version, unknown versions skipped and counted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import metrics
from core.contracts import VectorMessage
from encoder.checkpoint import save_checkpoint
from streams.ppp import ModelRegistry, PurchasingPowerScorer, process_vector
from tests.support.factories import tiny_model


class FakeTopic:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []

    async def send(self, *, key: bytes, value: bytes) -> None:
        self.sent.append((key, value))


def _message(version: str, user: str = "u1", seed: int = 0) -> VectorMessage:
    vec = np.tanh(np.random.default_rng(seed).normal(size=256)).astype(np.float32)
    return VectorMessage(user, version, vec, 5, "e5", 1_700_000_000_000, 1_700_000_000_100)


def _setup(tmp_path: Path) -> tuple[PurchasingPowerScorer, str, str]:
    current = save_checkpoint(tiny_model(seed=1), tmp_path / "models" / "demo")
    older = save_checkpoint(tiny_model(seed=2), tmp_path / "models" / "yesterday")
    registry = ModelRegistry(tmp_path / "models" / "demo", tmp_path / "models")
    return PurchasingPowerScorer(registry), current, older


def _skipped() -> float:
    return metrics.REGISTRY.get_sample_value("dupn_ppp_skipped_total", {"reason": "unknown_model_version"}) or 0.0


def _expected_probs(seed: int, vec: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = tiny_model(seed=seed).heads.ppp_logits(torch.from_numpy(vec)[None])
    return torch.softmax(logits, -1)[0].numpy()


def test_vector_is_scored_with_the_head_of_its_own_model_version(tmp_path: Path) -> None:
    scorer, current, older = _setup(tmp_path)
    for version, seed in ((current, 1), (older, 2)):
        msg = _message(version)
        body = scorer.score(msg, now_ms=42)
        assert body is not None
        want = _expected_probs(seed, msg.vector)
        assert np.abs(np.asarray(body["probabilities"]) - want).max() <= 1e-6
        assert body["level"] == int(np.argmax(want)) + 1 and 1 <= body["level"] <= 7
        assert body["model_version"] == version and body["vector_updated_at"] == msg.updated_at
    # the two heads differ, so picking the wrong one would have been caught above
    assert not np.allclose(_expected_probs(1, _message("x").vector), _expected_probs(2, _message("x").vector))


def test_unknown_model_version_is_skipped_counted_and_not_published(tmp_path: Path) -> None:
    scorer, current, _ = _setup(tmp_path)
    table: dict[bytes, bytes] = {}
    topic = FakeTopic()
    before = _skipped()
    out = asyncio.run(process_vector(scorer, table, topic, b"u1", _message("feedbeefcafe0000").to_bytes()))
    assert out is None and topic.sent == [] and table == {}
    assert _skipped() == before + 1
    # a known version is stored and published, keyed by user
    out = asyncio.run(process_vector(scorer, table, topic, b"u1", _message(current).to_bytes()))
    assert out is not None and [k for k, _ in topic.sent] == [b"u1"]
    assert json.loads(table[b"u1"]) == json.loads(topic.sent[0][1]) == out
    assert _skipped() == before + 1


def test_bad_message_is_skipped(tmp_path: Path) -> None:
    scorer, _, _ = _setup(tmp_path)
    topic: Any = FakeTopic()
    assert asyncio.run(process_vector(scorer, {}, topic, b"u1", b"{not json")) is None
    assert topic.sent == []


def test_a_vector_of_the_wrong_size_is_skipped_and_counted_not_a_crash(tmp_path: Path) -> None:
    """Anything that can write ``user-vectors`` controls the vector's size (issue 14 item 10)."""
    scorer, current, _ = _setup(tmp_path)
    topic, table = FakeTopic(), {}

    def wrong() -> float:
        return metrics.REGISTRY.get_sample_value("dupn_ppp_skipped_total", {"reason": "wrong_vector_size"}) or 0.0

    before = wrong()
    for size in (3, 257, 0):
        vec = np.ones(size, np.float32)
        msg = VectorMessage("u1", current, vec, 5, "e5", 1_700_000_000_000, 1_700_000_000_100)
        assert scorer.score(msg) is None
        body = asyncio.run(process_vector(scorer, table, topic, b"u1", msg.to_bytes()))
        assert body is None
    assert wrong() == before + 6
    assert topic.sent == [] and table == {}
    assert scorer.score(_message(current)) is not None  # the right size still scores
