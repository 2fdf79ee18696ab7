"""``EncoderConfig.attention_heads``: H attention distributions over the window, trained and served alike."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from encoder.config import OMITTED_AT_DEFAULT, EncoderConfig
from encoder.features import records_from_events
from encoder.model import BehaviorTensors, UserContext
from encoder.streaming import StreamingEncoder
from tests.support.factories import TINY, make_events, tiny_model


def _offline(model, recs: np.ndarray, now: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    b = BehaviorTensors.from_records(recs[None, :], model.cfg)
    mask = torch.ones(1, len(recs), dtype=torch.bool)
    with torch.no_grad():
        return model.encode(b, mask, torch.tensor([now]), UserContext()).numpy()[0]  # type: ignore[no-any-return]


def test_each_head_is_its_own_softmax_and_the_pooled_vector_follows_the_equation() -> None:
    """α_h = softmax_t(s_ht) per head (each sums to 1 over the valid behaviors), and
    pooled = W_o [Σ_t α_1t v_t; …; Σ_t α_Ht v_t]."""
    model = tiny_model(seed=1, attention_heads=3)
    att = model.attention
    torch.manual_seed(0)
    s = torch.randn(2, 5, 3)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    alpha = att.alpha(s, mask)
    torch.testing.assert_close(alpha.sum(1), torch.ones(2, 3))
    assert (alpha[1, 2:] == 0).all()
    torch.testing.assert_close(alpha[1, :2, 2], torch.softmax(s[1, :2, 2], 0))
    v = torch.randn(2, 5, model.cfg.value_dim)
    with torch.no_grad():
        heads = [alpha[:, :, h].unsqueeze(1).bmm(v).squeeze(1) for h in range(3)]
        torch.testing.assert_close(att.pool(alpha, v), att.out(torch.cat(heads, -1)))
    assert not torch.allclose(alpha[..., 0], alpha[..., 1])


@pytest.mark.parametrize("norm", ["softmax", "sigmoid"])
def test_the_worker_serves_the_trained_function_with_kept_scores_over_time(norm: str) -> None:
    """Step by step and then re-pooled hours later (the kept scores rescored where age buckets moved),
    the worker's vector equals the model's own encode of the window."""
    model = tiny_model(seed=2, attention_heads=4, attention_norm=norm)
    enc = StreamingEncoder(model, "t")
    recs = records_from_events(make_events("u", 14, seed=5))
    (state,) = enc.replay([recs[:9]])
    for rec in recs[9:]:
        enc.step([state], rec[None])
    assert state.scores.shape == (model.cfg.window, 4)
    for now in (int(recs[-1]["ts"]), int(recs[-1]["ts"]) + 7 * 3_600_000):
        np.testing.assert_allclose(enc.represent([state], [now])[0], _offline(model, recs, now), rtol=1e-4, atol=1e-5)
    weights = enc.attention_weights(state, int(recs[-1]["ts"]))
    assert weights.shape == (14,) and (weights > 0).all()
    if norm == "softmax":  # the heads' mean is a distribution, like one head's α
        assert weights.sum() == pytest.approx(1.0, abs=1e-5)


def test_one_head_is_the_talks_model_and_keeps_every_checkpoints_version() -> None:
    """H = 1 has the parameters (names and shapes) every existing checkpoint has, and its config hashes
    as one written before the field existed."""
    one, three = tiny_model(seed=3), tiny_model(seed=3, attention_heads=3)
    assert "attention_heads" in OMITTED_AT_DEFAULT and "attention_heads" not in json.loads(one.cfg.to_json())
    assert tuple(one.attention.score.weight.shape) == (1, TINY.attention_dim)
    assert tuple(one.attention.out.weight.shape) == (TINY.pooled_dim, TINY.value_dim)
    assert tuple(three.attention.out.weight.shape) == (TINY.pooled_dim, 3 * TINY.value_dim)
    assert StreamingEncoder(one, "t").init_state().scores.shape == (TINY.window,)
    with pytest.raises(ValueError, match="attention_heads"):
        tiny_model(attention_heads=0)
    assert EncoderConfig.from_dict(dataclasses.asdict(three.cfg)).attention_heads == 3
