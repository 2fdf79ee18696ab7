"""Seeded e-commerce behaviour simulator with planted truth, for training DUPN.

No Taobao training logs are public with the labels DUPN needs (impressions,
talent follows, purchasing power, shop preference), so this module generates a
catalogue, a user population with *latent* truth, their behaviour sequences and
labelled examples for the five tasks.  The latent truth is stored on
``SimUser`` so tests (and evaluations) can check that a model recovers it.

Numpy only: the same behaviour dicts are produced to Kafka by the replay tool,
so this module must not pull in torch or a Kafka client.

Randomness: the world, the users (in fixed blocks) and the example sampling
each draw from their own ``SeedSequence([seed, k])``, so e.g. changing a
sampling rate never changes the events.  Behaviour is simulated vectorised
over users ("lock-step": one step = one impression slate per active user, which
is what makes ``stream`` fast) with randomness keyed by (user, user's step), so
a user's life is the same in ``generate`` and ``stream`` whatever the batching.
"""

from __future__ import annotations

import bisect
import gc
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Arr = npt.NDArray[Any]
Event = dict[str, Any]

EVENT_TYPES: tuple[str, ...] = ("click", "cart", "fav", "buy")
SCENARIOS: tuple[str, ...] = ("search", "recommend", "promotion", "other")
TASKS: tuple[str, ...] = ("ctr", "l2r", "talent", "ppp", "shop")
N_POWER_LEVELS = 7

#: L2R example weight by the strongest behaviour on the shown item.  A buy is
#: the outcome the ranking serves, so it counts 4x an impression or a click.
BEHAVIOR_WEIGHTS: dict[str, float] = {"none": 1.0, "click": 1.0, "cart": 2.0, "fav": 2.0, "buy": 4.0}

#: (item popularity in [0,1], price level / 7, query relevance 0/1, shop rating in [0,1])
N_RANKING_FEATURES = 4
#: (price tier / 7, log-follower share in [0,1], style concentration = max category weight)
N_TALENT_FEATURES = 3
#: (price tier / 7, shop rating in [0,1], log shop size in [0,1])
N_SHOP_FEATURES = 3

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
STYLES: tuple[str, ...] = ("korean", "casual", "vintage", "sport", "street", "minimal", "boho", "luxury")
COLORS: tuple[str, ...] = ("red", "black", "white", "blue", "green", "pink", "grey", "beige")

_SEARCH, _RECOMMEND, _PROMOTION, _OTHER = range(4)
_WISHLIST_SLOTS = 8
_MAX_PREFERRED_SHOPS = 5
_MOMENTUM_CAP = 3.0
_MAX_ACTIVITY = 3.0  # cap on a user's activity relative to the mean
_USER_BLOCK = 1024
_GAP_LOW = np.array([1_000.0, 3_000.0, 2_000.0, 10_000.0])
_GAP_HIGH = np.array([15_000.0, 60_000.0, 30_000.0, 120_000.0])
# Slate sources per scenario: (user-interest category, preferred shop, global popular, query category).
_SOURCE_PROBS = np.array(
    [
        [0.05, 0.00, 0.20, 0.75],  # search: mostly the typed category
        [0.55, 0.20, 0.25, 0.00],  # recommend: the platform knows the long-term profile
        [0.30, 0.10, 0.60, 0.00],  # promotion: mostly hot items
        [0.40, 0.10, 0.50, 0.00],  # other
    ]
)
# Measured events per slate at the default knobs; used only to spread each
# user's sessions so that ``events_per_user`` events take about ``days``.
_EVENTS_PER_SLATE = 0.87


@dataclass(frozen=True)
class SimConfig:
    """World size, time span and effect strengths (log-odds / utility units)."""

    n_users: int = 2000
    n_items: int = 20000
    n_categories: int = 50
    n_shops: int = 500
    n_brands: int = 300
    n_talents: int = 100
    days: float = 10.0
    events_per_user: int = 150  # mean; per-user counts are lognormal, at least min_events
    start_ms: int = 1_700_000_000_000
    seed: int = 0
    min_events: int = 20
    activity_sigma: float = 0.6  # lognormal spread of per-user activity
    slate_size: int = 6
    session_slates_mean: float = 5.0
    scenario_probs: tuple[float, float, float, float] = (0.35, 0.40, 0.10, 0.15)
    interest_alpha: float = 0.1  # Dirichlet concentration: small = few favourite categories
    zipf_exponent: float = 0.9
    # Click utility terms (a softmax over the slate plus a "no click" option).
    no_click_utility: float = 2.5
    click_price_sensitivity: float = 0.3  # per price level away from the user's power level
    popularity_weight: float = 1.0
    query_boost: float = 1.5
    preferred_shop_boost: float = 1.0
    wishlist_click_boost: float = 1.5
    wishlist_show_prob: float = 0.35  # chance a non-search slate re-shows a carted/faved item
    # Follow-up behaviours on a clicked item (logits).
    cart_logit: float = -2.0
    fav_logit: float = -2.2
    buy_logit: float = -2.9
    buy_price_sensitivity: float = 1.2  # buys concentrate at the power level, clicks spread wider
    wishlist_buy_boost: float = 2.0
    cart_buy_boost: float = 0.8
    intent_buy_boost: float = 0.6
    preferred_shop_buy_boost: float = 1.0
    # Temporal effects of past behaviour (added to the log-interest of a category).
    momentum_boost: float = 0.8  # per click
    momentum_halflife_hours: float = 4.0
    buy_suppression: float = 3.0  # per buy, also subtracted from later buy logits
    suppression_halflife_days: float = 2.0
    intent_boost: float = 1.0  # per cart/fav, raises later buys in the category
    intent_halflife_days: float = 3.0
    # Example sampling.
    ctr_sample_rate: float = 0.1  # fraction of slates turned into CTR examples
    l2r_sample_rate: float = 0.15  # fraction of search slates turned into L2R examples
    snapshot_days: float = 1.0  # PPP / talent / shop examples at every day boundary
    talent_negatives: int = 3
    shop_negatives: int = 4
    shop_horizon_days: float = 2.0

    def __post_init__(self) -> None:
        counts = (self.n_users, self.n_categories, self.n_shops, self.n_brands, self.n_talents)
        if min(counts) < 1 or self.slate_size < 1 or self.min_events < 1:
            raise ValueError("sizes must be positive")
        if self.n_talents < 5 or self.n_shops < _MAX_PREFERRED_SHOPS:
            raise ValueError("need >= 5 talents and >= 5 shops (users follow / prefer up to 5)")
        if self.n_items < max(self.n_shops, self.n_categories):
            raise ValueError("n_items must be >= n_shops and >= n_categories")
        if self.seed < 0 or self.days <= 0 or self.events_per_user < 1:
            raise ValueError("seed must be >= 0, days and events_per_user > 0")
        if len(self.scenario_probs) != 4 or abs(sum(self.scenario_probs) - 1.0) > 1e-6:
            raise ValueError("scenario_probs must be 4 probabilities summing to 1")


