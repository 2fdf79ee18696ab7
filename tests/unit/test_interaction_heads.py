"""The CTR and talent heads' factorised user×candidate term (``EncoderConfig.interaction_dim``)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from encoder.checkpoint import load_checkpoint, model_version_of, save_checkpoint
from encoder.config import OMITTED_AT_DEFAULT, EncoderConfig
from encoder.model import UserContext
from encoder.scoring import score_split, score_unsplit
from tests.support.factories import TINY, tiny_model


def _candidates(n: int) -> list[dict[str, object]]:
    return [{"item_id": f"i{k}", "shop_id": f"s{k % 5}", "category_id": f"c{k % 3}"} for k in range(n)]


def test_split_scoring_equals_unsplit_with_the_interaction_term() -> None:
    model = tiny_model(seed=2, interaction_dim=8)
    rep = np.tanh(np.random.default_rng(1).normal(size=256)).astype(np.float32)
    ctr_s, _ = score_split(model, rep, _candidates(30))
    ctr_u, _ = score_unsplit(model, rep, _candidates(30))
    assert np.abs(ctr_s - ctr_u).max() <= 1e-6
    assert ctr_s.std() > 0


def test_ctr_and_talent_logits_follow_the_documented_equation() -> None:
    """z = MLP(W r + W' e) + ⟨P r, Q e⟩ / √k (and the same with the talent embedding)."""
    model = tiny_model(seed=4, interaction_dim=8)
    h = model.heads
    torch.manual_seed(0)
    rep, item = torch.randn(5, 256), torch.randn(5, model.cfg.item_vec_dim)
    with torch.no_grad():
        mlp = h.ctr_mlp(h.ctr_user(rep) + h.ctr_item(item)).squeeze(-1)
        dot = (h.ctr_user_dot(rep) * h.ctr_item_dot(item)).sum(-1) / 8**0.5
        torch.testing.assert_close(h.ctr_logit(rep, item), mlp + dot)
        talent, feats = torch.tensor([1, 2, 3, 4, 5]), torch.randn(5, model.cfg.n_talent_features)
        emb = h.talent_emb(talent)
        base = h.talent(torch.cat([rep, emb, feats], -1)).squeeze(-1)
        tdot = (h.talent_user_dot(rep) * h.talent_item_dot(emb)).sum(-1) / 8**0.5
        torch.testing.assert_close(h.talent_logit(rep, talent, feats), base + tdot)


def test_the_interaction_term_learns_a_match_the_concatenation_head_does_not_state() -> None:
    """Its parameters get gradients from the CTR loss (they are trained, not decoration)."""
    model = tiny_model(seed=5, interaction_dim=8).train()
    rep, item = torch.randn(16, 256), torch.randn(16, model.cfg.item_vec_dim)
    y = torch.randint(0, 2, (16,)).float()
    torch.nn.functional.binary_cross_entropy_with_logits(model.heads.ctr_logit(rep, item), y).backward()
    for p in (model.heads.ctr_user_dot.weight, model.heads.ctr_item_dot.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_without_the_term_the_model_and_its_version_are_unchanged(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """k = 0 (and no value skip) is the model every existing checkpoint has: no new parameters, and a
    config written before the fields existed hashes (and so loads) to the same model_version."""
    plain = tiny_model(seed=6)
    assert not any("_dot" in name or "value_item" in name for name in plain.state_dict())
    older = {k: v for k, v in dataclasses.asdict(TINY).items() if k not in OMITTED_AT_DEFAULT}
    assert json.loads(EncoderConfig.from_dict(older).to_json()) == older
    state = plain.state_dict()
    assert model_version_of(state, EncoderConfig.from_dict(older)) == model_version_of(state, TINY)
    with_term = tiny_model(seed=6, interaction_dim=8)
    assert json.loads(with_term.cfg.to_json())["interaction_dim"] == 8
    version = save_checkpoint(with_term, tmp_path / "m")
    loaded = load_checkpoint(tmp_path / "m")
    assert loaded.model_version == version and loaded.config.interaction_dim == 8


def test_sigmoid_attention_serves_what_the_model_computes_and_keeps_intensity() -> None:
    """``attention_norm = "sigmoid"``: the worker's pooled vector (kept scores, no context) equals
    the model's own encode of the window, and the weights are σ(s)/W, not normalised to sum to 1
    (so the pooled vector carries how many behaviors match, not only what they look like)."""
    from encoder.features import records_from_events
    from encoder.model import BehaviorTensors
    from encoder.streaming import StreamingEncoder
    from tests.support.factories import make_events

    model = tiny_model(seed=7, attention_norm="sigmoid")
    enc = StreamingEncoder(model, "t")
    recs = records_from_events(make_events("u", 12, seed=1))
    served = enc.represent(enc.replay([recs]), [int(recs[-1]["ts"])])
    b = BehaviorTensors.from_records(recs[None, :], model.cfg)
    mask = torch.ones(1, len(recs), dtype=torch.bool)
    with torch.no_grad():
        offline = model.encode(b, mask, torch.tensor([int(recs[-1]["ts"])]), UserContext()).numpy()
    np.testing.assert_allclose(served, offline, rtol=1e-4, atol=1e-5)
    alpha = model.attention.alpha(torch.zeros(1, 4), torch.tensor([[True, True, False, False]]))
    assert alpha.tolist()[0] == pytest.approx([0.5 / model.cfg.window] * 2 + [0.0, 0.0])
