"""The encoder as the stream worker uses it: carried state, batched steps, cheap re-pooling.

Two update policies compute a user's vector after their n-th behavior:

- ``exact``: run the LSTM from zero over the last W behaviors (W = 100).
- ``incremental`` (re-anchor period R): carry (h, c) from step to step; every
  R-th behavior re-anchor by running from zero over the last W behaviors.
  Between anchors the run that produced the window's hidden states started at
  ``max(0, a - W)`` where a is the last anchor, so it spans at most W + R - 1
  behaviors.

Both are pure functions of the user's behavior history, so a published vector
is reproducible offline (see :func:`reference_vectors`), and the state store
only has to keep the behaviors of the current run: everything else is a cache
that can be rebuilt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from core.contracts import UNKNOWN_PROFILE, Profile
from encoder.features import concat_records, take_records, time_bucket
from encoder.model import DUPN, BehaviorTensors, UserContext

Mode = Literal["exact", "incremental"]


@dataclass(frozen=True)
class UpdatePolicy:
    """Which behaviors the LSTM run behind a user's current vector starts from."""

    mode: Mode = "incremental"
    reanchor_every: int = 25
    window: int = 100

    def __post_init__(self) -> None:
        if self.mode not in ("exact", "incremental"):
            raise ValueError(f"mode must be 'exact' or 'incremental', not {self.mode!r}")
        if not 1 <= self.reanchor_every <= 10_000:
            raise ValueError("reanchor_every must be in 1..10000")
        if self.window < 1:
            raise ValueError("window must be >= 1")

    def run_start(self, n: int) -> int:
        """Index (0-based, in the user's full history) where the run for n behaviors starts."""
        if self.mode == "exact":
            return max(0, n - self.window)
        anchor = (n // self.reanchor_every) * self.reanchor_every
        return max(0, anchor - self.window)

    @property
    def max_retained(self) -> int:
        """Most behaviors the state store must keep to rebuild the run."""
        return self.window if self.mode == "exact" else self.window + self.reanchor_every - 1


#: ``EncoderState.score_age`` of a behavior whose attention score is not kept (new, or never computed).
NO_SCORE = 255


@dataclass
class EncoderState:
    """What a user's run carries: final (h, c) and, per window behavior, k_t, v_t, ts_t.

    The per-behavior arrays are ring buffers of W rows (``size`` valid, next
    write at ``head``): attention pooling does not depend on the order of the
    behaviors, so a step writes one row in place instead of shifting W.

    ``scores`` keeps each behavior's attention score s_t under the no-query
    context of the user's ``profile`` for the age bucket in ``score_age``
    (:data:`NO_SCORE`: none kept).
    s_t depends only on k_t, that bucket and the context, and buckets are
    log-spaced, so a re-pool recomputes the few behaviors whose bucket moved
    instead of tanh over the whole window (:meth:`StreamingEncoder.represent`).
    """

    h: np.ndarray
    c: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    ts: np.ndarray
    scores: np.ndarray
    score_age: np.ndarray
    size: int = 0
    head: int = 0
    meta: dict[str, int] = field(default_factory=dict)
    profile: Profile = UNKNOWN_PROFILE  # (age_group, gender) codes the kept scores and vectors are for

    @property
    def length(self) -> int:
        return self.size

    def use_profile(self, profile: Profile) -> None:
        """Encode this user with ``profile`` from now on; the kept scores were for the old one."""
        if profile != self.profile:
            self.profile = profile
            self.score_age[:] = NO_SCORE

    def push(self, key: np.ndarray, value: np.ndarray, ts: int, score: float | np.ndarray, age: int) -> None:
        """Write one behavior's row; ``score`` is one s_t, or the H heads' s_ht (``scores`` is (W, H))."""
        j = self.head
        self.keys[j], self.values[j], self.ts[j], self.scores[j], self.score_age[j] = key, value, ts, score, age
        cap = self.ts.shape[0]
        self.head = (j + 1) % cap
        self.size = min(self.size + 1, cap)

    def push_many(
        self, keys: np.ndarray, values: np.ndarray, ts: np.ndarray, scores: np.ndarray, ages: np.ndarray
    ) -> None:
        """Push rows oldest first; only the last W can stay (at most two contiguous writes)."""
        cap = self.ts.shape[0]
        m = len(ts)
        q = min(m, cap)
        start = (self.head + m - q) % cap
        first = min(q, cap - start)
        split = m - q + first
        for dst, src in ((slice(start, start + first), slice(m - q, split)), (slice(0, q - first), slice(split, m))):
            self.keys[dst], self.values[dst], self.ts[dst] = keys[src], values[src], ts[src]
            self.scores[dst], self.score_age[dst] = scores[src], ages[src]
        self.head = (self.head + m) % cap
        self.size = min(self.size + m, cap)

    def order(self) -> np.ndarray:
        """Indices of the valid rows, oldest first."""
        if self.size < self.ts.shape[0]:
            return np.arange(self.size)
        return (np.arange(self.size) + self.head) % self.size

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.h, self.c, self.keys, self.values, self.ts, self.scores, self.score_age))


