"""The paper's baselines, as user encoders that plug into DUPN's task heads.

Each exposes ``encode(b, mask, now, ctx) -> (B, 256)``, ``item_vectors`` and
``heads`` exactly like :class:`encoder.model.DUPN`, so every model is trained
and scored with the same heads, losses and data: only the user part differs.

- :class:`Wide`: logistic regression on hashed single and cross features.  The
  "representation" is the linear feature vector ``Σ_f w_f x_f`` (a 256-d
  weight row per hashed feature), so nothing before the heads is non-linear.
- :class:`WideAndDeep`: that wide vector plus an MLP over the *bag* of the
  history's item embeddings and the user context: no order, no time.
- :class:`CNNMax`: a 1-D convolution over the behavior sequence's item
  embeddings, max-pooled over time (order-aware only within the kernel).

None of them sees behavior properties (type, scenario, time gap) except as
Wide's hashed crosses, which is what the paper's comparison is about.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from encoder.config import EncoderConfig
from encoder.model import (
    DUPN,
    BehaviorTensors,
    ContextEmbedding,
    ItemEmbedding,
    TaskHeads,
    UserContext,
    candidate_vectors,
)

WIDE_BUCKETS = 1 << 15
_MIX = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D)


def cross_hash(field: int, a: Tensor, b: Tensor, buckets: int) -> Tensor:
    """Hash (field, a, b) of non-negative int64 ids into 1..buckets-1 (0 stays unused)."""
    h = (a * _MIX[0]) ^ (b * _MIX[1]) ^ (field * _MIX[2])
    return torch.remainder(h, buckets - 1) + 1


class _BaselineBase(nn.Module):
    """Shared item part, context embedding and heads (identical to DUPN's)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.items = ItemEmbedding(cfg)
        self.context = ContextEmbedding(cfg)
        self.rep_dropout = nn.Dropout(cfg.dropout)
        self.heads = TaskHeads(cfg)
        self.candidates: ItemEmbedding | None = None

    def item_vectors(self, b: BehaviorTensors) -> Tensor:
        return candidate_vectors(self.items, self.candidates, b)

    def add_candidate_tables(self) -> None:
        """With ``candidate_tables``: called at the end of a subclass's ``__init__``, so that its other
        parameters draw the same initial values with or without the option (as in DUPN)."""
        if self.cfg.candidate_tables:
            self.candidates = ItemEmbedding(self.cfg)

    def encode(self, b: BehaviorTensors, mask: Tensor, now: Tensor, ctx: UserContext) -> Tensor:
        raise NotImplementedError


class WideFeatures(nn.Module):
    r"""w = Σ_{f ∈ user features} W_f + mean_t Σ_{f ∈ behavior t's features} W_f + b.

    Behavior features (each hashed with its field): item, shop, brand,
    category, category×event type, shop×event type, category×scenario,
    category×query.  User features: query, age, gender, age×gender.  The
    history part is averaged over the window so long histories do not
    dominate; the whole map stays linear in the one-hot features.
    """

    def __init__(self, cfg: EncoderConfig, buckets: int = WIDE_BUCKETS) -> None:
        super().__init__()
        self.buckets = buckets
        self.weights = nn.EmbeddingBag(buckets, cfg.rep_dim, mode="sum")
        nn.init.normal_(self.weights.weight, std=0.01)
        self.bias = nn.Parameter(torch.zeros(cfg.rep_dim))

    def forward(self, b: BehaviorTensors, mask: Tensor, ctx: UserContext) -> Tensor:
        n = self.buckets
        bsz, length = mask.shape
        zero = torch.zeros_like(b.item)
        q = ctx.query.unsqueeze(1).expand(bsz, length) if ctx.query is not None else zero
        per_behavior = torch.stack(
            [
                cross_hash(1, b.item, zero, n),
                cross_hash(2, b.shop, zero, n),
                cross_hash(3, b.brand, zero, n),
                cross_hash(4, b.category, zero, n),
                cross_hash(5, b.category, b.event_type, n),
                cross_hash(6, b.shop, b.event_type, n),
                cross_hash(7, b.category, b.scenario, n),
                cross_hash(8, b.category, q, n),
            ],
            dim=-1,
        ).reshape(bsz, -1)
        n_valid = mask.sum(-1, keepdim=True).clamp(min=1)
        w_beh = (mask.float() / n_valid).repeat_interleave(8, dim=1)
        user = self._user_features(ctx, bsz, mask.device)
        ids = torch.cat([per_behavior, user], dim=1)
        weights = torch.cat([w_beh, torch.ones(user.shape, device=mask.device)], dim=1)
        return self.weights(ids, per_sample_weights=weights) + self.bias

    def _user_features(self, ctx: UserContext, bsz: int, device: torch.device) -> Tensor:
        zero = torch.zeros(bsz, dtype=torch.int64, device=device)
        q = ctx.query if ctx.query is not None else zero
        age = (ctx.age_group if ctx.age_group is not None else zero - 1) + 1  # 0 = unknown
        gen = (ctx.gender if ctx.gender is not None else zero - 1) + 1
        n = self.buckets
        return torch.stack(
            [
                cross_hash(20, q, zero, n),
                cross_hash(21, age, zero, n),
                cross_hash(22, gen, zero, n),
                cross_hash(23, age, gen, n),
            ],
            dim=1,
        )


class Wide(_BaselineBase):
    """Logistic-regression-style user part: the rep is the linear feature vector."""

    def __init__(self, cfg: EncoderConfig, buckets: int = WIDE_BUCKETS) -> None:
        super().__init__(cfg)
        self.wide = WideFeatures(cfg, buckets)
        # no add_candidate_tables(): Wide's ``items`` tables serve the candidates alone already (its
        # history is hashed feature rows), which is what ``candidate_tables`` gives the other models

    def encode(self, b: BehaviorTensors, mask: Tensor, now: Tensor, ctx: UserContext) -> Tensor:
        return self.wide(b, mask, ctx)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class WideAndDeep(_BaselineBase):
    r"""r = wide(x) + MLP([mean_t e_t; q; u]): a bag of history embeddings, no sequence order."""

    def __init__(self, cfg: EncoderConfig, buckets: int = WIDE_BUCKETS, hidden: int = 256) -> None:
        super().__init__(cfg)
        self.wide = WideFeatures(cfg, buckets)
        d_in = cfg.item_vec_dim + cfg.query_dim + cfg.profile_dim
        self.deep = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, cfg.rep_dim))
        self.add_candidate_tables()

    def encode(self, b: BehaviorTensors, mask: Tensor, now: Tensor, ctx: UserContext) -> Tensor:
        bag = _masked_mean(self.items(b), mask)
        q, u = self.context(ctx, mask.shape[0])
        return self.wide(b, mask, ctx) + self.deep(torch.cat([bag, q, u], dim=-1))


