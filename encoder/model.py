"""DUPN in torch: embeddings, property-gated LSTM, attention pooling, task heads.

The same cell and pooling functions serve training (whole padded sequences)
and streaming (one step at a time from carried state), so the two paths cannot
drift apart. The one exception is the cell's recurrent loop at inference,
which the stream worker runs in numpy (:meth:`PropertyGatedLSTMCell.recur_packed`,
for speed at small batches); a unit test holds it to :meth:`~PropertyGatedLSTMCell.recur`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from encoder.config import EncoderConfig
from encoder.features import BEHAVIOR_DTYPE, N_TIME_BUCKETS, bucketize, time_bucket


@dataclass
class BehaviorTensors:
    """Model inputs for a (B, L) block of behavior records."""

    item: Tensor
    shop: Tensor
    brand: Tensor
    category: Tensor
    tags: Tensor
    event_type: Tensor
    scenario: Tensor
    gap: Tensor
    ts: Tensor

    @classmethod
    def from_records(cls, rec: np.ndarray, cfg: EncoderConfig) -> BehaviorTensors:
        if rec.dtype != BEHAVIOR_DTYPE:
            raise TypeError(f"expected BEHAVIOR_DTYPE records, got {rec.dtype}")

        def t(a: np.ndarray) -> Tensor:
            return torch.from_numpy(np.array(a, dtype=np.int64, order="C"))

        return cls(
            item=t(bucketize(rec["item"], cfg.item_buckets)),
            shop=t(bucketize(rec["shop"], cfg.shop_buckets)),
            brand=t(bucketize(rec["brand"], cfg.brand_buckets)),
            category=t(bucketize(rec["category"], cfg.category_buckets)),
            tags=t(bucketize(rec["tags"], cfg.tag_buckets)),
            event_type=t(rec["event_type"]),
            scenario=t(rec["scenario"]),
            gap=t(rec["gap_bucket"]),
            ts=t(rec["ts"]),
        )


class ItemEmbedding(nn.Module):
    """e = [E_item; E_shop; E_brand; E_cat; mean(E_tags)] (32+24+24+16+28 = 124-d)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.item = nn.Embedding(cfg.item_buckets, cfg.item_dim)
        self.shop = nn.Embedding(cfg.shop_buckets, cfg.shop_dim)
        self.brand = nn.Embedding(cfg.brand_buckets, cfg.brand_dim)
        self.category = nn.Embedding(cfg.category_buckets, cfg.category_dim)
        self.tags = nn.Embedding(cfg.tag_buckets, cfg.tag_dim, padding_idx=0)
        for emb in (self.item, self.shop, self.brand, self.category, self.tags):
            nn.init.normal_(emb.weight, std=cfg.embedding_std)

    def forward(self, b: BehaviorTensors) -> Tensor:
        n_tags = (b.tags > 0).sum(-1, keepdim=True).clamp(min=1)
        tag_vec = self.tags(b.tags).sum(-2) / n_tags
        parts = [self.item(b.item), self.shop(b.shop), self.brand(b.brand), self.category(b.category), tag_vec]
        return torch.cat(parts, dim=-1)


