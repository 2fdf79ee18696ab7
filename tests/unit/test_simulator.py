"""The simulator's promises: determinism, the event contract, and planted effects really in the data."""

from __future__ import annotations

import bisect
import dataclasses
from collections import Counter
from collections.abc import Callable
from functools import cache
from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from training.simulator import (
    BEHAVIOR_WEIGHTS,
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    N_RANKING_FEATURES,
    N_SHOP_FEATURES,
    N_TALENT_FEATURES,
    TASKS,
    SimConfig,
    SimData,
    Simulator,
    split_by_time,
)

SMALL = SimConfig(
    n_users=200, n_items=3000, n_categories=20, n_shops=100, n_brands=60, n_talents=30, events_per_user=120
)
EVENT_KEYS = {
    "event_id",
    "user_id",
    "ts",
    "event_type",
    "item_id",
    "shop_id",
    "brand_id",
    "category_id",
    "tags",
    "scenario",
}
ID_PREFIX = {"user_id": "u", "item_id": "i", "shop_id": "s", "brand_id": "b", "category_id": "c"}


def small(**overrides: Any) -> SimConfig:
    return dataclasses.replace(SMALL, **overrides)


@cache
def sim_data(**overrides: Any) -> SimData:
    """Generated once per distinct config for the whole module (each takes well under a second)."""
    return Simulator(small(**overrides)).generate()


@pytest.fixture(scope="module")
def data() -> SimData:
    return sim_data()


def all_events(d: SimData) -> list[dict[str, Any]]:
    return [ev for evs in d.histories.values() for ev in evs]


def price(ev: dict[str, Any]) -> int:
    return next(int(t.split(":")[1]) for t in ev["tags"] if t.startswith("price:"))


def assert_contract(ev: dict[str, Any]) -> None:
    assert set(ev) == EVENT_KEYS
    assert ev["event_type"] in ("click", "cart", "fav", "buy")
    assert ev["scenario"] in ("search", "recommend", "promotion", "other")
    assert isinstance(ev["ts"], int) and not isinstance(ev["ts"], bool)
    assert isinstance(ev["event_id"], str) and ev["event_id"]
    for key, prefix in ID_PREFIX.items():
        assert isinstance(ev[key], str) and ev[key].startswith(prefix) and ev[key][1:].isdigit(), (key, ev[key])
    assert isinstance(ev["tags"], list) and 1 <= len(ev["tags"]) <= 4
    assert all(isinstance(t, str) and ":" in t for t in ev["tags"])
    assert sum(t.startswith("price:") for t in ev["tags"]) == 1 and 1 <= price(ev) <= 7


# --- determinism -------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_data_and_other_seeds_differ() -> None:
    def tiny(seed: int) -> SimData:
        return Simulator(small(n_users=30, events_per_user=60, seed=seed)).generate()

    first, again, other = tiny(0), tiny(0), tiny(1)
    assert again.histories == first.histories
    assert again.examples == first.examples
    assert again.users == first.users
    assert other.histories != first.histories
    assert [u.power_level for u in other.users] != [u.power_level for u in first.users]


# --- contract ----------------------------------------------------------------------------------------------


def test_events_follow_the_contract_and_histories_are_time_ordered(data: SimData) -> None:
    events = all_events(data)
    for ev in events:
        assert_contract(ev)
    assert len({ev["event_id"] for ev in events}) == len(events)
    assert set(data.histories) == {u.user_id for u in data.users}
    for uid, evs in data.histories.items():
        assert all(ev["user_id"] == uid for ev in evs)
        assert all(a["ts"] < b["ts"] for a, b in pairwise(evs))
        assert evs[0]["ts"] >= data.config.start_ms


