"""Where a model's validation CTR AUC comes from: search vs other slates, within vs between slates.

A CTR example is one candidate of a slate of 6 shown together (one context). The global AUC mixes
two questions: *which slates* get a click (between contexts: scenario, user activity) and *which
candidate* in a slate (within: interest, price level, preferred shop, wishlist, query match,
popularity). ``within`` is the mean per-slate AUC over slates with a click and a non-click, so a
model that only knows which slates get clicks scores 0.5 there.

    python -m training.ctr_split OUT.md SCORES.npz::KEY [SCORES.npz::KEY ...] [--seed S]

``SCORES.npz`` is a ``dupn validate --curve`` scores file (validation users of the quick world,
seed S); ``KEY`` a model and checkpoint, e.g. ``DUPN-all@125/ctr``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from training.data import ExampleTable
from training.metrics import auc


def within_slate_auc(table: ExampleTable, scores: np.ndarray) -> float:
    """Mean AUC inside each context that has both a click and a non-click."""
    vals = []
    for c in range(table.n_contexts):
        lo, hi = int(table.ctx_start[c]), int(table.ctx_start[c + 1])
        y = table.label[lo:hi]
        if 0 < y.sum() < len(y):
            vals.append(auc(y, scores[lo:hi]))
    return float(np.mean(vals)) if vals else float("nan")


def search_mask(table: ExampleTable) -> np.ndarray:
    """Per candidate: whether its slate came with a search query."""
    owner = np.repeat(np.arange(table.n_contexts), np.diff(table.ctx_start))
    return np.asarray(table.ctx_query[owner] > 0)


def split_row(table: ExampleTable, scores: np.ndarray) -> dict[str, float]:
    """AUC overall, on search slates (a query), on the others, and within slates."""
    query = search_mask(table)
    y = table.label
    return {
        "all": auc(y, scores),
        "search": auc(y[query], scores[query]),
        "other": auc(y[~query], scores[~query]),
        "within": within_slate_auc(table, scores),
    }


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("scores", nargs="+", help="SCORES.npz::KEY")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from training.experiments import make_setup, plan_for

    table = make_setup(plan_for(True, args.seed), args.seed).val.test.tables["ctr"]
    assert table.oracle is not None
    rows = [("oracle (planted click probability)", "", table.oracle[:, 0]),
            ("oracle, static effects only", "", table.oracle[:, 1])]  # fmt: skip
    for spec in args.scores:
        path, _, key = spec.partition("::")
        rows.append((key, Path(path).name, np.load(path)[key]))
    q = search_mask(table)
    lines = [
        "# Validation CTR AUC by slate kind and within slates",
        "",
        f"Command: `python -m training.ctr_split {args.out} {' '.join(args.scores)} --seed {args.seed}`  ",
        f"Quick world, seed {args.seed}, validation users: {len(table.label)} candidates in {table.n_contexts} "
        f"slates; search slates {q.mean():.1%} of candidates; click rate search {table.label[q].mean():.3f}, "
        f"other {table.label[~q].mean():.3f}. *within*: mean AUC inside a slate (slates with a click and a "
        "non-click).",
        "",
        "| scores | file | all | search slates | other slates | within slates |",
        "|---|---|---|---|---|---|",
    ]
    for name, src, s in rows:
        r = split_row(table, s)
        lines.append(f"| {name} | {src} | {r['all']:.4f} | {r['search']:.4f} | {r['other']:.4f} | {r['within']:.4f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
