"""Ranking candidates for one user with the CTR and L2R heads, split or not.

The CTR head's first layer is linear in [r; e_item], so W [r; e] = W_r r + W_e e:
the user part W_r r (and the L2R MLP of r) depend on the user only. A ranker
scoring N candidates for one user computes them once (:func:`score_split`)
instead of N times (:func:`score_unsplit`, the baseline kept to prove the
two agree and to measure what the split saves).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from encoder.features import item_record
from encoder.model import DUPN, BehaviorTensors

Candidate = Mapping[str, object]  # {item_id, shop_id?, brand_id?, category_id?, tags?}


@dataclass(frozen=True)
class UserPart:
    """What the heads need from one user: computed once per request, reused for every candidate."""

    ctr: Tensor  # (256,) first CTR layer applied to r; (256 + k,) with the interaction term's P r
    l2r: Tensor  # (n_ranking_features,) L2R weights derived from r

    @classmethod
    @torch.inference_mode()
    def of(cls, model: DUPN, rep: np.ndarray | Tensor) -> UserPart:
        r = _rep_tensor(rep)
        return cls(ctr=model.heads.ctr_user_part(r), l2r=model.heads.l2r_user_part(r))


def encode_candidates(model: DUPN, candidates: Sequence[Candidate]) -> Tensor:
    """Item vectors (N, E) of candidate dicts; unknown ids simply hash to some embedding row."""
    records = np.stack([item_record(dict(c)) for c in candidates])
    return model.item_vectors(BehaviorTensors.from_records(records, model.cfg))


def ranking_matrix(model: DUPN, n: int, ranking_features: np.ndarray | Sequence[Sequence[float]] | None) -> Tensor:
    """(N, F) ranking features; zeros when the caller has none (L2R score is then 0)."""
    width = model.cfg.n_ranking_features
    if ranking_features is None:
        return torch.zeros(n, width)
    feats = torch.as_tensor(np.asarray(ranking_features, np.float32))
    if tuple(feats.shape) != (n, width):
        raise ValueError(f"ranking_features must be ({n}, {width}), got {tuple(feats.shape)}")
    return feats


@torch.inference_mode()
def score_split(
    model: DUPN,
    rep: np.ndarray | Tensor,
    candidates: Sequence[Candidate],
    ranking_features: np.ndarray | Sequence[Sequence[float]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(ctr probability, l2r score) per candidate; user part once, item part per candidate."""
    items = encode_candidates(model, candidates)
    return score_split_vectors(model, UserPart.of(model, rep), items, ranking_matrix(model, len(candidates),
                                                                                        ranking_features))


@torch.inference_mode()
def score_split_vectors(model: DUPN, user: UserPart, items: Tensor, feats: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The split heads on pre-encoded items (what a ranker with an item-vector cache runs)."""
    ctr = torch.sigmoid(model.heads.ctr_item_part(user.ctr, items))
    l2r = (user.l2r.unsqueeze(0) * feats).sum(-1)
    return ctr.numpy(), l2r.numpy()


@torch.inference_mode()
def score_unsplit(
    model: DUPN,
    rep: np.ndarray | Tensor,
    candidates: Sequence[Candidate],
    ranking_features: np.ndarray | Sequence[Sequence[float]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The baseline: the whole head on [r; e_item] per candidate (user part recomputed N times)."""
    items = encode_candidates(model, candidates)
    return score_unsplit_vectors(model, _rep_tensor(rep), items, ranking_matrix(model, len(candidates),
                                                                                   ranking_features))


@torch.inference_mode()
def score_unsplit_vectors(model: DUPN, rep: Tensor, items: Tensor, feats: Tensor) -> tuple[np.ndarray, np.ndarray]:
    reps = rep.expand(items.shape[0], -1)
    ctr = torch.sigmoid(model.heads.ctr_logit(reps, items))
    l2r = model.heads.l2r_logit(reps, feats)
    return ctr.numpy(), l2r.numpy()


def _rep_tensor(rep: np.ndarray | Tensor) -> Tensor:
    r = rep if isinstance(rep, Tensor) else torch.from_numpy(np.asarray(rep, np.float32))
    if r.dim() != 1:
        raise ValueError(f"rep must be one vector, got shape {tuple(r.shape)}")
    return r