class CNNMax(_BaselineBase):
    r"""r = tanh(W [max_t ReLU(conv_k(e)_t); q; u] + b): convolution over behaviors, max over time."""

    def __init__(self, cfg: EncoderConfig, channels: int = 128, kernel: int = 3) -> None:
        super().__init__(cfg)
        self.conv = nn.Conv1d(cfg.item_vec_dim, channels, kernel, padding=kernel // 2)
        self.out = nn.Linear(channels + cfg.query_dim + cfg.profile_dim, cfg.rep_dim)
        self.add_candidate_tables()

    def encode(self, b: BehaviorTensors, mask: Tensor, now: Tensor, ctx: UserContext) -> Tensor:
        e = self.items(b) * mask.unsqueeze(-1)  # padded steps contribute zeros to the kernels
        feats = torch.relu(self.conv(e.transpose(1, 2))).transpose(1, 2)  # (B, L, C)
        feats = feats.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        pooled = feats.max(dim=1).values
        pooled = torch.where(torch.isinf(pooled), torch.zeros_like(pooled), pooled)  # empty window
        q, u = self.context(ctx, mask.shape[0])
        return torch.tanh(self.out(torch.cat([pooled, q, u], dim=-1)))


class WideAndDUPN(DUPN):
    r"""r = DUPN(x) + wide(x): a research probe, not a baseline and not served.

    It asks whether DUPN's sequence model adds anything on top of Wide's per-feature rows at this data
    size (docs/eval.md, the session-7 screen): if this row's validation CTR equals Wide's, the rows are
    what the CTR head uses and the LSTM's contribution is nil. The wide part sees the attention window
    (``pool_mask``), like the baselines.
    """

    def __init__(self, cfg: EncoderConfig, buckets: int = WIDE_BUCKETS) -> None:
        super().__init__(cfg)
        self.wide = WideFeatures(cfg, buckets)

    def encode(
        self, b: BehaviorTensors, mask: Tensor, now: Tensor, ctx: UserContext, pool_mask: Tensor | None = None,
        items: Tensor | None = None,
    ) -> Tensor:
        window = mask if pool_mask is None else pool_mask
        return super().encode(b, mask, now, ctx, pool_mask, items) + self.wide(b, window, ctx)


#: research probes a learning curve may train besides DUPN-all and the baselines
PROBES: dict[str, type[DUPN]] = {"Wide+DUPN": WideAndDUPN}

BASELINES: dict[str, type[_BaselineBase]] = {"Wide": Wide, "Wide&Deep": WideAndDeep, "CNN-max": CNNMax}


def make_baseline(name: str, cfg: EncoderConfig) -> _BaselineBase:
    """A fresh baseline by its table name (Wide, Wide&Deep, CNN-max)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; expected one of {sorted(BASELINES)}")
    return BASELINES[name](cfg)
