"""``EncoderConfig.candidate_tables``: the CTR candidates read embedding tables of their own."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from encoder.checkpoint import load_checkpoint, save_checkpoint
from encoder.features import records_from_events
from encoder.model import BehaviorTensors, UserContext
from encoder.scoring import encode_candidates, score_split, score_unsplit
from tests.support.factories import TINY, make_events, tiny_model
from training.baselines import CNNMax, Wide, WideAndDeep


def _candidates(n: int) -> list[dict[str, object]]:
    return [{"item_id": f"i{k}", "shop_id": f"s{k % 5}", "category_id": f"c{k % 3}"} for k in range(n)]


def _history() -> tuple[BehaviorTensors, torch.Tensor, torch.Tensor]:
    recs = records_from_events(make_events("u", 12, seed=3))
    b = BehaviorTensors.from_records(recs[None, :], TINY)
    return b, torch.ones(1, len(recs), dtype=torch.bool), torch.tensor([int(recs[-1]["ts"])])


def test_candidates_and_histories_train_disjoint_rows() -> None:
    """The CTR loss's candidate side moves only the candidate tables, and the user part (the history)
    moves only the sequence tables: an item's candidate row learns from the CTR loss alone."""
    model = tiny_model(seed=1, candidate_tables=True).train()
    b, mask, now = _history()
    items = BehaviorTensors.from_records(
        np.stack([r for r in records_from_events(make_events("v", 6, seed=4))]), TINY
    )
    rep = model.encode(b, mask, now, UserContext()).expand(6, -1)
    cand = model.item_vectors(items)
    model.heads.ctr_logit(rep.detach(), cand).sum().backward()
    assert model.candidates is not None
    assert model.candidates.item.weight.grad is not None and model.candidates.item.weight.grad.abs().sum() > 0
    assert model.items.item.weight.grad is None
    model.zero_grad(set_to_none=True)
    model.encode(b, mask, now, UserContext()).sum().backward()
    assert model.items.item.weight.grad is not None and model.items.item.weight.grad.abs().sum() > 0
    assert model.candidates.item.weight.grad is None


def test_the_option_leaves_the_user_part_and_every_other_parameter_as_it_was() -> None:
    """Created last, the new tables change no other initial value: the served user vector of a model
    with the option equals the one without, and the stream worker never reads the new tables."""
    plain, own = tiny_model(seed=2), tiny_model(seed=2, candidate_tables=True)
    own_state = own.state_dict()
    for name, t in plain.state_dict().items():
        torch.testing.assert_close(own_state[name], t)
    assert {n for n in own_state if n.startswith("candidates.")} and not any(
        n.startswith("candidates.") for n in plain.state_dict()
    )
    b, mask, now = _history()
    with torch.no_grad():
        torch.testing.assert_close(own.encode(b, mask, now, UserContext()), plain.encode(b, mask, now, UserContext()))
    cands = _candidates(5)
    assert not torch.allclose(encode_candidates(own, cands), encode_candidates(plain, cands))


def test_split_scoring_and_checkpoints_carry_the_candidate_tables(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(seed=3, candidate_tables=True)
    rep = np.tanh(np.random.default_rng(1).normal(size=256)).astype(np.float32)
    ctr_s, _ = score_split(model, rep, _candidates(20))
    ctr_u, _ = score_unsplit(model, rep, _candidates(20))
    assert np.abs(ctr_s - ctr_u).max() <= 1e-6
    save_checkpoint(model, tmp_path / "m")
    loaded = load_checkpoint(tmp_path / "m")
    assert loaded.config.candidate_tables
    torch.testing.assert_close(
        encode_candidates(loaded.model, _candidates(20)), encode_candidates(model, _candidates(20))
    )


def test_baselines_get_the_same_option_and_wide_already_has_it() -> None:
    """W&D and CNN-max get own candidate tables too (the same heads and inputs for every model); Wide's
    ``items`` tables serve only its candidates already, so the option leaves Wide unchanged."""
    cfg = dataclasses.replace(TINY, candidate_tables=True)
    for cls in (WideAndDeep, CNNMax):
        torch.manual_seed(0)
        plain = cls(TINY)
        torch.manual_seed(0)
        own = cls(cfg)
        assert own.candidates is not None and plain.candidates is None
        torch.testing.assert_close(own.items.item.weight, plain.items.item.weight)
    torch.manual_seed(0)
    wide_plain = Wide(TINY)
    torch.manual_seed(0)
    wide_own = Wide(cfg)
    assert wide_own.candidates is None
    for name, t in wide_plain.state_dict().items():
        torch.testing.assert_close(wide_own.state_dict()[name], t)
