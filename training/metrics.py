"""Test metrics and their uncertainty: AUC, PPP accuracy, cluster bootstrap, paired comparisons.

Test examples come in clusters (a slate's candidates share one user window, and a user's
examples share the user), so standard errors come from a bootstrap over *users* (the
:class:`Scoreboard`; ``context_bootstrap`` remains for the learning curves), and two models are
compared with a paired bootstrap on the same resamples. A difference within two standard errors
is a tie.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from training.data import ExampleTable, HistoryStore, eval_batches, subsample_contexts
from training.train import (
    Prepared,
    TaskModel,
    encode_batch,
    part_logits,
)

FOUR_TASKS: tuple[str, ...] = ("ctr", "l2r", "talent", "ppp")

METRIC_OF = {"ctr": "ctr_auc", "l2r": "l2r_auc", "talent": "talent_auc", "ppp": "ppp_acc", "shop": "shop_auc"}

BASELINE_NAMES: tuple[str, ...] = ("Wide", "Wide&Deep", "CNN-max")

DUPN_VARIANTS: tuple[str, ...] = ("nobp", "bplstm", "bpatt", "all")

TRANSFER_METHODS: tuple[str, ...] = ("RS", "RA", "RT", "FT")

N_BOOT = 200

def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their positions."""
    order = np.argsort(x, kind="mergesort")
    sx = x[order]
    boundaries = np.flatnonzero(np.diff(sx)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(x)]])
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based positions start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks

def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    r"""Rank-based ROC AUC (Mann-Whitney U), a tied positive/negative pair counting ½:

        AUC = (Σ_{i∈pos} rank_i − n₊(n₊+1)/2) / (n₊ n₋)

    NaN when only one class is present.
    """
    y = np.asarray(labels) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))

def metric_value(task: str, labels: np.ndarray, scores: np.ndarray) -> float:
    """AUC for binary tasks; for ppp, accuracy of the argmax level (labels are levels 1..7)."""
    if task == "ppp":
        if len(labels) == 0:
            return float("nan")
        return float(((scores.argmax(-1) + 1) == labels.astype(np.int64)).mean())
    return auc(labels, scores)

def context_bootstrap(table: ExampleTable, n_boot: int, seed: int) -> list[np.ndarray]:
    """Example indices of ``n_boot`` resamples of the table's contexts (clusters), with replacement."""
    rng = np.random.default_rng(seed)
    return [table.example_rows(rng.integers(0, table.n_contexts, table.n_contexts))[0] for _ in range(n_boot)]

def user_bootstrap(table: ExampleTable, n_boot: int, seed: int) -> list[np.ndarray]:
    """Example indices of ``n_boot`` resamples of the table's users (all of a user's contexts together)."""
    rng = np.random.default_rng(seed)
    users, ctx_of = np.unique(table.ctx_user, return_inverse=True)
    by_user = [np.flatnonzero(ctx_of == i) for i in range(len(users))]
    out = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(users), len(users))
        contexts = np.concatenate([by_user[i] for i in pick.tolist()]) if len(users) else np.zeros(0, np.int64)
        out.append(table.example_rows(contexts)[0])
    return out


@torch.no_grad()
def predict(
    model: TaskModel, store: HistoryStore, table: ExampleTable, anchor_every: int | None = None
) -> np.ndarray:
    """Scores in table order: logits (N,) for binary tasks, class logits (N, 7) for ppp.

    ``anchor_every``: encode each context's anchored run (the served function), as in training.
    """
    model.train(False)
    out: list[np.ndarray] = []
    order: list[np.ndarray] = []
    for ex, batch in eval_batches(store, table, model.cfg, anchor_every=anchor_every):
        rep = encode_batch(model, batch)
        out.append(part_logits(model, rep, batch.parts[0]).numpy())
        order.append(ex)
    scores = np.concatenate(out)
    result = np.empty_like(scores)
    result[np.concatenate(order)] = scores
    return result