@dataclass(frozen=True)
class SimUser:
    """A simulated user; everything except ``user_id``/``profile`` is planted truth."""

    user_id: str
    profile: dict[str, int]  # {"age_group": 0..5, "gender": 0..1}
    power_level: int  # 1..7
    category_interest: tuple[float, ...]  # long-term interest, sums to 1 over categories
    followed_talents: tuple[str, ...]
    preferred_shops: tuple[str, ...]
    activity: float  # expected behaviours per day


@dataclass(frozen=True, slots=True)
class TaskExample:
    """One labelled example; its input is ``histories[user_id][:history_len]``."""

    task: str
    user_id: str
    history_len: int
    now_ms: int
    query: str | None
    item: dict[str, object] | None  # shared per item: treat as read-only
    ranking_features: tuple[float, ...] | None
    target_id: str | None
    target_features: tuple[float, ...] | None
    label: float
    weight: float
    # The simulator's planted truth for this example (evaluation only, never a model input):
    # ``oracle`` the Bayes score with every planted effect, ``oracle_static`` without the
    # time- and type-dependent ones (click momentum, buy suppression, wishlist re-shows);
    # see ``docs/simulator.md``, "Oracle scores".
    oracle: float | None = None
    oracle_static: float | None = None


@dataclass
class SimData:
    """Output of ``Simulator.generate``."""

    config: SimConfig
    users: list[SimUser]
    histories: dict[str, list[Event]]
    examples: dict[str, list[TaskExample]] = field(default_factory=dict)

    def events_in_time_order(self) -> list[Event]:
        """All users' events merged by ts (stable: ties keep user order), as a replay streams them."""
        merged = [ev for u in self.users for ev in self.histories[u.user_id]]
        merged.sort(key=lambda ev: ev["ts"])
        return merged


def _rng(seed: int, component: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, component]))


