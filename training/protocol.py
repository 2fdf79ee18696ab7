"""The evaluation split: whole users held out, a time cutoff no training label crosses.

Users are partitioned once per seed into train / validation / test (disjoint). Every task
trains on *train* users' examples before the cutoff whose label is known by the cutoff, and
is validated / tested on *validation* / *test* users' examples after it:

    cutoff   = start + train_frac · days
    train    = {e : user(e) ∈ U_train, label_time(e) ≤ cutoff}
    val/test = {e : user(e) ∈ U_val / U_test, now(e) ≥ cutoff}
    label_time(e) = now(e) + shop_horizon for shop (its label is what the user buys or
                    favs in the next ``shop_horizon_days``), now(e) otherwise

So a user's purchasing power or followed talents are never learnt from the same user the
model is tested on (they are static per user: a time split alone tests on training users),
and no training label looks past the cutoff. Validation users exist only to choose
training settings; the test users are scored once per reported run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from training.simulator import DAY_MS, SimData, TaskExample

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class UserSplit:
    """Which users belong to train / val / test (disjoint, covering every user)."""

    train: frozenset[str]
    val: frozenset[str]
    test: frozenset[str]

    def of(self, name: str) -> frozenset[str]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def split_users(user_ids: Sequence[str], seed: int, fractions: tuple[float, float, float]) -> UserSplit:
    """A seeded random partition of ``user_ids`` into train / val / test by ``fractions``."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError("fractions must be three non-negative numbers summing to 1")
    order = np.random.default_rng(np.random.SeedSequence([seed, 77])).permutation(len(user_ids))
    ids = [user_ids[i] for i in order.tolist()]
    a = round(fractions[0] * len(ids))
    b = a + round(fractions[1] * len(ids))
    return UserSplit(frozenset(ids[:a]), frozenset(ids[a:b]), frozenset(ids[b:]))


def label_time(ex: TaskExample, shop_horizon_ms: int) -> int:
    """When an example's label is known: shop labels look ``shop_horizon`` ahead."""
    return ex.now_ms + (shop_horizon_ms if ex.task == "shop" else 0)


def split_examples(data: SimData, users: UserSplit, train_frac: float = 0.8) -> dict[str, dict[str, list[TaskExample]]]:
    """{split: {task: examples}} by the rules in the module docstring."""
    if not 0.0 < train_frac < 1.0:
        raise ValueError("train_frac must be in (0, 1)")
    cfg = data.config
    cutoff = cfg.start_ms + int(train_frac * cfg.days * DAY_MS)
    horizon = int(cfg.shop_horizon_days * DAY_MS)
    out: dict[str, dict[str, list[TaskExample]]] = {s: {} for s in SPLITS}
    for task, exs in data.examples.items():
        out["train"][task] = [e for e in exs if e.user_id in users.train and label_time(e, horizon) <= cutoff]
        out["val"][task] = [e for e in exs if e.user_id in users.val and e.now_ms >= cutoff]
        out["test"][task] = [e for e in exs if e.user_id in users.test and e.now_ms >= cutoff]
    return out


def check_split(splits: Mapping[str, Mapping[str, Sequence[TaskExample]]], cutoff_ms: int, horizon_ms: int) -> None:
    """Raise if a training label crosses the cutoff or a user is in two splits (used by tests and run_eval)."""
    owners: dict[str, str] = {}
    for name, by_task in splits.items():
        for exs in by_task.values():
            for e in exs:
                if owners.setdefault(e.user_id, name) != name:
                    raise AssertionError(f"user {e.user_id} is in both {owners[e.user_id]} and {name}")
                if name == "train" and label_time(e, horizon_ms) > cutoff_ms:
                    raise AssertionError(f"training {e.task} label of {e.user_id} crosses the cutoff")
                if name != "train" and e.now_ms < cutoff_ms:
                    raise AssertionError(f"{name} {e.task} example of {e.user_id} before the cutoff")