def evaluate_model(
    model: TaskModel, prep: Prepared, max_contexts: int | None = None, seed: int = 0, n_boot: int = 50
) -> dict[str, float]:
    """Each task's test metric (``ctr_auc``, ..., ``ppp_acc``) and its context-bootstrap ``*_se``."""
    res: dict[str, float] = {}
    for task, table in prep.tables.items():
        t = subsample_contexts(table, max_contexts, seed) if max_contexts else table
        scores = predict(model, prep.store, t)
        key = METRIC_OF[task]
        res[key] = metric_value(task, t.label, scores)
        boots = [metric_value(task, t.label[ix], scores[ix]) for ix in context_bootstrap(t, n_boot, seed)]
        res[key + "_se"] = float(np.nanstd(boots)) if n_boot else float("nan")
    return res

@dataclass
class Comparison:
    """a − b on one task's test set, with its paired-bootstrap standard error."""

    a: str
    b: str
    task: str
    a_value: float
    b_value: float
    se: float

    @property
    def delta(self) -> float:
        return self.a_value - self.b_value

    @property
    def outcome(self) -> str:
        return outcome_of(self.delta, self.se)

    def text(self) -> str:
        return comparison_text(self.a, self.a_value, self.b, self.b_value, self.delta, self.se)


def outcome_of(delta: float, se: float) -> str:
    """'higher' / 'lower' if |a − b| > 2 SE, else 'tie'; 'n/a' without numbers."""
    if math.isnan(delta):
        return "n/a"
    if abs(delta) <= 2 * se:
        return "tie"
    return "higher" if delta > 0 else "lower"


def comparison_text(a: str, a_value: float, b: str, b_value: float, delta: float, se: float) -> str:
    return f"{a} {a_value:.4f} vs {b} {b_value:.4f} ({delta:+.4f} ± {se:.4f})"

class Scoreboard:
    """Test tables, fixed bootstrap resamples, and every scored model's predictions."""

    def __init__(self, test: Prepared, n_boot: int, seed: int, anchor_every: int | None = None) -> None:
        self.test = test
        self.anchor_every = anchor_every
        self.boots = {t: user_bootstrap(tab, n_boot, seed + i) for i, (t, tab) in enumerate(test.tables.items())}
        self.scores: dict[str, dict[str, np.ndarray]] = {}

    def score(self, name: str, model: TaskModel, tasks: Sequence[str]) -> dict[str, float]:
        """Predict ``tasks`` with ``model`` under ``name``; return metric and ``*_se`` per task."""
        return self.record(
            name, {t: predict(model, self.test.store, self.test.tables[t], self.anchor_every) for t in tasks}
        )

    def record(self, name: str, scores: dict[str, np.ndarray]) -> dict[str, float]:
        """Register scores computed elsewhere (oracles, the served path); metric and ``*_se`` per task."""
        out: dict[str, float] = {}
        for task, s in scores.items():
            table = self.test.tables[task]
            self.scores.setdefault(name, {})[task] = s
            key = METRIC_OF[task]
            out[key] = metric_value(task, table.label, s)
            out[key + "_se"] = float(
                np.nanstd([metric_value(task, table.label[ix], s[ix]) for ix in self.boots[task]])
            )
        return out

    def compare(self, a: str, b: str, task: str) -> Comparison:
        table, sa, sb = self.test.tables[task], self.scores[a][task], self.scores[b][task]
        y = table.label
        diffs = [
            metric_value(task, y[ix], sa[ix]) - metric_value(task, y[ix], sb[ix]) for ix in self.boots[task]
        ]
        return Comparison(
            a, b, task, metric_value(task, y, sa), metric_value(task, y, sb), float(np.nanstd(diffs))
        )

def majority_accuracy(train: ExampleTable, test: ExampleTable) -> float:
    """PPP accuracy of always predicting the most frequent training level (the chance line)."""
    levels, counts = np.unique(train.label, return_counts=True)
    return float((test.label == levels[counts.argmax()]).mean()) if test.n_examples else float("nan")
