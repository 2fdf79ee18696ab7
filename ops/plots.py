"""PNG figures: attention (after the DUPN talk's attention analysis) and the bench sweep (matplotlib, Agg).

Kept apart from the CLI so that only commands drawing a figure import matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.patches import Patch

from core.contracts import EVENT_TYPES
from encoder.explain import AGE_BUCKET_LABELS, AttentionTable

#: One color per behavior type, shared by every figure so they read together.
TYPE_COLORS: dict[str, str] = {"click": "#4c78a8", "cart": "#f58518", "fav": "#54a24b", "buy": "#e45756"}


def draw_heatmap(ax: Axes, table: AttentionTable, title: str) -> None:
    """Mean normalised attention by type (rows) × age bucket (columns); blank cells had no behavior."""
    data = np.ma.masked_invalid(table.mean)
    image = ax.imshow(data, cmap="coolwarm", aspect="auto", norm=_ratio_norm(table.mean))
    ax.set_facecolor("#e8e8e8")  # cells without behaviors
    ax.set_xticks(range(len(AGE_BUCKET_LABELS)), AGE_BUCKET_LABELS, rotation=45, ha="right")
    ax.set_yticks(range(len(EVENT_TYPES)), EVENT_TYPES)
    ax.set_xlabel("age of the behavior (as of the vector)")
    ax.set_title(title)
    for (r, c), value in np.ndenumerate(table.mean):
        if not np.isnan(value):
            ax.text(c, r, f"{value:.2f}\nn={table.counts[r, c]}", ha="center", va="center", fontsize=7)
    ax.figure.colorbar(image, ax=ax, label="mean α × window length (1 = uniform, log scale)")


def _ratio_norm(values: np.ndarray) -> LogNorm:
    """Log scale symmetric around 1.0 (uniform), so 4× above and 4× below look equally strong."""
    finite = values[np.isfinite(values) & (values > 0)]
    spread = max(2.0, float(finite.max()), float(1.0 / finite.min())) if finite.size else 2.0
    return LogNorm(vmin=1.0 / spread, vmax=spread)


def draw_sequence(ax: Axes, behaviors: Sequence[dict[str, Any]], title: str) -> None:
    """α along the window, oldest left, one bar per behavior colored by its type."""
    xs = [b["position"] for b in behaviors]
    ys = [b["attention"] for b in behaviors]
    colors = [TYPE_COLORS[b["event_type"]] for b in behaviors]
    ax.bar(xs, ys, color=colors, width=0.85)
    if ys:
        ax.axhline(1.0 / len(ys), color="grey", linestyle="--", linewidth=0.8, label="uniform")
    handles = [Patch(color=TYPE_COLORS[t], label=t) for t in EVENT_TYPES]
    ax.legend(handles=handles, loc="upper left", ncols=len(handles), fontsize=8)
    ax.set_xlabel("position in the window (0 = oldest)")
    ax.set_ylabel("attention α")
    ax.set_title(title)


def write_heatmap_png(path: Path, table: AttentionTable, title: str) -> Path:
    """The aggregate figure of ``dupn report``."""
    fig, ax = plt.subplots(figsize=(11, 4.2), layout="constrained")
    try:
        draw_heatmap(ax, table, title)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def write_explain_png(path: Path, table: AttentionTable, behaviors: Sequence[dict[str, Any]], title: str) -> Path:
    """One user's figure for ``dupn explain``: the heat map above, the sequence below."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), layout="constrained")
    try:
        draw_heatmap(top, table, f"{title}: mean attention by type × age")
        draw_sequence(bottom, behaviors, f"{title}: attention along the window")
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def write_sweep_png(path: Path, loads: Sequence[dict[str, Any]]) -> Path:
    """``dupn bench`` sweep: per-event receive − ts p50 and p99 against load, worker vs the bare hop floor.

    Points are medians over repetitions; bars span min to max, so the run-to-run
    spread is visible beside the difference between worker and floor.
    """
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    try:
        x = [row["load_percent"] for row in loads]
        for side, color in (("worker", "#e45756"), ("floor", "#4c78a8"), ("model_hop", "#54a24b")):
            if any(side not in row for row in loads):  # the model hop runs only with --sweep-model-hop
                continue
            for q, style in (("p50", "-o"), ("p99", "--s")):
                cells = [row[side]["receive_minus_ts_ms"].get(q) for row in loads]
                if any(c is None for c in cells):
                    continue
                med = np.asarray([c["median"] for c in cells])
                err = np.asarray([[m - c["min"] for m, c in zip(med, cells, strict=True)],
                                  [c["max"] - m for m, c in zip(med, cells, strict=True)]])
                ax.errorbar(x, med, yerr=err, fmt=style, color=color, capsize=3, label=f"{side.replace('_', ' ')} {q}")
        ax.set_yscale("log")
        ax.set_xlabel("load (% of the worker's drain rate)")
        ax.set_ylabel("receive − event ts per event (ms, log scale)")
        ax.set_title("freshness against load: worker vs bare aiokafka hop (median, min–max over reps)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def write_curve_png(path: Path, res: dict[str, Any]) -> Path:
    """``dupn validate --curve``: each task's validation metric against training steps, ± user-bootstrap SE,
    one line per model; the validation oracle's CTR AUC in the CTR panel's title."""
    from training.metrics import FOUR_TASKS, METRIC_OF

    fig, axes = plt.subplots(1, len(FOUR_TASKS), figsize=(4 * len(FOUR_TASKS), 4), layout="constrained")
    try:
        models = list(dict.fromkeys(r["model"] for r in res["rows"]))
        for ax, task in zip(axes, FOUR_TASKS, strict=True):
            m = METRIC_OF[task]
            for name in models:
                pts = sorted((r["step"], r[m], r[m + "_se"]) for r in res["rows"] if r["model"] == name)
                x, y, e = (np.asarray(v) for v in zip(*pts, strict=True))
                ax.errorbar(x, y, yerr=e, fmt="-o", capsize=3, label=name)
            oracle = res.get("oracle", {}).get("oracle", {}).get(m)
            if oracle is not None and task == "ctr":
                ax.set_title(f"{m} (oracle {oracle:.3f})")
            else:
                ax.set_title(m)
            ax.set_xlabel("training steps")
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel("validation metric (± user-bootstrap SE)")
        axes[0].legend()
        fig.suptitle(f"learning curves on the validation users, seed {res['seed']}")
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path