_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z: Arr) -> Arr:
    """splitmix64 finaliser on a uint64 array (wrap-around multiplication is intended)."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return np.asarray(z ^ (z >> np.uint64(31)))


class _CounterRng:
    """Uniforms in (0, 1) that are a pure function of (seed, stream, user, user's step, column).

    A user's randomness then does not depend on which other users are simulated
    in the same vectorised batch, so trajectories are identical in ``generate``
    and in ``stream`` (any window size, any number of other users).
    """

    def __init__(self, seed: int, stream: int) -> None:
        self.key = np.uint64((seed * 0x632BE59BD9B4E019 + stream * _GOLDEN + 1) & _MASK64)

    def uniform(self, users: Arr, steps: Arr, n: int, offset: int = 0) -> Arr:
        base = _mix64(self.key + users.astype(np.uint64) * np.uint64(_GOLDEN))
        base = _mix64(base ^ (steps.astype(np.uint64) * np.uint64(0xD1B54A32D192ED03)))
        cols = np.arange(offset + 1, offset + n + 1, dtype=np.uint64) * np.uint64(_GOLDEN)
        z = _mix64(base[:, None] + cols[None, :])
        return np.asarray(((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53)


def _gumbel(u: Arr) -> Arr:
    return np.asarray(-np.log(-np.log(u)))


def _sparse_dirichlet(rng: np.random.Generator, alpha: Arr) -> Arr:
    """Row-wise Dirichlet via gammas; avoids numpy's degenerate rows at tiny alpha."""
    g = rng.gamma(alpha) + 1e-12
    return np.asarray(g / g.sum(axis=-1, keepdims=True))


class _GroupSampler:
    """Draw an item from a given group (category, shop) proportionally to popularity.

    Vectorised over many groups at once: items sorted by group, keys = group +
    within-group CDF, so one ``searchsorted`` serves every group.
    """

    def __init__(self, groups: Arr, weights: Arr) -> None:
        order = np.lexsort((np.arange(groups.size), groups))
        g, w = groups[order], weights[order]
        cum = np.cumsum(w)
        starts = np.searchsorted(g, g, side="left")
        ends = np.searchsorted(g, g, side="right") - 1
        before = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
        cdf = (cum - before) / (cum[ends] - before)
        cdf[ends] = 1.0
        self.order = order
        self.keys = g.astype(np.float64) + cdf

    def sample(self, groups: Arr, u: Arr) -> Arr:
        pos = np.searchsorted(self.keys, groups + u, side="right")
        return self.order[np.minimum(pos, self.order.size - 1)]


class _RowSampler:
    """Draw a column per row from fixed row distributions (a flat key array per matrix)."""

    def __init__(self, probs: Arr) -> None:
        cdf = np.cumsum(probs, axis=1)
        cdf /= cdf[:, -1:]
        cdf[:, -1] = 1.0
        self.n_cols = probs.shape[1]
        self.keys = (np.arange(probs.shape[0])[:, None] + cdf).ravel()

    def sample(self, rows: Arr, u: Arr) -> Arr:
        pos = np.searchsorted(self.keys, rows + u, side="right")
        return np.asarray(np.minimum(pos - rows * self.n_cols, self.n_cols - 1))


class _Catalog:
    """Items, shops, brands and talents (the static world)."""

    def __init__(self, cfg: SimConfig) -> None:
        rng = _rng(cfg.seed, 1)
        n, c, s = cfg.n_items, cfg.n_categories, cfg.n_shops
        self.shop_mix = _sparse_dirichlet(rng, np.full((s, c), 0.08))
        self.shop_tier = rng.integers(1, N_POWER_LEVELS + 1, size=s)
        self.shop_rating = rng.beta(5.0, 2.0, size=s)
        shop_w = 1.0 / (rng.permutation(s) + 1.0) ** 0.8
        item_shop = np.concatenate([np.arange(s), rng.choice(s, size=n - s, p=shop_w / shop_w.sum())])
        cdf = np.cumsum(self.shop_mix[item_shop], axis=1)
        item_cat = np.minimum((cdf < rng.random(n)[:, None]).sum(axis=1), c - 1)
        item_cat[:c] = np.arange(c)  # every category has at least one item
        noise = np.rint(rng.normal(0.0, 0.7, size=n)).astype(np.int64)
        self.item_price = np.clip(self.shop_tier[item_shop] + noise, 1, N_POWER_LEVELS)
        self.item_shop, self.item_cat = item_shop, item_cat
        self.item_brand = self._brands(cfg, rng, item_cat)
        pop = 1.0 / (rng.permutation(n) + 1.0) ** cfg.zipf_exponent
        self.item_pop = pop / pop.sum()
        logp = np.log(self.item_pop)
        self.item_pop01 = (logp - logp.min()) / max(float(logp.max() - logp.min()), 1e-9)
        self.popular_cdf = np.cumsum(self.item_pop)
        self.popular_cdf[-1] = 1.0
        self.by_cat = _GroupSampler(item_cat, self.item_pop)
        self.by_shop = _GroupSampler(item_shop, self.item_pop)
        sizes = np.bincount(item_shop, minlength=s)
        self.shop_size01 = np.log(sizes) / max(math.log(float(sizes.max())), 1e-9)
        self.talent_mix = _sparse_dirichlet(rng, np.full((cfg.n_talents, c), 0.15))
        self.talent_tier = rng.integers(1, N_POWER_LEVELS + 1, size=cfg.n_talents)
        self._build_ids(rng)

    @staticmethod
    def _brands(cfg: SimConfig, rng: np.random.Generator, item_cat: Arr) -> Arr:
        brand_cat = rng.integers(0, cfg.n_categories, size=cfg.n_brands)
        brand_cat[: min(cfg.n_brands, cfg.n_categories)] = np.arange(min(cfg.n_brands, cfg.n_categories))
        by_cat: dict[int, list[int]] = {}
        for b, bc in enumerate(brand_cat.tolist()):
            by_cat.setdefault(bc, []).append(b)
        pick = rng.random(item_cat.size)
        out = np.empty(item_cat.size, dtype=np.int64)
        for i, ic in enumerate(item_cat.tolist()):
            cands = by_cat.get(ic) or [ic % cfg.n_brands]
            out[i] = cands[int(pick[i] * len(cands))]
        return out

    def _build_ids(self, rng: np.random.Generator) -> None:
        n = self.item_cat.size
        has_style, style_u = rng.random(n) < 0.8, rng.random(n)
        n_colors, color_pick = rng.integers(0, 3, size=n), rng.integers(0, len(COLORS), size=(n, 2))
        self.item_ids = [f"i{i}" for i in range(n)]
        self.item_shop_ids = [f"s{s}" for s in self.item_shop.tolist()]
        self.item_brand_ids = [f"b{b}" for b in self.item_brand.tolist()]
        self.item_cat_ids = [f"c{c}" for c in self.item_cat.tolist()]
        self.item_tags: list[list[str]] = []
        for i, price in enumerate(self.item_price.tolist()):
            tags = [f"price:{price}"]
            if has_style[i]:  # expensive items lean "luxury", cheap ones never are
                k = len(STYLES) - 1 if price >= 6 and style_u[i] < 0.5 else int(style_u[i] * (len(STYLES) - 1))
                tags.append(f"style:{STYLES[k]}")
            for j in range(int(n_colors[i])):
                color = f"color:{COLORS[int(color_pick[i, j])]}"
                if color not in tags:
                    tags.append(color)
            self.item_tags.append(tags)
        self.item_dicts: list[dict[str, object]] = [
            {
                "item_id": self.item_ids[i],
                "shop_id": self.item_shop_ids[i],
                "brand_id": self.item_brand_ids[i],
                "category_id": self.item_cat_ids[i],
                "tags": self.item_tags[i],
            }
            for i in range(n)
        ]


class _Population:
    """Latent user truth as arrays.

    Built in fixed blocks of ``_USER_BLOCK`` users, each from its own seed, so
    user ``u`` is the same whatever ``n_users`` is (``stream(U, ...)`` sees the
    first U users of ``generate``) and memory stays bounded per block.
    """

    def __init__(self, cfg: SimConfig, cat: _Catalog, n_users: int) -> None:
        blocks = [self._block(cfg, cat, b) for b in range(-(-n_users // _USER_BLOCK))]
        cols = {k: np.concatenate([blk[k] for blk in blocks])[:n_users] for k in blocks[0]}
        self.age, self.gender, self.level = cols["age"], cols["gender"], cols["level"]
        self.interest, self.activity, self.target_events = cols["interest"], cols["activity"], cols["target"]
        self.n_follow, self.followed = cols["n_follow"], cols["followed"]
        self.n_pref, self.pref_shops = cols["n_pref"], cols["pref_shops"]

    @staticmethod
    def _block(cfg: SimConfig, cat: _Catalog, block: int) -> dict[str, Arr]:
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 2, block]))
        n, c = _USER_BLOCK, cfg.n_categories
        age, gender = rng.integers(0, 6, size=n), rng.integers(0, 2, size=n)
        level = np.clip(np.rint(4.0 + 0.5 * (age - 2.5) + rng.normal(0.0, 1.5, size=n)), 1, N_POWER_LEVELS)
        alpha = np.full((n, c), cfg.interest_alpha)
        half = np.arange(c) < c // 2  # gender skews which half of the categories is liked
        alpha[np.ix_(gender == 0, half)] *= 2.5
        alpha[np.ix_(gender == 1, ~half)] *= 2.5
        interest = _sparse_dirichlet(rng, alpha)
        act = rng.lognormal(-0.5 * cfg.activity_sigma**2, cfg.activity_sigma, size=n)
        act = np.minimum(act, _MAX_ACTIVITY)  # lock-step cost grows with the most active user
        target = np.maximum(np.rint(cfg.events_per_user * act), cfg.min_events).astype(np.int64)
        out = {
            "age": age,
            "gender": gender,
            "level": level.astype(np.int64),
            "interest": interest,
            "target": target,
            "activity": target / cfg.days,  # events per day
            "n_follow": np.minimum(1 + rng.poisson(1.5, size=n), 5),
            "n_pref": rng.integers(2, _MAX_PREFERRED_SHOPS + 1, size=n),
        }
        out["followed"], out["pref_shops"] = _match(rng, cat, interest, out["level"], out["n_pref"])
        return out


def _top(scores: Arr, k: int) -> Arr:
    """Column indices of each row's k best scores, best first."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.asarray(np.take_along_axis(part, order, axis=1))


def _match(rng: np.random.Generator, cat: _Catalog, interest: Arr, level: Arr, n_pref: Arr) -> tuple[Arr, Arr]:
    """Talents followed / shops preferred: those whose style and price tier fit the user, plus noise."""
    lv = level[:, None]
    norms = np.linalg.norm(interest, axis=1)[:, None] * np.linalg.norm(cat.talent_mix, axis=1)[None, :]
    t_aff = (interest @ cat.talent_mix.T) / norms - 0.3 * np.abs(cat.talent_tier[None, :] - lv)
    t_aff += 0.2 * rng.gumbel(size=t_aff.shape)
    followed = _top(t_aff, 5)
    s_aff = np.log(interest @ cat.shop_mix.T + 1e-6) - 0.5 * np.abs(cat.shop_tier[None, :] - lv)
    s_aff += 0.5 * rng.gumbel(size=s_aff.shape)
    top = _top(s_aff, _MAX_PREFERRED_SHOPS)
    cols = np.arange(_MAX_PREFERRED_SHOPS)[None, :] % n_pref[:, None]  # pad by repeating
    return followed, np.take_along_axis(top, cols, axis=1)


@dataclass
class _Step:
    """What one lock-step produced for the active users (row j = user idx[j])."""

    idx: Arr  # user indices
    now: Arr  # slate time, ms
    scenario: Arr
    query: Arr  # category or -1
    items: Arr  # (A, K) shown items
    col: Arr  # clicked slot or -1
    flags: Arr  # (A, 4) bool: click, cart, fav, buy
    ts: Arr  # (A, 4) int64 event times (valid where flagged)
    # log P(click on slot) under the planted multinomial logit, all effects / static effects only
    log_p: Arr | None = None
    log_p_static: Arr | None = None


class _Engine:
    """Vectorised behaviour dynamics; one ``step`` = one impression slate per active user.

    Per-user dynamic state (all decaying in real time, in log-interest units):
    momentum from clicks, suppression from buys, buy intent from carts/favs,
    plus a small wishlist of carted/faved items that the platform re-shows.
    Users never interact, and each step's randomness comes from ``_CounterRng``
    keyed by the user's own step count, so batching does not change the output.
    """

    # Column layout of the per-step uniforms (K = slate size).
    _SCEN, _SESS, _WISH, _NONE, _CART, _FAV, _BUY, _GAPS, _WITHIN, _BETWEEN, _FIXED = 0, 1, 2, 3, 4, 5, 6, 7, 11, 12, 13

    def __init__(self, cfg: SimConfig, cat: _Catalog, pop: _Population) -> None:
        self.cfg, self.cat, self.pop = cfg, cat, pop
        self.rng = _CounterRng(cfg.seed, 3)
        n, k = pop.level.size, cfg.slate_size
        self.n_uniforms = self._FIXED + 4 * k + _WISHLIST_SLOTS
        self.base_log = np.log(cfg.n_categories * pop.interest + 0.05).astype(np.float32)
        self.interest_sampler = _RowSampler(pop.interest)
        self.state = np.zeros((n, 3, cfg.n_categories), dtype=np.float32)  # momentum, suppression, intent
        self.halflife = np.array(
            [
                cfg.momentum_halflife_hours * HOUR_MS,
                cfg.suppression_halflife_days * DAY_MS,
                cfg.intent_halflife_days * DAY_MS,
            ]
        )
        self.wish = np.full((n, _WISHLIST_SLOTS), -1, dtype=np.int64)
        self.wish_pos = np.zeros(n, dtype=np.int64)
        self.sess_left = np.zeros(n, dtype=np.int64)
        self.scenario = np.zeros(n, dtype=np.int64)
        self.query = np.full(n, -1, dtype=np.int64)
        self.steps = np.zeros(n, dtype=np.int64)
        per_session = cfg.session_slates_mean * _EVENTS_PER_SLATE
        self.gap_mean = np.maximum(DAY_MS * per_session / pop.activity - 10 * MINUTE_MS, 10 * MINUTE_MS)
        users = np.arange(n)
        first = _CounterRng(cfg.seed, 6).uniform(users, users * 0, 1)[:, 0]
        self.t = cfg.start_ms + first * np.minimum(self.gap_mean, DAY_MS)
        self.last = self.t.copy()
        self.scen_cdf = np.cumsum(cfg.scenario_probs)
        self.source_cdf = np.cumsum(_SOURCE_PROBS, axis=1)[:, :3]

    def step(self, idx: Arr) -> _Step:
        u = self.rng.uniform(idx, self.steps[idx], self.n_uniforms)
        now = np.floor(self.t[idx])
        # The users' rows of the state, decayed to ``now``; written back once at the end.
        factor = np.exp2(-(now - self.last[idx])[:, None] / self.halflife[None, :]).astype(np.float32)
        block = self.state[idx] * factor[:, :, None]
        self.last[idx] = now
        eff = self.base_log[idx] + block[:, 0] - block[:, 1]
        self._start_sessions(idx, eff, u)
        scen, query = self.scenario[idx], self.query[idx]
        items = self._slate(idx, scen, query, u)
        col, is_pref, in_wish = self._choose(idx, eff, items, query, u)
        log_p, log_p_static = self._click_truth(idx, eff, items, query)
        flags, ts = self._follow_ups(idx, block, now, items, col, is_pref, in_wish, u)
        self.state[idx] = block
        self._advance(idx, now, flags, ts, u)
        self.steps[idx] += 1
        return _Step(idx, now.astype(np.int64), scen, query, items, col, flags, ts, log_p, log_p_static)

    def _click_truth(self, idx: Arr, eff: Arr, items: Arr, query: Arr) -> tuple[Arr, Arr]:
        r"""The planted click probabilities of a slate (no randomness drawn).

        ``_choose`` clicks argmax_k (v_k + G_k) if it beats c + G_0, G iid Gumbel, so

            P(click k) = exp(v_k) / (exp(c) + Σ_j exp(v_j))          (multinomial logit)

        with v_k the deterministic utility. "static" drops the time- and type-dependent
        terms: momentum and suppression (in ``eff``) and the wishlist boost (carts / favs).
        """
        cfg, cat = self.cfg, self.cat
        icat = cat.item_cat[items]
        is_pref = (cat.item_shop[items][:, :, None] == self.pop.pref_shops[idx][:, None, :]).any(-1)
        in_wish = (items[:, :, None] == self.wish[idx][:, None, :]).any(-1)
        rest = (
            cfg.popularity_weight * cat.item_pop01[items]
            - cfg.click_price_sensitivity * np.abs(cat.item_price[items] - self.pop.level[idx][:, None])
            + cfg.preferred_shop_boost * is_pref
            + cfg.query_boost * (icat == query[:, None])
        )
        full = np.take_along_axis(eff, icat, axis=1) + rest + cfg.wishlist_click_boost * in_wish
        static = np.take_along_axis(self.base_log[idx], icat, axis=1) + rest

        def log_p(v: Arr) -> Arr:
            both = np.concatenate([np.full((v.shape[0], 1), cfg.no_click_utility), v], axis=1)
            m = both.max(axis=1, keepdims=True)
            return np.asarray(v - (m + np.log(np.exp(both - m).sum(axis=1, keepdims=True))))

        return log_p(full), log_p(static)

    def _start_sessions(self, idx: Arr, eff: Arr, u: Arr) -> None:
        rows = np.flatnonzero(self.sess_left[idx] == 0)
        if rows.size == 0:
            return
        users = idx[rows]
        scen = np.minimum(np.searchsorted(self.scen_cdf, u[rows, self._SCEN], side="right"), 3)
        self.scenario[users] = scen
        p = 1.0 / self.cfg.session_slates_mean  # geometric(p) >= 1 by inversion
        self.sess_left[users] = 1 + np.floor(np.log(u[rows, self._SESS]) / math.log1p(-p)).astype(np.int64)
        # Users search for what they currently want: momentum up, just-bought down.
        g = _gumbel(self.rng.uniform(users, self.steps[users], eff.shape[1], offset=self.n_uniforms))
        self.query[users] = np.where(scen == _SEARCH, np.argmax(eff[rows] + g, axis=1), -1)

    def _slate(self, idx: Arr, scen: Arr, query: Arr, u: Arr) -> Arr:
        """Candidates the platform shows, from the sources the scenario favours."""
        cat, k = self.cat, self.cfg.slate_size
        f = self._FIXED
        us, u1, u2 = u[:, f : f + k], u[:, f + k : f + 2 * k], u[:, f + 2 * k : f + 3 * k]
        source = (us[:, :, None] > self.source_cdf[scen][:, None, :]).sum(-1)
        items = np.empty(us.shape, dtype=np.int64)
        r, s = np.nonzero(source == 0)  # a category the user likes
        items[r, s] = cat.by_cat.sample(self.interest_sampler.sample(idx[r], u1[r, s]), u2[r, s])
        r, s = np.nonzero(source == 1)  # one of the user's preferred shops
        pick = (u1[r, s] * self.pop.n_pref[idx[r]]).astype(np.int64)
        items[r, s] = cat.by_shop.sample(self.pop.pref_shops[idx[r], pick], u2[r, s])
        r, s = np.nonzero(source == 2)  # globally popular
        items[r, s] = np.minimum(np.searchsorted(cat.popular_cdf, u2[r, s]), cat.item_cat.size - 1)
        r, s = np.nonzero(source == 3)  # the search query's category
        items[r, s] = cat.by_cat.sample(query[r], u2[r, s])
        wish = self.wish[idx]
        show = (wish >= 0).any(axis=1) & (scen != _SEARCH) & (u[:, self._WISH] < self.cfg.wishlist_show_prob)
        slot = np.argmax(np.where(wish >= 0, u[:, f + 4 * k :], -1.0), axis=1)
        items[:, 0] = np.where(show, wish[np.arange(idx.size), slot], items[:, 0])
        return items

    def _choose(self, idx: Arr, eff: Arr, items: Arr, query: Arr, u: Arr) -> tuple[Arr, Arr, Arr]:
        """At most one click per slate: argmax of noisy utilities vs a no-click option."""
        cfg, cat, k = self.cfg, self.cat, self.cfg.slate_size
        icat = cat.item_cat[items]
        is_pref = (cat.item_shop[items][:, :, None] == self.pop.pref_shops[idx][:, None, :]).any(-1)
        in_wish = (items[:, :, None] == self.wish[idx][:, None, :]).any(-1)
        util = (
            np.take_along_axis(eff, icat, axis=1)
            + cfg.popularity_weight * cat.item_pop01[items]
            - cfg.click_price_sensitivity * np.abs(cat.item_price[items] - self.pop.level[idx][:, None])
            + cfg.preferred_shop_boost * is_pref
            + cfg.wishlist_click_boost * in_wish
            + cfg.query_boost * (icat == query[:, None])
            + _gumbel(u[:, self._FIXED + 3 * k : self._FIXED + 4 * k])
        )
        best = np.argmax(util, axis=1)
        rows = np.arange(idx.size)
        clicked = util[rows, best] > cfg.no_click_utility + _gumbel(u[:, self._NONE])
        return np.where(clicked, best, -1), is_pref[rows, best], in_wish[rows, best]

    def _follow_ups(
        self, idx: Arr, block: Arr, now: Arr, items: Arr, col: Arr, is_pref: Arr, in_wish: Arr, u: Arr
    ) -> tuple[Arr, Arr]:
        """Cart / fav / buy on the clicked item, then the dynamic-state updates."""
        cfg, cat = self.cfg, self.cat
        rows = np.arange(idx.size)
        clicked = col >= 0
        item = items[rows, np.maximum(col, 0)]
        c = cat.item_cat[item]
        dist = np.abs(cat.item_price[item] - self.pop.level[idx])
        sup, intent = block[rows, 1, c], block[rows, 2, c]
        cart = clicked & (u[:, self._CART] < _sigmoid(cfg.cart_logit - 0.25 * dist + 0.8 * in_wish))
        fav = clicked & (u[:, self._FAV] < _sigmoid(cfg.fav_logit - 0.25 * dist + 0.6 * is_pref))
        buy_logit = (
            cfg.buy_logit
            - cfg.buy_price_sensitivity * dist
            + cfg.wishlist_buy_boost * in_wish
            + cfg.cart_buy_boost * cart
            + cfg.intent_buy_boost * np.minimum(intent, 3.0)
            + cfg.preferred_shop_buy_boost * is_pref
            - sup
        )
        buy = clicked & (u[:, self._BUY] < _sigmoid(buy_logit))
        flags = np.stack([clicked, cart, fav, buy], axis=1)
        # Dwell before the click, then before cart, fav and buy (ms), each at least a second.
        gaps = _GAP_LOW + u[:, self._GAPS : self._GAPS + 4] * (_GAP_HIGH - _GAP_LOW)
        ts = (now[:, None] + np.cumsum(np.floor(gaps), axis=1)).astype(np.int64)
        self._update_state(idx, block, rows, item, c, flags)
        return flags, ts

    def _update_state(self, idx: Arr, block: Arr, rows: Arr, item: Arr, c: Arr, flags: Arr) -> None:
        cfg = self.cfg
        clicked, saved, buy = flags[:, 0], flags[:, 1] | flags[:, 2], flags[:, 3]
        mom, sup, intent = block[rows, 0, c], block[rows, 1, c], block[rows, 2, c]
        block[rows, 0, c] = np.where(clicked, np.minimum(mom + cfg.momentum_boost, _MOMENTUM_CAP), mom)
        block[rows, 1, c] = np.where(buy, sup + cfg.buy_suppression, sup)
        block[rows, 2, c] = np.where(buy, 0.0, np.where(saved, intent + cfg.intent_boost, intent))
        wish = self.wish[idx]
        wish[buy[:, None] & (wish == item[:, None])] = -1  # bought: leaves the wishlist
        add = np.flatnonzero(saved & ~buy)
        pos = self.wish_pos[idx[add]]
        wish[add, pos] = item[add]
        self.wish[idx] = wish
        self.wish_pos[idx[add]] = (pos + 1) % _WISHLIST_SLOTS

    def _advance(self, idx: Arr, now: Arr, flags: Arr, ts: Arr, u: Arr) -> None:
        """Next slate: seconds-to-minutes later within a session, minutes-to-days after it."""
        last = np.where(flags.any(axis=1), np.where(flags, ts, 0).max(axis=1), now + 5_000)
        self.sess_left[idx] -= 1
        in_session = self.sess_left[idx] > 0
        within = 2_000 - 40_000.0 * np.log(u[:, self._WITHIN])
        between = 5 * MINUTE_MS - np.log(u[:, self._BETWEEN]) * self.gap_mean[idx]
        self.t[idx] = last + np.where(in_session, within, between)


def _sigmoid(x: Arr) -> Arr:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


class _EventWriter:
    """Turns engine steps into contract event dicts (the only per-event Python work)."""

    def __init__(self, cat: _Catalog, seed: int, n_users: int) -> None:
        self.cat = cat
        self.counts = [0] * n_users
        self.user_ids = [f"u{u}" for u in range(n_users)]
        self.id_prefix = [f"sim{seed}-{u}-" for u in range(n_users)]

    def write(self, step: _Step) -> list[tuple[int, int, int, Event]]:
        """(ts, user index, user's event number, event) for every behaviour of the step.

        The first three fields are a unique sort key: merging by it orders events
        by time and breaks ties by user, independently of how steps were batched.
        """
        cat, counts, user_ids, id_prefix = self.cat, self.counts, self.user_ids, self.id_prefix
        item_ids, shop_ids, brand_ids, cat_ids, item_tags = (
            cat.item_ids,
            cat.item_shop_ids,
            cat.item_brand_ids,
            cat.item_cat_ids,
            cat.item_tags,
        )
        rows = np.flatnonzero(step.col >= 0)
        out: list[tuple[int, int, int, Event]] = []
        with _gc_paused():  # many long-lived dicts: cyclic GC passes would dominate
            for u, i, sc, flags, ts in zip(
                step.idx[rows].tolist(),
                step.items[rows, step.col[rows]].tolist(),
                step.scenario[rows].tolist(),
                step.flags[rows].tolist(),
                step.ts[rows].tolist(),
                strict=True,
            ):
                k = counts[u]
                for b in range(4):
                    if flags[b]:
                        out.append(
                            (
                                ts[b],
                                u,
                                k,
                                {
                                    "event_id": id_prefix[u] + str(k),
                                    "user_id": user_ids[u],
                                    "ts": ts[b],
                                    "event_type": EVENT_TYPES[b],
                                    "item_id": item_ids[i],
                                    "shop_id": shop_ids[i],
                                    "brand_id": brand_ids[i],
                                    "category_id": cat_ids[i],
                                    "tags": item_tags[i][:],
                                    "scenario": SCENARIOS[sc],
                                },
                            )
                        )
                        k += 1
                counts[u] = k
        return out


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC (restoring its previous state); our dicts hold no cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


#: Expected events per stream window; bounds the reorder buffer (memory O(users + this)).
_WINDOW_EVENTS = 16_384


class Simulator:
    """Generates a world, users, behaviour histories and labelled task examples from a seed."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._catalog: _Catalog | None = None

    @property
    def catalog(self) -> _Catalog:
        """The static world (built once, lazily: it only depends on the config)."""
        if self._catalog is None:
            self._catalog = _Catalog(self.config)
        return self._catalog

    def generate(self) -> SimData:
        """Simulate every user until their event budget is used, then label the five tasks."""
        with _gc_paused():  # ~10^6 long-lived objects and no cycles: GC passes are pure cost
            return self._generate()

    def generate_until(self, days: float) -> SimData:
        """The same world run for ``days`` days of time instead of until each user's event budget.

        For daily incremental training: day N+1 is this world continuing (same
        catalogue, users, planted effects and per-user randomness), not a new
        world.  Every user keeps acting at their planted rate past
        ``config.days``; a user's behaviour before any time T is the same for
        every horizon past T (randomness is keyed by user and step).  Which
        slates become CTR/L2R examples is drawn in lock-step, so it may differ
        between horizons; split one run by day (``training.daily.day_examples``)
        rather than comparing runs of different horizons example by example.
        """
        if days <= 0:
            raise ValueError("days must be > 0")
        with _gc_paused():
            return self._generate(until_ms=self.config.start_ms + days * DAY_MS)

    def _generate(self, until_ms: float | None = None) -> SimData:
        cfg, cat = self.config, self.catalog
        n = cfg.n_users
        pop = _Population(cfg, cat, n)
        engine = _Engine(cfg, cat, pop)
        writer = _EventWriter(cat, cfg.seed, n)
        hist: list[list[Event]] = [[] for _ in range(n)]
        slate_rng = _rng(cfg.seed, 4)
        examples: dict[str, list[TaskExample]] = {task: [] for task in TASKS}
        active = np.arange(n)
        while active.size:
            step = engine.step(active)
            self._slate_examples(step, np.asarray(writer.counts), slate_rng, examples)
            for _, u, _, ev in writer.write(step):
                hist[u].append(ev)
            if until_ms is None:
                counts = np.asarray(writer.counts)
                active = active[counts[active] < pop.target_events[active]]
            else:
                active = active[engine.t[active] < until_ms]
        self._snapshot_examples(pop, hist, _rng(cfg.seed, 5), examples)
        users = [_sim_user(pop, u) for u in range(n)]
        return SimData(cfg, users, {f"u{u}": hist[u] for u in range(n)}, examples)

    def stream(self, n_users: int, n_events: int, with_profile: bool = False) -> Iterator[Event]:
        """Exactly ``n_events`` time-ordered events over at most ``n_users`` users.

        ``with_profile``: every event carries its user's profile (the events contract's optional
        ``profile``), as a producer that knows it would send it; the events are otherwise the same.

        The stream is the prefix of an open-ended simulation (users keep acting
        past ``config.days``), so a longer stream starts with the shorter one.
        Users advance in lock-step through time windows; a window's events are
        sorted by (ts, user, per-user number) and released once every user has
        passed its end.  Each user's trajectory equals the one in ``generate``.
        """
        if n_users < 1 or n_events < 0:
            raise ValueError("n_users must be >= 1 and n_events >= 0")
        return self._stream(n_users, n_events, with_profile)

    def _stream(self, n_users: int, n_events: int, with_profile: bool) -> Iterator[Event]:
        cfg, cat = self.config, self.catalog
        pop = _Population(cfg, cat, n_users)
        profiles = [{"age_group": int(a), "gender": int(g)} for a, g in zip(pop.age, pop.gender, strict=True)]
        engine = _Engine(cfg, cat, pop)
        writer = _EventWriter(cat, cfg.seed, n_users)
        rate = float(pop.activity.sum()) / DAY_MS  # events per ms, all users
        end, remaining = cfg.start_ms, n_events
        pending: list[tuple[int, int, int, Event]] = []
        while remaining > 0:
            # Window sized for what is still needed (the output does not depend on it).
            end += int(min(max(min(remaining, _WINDOW_EVENTS) / rate, MINUTE_MS), 30 * DAY_MS))
            with _gc_paused():  # one GC pass per window rather than per step
                while (active := np.flatnonzero(engine.t < end)).size:
                    pending.extend(writer.write(engine.step(active)))
            # Later steps start at >= end, so every event before ``end`` is final.
            pending.sort()  # (ts, user, k) is unique: the dicts are never compared
            cut = min(bisect.bisect_left(pending, (end,)), remaining)
            for entry in pending[:cut]:
                yield {**entry[3], "profile": profiles[entry[1]]} if with_profile else entry[3]
            remaining -= cut
            del pending[:cut]

    def _slate_examples(
        self, step: _Step, counts: Arr, rng: np.random.Generator, out: dict[str, list[TaskExample]]
    ) -> None:
        """CTR / L2R examples from a sample of the slates shown in this step."""
        cfg, cat = self.config, self.catalog
        hist_len = counts[step.idx]
        r = rng.random((step.idx.size, 2))
        has_hist = hist_len >= 1
        ctr_rows = np.flatnonzero(has_hist & (r[:, 0] < cfg.ctr_sample_rate))
        l2r_rows = np.flatnonzero(has_hist & (step.scenario == _SEARCH) & (r[:, 1] < cfg.l2r_sample_rate))
        for task, rows in (("ctr", ctr_rows), ("l2r", l2r_rows)):
            for j in rows.tolist():
                uid, hl, now = f"u{int(step.idx[j])}", int(hist_len[j]), int(step.now[j])
                q = int(step.query[j])
                query = f"c{q}" if q >= 0 else None
                col, weight = int(step.col[j]), _strongest_weight(step.flags[j])
                for s, i in enumerate(step.items[j].tolist()):
                    hit = s == col
                    truth = (None, None) if step.log_p is None or step.log_p_static is None else (
                        float(step.log_p[j, s]),
                        float(step.log_p_static[j, s]),
                    )
                    feats = None
                    if task == "l2r":
                        feats = (
                            float(cat.item_pop01[i]),
                            int(cat.item_price[i]) / N_POWER_LEVELS,
                            1.0 if int(cat.item_cat[i]) == q else 0.0,
                            float(cat.shop_rating[cat.item_shop[i]]),
                        )
                    out[task].append(
                        TaskExample(
                            task,
                            uid,
                            hl,
                            now,
                            query,
                            cat.item_dicts[i],
                            feats,
                            None,
                            None,
                            1.0 if hit else 0.0,
                            weight if hit and task == "l2r" else 1.0,
                            *truth,
                        )
                    )

    def _snapshot_examples(
        self,
        pop: _Population,
        hist: list[list[Event]],
        rng: np.random.Generator,
        out: dict[str, list[TaskExample]],
    ) -> None:
        """PPP / talent / shop examples at every snapshot boundary while the user is active."""
        cfg, cat = self.config, self.catalog
        followed = [pop.followed[u, : pop.n_follow[u]].tolist() for u in range(pop.level.size)]
        n_followers = np.bincount(np.concatenate([np.asarray(f) for f in followed]), minlength=cfg.n_talents)
        talent_feats = [
            (
                int(cat.talent_tier[t]) / N_POWER_LEVELS,
                math.log1p(n_followers[t]) / math.log1p(max(int(n_followers.max()), 1)),
                float(cat.talent_mix[t].max()),
            )
            for t in range(cfg.n_talents)
        ]
        shop_feats = [
            (int(cat.shop_tier[s]) / N_POWER_LEVELS, float(cat.shop_rating[s]), float(cat.shop_size01[s]))
            for s in range(cfg.n_shops)
        ]
        period, horizon = int(cfg.snapshot_days * DAY_MS), int(cfg.shop_horizon_days * DAY_MS)
        self._talent_affinity = _talent_affinity(pop, cat)
        for u, events in enumerate(hist):
            uid, ts = f"u{u}", [ev["ts"] for ev in events]
            pref = sorted(set(pop.pref_shops[u].tolist()))
            moment = cfg.start_ms + period
            while ts and moment <= ts[-1]:
                hl = bisect.bisect_left(ts, moment)
                if hl >= 1:
                    level = float(pop.level[u])
                    out["ppp"].append(
                        TaskExample("ppp", uid, hl, moment, None, None, None, None, None, level, 1.0, level, level)
                    )
                    self._talent_examples(uid, hl, moment, followed[u], talent_feats, rng, out["talent"])
                    if ts[-1] >= moment + horizon:
                        end = bisect.bisect_left(ts, moment + horizon)
                        self._shop_examples(uid, hl, moment, events[hl:end], pref, shop_feats, rng, out["shop"])
                moment += period

    def _talent_examples(
        self,
        uid: str,
        hl: int,
        moment: int,
        followed: list[int],
        feats: list[tuple[float, float, float]],
        rng: np.random.Generator,
        out: list[TaskExample],
    ) -> None:
        """One followed talent and ``talent_negatives`` unfollowed ones."""
        pos = followed[int(rng.integers(len(followed)))]
        targets = [(pos, 1.0)]
        if len(followed) < self.config.n_talents:
            while len(targets) <= self.config.talent_negatives:
                t = int(rng.integers(self.config.n_talents))
                if t not in followed:
                    targets.append((t, 0.0))
        aff = self._talent_affinity[int(uid[1:])]
        for t, label in targets:
            truth = float(aff[t])
            out.append(
                TaskExample("talent", uid, hl, moment, None, None, None, f"t{t}", feats[t], label, 1.0, truth, truth)
            )

    def _shop_examples(
        self,
        uid: str,
        hl: int,
        moment: int,
        future: list[Event],
        pref: list[int],
        feats: list[tuple[float, float, float]],
        rng: np.random.Generator,
        out: list[TaskExample],
    ) -> None:
        """Candidates = preferred shops + shops bought/faved next period + random shops; label = bought/faved."""
        positives = {int(ev["shop_id"][1:]) for ev in future if ev["event_type"] in ("buy", "fav")}
        randoms = rng.integers(self.config.n_shops, size=self.config.shop_negatives).tolist()
        for s in dict.fromkeys([*pref, *sorted(positives), *randoms]):
            label = 1.0 if s in positives else 0.0
            out.append(TaskExample("shop", uid, hl, moment, None, None, None, f"s{s}", feats[s], label, 1.0))


def _talent_affinity(pop: _Population, cat: _Catalog) -> Arr:
    """(users, talents) noise-free follow affinity of ``_match``: the talent oracle's score.

    Users follow their top 5 of affinity + 0.2·Gumbel; talent has no time- or type-dependent
    effect, so its static oracle is the same score.
    """
    lv = pop.level[:, None]
    norms = np.linalg.norm(pop.interest, axis=1)[:, None] * np.linalg.norm(cat.talent_mix, axis=1)[None, :]
    return np.asarray((pop.interest @ cat.talent_mix.T) / norms - 0.3 * np.abs(cat.talent_tier[None, :] - lv))


def _strongest_weight(flags: Arr) -> float:
    """L2R weight of the strongest behaviour in (click, cart, fav, buy) flags."""
    done = [BEHAVIOR_WEIGHTS[t] for t, flag in zip(EVENT_TYPES, flags.tolist(), strict=True) if flag]
    return max(done, default=BEHAVIOR_WEIGHTS["none"])


def _sim_user(pop: _Population, u: int) -> SimUser:
    return SimUser(
        user_id=f"u{u}",
        profile={"age_group": int(pop.age[u]), "gender": int(pop.gender[u])},
        power_level=int(pop.level[u]),
        category_interest=tuple(pop.interest[u].tolist()),
        followed_talents=tuple(f"t{t}" for t in pop.followed[u, : pop.n_follow[u]].tolist()),
        preferred_shops=tuple(f"s{s}" for s in dict.fromkeys(pop.pref_shops[u].tolist())),
        activity=float(pop.activity[u]),
    )


def split_by_time(
    data: SimData, train_frac: float = 0.8
) -> tuple[dict[str, list[TaskExample]], dict[str, list[TaskExample]]]:
    """Train on examples before ``start + train_frac * days``, test on the rest (as the paper splits by day)."""
    if not 0.0 < train_frac < 1.0:
        raise ValueError("train_frac must be in (0, 1)")
    cutoff = data.config.start_ms + train_frac * data.config.days * DAY_MS
    train = {task: [ex for ex in exs if ex.now_ms < cutoff] for task, exs in data.examples.items()}
    test = {task: [ex for ex in exs if ex.now_ms >= cutoff] for task, exs in data.examples.items()}
    return train, test