class StreamingEncoder:
    """Batched, no-grad wrapper of a trained DUPN for the stream worker."""

    def __init__(self, model: DUPN, model_version: str) -> None:
        self.model = model.eval()
        self.cfg = model.cfg
        self.model_version = model_version
        self.window = model.cfg.window
        self._profile_contexts: dict[Profile, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- state -------------------------------------------------------------------------
    def init_state(self, profile: Profile = UNKNOWN_PROFILE) -> EncoderState:
        cfg = self.cfg
        return EncoderState(
            h=np.zeros(cfg.hidden, np.float32),
            c=np.zeros(cfg.hidden, np.float32),
            keys=np.zeros((self.window, cfg.attention_dim), np.float32),
            values=np.zeros((self.window, cfg.value_dim), np.float32),
            ts=np.zeros(self.window, np.int64),
            scores=np.zeros((self.window, cfg.score_heads)[: 1 if cfg.score_heads == 1 else 2], np.float32),
            score_age=np.full(self.window, NO_SCORE, np.uint8),
            profile=profile,
        )

    def step(self, states: Sequence[EncoderState], events: np.ndarray) -> list[EncoderState]:
        """Advance each state by one behavior (events[i] for states[i]), in place; batched."""
        if len(states) != len(events):
            raise ValueError("one event per state")
        return self._advance(states, np.asarray(events), np.ones(len(states), np.int64))

    def replay(
        self, histories: Sequence[np.ndarray], profiles: Sequence[Profile] | None = None
    ) -> list[EncoderState]:
        """Run from zero over each record array (with each user's profile, default unknown): the exact path."""
        if profiles is None:
            profiles = [UNKNOWN_PROFILE] * len(histories)
        if len(profiles) != len(histories):
            raise ValueError("one profile per history")
        return self.advance([self.init_state(p) for p in profiles], histories)

    def advance(self, states: Sequence[EncoderState], sequences: Sequence[np.ndarray]) -> list[EncoderState]:
        """Advance states[i] over the behaviors sequences[i] (oldest first), in place; all users batched.

        The input projections x_t of every behavior of every user come from one
        matmul; the time loop then runs only the recurrent part, over the users
        still active at step t. Users are sorted by sequence length (longest
        first), so the active users at step t are a prefix and each step's
        inputs and outputs are contiguous slices of a time-major layout.
        """
        if len(states) != len(sequences):
            raise ValueError("one sequence per state")
        lengths = np.fromiter((len(q) for q in sequences), np.int64, len(sequences))
        if not len(states) or not lengths.any():
            return list(states)
        return self._advance(states, concat_records(sequences), lengths)

    @torch.inference_mode()
    def _advance(self, states: Sequence[EncoderState], recs: np.ndarray, lengths: np.ndarray) -> list[EncoderState]:
        """:meth:`advance` over the sequences concatenated (``recs``), user by user, with their ``lengths``."""
        if not len(states) or not lengths.any():
            return list(states)
        plan = _PackedPlan.of(lengths)
        b = BehaviorTensors.from_records(take_records(recs, plan.time_major), self.cfg)
        m = self.model
        e = m.items(b)
        x = m.cell.input_projection(e, m.props(b))
        h_np = np.stack([states[i].h for i in plan.by_length])
        c_np = np.stack([states[i].c for i in plan.by_length])
        hs = m.cell.recur_packed(x.numpy(), h_np, c_np, plan.step_offsets.tolist(), plan.step_sizes.tolist())
        k, v = m.attention.keys_values(torch.from_numpy(hs), b.event_type, b.scenario, e)
        order = plan.user_major
        ends = np.cumsum(lengths)
        ts = recs["ts"]
        # Scores of the new behaviors as of each user's newest one: the time the worker re-pools at.
        # A re-pool at another time finds the buckets moved and recomputes (represent).
        ages = time_bucket(np.repeat(ts[ends[lengths > 0] - 1], lengths[lengths > 0]) - ts)
        if not m.attention.use_props:
            ages[:] = 0
        ages_tm = torch.from_numpy(ages[plan.time_major].astype(np.int64))
        projected, _ = self._profile_context([states[i] for i in plan.by_length])
        if projected.shape[0] > 1:  # per user (by length rank): row r of step t belongs to rank r
            projected = projected[torch.from_numpy(np.concatenate([np.arange(n) for n in plan.step_sizes.tolist()]))]
        scores = m.attention.scores(k, ages_tm, projected)
        k_np, v_np, s_np = k.numpy()[order], v.numpy()[order], scores.numpy()[order]
        for rank, i in enumerate(plan.by_length.tolist()):
            st, hi, count = states[i], int(ends[i]), int(lengths[i])
            st.h, st.c = h_np[rank].copy(), c_np[rank].copy()
            if count == 1:
                st.push(k_np[hi - 1], v_np[hi - 1], int(ts[hi - 1]), s_np[hi - 1], int(ages[hi - 1]))
            elif count:
                lo = hi - count
                st.push_many(k_np[lo:hi], v_np[lo:hi], ts[lo:hi], s_np[lo:hi], ages[lo:hi])
        return list(states)

    @torch.inference_mode()
    def represent(
        self,
        states: Sequence[EncoderState],
        now_ms: Sequence[int] | np.ndarray,
        context: UserContext | None = None,
    ) -> np.ndarray:
        """256-d representations as of ``now_ms``: attention re-pooled, no LSTM step."""
        if not states:
            return np.zeros((0, self.cfg.rep_dim), np.float32)
        pooled, profile = self._pool(states, now_ms, context)
        return self.model.representation(pooled, profile).numpy()

    @torch.inference_mode()
    def attention_weights(
        self, state: EncoderState, now_ms: int, context: UserContext | None = None
    ) -> np.ndarray:
        """α over the window (oldest first), for explaining a vector; with H heads, their mean
        (1/H Σ_h α_ht, which sums to 1 over the window like one head's α)."""
        k, _, ts, mask = _stack_window([state], self.cfg.attention_dim, self.cfg.value_dim)
        projected, _ = self._context(context, [state])
        now = torch.tensor([now_ms], dtype=torch.int64)
        alpha = self.model.attention.weights_projected(k, ts, mask, now, projected)
        if alpha.dim() == 3:
            alpha = alpha.mean(-1)
        return alpha[0, mask[0]].numpy()[state.order()]

    def encode_window(
        self, events: np.ndarray, now_ms: int, context: UserContext | None = None
    ) -> np.ndarray:
        """Exact representation of one user's window: run from zero over its last W behaviors."""
        (state,) = self.replay([np.asarray(events)[-self.window :]])
        return self.represent([state], [now_ms], context)[0]

    # -- internals ---------------------------------------------------------------------
    def _pool(
        self, states: Sequence[EncoderState], now_ms: Sequence[int] | np.ndarray, context: UserContext | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attention = self.model.attention
        projected, profile = self._context(context, states)
        now = np.asarray(now_ms, dtype=np.int64)
        # A query context: nothing kept applies. The same state twice (at two times): keeping its
        # scores for one time would overwrite them for the other before they are read.
        if context is not None or len({id(st) for st in states}) < len(states):
            k, v, ts, mask = _stack_window(states, self.cfg.attention_dim, self.cfg.value_dim)
            return attention.pool_projected(k, v, ts, mask, torch.from_numpy(now), projected), profile
        scores, valid = self._kept_scores(states, now, projected)
        alpha = attention.alpha(torch.from_numpy(scores), torch.from_numpy(valid)).numpy()
        # Σ_t α_t v_t user by user, on each ring buffer in place: stacking B windows of values
        # into one (B, L, V) tensor first cost more than the sums themselves.
        if alpha.ndim == 3:  # H heads: pooled = W_o [Σ_t α_1t v_t; …; Σ_t α_Ht v_t]
            heads = np.empty((len(states), alpha.shape[2], self.cfg.value_dim), np.float32)
            for i, st in enumerate(states):
                np.dot(alpha[i, : st.size].T, st.values[: st.size], out=heads[i])
            return attention.out(torch.from_numpy(heads.reshape(len(states), -1))), profile
        weighted = np.empty((len(states), self.cfg.value_dim), np.float32)
        for i, st in enumerate(states):
            np.dot(alpha[i, : st.size], st.values[: st.size], out=weighted[i])
        return attention.out(torch.from_numpy(weighted)), profile  # pooled = W_o Σ_t α_t v_t

    def _kept_scores(
        self, states: Sequence[EncoderState], now: np.ndarray, projected: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores (B, L) or (B, L, H), valid mask (B, L)) as of ``now``: the kept scores, recomputed where a
        behavior's age bucket is not the one its score was kept for (see :class:`EncoderState`)."""
        sizes = np.fromiter((st.size for st in states), np.int64, len(states))
        length = max(int(sizes.max()), 1)
        mask = np.arange(length)[None, :] < sizes[:, None]
        if self.model.attention.use_props:
            ages = time_bucket(now[:, None] - np.stack([st.ts[:length] for st in states]))
        else:
            ages = np.zeros((len(states), length), np.uint8)
        kept = np.stack([st.score_age[:length] for st in states])
        users, rows = np.nonzero(mask & (kept != ages))
        if len(users):
            self._rescore(states, users, rows, ages[users, rows], projected)
        return np.stack([st.scores[:length] for st in states]), mask

    def _rescore(
        self, states: Sequence[EncoderState], users: np.ndarray, rows: np.ndarray, ages: np.ndarray,
        projected: torch.Tensor,
    ) -> None:
        """Recompute and keep the scores of ``rows`` of ``users`` (sorted by user) for ``ages``."""
        bounds = np.searchsorted(users, np.arange(len(states) + 1))
        present = np.nonzero(bounds[1:] > bounds[:-1])[0].tolist()
        keys = np.concatenate([states[i].keys[rows[bounds[i] : bounds[i + 1]]] for i in present])
        if projected.shape[0] > 1:  # one context per user: the rows' users'
            projected = projected[torch.from_numpy(users)]
        fresh = self.model.attention.scores(
            torch.from_numpy(keys), torch.from_numpy(ages.astype(np.int64)), projected
        ).numpy()
        for i in present:
            lo, hi = bounds[i], bounds[i + 1]
            states[i].scores[rows[lo:hi]] = fresh[lo:hi]
            states[i].score_age[rows[lo:hi]] = ages[lo:hi]

    def _context(
        self, context: UserContext | None, states: Sequence[EncoderState]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_c [q; u], u) for a batch of users: (B, A), (B, P), or (1, A) for one context shared by all.

        Without a context (the stream worker's case) each user's own profile; a context without a
        profile (a ``?query=`` read) gets the users' profiles filled in, so a query-aware read pools
        with the same u as the published vector."""
        if context is None:
            return self._profile_context(states)
        if context.age_group is None and context.gender is None:
            codes = torch.tensor([st.profile for st in states], dtype=torch.int64).reshape(len(states), 2)
            context = UserContext(query=context.query, age_group=codes[:, 0], gender=codes[:, 1])
        ctx, profile = self.model.user_context(context, len(states))
        return self.model.attention.context(ctx), profile

    def _profile_context(self, states: Sequence[EncoderState]) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_c [q₀; u], u) with no query, per user; (1, A) when every user has the same profile.

        There are few profiles (age groups × genders), and the model never changes under an
        encoder, so each profile's context is projected once and kept."""
        profiles = [st.profile for st in states]
        distinct = set(profiles)
        for p in distinct - self._profile_contexts.keys():
            with torch.inference_mode():
                ctx = UserContext(age_group=torch.tensor([p[0]]), gender=torch.tensor([p[1]]))
                full, side = self.model.user_context(ctx, 1)
                self._profile_contexts[p] = (self.model.attention.context(full), side)
        if len(distinct) <= 1:
            projected, side = self._profile_contexts[profiles[0] if profiles else UNKNOWN_PROFILE]
            return projected, side.expand(len(states), -1)
        pairs = [self._profile_contexts[p] for p in profiles]
        return torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs])


@dataclass(frozen=True)
class _PackedPlan:
    """Index plan for running users' sequences of different lengths as one time loop.

    ``by_length``: users, longest sequence first. Time-major layout: step t holds
    the t-th behavior of the ``step_sizes[t]`` users still active, at
    ``step_offsets[t]``. ``time_major`` maps that layout to the flat user-major
    concatenation of the sequences; ``user_major`` maps back.
    """

    by_length: np.ndarray
    step_offsets: np.ndarray
    step_sizes: np.ndarray
    time_major: np.ndarray
    user_major: np.ndarray

    @classmethod
    def of(cls, lengths: np.ndarray) -> _PackedPlan:
        by_length = np.argsort(-lengths, kind="stable")
        sorted_len = lengths[by_length]
        steps = np.arange(int(sorted_len[0]))
        sizes = (sorted_len[None, :] > steps[:, None]).sum(axis=1)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        starts = (np.cumsum(lengths) - lengths)[by_length]
        time_major = np.concatenate([starts[:n] + t for t, n in enumerate(sizes.tolist())])
        user_major = np.empty_like(time_major)
        user_major[time_major] = np.arange(len(time_major))
        return cls(by_length, offsets, sizes, time_major, user_major)


def _stack_window(
    states: Sequence[EncoderState], a_dim: int, v_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The states' ring buffers side by side: valid rows are the first ``size`` of each (order is irrelevant)."""
    sizes = np.fromiter((s.size for s in states), np.int64, len(states))
    length = max(int(sizes.max()), 1)
    k = np.stack([s.keys[:length] for s in states])
    v = np.stack([s.values[:length] for s in states])
    ts = np.stack([s.ts[:length] for s in states])
    mask = np.arange(length)[None, :] < sizes[:, None]
    return torch.from_numpy(k), torch.from_numpy(v), torch.from_numpy(ts), torch.from_numpy(mask)


def reference_vectors(
    encoder: StreamingEncoder,
    history: np.ndarray,
    policy: UpdatePolicy,
    chunk: int = 128,
    at: Sequence[int] | None = None,
    profile: Profile = UNKNOWN_PROFILE,
) -> np.ndarray:
    """Offline: the vector the worker publishes after each of a user's behaviors (its profile: ``profile``).

    Row n-1 is the vector after behavior n, computed as of that behavior's ts by
    re-running the policy's LSTM run from zero. Used by tests and by the drift
    measurement; it is the definition the worker must match. (Prefixes are
    replayed in batches of ``chunk``; each is still its own run from zero.)
    With ``at`` (prefix lengths n >= 1), only those rows, in that order: checking
    a final state or a few observed answers need not pay for every prefix.
    """
    prefixes = list(range(1, len(history) + 1)) if at is None else [int(n) for n in at]
    if any(not 1 <= n <= len(history) for n in prefixes):
        raise ValueError(f"prefix lengths must be in 1..{len(history)}")
    rows = []
    for lo in range(0, len(prefixes), chunk):
        ns = prefixes[lo : lo + chunk]
        states = encoder.replay([history[policy.run_start(n) : n] for n in ns], [profile] * len(ns))
        rows.append(encoder.represent(states, [int(history[n - 1]["ts"]) for n in ns]))
    return np.concatenate(rows) if rows else np.zeros((0, encoder.cfg.rep_dim), np.float32)
