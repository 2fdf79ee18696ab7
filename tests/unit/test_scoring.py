"""The split heads (user part once) score exactly like the unsplit baseline."""

from __future__ import annotations

import numpy as np
import pytest

from encoder.scoring import score_split, score_unsplit
from tests.support.factories import tiny_model


def _candidates(n: int) -> list[dict[str, object]]:
    return [
        {"item_id": f"i{k}", "shop_id": f"s{k % 7}", "brand_id": f"b{k % 5}", "category_id": f"c{k % 3}",
         "tags": [f"t{k % 11}", f"t{k % 4}"]}
        for k in range(n)
    ] + [{"item_id": "bare"}]


def test_split_equals_unsplit_on_tiny_model() -> None:
    model = tiny_model(seed=3)
    rng = np.random.default_rng(0)
    rep = np.tanh(rng.normal(size=256)).astype(np.float32)
    items = _candidates(40)
    feats = rng.normal(size=(len(items), model.cfg.n_ranking_features)).astype(np.float32)
    ctr_s, l2r_s = score_split(model, rep, items, feats)
    ctr_u, l2r_u = score_unsplit(model, rep, items, feats)
    assert ctr_s.shape == (len(items),) and l2r_s.shape == (len(items),)
    assert np.abs(ctr_s - ctr_u).max() <= 1e-5
    assert np.abs(l2r_s - l2r_u).max() <= 1e-5
    assert ctr_s.std() > 0  # candidates are actually told apart
    assert np.all((ctr_s > 0) & (ctr_s < 1))


def test_missing_ranking_features_are_zeros_and_wrong_shape_is_refused() -> None:
    model = tiny_model(seed=3)
    rep = np.zeros(256, np.float32)
    ctr, l2r = score_split(model, rep, _candidates(3))
    assert np.all(l2r == 0) and ctr.shape == (4,)
    with pytest.raises(ValueError, match="ranking_features"):
        score_split(model, rep, _candidates(3), np.zeros((2, 2), np.float32))