def test_event_volume_and_behaviour_mix(data: SimData) -> None:
    counts = [len(evs) for evs in data.histories.values()]
    assert min(counts) >= data.config.min_events
    assert 0.75 * SMALL.events_per_user <= np.mean(counts) <= 1.25 * SMALL.events_per_user
    assert np.std(counts) > 10  # per-user activity varies
    mix = Counter(ev["event_type"] for ev in all_events(data))
    assert mix["click"] > 5 * max(mix["cart"], mix["fav"])
    assert mix["fav"] > mix["buy"] > 0 and mix["cart"] > mix["buy"]
    assert set(Counter(ev["scenario"] for ev in all_events(data))) == {"search", "recommend", "promotion", "other"}


def test_events_in_time_order_merges_all_histories(data: SimData) -> None:
    merged = data.events_in_time_order()
    assert len(merged) == sum(len(evs) for evs in data.histories.values())
    assert all(a["ts"] <= b["ts"] for a, b in pairwise(merged))
    assert {ev["event_id"] for ev in merged} == {ev["event_id"] for ev in all_events(data)}


def test_users_carry_valid_planted_truth(data: SimData) -> None:
    c = data.config
    for u in data.users:
        assert set(u.profile) == {"age_group", "gender"}
        assert 0 <= u.profile["age_group"] <= 5 and u.profile["gender"] in (0, 1)
        assert 1 <= u.power_level <= 7
        assert len(u.category_interest) == c.n_categories and abs(sum(u.category_interest) - 1) < 1e-6
        assert 1 <= len(u.followed_talents) <= 5 and len(set(u.followed_talents)) == len(u.followed_talents)
        assert 2 <= len(u.preferred_shops) <= 5 and len(set(u.preferred_shops)) == len(u.preferred_shops)
    assert len({u.power_level for u in data.users}) == 7


# --- examples ----------------------------------------------------------------------------------------------


def test_every_example_sees_exactly_the_events_before_its_moment(data: SimData) -> None:
    assert set(data.examples) == set(TASKS)
    for task in TASKS:
        assert data.examples[task], task
        for ex in data.examples[task]:
            assert ex.task == task
            hist = data.histories[ex.user_id]
            assert 1 <= ex.history_len <= len(hist)
            assert hist[ex.history_len - 1]["ts"] < ex.now_ms
            assert ex.history_len == len(hist) or hist[ex.history_len]["ts"] >= ex.now_ms


def test_ctr_examples_are_slates_consistent_with_the_event_stream(data: SimData) -> None:
    ctr = data.examples["ctr"]
    positives = [ex for ex in ctr if ex.label == 1.0]
    assert {ex.label for ex in ctr} == {0.0, 1.0}
    assert 1 / 11 <= len(positives) / len(ctr) <= 1 / 6  # ~1 positive per 5-10 negatives
    for ex in positives:  # the labelled click is the next event of that user
        nxt = data.histories[ex.user_id][ex.history_len]
        assert ex.item is not None
        assert (nxt["event_type"], nxt["item_id"]) == ("click", ex.item["item_id"])
    for ex in ctr:
        assert ex.item is not None and set(ex.item) == {"item_id", "shop_id", "brand_id", "category_id", "tags"}
        assert ex.ranking_features is None and ex.weight == 1.0
    assert any(ex.query is not None for ex in ctr) and any(ex.query is None for ex in ctr)


def test_l2r_examples_have_ranking_features_and_behaviour_weights(data: SimData) -> None:
    l2r = data.examples["l2r"]
    for ex in l2r:
        assert ex.query is not None and ex.item is not None
        assert ex.ranking_features is not None and len(ex.ranking_features) == N_RANKING_FEATURES
        assert all(0.0 <= f <= 1.0 for f in ex.ranking_features)
        assert ex.ranking_features[2] == (1.0 if ex.item["category_id"] == ex.query else 0.0)
        if ex.label == 0.0:
            assert ex.weight == BEHAVIOR_WEIGHTS["none"]
            continue
        # The slate's outcome: its click, then cart/fav/buy on that item until the next click.
        hist = data.histories[ex.user_id]
        outcome = [hist[ex.history_len]]
        for ev in hist[ex.history_len + 1 :]:
            if ev["event_type"] == "click":
                break
            outcome.append(ev)
        assert {ev["item_id"] for ev in outcome} == {ex.item["item_id"]}
        assert ex.weight == max(BEHAVIOR_WEIGHTS[ev["event_type"]] for ev in outcome)
    assert {ex.weight for ex in l2r} >= {1.0, 2.0, 4.0}


