"""Reader for the public Taobao UserBehavior CSV (Tianchi dataset 649).

The file has rows ``user_id,item_id,category_id,behavior_type,timestamp``
(no header; epoch *seconds*).  It is the only public Taobao log with behaviour
types, so it is the real-data check for the sequence encoder, but it has no
shops, brands, tags, scenarios, impressions, talents or purchasing power:
only the CTR and L2R tasks can be built from it (see ``taobao_examples``).

Ids are prefixed by kind ("u", "i", "c") like the simulator's, so id spaces
never collide when hashed into shared buckets.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from training.simulator import BEHAVIOR_WEIGHTS, N_RANKING_FEATURES, TaskExample

# ``_add_click_examples`` builds exactly these features; keep them in sync.
_FEATURES = ("item_popularity", "recent_category_share", "category_popularity", "seen_item")
assert len(_FEATURES) == N_RANKING_FEATURES

Event = dict[str, Any]

TAOBAO_BEHAVIOR: dict[str, str] = {"pv": "click", "buy": "buy", "cart": "cart", "fav": "fav"}
_N_COLUMNS = 5
_RECENT = 10  # history events used for the category-match ranking feature
_OUTCOME_MS = 86_400_000  # an L2R label counts behaviours on the candidate within a day
_NEG_WINDOW_MS = 86_400_000  # negatives: events of the day before the click
_MIN_NEG_POOL = 20


#: The dataset's documented span: 2017-11-25 00:00:00 to 2017-12-03 23:59:59 China time (UTC+8),
#: as epoch seconds (inclusive).  The real file has rows outside it (wrong clocks); they are dropped.
TAOBAO_FIRST_S = 1_511_539_200
TAOBAO_LAST_S = 1_512_316_799


@dataclass
class TaobaoReadStats:
    """Counters filled while ``read_taobao_csv`` iterates (pass one in to get them)."""

    rows: int = 0  # data lines seen (header and blank lines excluded)
    events: int = 0  # events yielded
    skipped: int = 0  # bad rows dropped with on_error="skip"
    out_of_range: int = 0  # rows dropped for a timestamp outside ``time_range``
    sampled_out: int = 0  # rows of users not in the ``user_sample``
    users: int = 0  # distinct users yielded (counted at each change of user: the file is sorted by user)
    first_errors: list[str] = field(default_factory=list)  # up to 10 messages, for logs


def user_in_sample(user_id: str, fraction: float, salt: int = 0) -> bool:
    """Whether a raw user id falls in a ``fraction`` sample: a hash, so the same on every run and machine.

    A user is kept or dropped whole (a sequence model needs whole histories),
    and a 1 % sample of the 100M-row file is a 1 % sample of its users, spread
    over the whole file rather than its first rows.
    """
    if fraction >= 1.0:
        return True
    digest = hashlib.blake2b(f"{salt}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < fraction * 2.0**64


def read_taobao_csv(
    path: str | os.PathLike[str],
    limit: int | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    stats: TaobaoReadStats | None = None,
    *,
    max_rows: int | None = None,
    user_sample: float | None = None,
    sample_salt: int = 0,
    time_range: tuple[int, int] | None = (TAOBAO_FIRST_S, TAOBAO_LAST_S),
) -> Iterator[Event]:
    """Yield contract events from a UserBehavior CSV, lazily (the full file has 100M rows).

    Memory is O(1) here: one row at a time.  ``limit`` caps the events yielded;
    ``max_rows`` caps the data lines *read* (so a run over a sample of a huge
    file stops early even when most rows are filtered out).  ``user_sample``
    (0 < f <= 1) keeps the users ``user_in_sample`` selects, whole.  Rows whose
    timestamp (epoch seconds) lies outside ``time_range`` (default: the
    dataset's documented days; None keeps all) are dropped and counted in
    ``stats.out_of_range``.  A first line whose timestamp column is not a number
    is taken as a header.  A bad row (wrong column count, unknown behaviour,
    non-integer timestamp) raises ``ValueError`` naming its line number, or with
    ``on_error="skip"`` is dropped and counted in ``stats.skipped`` (the caller
    passes a ``TaobaoReadStats`` and reads it after, or during, iteration).
    ``event_id`` is ``"tb-<line number>"``.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if user_sample is not None and not 0.0 < user_sample <= 1.0:
        raise ValueError(f"user_sample must be in (0, 1], got {user_sample}")
    st = stats if stats is not None else TaobaoReadStats()
    if (limit is not None and limit <= 0) or (max_rows is not None and max_rows <= 0):
        return
    lo, hi = time_range if time_range is not None else (-(1 << 62), 1 << 62)
    last_user, last_keep, last_yielded = "", True, ""
    with open(path, newline="", encoding="utf-8") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if line_no == 1 and _is_header(row):
                continue
            if max_rows is not None and st.rows >= max_rows:
                return
            st.rows += 1
            if user_sample is not None:
                user = row[0].strip()
                if user != last_user:  # sorted by user: hash once per user, not per row
                    last_user, last_keep = user, user_in_sample(user, user_sample, sample_salt)
                if not last_keep:
                    st.sampled_out += 1
                    continue
            try:
                event = _row_to_event(row, line_no)
            except ValueError as err:
                if on_error == "raise":
                    raise
                st.skipped += 1
                if len(st.first_errors) < 10:
                    st.first_errors.append(str(err))
                continue
            if not lo <= event["ts"] // 1000 <= hi:
                st.out_of_range += 1
                continue
            st.events += 1
            if event["user_id"] != last_yielded:
                last_yielded = event["user_id"]
                st.users += 1
            yield event
            if limit is not None and st.events >= limit:
                return


def _is_header(row: list[str]) -> bool:
    return len(row) == _N_COLUMNS and not row[4].strip().lstrip("-").isdigit()


def _row_to_event(row: list[str], line_no: int) -> Event:
    if len(row) != _N_COLUMNS:
        raise ValueError(f"line {line_no}: expected {_N_COLUMNS} columns, got {len(row)}")
    user, item, category, behavior, ts_text = (x.strip() for x in row)
    if behavior not in TAOBAO_BEHAVIOR:
        raise ValueError(f"line {line_no}: unknown behavior type {behavior!r}")
    try:
        ts_s = int(ts_text)
    except ValueError:
        raise ValueError(f"line {line_no}: timestamp {ts_text!r} is not an integer") from None
    if not (user and item and category):
        raise ValueError(f"line {line_no}: empty id")
    return {
        "event_id": f"tb-{line_no}",
        "user_id": f"u{user}",
        "ts": ts_s * 1000,
        "event_type": TAOBAO_BEHAVIOR[behavior],
        "item_id": f"i{item}",
        "shop_id": "",
        "brand_id": "",
        "category_id": f"c{category}",
        "tags": [],
        "scenario": "other",
    }


def group_by_user(events: Iterable[Event]) -> dict[str, list[Event]]:
    """Events per user, each list sorted by ts (stable: file order breaks ties)."""
    out: dict[str, list[Event]] = defaultdict(list)
    for ev in events:
        out[ev["user_id"]].append(ev)
    for evs in out.values():
        evs.sort(key=lambda ev: int(ev["ts"]))
    return dict(out)


class _Popularity:
    """Counts of items and categories among all events strictly before a time."""

    def __init__(self, events_by_user: Mapping[str, list[Event]]) -> None:
        items: dict[str, list[int]] = defaultdict(list)
        cats: dict[str, list[int]] = defaultdict(list)
        for evs in events_by_user.values():
            for ev in evs:
                items[ev["item_id"]].append(int(ev["ts"]))
                cats[ev["category_id"]].append(int(ev["ts"]))
        for times in (*items.values(), *cats.values()):
            times.sort()
        self.items, self.cats = items, cats
        self.item_norm = math.log1p(max((len(t) for t in items.values()), default=1))
        self.cat_norm = math.log1p(max((len(t) for t in cats.values()), default=1))

    def item(self, item_id: str, before: int) -> float:
        return math.log1p(bisect.bisect_left(self.items.get(item_id, []), before)) / self.item_norm

    def category(self, cat_id: str, before: int) -> float:
        return math.log1p(bisect.bisect_left(self.cats.get(cat_id, []), before)) / self.cat_norm


def taobao_examples(
    events_by_user: Mapping[str, list[Event]], seed: int = 0, negatives: int = 4
) -> dict[str, list[TaskExample]]:
    """CTR and L2R examples: at every click with earlier history, the clicked item vs sampled negatives.

    Only "ctr" and "l2r" can be built: the file has no impressions (negatives
    are sampled from the events of the whole file in the day before the click,
    i.e. by *recent* popularity), and no talent, purchasing-power or shop
    labels, so "talent", "ppp" and "shop" are empty.  Negatives come from the
    past, not the whole file, on purpose: sampled from all nine days, an item
    clicked mostly late in the file shows up in the training period only as a
    negative and in the test period mostly as a positive, so an id embedding
    learns the opposite of what it is scored on (measured on the synthetic file:
    a per-item "positive rate in train" scorer had AUC 0.62 on train and 0.31 on
    test).  With fewer than ``_MIN_NEG_POOL`` events in that day (the start of
    the file), the first ``_MIN_NEG_POOL`` events of the file are the pool.
    CTR label: 1 for the item actually clicked next.  L2R label: 1 if the user
    has any behaviour on the candidate within a day from the moment, weighted
    by the strongest one (``BEHAVIOR_WEIGHTS``).  Ranking features use only
    events strictly before the moment:
    (log item popularity so far, share of the last 10 history events in the
    item's category, log category popularity so far, 1 if the user interacted
    with the item before).  Input lists must be time-sorted: pass
    ``group_by_user(read_taobao_csv(path))``, not the reader's iterator.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    timed = sorted(
        ((int(ev["ts"]), ev["item_id"], ev["category_id"]) for evs in events_by_user.values() for ev in evs),
        key=lambda x: x[0],
    )
    pool_ts = [t for t, _, _ in timed]
    pool = [(item, cat) for _, item, cat in timed]
    pop = _Popularity(events_by_user)
    out: dict[str, list[TaskExample]] = {"ctr": [], "l2r": [], "talent": [], "ppp": [], "shop": []}
    if len({item for item, _ in pool}) < 2:
        return out  # no possible negative
    for uid, evs in events_by_user.items():
        ts = [int(ev["ts"]) for ev in evs]
        for k, ev in enumerate(evs):
            hist_len = bisect.bisect_left(ts, ts[k])  # strictly before: same-second rows excluded
            if ev["event_type"] != "click" or hist_len < 1:
                continue
            hi = bisect.bisect_left(pool_ts, ts[k])
            lo = bisect.bisect_left(pool_ts, ts[k] - _NEG_WINDOW_MS)
            if hi - lo < _MIN_NEG_POOL:
                lo, hi = 0, max(hi, min(len(pool), _MIN_NEG_POOL))
            cands = [(ev["item_id"], ev["category_id"])]
            while len(cands) <= negatives:
                cands.append(_negative(rng, pool, lo, hi, ev["item_id"]))
            _add_click_examples(out, uid, evs, ts, k, hist_len, cands, pop)
    return out


def _negative(
    rng: np.random.Generator, pool: list[tuple[str, str]], lo: int, hi: int, exclude: str
) -> tuple[str, str]:
    """A pool entry in [lo, hi) whose item is not ``exclude``; any other item of the file if that range has none."""
    for _ in range(50):
        cand = pool[lo + int(rng.integers(hi - lo))]
        if cand[0] != exclude:
            return cand
    while True:  # the range (almost) only holds the clicked item; the file has >= 2 items
        cand = pool[int(rng.integers(len(pool)))]
        if cand[0] != exclude:
            return cand


def _add_click_examples(
    out: dict[str, list[TaskExample]],
    uid: str,
    evs: list[Event],
    ts: list[int],
    k: int,
    hist_len: int,
    cands: list[tuple[str, str]],
    pop: _Popularity,
) -> None:
    now = ts[k]
    history = evs[:hist_len]
    recent = Counter(ev["category_id"] for ev in history[-_RECENT:])
    seen = {ev["item_id"] for ev in history}
    outcome = _outcomes(evs, k, now + _OUTCOME_MS)
    for j, (item_id, cat_id) in enumerate(cands):
        item: dict[str, object] = {
            "item_id": item_id,
            "shop_id": "",
            "brand_id": "",
            "category_id": cat_id,
            "tags": [],
        }
        feats = (
            pop.item(item_id, now),
            recent[cat_id] / min(len(history), _RECENT),
            pop.category(cat_id, now),
            1.0 if item_id in seen else 0.0,
        )
        ctr_label = 1.0 if j == 0 else 0.0
        out["ctr"].append(TaskExample("ctr", uid, hist_len, now, None, item, None, None, None, ctr_label, 1.0))
        best = outcome.get(item_id)
        l2r_label, weight = (1.0, BEHAVIOR_WEIGHTS[best]) if best else (0.0, BEHAVIOR_WEIGHTS["none"])
        out["l2r"].append(TaskExample("l2r", uid, hist_len, now, None, item, feats, None, None, l2r_label, weight))


def _outcomes(evs: list[Event], k: int, until: int) -> dict[str, str]:
    """Strongest behaviour per item from event k on, before ``until``."""
    best: dict[str, str] = {}
    for ev in evs[k:]:
        if int(ev["ts"]) >= until:
            break
        prev = best.get(ev["item_id"])
        if prev is None or BEHAVIOR_WEIGHTS[ev["event_type"]] > BEHAVIOR_WEIGHTS[prev]:
            best[ev["item_id"]] = ev["event_type"]
    return best