class PropertyEmbedding(nn.Module):
    """p = [E_scenario; E_time(gap bucket); E_type] (16+16+16 = 48-d)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.scenario = nn.Embedding(4, cfg.scenario_dim)
        self.time = nn.Embedding(N_TIME_BUCKETS, cfg.time_dim)
        self.event_type = nn.Embedding(4, cfg.type_dim)

    def forward(self, b: BehaviorTensors) -> Tensor:
        return torch.cat([self.scenario(b.scenario), self.time(b.gap), self.event_type(b.event_type)], dim=-1)


class PropertyGatedLSTMCell(nn.Module):
    r"""One step of the property-gated LSTM (DUPN, KDD'18, eq. 1-6).

    With item embedding e_t, behavior properties p_t and carried (h, c):

        i_t = σ(W_ie e_t + W_ip p_t + W_ih h_{t-1} + b_i)
        f_t = σ(W_fe e_t + W_fp p_t + W_fh h_{t-1} + b_f)
        o_t = σ(W_oe e_t + W_op p_t + W_oh h_{t-1} + b_o)
        g_t = tanh(W_ge e_t + W_gh h_{t-1} + b_g)
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
        h_t = o_t ⊙ tanh(c_t)

    The properties enter the three gates only: they decide how much of a
    behavior is let in, kept and shown, not what its content is. Without
    ``props_in_lstm`` (DUPN-nobp/-bpatt) the W_*p terms are absent.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        h = cfg.hidden
        self.hidden = h
        self.from_item = nn.Linear(cfg.item_vec_dim, 4 * h)
        self.from_hidden = nn.Linear(h, 4 * h, bias=False)
        self.from_props = nn.Linear(cfg.prop_vec_dim, 3 * h, bias=False) if cfg.props_in_lstm else None
        with torch.no_grad():  # start with forget gates open (standard LSTM practice)
            self.from_item.bias[h : 2 * h].fill_(1.0)

    def forward(self, e: Tensor, p: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        return self.recur(self.input_projection(e, p), h, c)

    def input_projection(self, e: Tensor, p: Tensor) -> Tensor:
        """x_t = [W_ie e + W_ip p + b_i; W_fe e + W_fp p + b_f; W_oe e + W_op p + b_o; W_ge e + b_g].

        Everything of a step that does not depend on (h, c): computed for a whole
        sequence (or a whole batch of events) in one matmul, outside the time loop.
        """
        x = self.from_item(e)
        if self.from_props is not None:
            x = x + torch.nn.functional.pad(self.from_props(p), (0, self.hidden))
        return x

    def recur(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """The recurrent part: z = x_t + W_*h h_{t-1}; then the gates, c_t and h_t (eq. 1-6)."""
        z = torch.addmm(x, h, self.from_hidden.weight.t())
        hid = self.hidden
        gates = torch.sigmoid(z[..., : 3 * hid])
        i, f, o = gates[..., :hid], gates[..., hid : 2 * hid], gates[..., 2 * hid :]
        c_new = f * c + i * torch.tanh(z[..., 3 * hid :])
        h_new = o * torch.tanh(c_new)
        return h_new, c_new

    def recur_packed(
        self, x: np.ndarray, h: np.ndarray, c: np.ndarray, step_offsets: Sequence[int], step_sizes: Sequence[int]
    ) -> np.ndarray:
        """:meth:`recur` over a packed time-major batch, in numpy, for inference; ``h`` and ``c`` in place.

        Step t holds the t-th inputs of the ``step_sizes[t]`` users still active (a prefix: users sorted
        longest first), at ``x[step_offsets[t]:]``. Returns every step's h_t in that layout. The same
        equations as :meth:`recur`, with σ(z) = (1 + tanh(z / 2)) / 2 (exact, and no overflow).

        Why numpy: the stream worker's batches are small (tens of users at low load) and a re-anchoring
        user makes the loop run ~100 steps with one or a few users active. There each step is a handful
        of tiny operations, and torch's per-operation dispatch (~35 µs a step) costs three times
        numpy's (~11 µs); at large batches the two are level (the matmul dominates).
        """
        hid = self.hidden
        w_hh = self.from_hidden.weight.detach().numpy().T  # (H, 4H), a view: always the current weights
        hs = np.empty((x.shape[0], hid), np.float32)
        z_buf = np.empty((step_sizes[0] if len(step_sizes) else 0, 4 * hid), np.float32)
        for lo, n in zip(step_offsets, step_sizes, strict=True):
            z = z_buf[:n]
            np.matmul(h[:n], w_hh, out=z)
            z += x[lo : lo + n]  # z = x_t + W_*h h_{t-1}
            gates = z[:, : 3 * hid]
            gates *= 0.5
            np.tanh(gates, out=gates)
            gates += 1.0
            gates *= 0.5  # σ of the i, f, o rows
            c_new = gates[:, hid : 2 * hid] * c[:n] + gates[:, :hid] * np.tanh(z[:, 3 * hid :])
            c[:n] = c_new  # c_t = f ⊙ c_{t-1} + i ⊙ g_t
            h[:n] = hs[lo : lo + n] = gates[:, 2 * hid :] * np.tanh(c_new)  # h_t = o ⊙ tanh(c_t)
        return hs


class AttentionPooling(nn.Module):
    r"""Attention pooling over the LSTM outputs with a query/profile/age context.

    Per behavior t (precomputed once, at the step that produced h_t):

        k_t = W_k h_t + W_kp [E_type(t); E_scenario(t)]      (attention_dim)
        v_t = W_v h_t                                         (value_dim)
        v_t = W_v h_t + W_ve e_t + E_vt(type_t)               (with ``value_skip``)

    At pooling time "now" (cheap; no LSTM step):

        s_t = w^T tanh(k_t + W_c [q; u] + E_age(bucket(now - ts_t)))
        α   = softmax_t(s_t)            (over the ≤ 100 behaviors in the window)
        α_t = σ(s_t) / W                (``attention_norm = "sigmoid"``, W the window size)
        pooled = W_o Σ_t α_t v_t        (pooled_dim = 128)

    With H = ``attention_heads`` > 1 (our extension, not the talk's), head h has its own score vector
    w_h over the same pre-activation, its own weights and its own pooled values:

        s_ht = w_h^T tanh(k_t + W_c [q; u] + E_age(bucket(now - ts_t)))
        α_h  = softmax_t(s_ht)
        pooled = W_o [Σ_t α_1t v_t; …; Σ_t α_Ht v_t]

    Why it exists: one softmax must choose which behaviors r hears about. Trained on four tasks it puts
    buys at ~11× a uniform weight and clicks at ~0.5× (results/eval.md's attention table), which is what
    purchasing power rewards, and CTR trained alone reaches +0.04 AUC more (results/screen13.md item 14);
    the hypothesis was that H distributions let r carry both. Measured (item 16): H = 2, 4, 8 move
    validation CTR by < 1 SE, so it stays off by default. Cost: H scores per behavior instead of one.

    q is the query embedding (learned default when there is no query, the
    streaming case) and u the user-profile vector. Without
    ``props_in_attention`` (DUPN-nobp/-bplstm) the W_kp and age terms are absent.

    ``value_skip`` (our extension, not the talk's) is a skip connection around the LSTM: h_t after
    up to 100 steps is a lossy, recency-biased summary, so a pooled "which items, shops and
    categories, and how (type)" had to survive the recurrence. With the skip, each behavior's own
    embedding and type reach the pooled vector directly (and their gradients reach the embeddings
    without 100 steps of backpropagation through time); α still decides which behaviors count.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        a = cfg.attention_dim
        self.key = nn.Linear(cfg.hidden, a)
        self.value = nn.Linear(cfg.hidden, cfg.value_dim, bias=False)
        self.use_props = cfg.props_in_attention
        self.key_type = nn.Embedding(4, a)
        self.key_scenario = nn.Embedding(4, a)
        self.age = nn.Embedding(N_TIME_BUCKETS, a)
        for emb in (self.key_type, self.key_scenario, self.age):
            nn.init.normal_(emb.weight, std=0.1)
        self.context = nn.Linear(cfg.query_dim + cfg.profile_dim, a, bias=False)
        if cfg.attention_heads < 1:
            raise ValueError(f"attention_heads must be at least 1, got {cfg.attention_heads}")
        self.n_heads = cfg.score_heads
        self.score = nn.Linear(a, self.n_heads, bias=False)
        self.out = nn.Linear(self.n_heads * cfg.value_dim, cfg.pooled_dim)
        self.value_skip = cfg.value_skip
        if cfg.attention_norm not in ("softmax", "sigmoid"):
            raise ValueError(f"attention_norm must be softmax or sigmoid, got {cfg.attention_norm!r}")
        self.sigmoid_weights = cfg.attention_norm == "sigmoid"
        self.window = cfg.window
        if cfg.value_skip:
            self.value_item = nn.Linear(cfg.item_vec_dim, cfg.value_dim, bias=False)
            self.value_type = nn.Embedding(4, cfg.value_dim)
            nn.init.normal_(self.value_type.weight, std=0.1)

    def keys_values(
        self, h: Tensor, event_type: Tensor, scenario: Tensor, items: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(k_t, v_t) of behaviors with hidden states ``h``; ``items`` (e_t) is required with ``value_skip``."""
        k = self.key(h)
        if self.use_props:
            k = k + self.key_type(event_type) + self.key_scenario(scenario)
        v = self.value(h)
        if self.value_skip:
            if items is None:
                raise ValueError("value_skip needs the behaviors' item embeddings")
            v = v + self.value_item(items) + self.value_type(event_type)
        return k, v

    def weights_projected(self, k: Tensor, ts: Tensor, mask: Tensor, now: Tensor, context: Tensor) -> Tensor:
        """α (B, L), or (B, L, H) with H > 1 heads, given the projected context W_c [q; u]: k (B, L, A),
        ts/mask (B, L), now (B,), context (B, A), or (1, A) for one shared by the batch.

        A context constant across users (the streaming case: no query, default
        profile) is projected once, not once per user per batch.
        """
        ages = age_buckets(now.unsqueeze(1) - ts) if self.use_props else None
        return self.alpha(self.scores(k, ages, context.unsqueeze(1)), mask)

    def scores(self, k: Tensor, ages: Tensor | None, context: Tensor) -> Tensor:
        """s_t = w^T tanh(k_t + W_c [q; u] + E_age(bucket_t)): k (..., A), ages (...), context broadcast to k.
        Returns (...), or (..., H) with H > 1 heads (s_ht = w_h^T tanh(…)).

        A behavior's score depends only on its key, its age bucket and the
        context, so with a constant context it can be kept until the bucket moves
        (see :class:`encoder.streaming.EncoderState`).
        """
        pre = k + context
        if self.use_props and ages is not None:
            pre = pre + self.age(ages)
        s = self.score(torch.tanh(pre))
        return s.squeeze(-1) if self.n_heads == 1 else s

    def alpha(self, s: Tensor, mask: Tensor) -> Tensor:
        """α = softmax over the valid behaviors of each row; an empty window gets all zeros.

        With ``attention_norm = "sigmoid"``: α_t = σ(s_t) / W over the valid behaviors (W the window
        size). Softmax makes Σ α = 1, so the pooled vector says what the attended behaviors look like
        but not how many there are: a user with 40 of 100 behaviors in the query's category and one
        with 2 pool alike. Why the option: DIN (Zhou et al., KDD 2018, §4.3) drops the normalisation
        for this reason, "to reserve the intensity of user interests".
        """
        over = -1
        if s.dim() == mask.dim() + 1:  # H heads, s (..., L, H): each head normalised over L on its own
            mask, over = mask.unsqueeze(-1), -2
        if self.sigmoid_weights:
            return torch.sigmoid(s) * mask / self.window
        alpha = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=over)
        return torch.nan_to_num(alpha, nan=0.0)  # an empty window pools to zero

    def forward(self, k: Tensor, v: Tensor, ts: Tensor, mask: Tensor, now: Tensor, ctx: Tensor) -> Tensor:
        return self.pool_projected(k, v, ts, mask, now, self.context(ctx))

    def pool_projected(self, k: Tensor, v: Tensor, ts: Tensor, mask: Tensor, now: Tensor, context: Tensor) -> Tensor:
        """pooled = W_o Σ_t α_t v_t, with the context already projected (see :meth:`weights_projected`)."""
        return self.pool(self.weights_projected(k, ts, mask, now, context), v)

    def pool(self, alpha: Tensor, v: Tensor) -> Tensor:
        """pooled = W_o Σ_t α_t v_t; α (B, L), v (B, L, V); with H heads α (B, L, H) and
        pooled = W_o [Σ_t α_1t v_t; …; Σ_t α_Ht v_t]."""
        if alpha.dim() == 3:
            return self.out(torch.einsum("blh,blv->bhv", alpha, v).flatten(1))
        return self.out(torch.einsum("bl,blv->bv", alpha, v))


def age_buckets(delta_ms: Tensor) -> Tensor:
    """Torch twin of features.time_bucket (for ages computed on tensors)."""
    edges = _edges_tensor(delta_ms.device)
    return torch.bucketize(delta_ms.clamp(min=0), edges, right=True) + 1


_EDGE_CACHE: dict[torch.device, Tensor] = {}


def _edges_tensor(device: torch.device) -> Tensor:
    if device not in _EDGE_CACHE:
        from encoder.features import TIME_BUCKET_EDGES_MS

        _EDGE_CACHE[device] = torch.tensor(TIME_BUCKET_EDGES_MS, dtype=torch.int64, device=device)
    return _EDGE_CACHE[device]


def _check_bucket_twins() -> None:  # pragma: no cover - import-time sanity
    probe = np.array([0, 9_999, 10_000, 3_000_000_000], dtype=np.int64)
    assert (age_buckets(torch.from_numpy(probe)).numpy() == time_bucket(probe)).all()


@dataclass
class UserContext:
    """Optional request context: query (hashed category/query id) and profile."""

    query: Tensor | None = None  # (B,) bucket index, 0 = no query
    age_group: Tensor | None = None  # (B,) 0.. or -1 = unknown
    gender: Tensor | None = None


class ContextEmbedding(nn.Module):
    """[q; u]: query and profile vectors, each a learned default when absent."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.query = nn.Embedding(cfg.query_buckets, cfg.query_dim)  # row 0 = "no query"
        self.age_group = nn.Embedding(cfg.n_age_groups + 1, cfg.profile_dim)  # last row = unknown
        self.gender = nn.Embedding(cfg.n_genders + 1, cfg.profile_dim)
        self.n_age, self.n_gender = cfg.n_age_groups, cfg.n_genders
        for emb in (self.query, self.age_group, self.gender):
            nn.init.normal_(emb.weight, std=cfg.embedding_std)

    def forward(self, ctx: UserContext, batch: int) -> tuple[Tensor, Tensor]:
        dev = self.query.weight.device
        zeros = torch.zeros(batch, dtype=torch.int64, device=dev)
        q = self.query(ctx.query if ctx.query is not None else zeros)
        age = ctx.age_group if ctx.age_group is not None else zeros - 1
        gen = ctx.gender if ctx.gender is not None else zeros - 1
        # Negative (unknown) and codes the model has no row for (a producer's coding newer than the
        # model) both read the "unknown" row: a code never fails a read or a worker.
        age = torch.where((age < 0) | (age >= self.n_age), torch.full_like(age, self.n_age), age)
        gen = torch.where((gen < 0) | (gen >= self.n_gender), torch.full_like(gen, self.n_gender), gen)
        u = self.age_group(age) + self.gender(gen)
        return q, u


class DUPN(nn.Module):
    """The user part (sequence → 256-d representation) plus the task heads (item part)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.items = ItemEmbedding(cfg)
        self.props = PropertyEmbedding(cfg)
        self.cell = PropertyGatedLSTMCell(cfg)
        self.attention = AttentionPooling(cfg)
        self.context = ContextEmbedding(cfg)
        side = cfg.profile_dim + (cfg.query_dim if cfg.query_in_rep else 0)
        self.rep = nn.Linear(cfg.pooled_dim + side, cfg.rep_dim)
        self.rep_dropout = nn.Dropout(cfg.dropout)
        self.heads = TaskHeads(cfg)
        # created last, so that every other parameter draws the same initial values with or without it
        self.candidates = ItemEmbedding(cfg) if cfg.candidate_tables else None
        for name, mask in tower_masks(cfg).items():
            parametrize.register_parametrization(self.get_submodule(name), "weight", _Masked(mask))

    @property
    def towers(self) -> int:
        return self.cfg.towers

    # -- user part -------------------------------------------------------------------
    def run_lstm(
        self,
        b: BehaviorTensors,
        mask: Tensor,
        h: Tensor | None = None,
        c: Tensor | None = None,
        items: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Run the cell over (B, L) left-padded behaviors; padded steps keep the state.

        ``items``: the behaviors' item embeddings if the caller already has them.
        Returns all hidden states (B, L, H) and the final (h, c).
        """
        bsz, length = mask.shape
        hid = self.cfg.hidden
        h = torch.zeros(bsz, hid) if h is None else h
        c = torch.zeros(bsz, hid) if c is None else c
        x = self.cell.input_projection(self.items(b) if items is None else items, self.props(b))
        # unbind, not x[:, t]: the backward of each x[:, t] allocates and zero-fills a gradient the size
        # of all of x (B, L, 4H), L times per step (10 GB of page faults per training step at B=512,
        # L=100); unbind's backward stacks the L slices' gradients once.
        steps = x.unbind(1)
        outs = []
        with parametrize.cached():  # towers: W_*h ⊙ M once per run, not once per step
            for t in range(length):
                h_new, c_new = self.cell.recur(steps[t], h, c)
                m = mask[:, t].unsqueeze(-1)
                h = torch.where(m, h_new, h)
                c = torch.where(m, c_new, c)
                outs.append(h)
        hs = torch.stack(outs, dim=1) if outs else torch.zeros(bsz, 0, hid)
        return hs, h, c

    def user_context(self, ctx: UserContext, batch: int) -> tuple[Tensor, Tensor]:
        """([q; u], side): the attention context and what enters the representation beside the
        pooled vector: u, or [u; q] with ``query_in_rep``."""
        q, u = self.context(ctx, batch)
        side = torch.cat([u, q], dim=-1) if self.cfg.query_in_rep else u
        return torch.cat([q, u], dim=-1), side

    def representation(self, pooled: Tensor, side: Tensor) -> Tensor:
        """r = tanh(W_r [pooled; u] + b_r), or tanh(W_r [pooled; u; q] + b_r) with ``query_in_rep``:
        the 256-d user representation (``side`` from :meth:`user_context`)."""
        linear = self.rep(torch.cat([pooled, side], dim=-1))
        return torch.tanh(linear) if self.cfg.rep_tanh else linear

    def encode(
        self, b: BehaviorTensors, mask: Tensor, now: Tensor, ctx: UserContext, pool_mask: Tensor | None = None,
        items: Tensor | None = None,
    ) -> Tensor:
        """User representation of (B, L) left-padded runs as of ``now`` (B,) ms.

        The LSTM runs over ``mask``; attention pools over ``pool_mask`` (default: the same).
        A run that starts before the window (the incremental policy's anchored run, see
        ``encoder.streaming.UpdatePolicy``) passes the last W positions as ``pool_mask``: its
        first steps only warm the state up, exactly as the stream worker computes it.
        ``items``: the behaviors' item embeddings e_t if the caller has them (training passes them
        detached for tasks that must not move the tables, ``TrainConfig.embedding_tasks``).
        """
        e = self.items(b) if items is None else items
        hs, _, _ = self.run_lstm(b, mask, items=e)
        k, v = self.attention.keys_values(hs, b.event_type, b.scenario, e)
        full_ctx, side = self.user_context(ctx, mask.shape[0])
        pooled = self.attention(k, v, b.ts, mask if pool_mask is None else pool_mask, now, full_ctx)
        return self.representation(pooled, side)

    # -- item part --------------------------------------------------------------------
    def item_vectors(self, b: BehaviorTensors) -> Tensor:
        """e_item of candidates: e = [E_item; E_shop; E_brand; E_cat; mean(E_tags)] from the behavior
        sequence's tables, or from tables of their own with ``candidate_tables`` (see :func:`candidate_vectors`)."""
        return candidate_vectors(self.items, self.candidates, b)


class _Masked(nn.Module):
    """A weight parametrization W ⊙ M: the entries outside M stay zero in every use and get no gradient."""

    mask: Tensor

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask


def tower_masks(cfg: EncoderConfig) -> dict[str, Tensor]:
    r"""Block masks that make the user part G = ``towers`` independent towers inside one set of tensors.

    Tower g owns the g-th block of the LSTM units, of the key, value, pooled and r dimensions, and of
    the attention heads (``attention_heads`` each). Every weight from one tower's block to another's is
    masked to zero:

        W_*h  (4H × H):   gate unit u ← hidden unit j           iff tower(u) = tower(j)
        W_k   (A × H),  W_v (V × H): key / value dim ← unit j    iff same tower
        w_h   (heads × A): head h ← key dim a                   iff tower(h) = tower(a)
        W_o   (P × heads·V): pooled dim ← (head, value dim)      iff all three in one tower
        W_r   (R × (P + side)): r dim ← pooled dim               iff same tower; ← [u; q] always

    so r = [r_1; …; r_G] with r_g a function of tower g's LSTM states, attention and the shared
    embeddings alone. The input projections (W_*e, W_*p), the key's property and age embeddings and
    W_c [q; u] act per output dimension, so they split by tower without a mask. Why one set of tensors:
    the stream worker's state, its numpy recurrence and its kept scores serve G towers unchanged
    (H·G scores per behavior). Empty for G = 1. Measured (results/screen13.md items 17–19): a CTR tower
    beside one the other tasks train reaches the shared encoder's CTR, not CTR-only training's; off by default.
    """
    g = cfg.towers
    if g < 1:
        raise ValueError(f"towers must be at least 1, got {g}")
    if g == 1:
        return {}
    dims = {"hidden": cfg.hidden, "attention_dim": cfg.attention_dim, "value_dim": cfg.value_dim,
            "pooled_dim": cfg.pooled_dim, "rep_dim": cfg.rep_dim}
    bad = [f"{k}={v}" for k, v in dims.items() if v % g]
    if bad:
        raise ValueError(f"towers={g} must divide {', '.join(bad)}")

    def tower(n: int) -> Tensor:
        return torch.arange(n) // (n // g)

    hid, key, val, pool, rep = (tower(n) for n in dims.values())
    head = torch.arange(cfg.score_heads) // cfg.attention_heads
    col_head = head.repeat_interleave(cfg.value_dim)  # W_o's input: head-major [Σ α_1 v; …; Σ α_H v]
    col_val = val.repeat(cfg.score_heads)
    side = torch.full((cfg.rep_dim, cfg.profile_dim + (cfg.query_dim if cfg.query_in_rep else 0)), True)
    masks = {
        "cell.from_hidden": hid.repeat(4)[:, None] == hid[None, :],
        "attention.key": key[:, None] == hid[None, :],
        "attention.value": val[:, None] == hid[None, :],
        "attention.score": head[:, None] == key[None, :],
        "attention.out": (pool[:, None] == col_head[None, :]) & (pool[:, None] == col_val[None, :]),
        "rep": torch.cat([rep[:, None] == pool[None, :], side], dim=1),
    }
    return {name: m.to(torch.float32) for name, m in masks.items()}


def candidate_vectors(sequence: ItemEmbedding, own: ItemEmbedding | None, b: BehaviorTensors) -> Tensor:
    """The candidate side's e_item: ``own`` tables if the model has them, else the sequence's.

    Why separate tables (``EncoderConfig.candidate_tables``): with shared rows, an item's row is moved by
    every task's gradient through every history it appears in (up to 100 LSTM steps back), and under
    AdaGrad those gradients also fill the row's accumulator, so the CTR loss on the candidate side
    steps it less. Own rows learn from the CTR loss alone, at the id rate, as a Wide model's
    candidate rows do (its history is hashed features, not these tables). The serving split is
    unchanged: e_item is the item part, computed per candidate. Measured (results/screen13.md item 15):
    no model's validation CTR rises with it, so it is off by default.
    """
    return (sequence if own is None else own)(b)


class TaskHeads(nn.Module):
    r"""The four training tasks plus the transfer task, each split user part / item part.

    - CTR:    ŷ = σ(MLP₃([r; e_item]) + ⟨P r, Q e_item⟩/√k)   first layer split: W r + W' e_item
    - L2R:    ŷ = σ(MLP₂(r) · x_rank)            linear product with the ranking features
    - talent: ŷ = σ(MLP₂([r; E_talent; x_talent]) + ⟨P_t r, Q_t E_talent⟩/√k)
    - PPP:    softmax(W r) over 7 levels
    - shop:   ŷ = σ(MLP₁([r; E_shop; x_shop]))   shallow, for transfer (RS/RA/RT/FT)

    The ⟨·,·⟩ terms exist only with ``interaction_dim`` k > 0. Why: the talk's heads see the user and
    the candidate only through a concatenation, so whether *this* candidate matches *this* user
    (the simulator's category interest, preferred shop, price level, a talent's mix) is a product the
    ReLU layers must approximate from data, and MLPs learn dot products poorly (Rendle et al.,
    "Neural Collaborative Filtering vs. Matrix Factorization Revisited", RecSys 2020). The factorised
    term states the product directly and keeps the serving split: P r is part of the user part,
    computed once per request; Q e_item is per candidate.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        r, e, k = cfg.rep_dim, cfg.item_vec_dim, cfg.interaction_dim
        self.k = k
        self.ctr_user = nn.Linear(r, 256)
        self.ctr_item = nn.Linear(e, 256, bias=False)
        self.ctr_mlp = nn.Sequential(nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 1))
        self.l2r = nn.Sequential(nn.Linear(r, 128), nn.ReLU(), nn.Linear(128, cfg.n_ranking_features))
        self.talent_emb = nn.Embedding(cfg.talent_buckets, 16)
        self.talent = nn.Sequential(
            nn.Linear(r + 16 + cfg.n_talent_features, 128), nn.ReLU(), nn.Linear(128, 1)
        )
        self.ppp = nn.Linear(r, cfg.n_power_levels)
        self.shop_emb = nn.Embedding(cfg.shop_buckets, 16)
        self.shop = nn.Sequential(nn.Linear(r + 16 + cfg.n_shop_features, 64), nn.ReLU(), nn.Linear(64, 1))
        if k > 0:
            self.ctr_user_dot = nn.Linear(r, k)
            self.ctr_item_dot = nn.Linear(e, k, bias=False)
            self.talent_user_dot = nn.Linear(r, k)
            self.talent_item_dot = nn.Linear(16, k, bias=False)

    # CTR, split: user part once, item part per candidate
    def ctr_user_part(self, rep: Tensor) -> Tensor:
        """(…, 256) or, with the interaction term, (…, 256 + k): [W r; P r]."""
        if self.k == 0:
            return self.ctr_user(rep)
        return torch.cat([self.ctr_user(rep), self.ctr_user_dot(rep)], dim=-1)

    def ctr_item_part(self, user_part: Tensor, item_vec: Tensor) -> Tensor:
        """Logits for candidates (…, N, E) given the user part from :meth:`ctr_user_part`."""
        split = self.ctr_user.out_features
        mlp_in = user_part[..., :split].unsqueeze(-2) + self.ctr_item(item_vec)
        logit = self.ctr_mlp(mlp_in).squeeze(-1)
        if self.k == 0:
            return logit
        dot = (user_part[..., split:].unsqueeze(-2) * self.ctr_item_dot(item_vec)).sum(-1)
        return logit + dot / self.k**0.5

    def ctr_logit(self, rep: Tensor, item_vec: Tensor) -> Tensor:
        """One logit per (rep, item) row pair (the unsplit form of the two methods above)."""
        logit = self.ctr_mlp(self.ctr_user(rep) + self.ctr_item(item_vec)).squeeze(-1)
        if self.k == 0:
            return logit
        return logit + (self.ctr_user_dot(rep) * self.ctr_item_dot(item_vec)).sum(-1) / self.k**0.5

    def l2r_user_part(self, rep: Tensor) -> Tensor:
        return self.l2r(rep)

    def l2r_logit(self, rep: Tensor, ranking_features: Tensor) -> Tensor:
        return (self.l2r(rep) * ranking_features).sum(-1)

    def talent_logit(self, rep: Tensor, talent: Tensor, feats: Tensor) -> Tensor:
        emb = self.talent_emb(talent)
        logit = self.talent(torch.cat([rep, emb, feats], dim=-1)).squeeze(-1)
        if self.k == 0:
            return logit
        return logit + (self.talent_user_dot(rep) * self.talent_item_dot(emb)).sum(-1) / self.k**0.5

    def ppp_logits(self, rep: Tensor) -> Tensor:
        return self.ppp(rep)

    def shop_logit(self, rep: Tensor, shop: Tensor, feats: Tensor) -> Tensor:
        return self.shop(torch.cat([rep, self.shop_emb(shop), feats], dim=-1)).squeeze(-1)


_check_bucket_twins()