def test_ppp_labels_are_the_planted_power_level(data: SimData) -> None:
    level = {u.user_id: u.power_level for u in data.users}
    ppp = data.examples["ppp"]
    assert all(ex.label == float(level[ex.user_id]) for ex in ppp)
    assert len({ex.user_id for ex in ppp}) >= 0.9 * len(data.users)
    per_user = Counter(ex.user_id for ex in ppp)
    assert max(per_user.values()) > 1  # one per user per day


def test_talent_labels_follow_planted_follows_that_match_level(data: SimData) -> None:
    users = {u.user_id: u for u in data.users}
    dist: dict[float, list[float]] = {0.0: [], 1.0: []}
    for ex in data.examples["talent"]:
        assert ex.target_id is not None and ex.target_features is not None
        assert len(ex.target_features) == N_TALENT_FEATURES
        assert ex.label == (1.0 if ex.target_id in users[ex.user_id].followed_talents else 0.0)
        dist[ex.label].append(abs(ex.target_features[0] * 7 - users[ex.user_id].power_level))
    assert np.mean(dist[1.0]) + 1.0 < np.mean(dist[0.0])  # followed talents' price tier fits the user


def test_shop_labels_are_future_buys_or_favs_and_preferred_shops_dominate(data: SimData) -> None:
    horizon = int(data.config.shop_horizon_days * DAY_MS)
    preferred = {u.user_id: set(u.preferred_shops) for u in data.users}
    rate: dict[bool, list[float]] = {True: [], False: []}
    for ex in data.examples["shop"]:
        assert ex.target_features is not None and len(ex.target_features) == N_SHOP_FEATURES
        hist = data.histories[ex.user_id]
        future = [ev for ev in hist[ex.history_len :] if ev["ts"] < ex.now_ms + horizon]
        expected = any(ev["shop_id"] == ex.target_id and ev["event_type"] in ("buy", "fav") for ev in future)
        assert ex.label == float(expected)
        rate[ex.target_id in preferred[ex.user_id]].append(ex.label)
    assert np.mean(rate[True]) > 0.1
    # The planted preference: a user's 2-5 preferred shops (of 100) get a large share of their buys/favs.
    saves = [ev for ev in all_events(data) if ev["event_type"] in ("buy", "fav")]
    share = np.mean([ev["shop_id"] in preferred[ev["user_id"]] for ev in saves])
    assert share > 5 * 5 / data.config.n_shops


def test_split_by_time_puts_earlier_moments_in_train(data: SimData) -> None:
    train, test = split_by_time(data, 0.8)
    cutoff = data.config.start_ms + 0.8 * data.config.days * DAY_MS
    for task in TASKS:
        assert train[task] and test[task], task
        assert max(ex.now_ms for ex in train[task]) < cutoff <= min(ex.now_ms for ex in test[task])
        assert len(train[task]) + len(test[task]) == len(data.examples[task])
    with pytest.raises(ValueError):
        split_by_time(data, 1.0)


# --- planted effects ---------------------------------------------------------------------------------------


def test_power_level_drives_buy_prices_more_than_click_prices(data: SimData) -> None:
    level = {u.user_id: u.power_level for u in data.users}
    buys = {
        lv: [price(ev) for ev in all_events(data) if ev["event_type"] == "buy" and level[ev["user_id"]] == lv]
        for lv in (1, 7)
    }
    assert np.mean(buys[7]) > np.mean(buys[1]) + 3.0
    gap = {
        t: np.mean([abs(price(ev) - level[ev["user_id"]]) for ev in all_events(data) if ev["event_type"] == t])
        for t in ("click", "buy")
    }
    assert gap["buy"] < 0.6 * gap["click"]  # buys concentrate at the level, clicks spread wider


def follow_rate(
    d: SimData, trigger: Callable[[dict[str, Any]], bool], hit: Callable[[Any, Any], bool], window_ms: int
) -> float:
    """Share of trigger events followed by a ``hit`` event of the same user within ``window_ms``."""
    n = hits = 0
    for evs in d.histories.values():
        ts = [ev["ts"] for ev in evs]
        for i, ev in enumerate(evs):
            if trigger(ev):
                n += 1
                end = bisect.bisect_right(ts, ev["ts"] + window_ms)
                hits += any(hit(ev, later) for later in evs[i + 1 : end])
    assert n > 100
    return hits / n


def same_category_buy(ev: dict[str, Any], later: dict[str, Any]) -> bool:
    return bool(later["event_type"] == "buy" and later["category_id"] == ev["category_id"])


def test_a_buy_suppresses_same_category_buys_for_the_next_day(data: SimData) -> None:
    def is_buy(ev: dict[str, Any]) -> bool:
        return bool(ev["event_type"] == "buy")

    with_effect = follow_rate(data, is_buy, same_category_buy, DAY_MS)
    without = follow_rate(sim_data(buy_suppression=0.0), is_buy, same_category_buy, DAY_MS)
    assert with_effect < 0.25 * without
    # Within the same data: right after a buy, buying the category again is rarer than after a mere click.
    after_click = follow_rate(data, lambda ev: ev["event_type"] == "click", same_category_buy, DAY_MS)
    assert with_effect < 0.5 * after_click


def same_category_click(ev: dict[str, Any], later: dict[str, Any]) -> bool:
    return bool(later["event_type"] == "click" and later["category_id"] == ev["category_id"])


def test_recent_clicks_raise_short_term_interest(data: SimData) -> None:
    def next_session_same_category(d: SimData) -> float:
        """Next click 10 min .. 3 h later (a new session) is in the same category."""
        same = [
            a["category_id"] == b["category_id"]
            for evs in d.histories.values()
            for a, b in pairwise([ev for ev in evs if ev["event_type"] == "click"])
            if 10 * MINUTE_MS <= b["ts"] - a["ts"] < 3 * HOUR_MS
        ]
        return float(np.mean(same))

    assert next_session_same_category(data) > 1.4 * next_session_same_category(sim_data(momentum_boost=0.0))


def test_cart_and_fav_raise_later_buys_of_the_item(data: SimData) -> None:
    def same_item_buy(ev: dict[str, Any], later: dict[str, Any]) -> bool:
        return bool(
            later["event_type"] == "buy" and later["item_id"] == ev["item_id"] and later["ts"] > ev["ts"] + HOUR_MS
        )

    def is_saved(ev: dict[str, Any]) -> bool:
        return bool(ev["event_type"] in ("cart", "fav"))

    saved = follow_rate(data, is_saved, same_item_buy, 30 * DAY_MS)
    clicked = follow_rate(data, lambda ev: ev["event_type"] == "click", same_item_buy, 30 * DAY_MS)
    assert saved > 1.5 * clicked
    no_effect = sim_data(wishlist_show_prob=0.0, wishlist_click_boost=0.0, wishlist_buy_boost=0.0, intent_buy_boost=0.0)
    assert saved > 2.5 * follow_rate(no_effect, is_saved, same_item_buy, 30 * DAY_MS)


def test_event_types_and_recency_change_click_through(data: SimData) -> None:
    """What a type- and time-aware sequence model can exploit and a bag of categories cannot."""
    ctr: dict[str, list[float]] = {"bought_today": [], "clicked_2h": [], "clicked_earlier": []}
    for ex in data.examples["ctr"]:
        assert ex.item is not None
        hist = data.histories[ex.user_id][: ex.history_len]
        in_cat = [ev for ev in hist if ev["category_id"] == ex.item["category_id"]]
        if any(ev["event_type"] == "buy" and ex.now_ms - ev["ts"] < DAY_MS for ev in in_cat):
            ctr["bought_today"].append(ex.label)
        elif any(ex.now_ms - ev["ts"] < 2 * HOUR_MS for ev in in_cat):
            ctr["clicked_2h"].append(ex.label)
        elif in_cat and ex.now_ms - in_cat[-1]["ts"] > DAY_MS:
            ctr["clicked_earlier"].append(ex.label)
    rate = {k: float(np.mean(v)) for k, v in ctr.items()}
    assert rate["bought_today"] < 0.7 * rate["clicked_2h"]
    assert rate["clicked_earlier"] < 0.8 * rate["clicked_2h"]


# --- stream ------------------------------------------------------------------------------------------------


def test_stream_yields_exactly_n_time_ordered_unique_events_over_at_most_u_users() -> None:
    sim = Simulator(small(seed=3))
    events = list(sim.stream(50, 3000))
    assert len(events) == 3000
    assert len({ev["user_id"] for ev in events}) <= 50
    assert all(a["ts"] <= b["ts"] for a, b in pairwise(events))
    assert len({ev["event_id"] for ev in events}) == 3000
    for ev in events:
        assert_contract(ev)


def test_stream_is_deterministic_and_a_prefix_of_longer_streams() -> None:
    sims = {seed: Simulator(small(seed=seed)) for seed in (5, 6)}

    def stream(seed: int, n: int) -> list[dict[str, Any]]:
        return list(sims[seed].stream(40, n))

    long = stream(5, 1500)
    assert stream(5, 1500) == long
    assert stream(5, 567) == long[:567]
    assert stream(6, 1500) != long
    assert stream(5, 0) == []


def test_stream_users_live_the_same_lives_as_in_generate() -> None:
    """Per-user randomness: a user's streamed events continue their generated history exactly."""
    cfg = small(n_users=30, events_per_user=40)
    generated = Simulator(cfg).generate().histories
    streamed: dict[str, list[dict[str, Any]]] = {}
    for ev in Simulator(cfg).stream(20, 4000):
        streamed.setdefault(ev["user_id"], []).append(ev)
    assert set(streamed) <= set(generated) and len(streamed) == 20
    for uid, evs in streamed.items():
        n = min(len(evs), len(generated[uid]))
        assert n >= cfg.min_events // 2
        assert evs[:n] == generated[uid][:n]


def test_streamed_profiles_are_the_users_profiles_and_change_nothing_else() -> None:
    cfg = small(n_users=30, events_per_user=40)
    users = {u.user_id: u.profile for u in Simulator(cfg).generate().users}
    plain = list(Simulator(cfg).stream(20, 600))
    with_profile = list(Simulator(cfg).stream(20, 600, with_profile=True))
    assert [{k: v for k, v in ev.items() if k != "profile"} for ev in with_profile] == plain
    for ev in with_profile:
        assert ev["profile"] == users[ev["user_id"]]
    assert len({(p["age_group"], p["gender"]) for p in (ev["profile"] for ev in with_profile)}) > 1


def test_stream_and_config_reject_bad_arguments() -> None:
    sim = Simulator(SMALL)
    with pytest.raises(ValueError):
        sim.stream(0, 10)
    with pytest.raises(ValueError):
        sim.stream(10, -1)
    with pytest.raises(ValueError):
        SimConfig(n_items=10, n_shops=100)
    with pytest.raises(ValueError):
        SimConfig(scenario_probs=(0.5, 0.5, 0.5, 0.5))
