"""`dupn train/eval --taobao`: DUPN and the baselines on a Taobao UserBehavior CSV.

The file supports two of DUPN's tasks (``training.taobao.taobao_examples``):
CTR-like next-click prediction (the clicked item vs items sampled by
popularity) and L2R (did the user act on the candidate within a day, weighted
by the strongest behaviour).  Everything else in the paper needs labels the
file does not have.

Protocol: read the CSV streaming (``--max-rows``, ``--user-sample``), drop rows
outside the documented days, build examples, split them at *quantiles* of
their times into train / validation / test (70 / 15 / 15 % of the examples by
default).  Every model gets the same data, heads, seed and step budget; the
validation split picks, per model, which of a few evenly spaced checkpoints to
keep (the test split is touched once, at the end).  Standard errors are
bootstraps over test contexts, and DUPN vs each baseline is a paired bootstrap
(``training.metrics.Scoreboard``); |Δ| ≤ 2 SE is a tie.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoder.config import EncoderConfig
from encoder.model import DUPN
from training.alloc import retain_freed_memory
from training.baselines import make_baseline
from training.data import Example, subsample_contexts
from training.metrics import BASELINE_NAMES, METRIC_OF, Scoreboard, evaluate_model
from training.taobao import Event, TaobaoReadStats, group_by_user, read_taobao_csv, taobao_examples
from training.train import (
    Prepared,
    TaskModel,
    TrainConfig,
    TrainData,
    fit,
    init_output_biases,
    prepare,
    set_threads,
    with_tables,
)

TAOBAO_TASKS: tuple[str, ...] = ("ctr", "l2r")


@dataclass(frozen=True)
class TaobaoPlan:
    """How much of the file to read and how long to train, for ``--quick`` or a full run.

    ``window`` caps the encoder's input window (the paper: 100).  Quick is a
    smoke-sized run that finishes in minutes on a shared 2-core machine: a
    bounded number of rows, short windows and small batches.  Before this
    plan existed ``--quick`` was ignored for ``--taobao`` and a 4,321-row file
    got the full 300 steps × 256 windows × 2 tasks.
    """

    train: TrainConfig
    window: int
    max_rows: int | None
    user_sample: float | None
    val_points: int  # evenly spaced checkpoints compared on validation
    val_contexts: int  # per task
    test_contexts: int  # per task
    n_boot: int
    val_frac: float = 0.15
    test_frac: float = 0.15


def taobao_plan(
    quick: bool,
    *,
    steps: int | None = None,
    batch_size: int | None = None,
    max_rows: int | None = None,
    user_sample: float | None = None,
    seed: int = 0,
) -> TaobaoPlan:
    """The quick or full plan, with command-line overrides applied."""
    if quick:
        train = TrainConfig(tasks=TAOBAO_TASKS, steps=80, batch_size=32, max_history=50, seed=seed)
        plan = TaobaoPlan(train, window=50, max_rows=200_000, user_sample=None, val_points=4,
                          val_contexts=400, test_contexts=1500, n_boot=100)
    else:
        train = TrainConfig(tasks=TAOBAO_TASKS, steps=1000, batch_size=64, max_history=100, seed=seed)
        plan = TaobaoPlan(train, window=100, max_rows=None, user_sample=None, val_points=5,
                          val_contexts=2000, test_contexts=5000, n_boot=200)
    changes = {"steps": steps, "batch_size": batch_size}
    train = TrainConfig(**{**asdict(plan.train), **{k: v for k, v in changes.items() if v is not None}})
    return TaobaoPlan(
        **{
            **asdict(plan),
            "train": train,
            "max_rows": max_rows if max_rows is not None else plan.max_rows,
            "user_sample": user_sample if user_sample is not None else plan.user_sample,
        }
    )


@dataclass
class TaobaoData:
    """The events kept (per user, time-sorted), the reader's counters and the examples by task."""

    events_by_user: dict[str, list[Event]]
    stats: TaobaoReadStats
    examples: dict[str, list[Example]]
    read_seconds: float = 0.0


def load_taobao(
    path: str | os.PathLike[str], max_rows: int | None, user_sample: float | None, seed: int = 0
) -> TaobaoData:
    """Stream the CSV (bounded by ``max_rows`` / ``user_sample``) and build the CTR and L2R examples."""
    start = time.perf_counter()
    stats = TaobaoReadStats()
    events = read_taobao_csv(path, on_error="skip", stats=stats, max_rows=max_rows, user_sample=user_sample)
    by_user = group_by_user(events)
    built = taobao_examples(by_user, seed=seed)
    examples: dict[str, list[Example]] = {t: list(built[t]) for t in TAOBAO_TASKS if built.get(t)}
    if not examples:
        raise ValueError(
            f"{path}: no ctr/l2r examples could be built from {stats.events} events "
            f"({stats.rows} rows read, {stats.out_of_range} out of the documented days, {stats.skipped} bad)"
        )
    return TaobaoData(by_user, stats, examples, time.perf_counter() - start)


def split_by_time_quantile(
    examples: Mapping[str, Sequence[Example]], val_frac: float, test_frac: float
) -> tuple[dict[str, list[Example]], dict[str, list[Example]], dict[str, list[Example]]]:
    """Train / validation / test at quantiles of the examples' times (all tasks pooled).

    Quantiles rather than fractions of the time span: the file's activity is
    not uniform over its nine days, and a span split can leave a split nearly
    empty.  The cut times are example times, so a context (one click and its
    candidates, all at one moment) never straddles two splits.
    """
    if val_frac < 0 or test_frac <= 0 or val_frac + test_frac >= 1:
        raise ValueError("need val_frac >= 0, test_frac > 0 and val_frac + test_frac < 1")
    times = np.sort(np.fromiter((e.now_ms for exs in examples.values() for e in exs), dtype=np.int64))
    if times.size == 0:
        empty: dict[str, list[Example]] = {t: [] for t in examples}
        return empty, dict(empty), dict(empty)
    cut_val = int(times[min(int((1 - val_frac - test_frac) * times.size), times.size - 1)])
    cut_test = int(times[min(int((1 - test_frac) * times.size), times.size - 1)])
    train = {t: [e for e in exs if e.now_ms < cut_val] for t, exs in examples.items()}
    val = {t: [e for e in exs if cut_val <= e.now_ms < cut_test] for t, exs in examples.items()}
    test = {t: [e for e in exs if e.now_ms >= cut_test] for t, exs in examples.items()}
    return train, val, test


def _subsampled(prep: Prepared, n: int, seed: int) -> Prepared:
    return Prepared(prep.store, {t: subsample_contexts(tab, n, seed) for t, tab in prep.tables.items()})


@dataclass
class ModelRun:
    """One model's training on the file: the validation curve, the chosen step and costs."""

    name: str
    curve: list[dict[str, float]] = field(default_factory=list)
    chosen_step: int = 0
    seconds: float = 0.0
    steps: int = 0
    final_losses: dict[str, float] = field(default_factory=dict)


def fit_with_validation(
    name: str, model: TaskModel, train: Prepared, val: Prepared, plan: TaobaoPlan, progress: bool
) -> ModelRun:
    """Train; keep the weights of the evenly spaced checkpoint with the best mean validation metric."""
    tasks = [t for t in plan.train.tasks if t in train.tables]
    cfg = TrainConfig(**{**asdict(plan.train), "tasks": tuple(tasks)})
    val_tasks = {t: tab for t, tab in val.tables.items() if t in tasks}
    best: dict[str, Any] = {"score": -math.inf, "step": 0, "state": None}
    every = max(1, cfg.steps // max(plan.val_points, 1))
    module = model if isinstance(model, torch.nn.Module) else None

    def on_eval(step: int) -> dict[str, float]:
        metrics = evaluate_model(model, Prepared(val.store, val_tasks), n_boot=0) if val_tasks else {}
        values = [metrics[METRIC_OF[t]] for t in val_tasks if not math.isnan(metrics[METRIC_OF[t]])]
        score = float(np.mean(values)) if values else -math.inf
        if score > best["score"] and module is not None:
            best.update(score=score, step=step, state=copy.deepcopy(module.state_dict()))
        return {k: v for k, v in metrics.items() if not k.endswith("_se")}

    log = fit(model, train, cfg, progress=progress, desc=name, eval_every=every if val_tasks else 0, on_eval=on_eval)
    if module is not None and best["state"] is not None:
        module.load_state_dict(best["state"])
    model.train(False)
    return ModelRun(
        name=name,
        curve=log.curve,
        chosen_step=int(best["step"]) or len(log.losses),
        seconds=round(log.seconds, 2),
        steps=len(log.losses),
        final_losses={t: round(log.mean_loss(t, last=20), 4) for t in tasks},
    )


def new_model(name: str, cfg: EncoderConfig) -> TaskModel:
    """DUPN (all of its parts) or a baseline by its table name, on the same encoder config."""
    return DUPN(cfg.variant("all")) if name == "DUPN" else make_baseline(name, cfg)


def run_taobao_eval(
    path: str | os.PathLike[str],
    plan: TaobaoPlan,
    out_dir: str | os.PathLike[str] = "results",
    command: str = "",
    models: Sequence[str] = ("DUPN", *BASELINE_NAMES),
    progress: bool = True,
    synthetic_note: str | None = None,
    enc_cfg: EncoderConfig | None = None,
) -> dict[str, Any]:
    """Train every model on the file's train split, pick checkpoints on validation, score test; write the report.

    ``enc_cfg`` (default: the serving sizes with the plan's window) is for small test models.
    """
    retain_freed_memory()
    threads = set_threads()
    t0 = time.perf_counter()
    data = load_taobao(path, plan.max_rows, plan.user_sample, seed=plan.train.seed)
    train_ex, val_ex, test_ex = split_by_time_quantile(data.examples, plan.val_frac, plan.test_frac)
    enc = enc_cfg or EncoderConfig(window=plan.window)
    train = prepare(TrainData(data.events_by_user, [], train_ex), enc, TAOBAO_TASKS)
    val = _subsampled(with_tables(train, val_ex, enc), plan.val_contexts, plan.train.seed)
    test = _subsampled(with_tables(train, test_ex, enc), plan.test_contexts, plan.train.seed + 1)
    tasks = [t for t in TAOBAO_TASKS if t in train.tables and t in test.tables]
    if not tasks:
        raise ValueError(f"{path}: the time split left no task with both training and test examples")
    board = Scoreboard(test, plan.n_boot, plan.train.seed)
    runs: dict[str, ModelRun] = {}
    scores: dict[str, dict[str, float]] = {}
    for name in models:
        torch.manual_seed(plan.train.seed)
        model = new_model(name, enc)
        init_output_biases(model, train, tasks)
        runs[name] = fit_with_validation(name, model, train, val, plan, progress)
        scores[name] = board.score(name, model, tasks)
    comparisons = [
        asdict(c) | {"outcome": c.outcome}
        for b in models if b != "DUPN" and "DUPN" in models for t in tasks
        for c in [board.compare("DUPN", b, t)]
    ]
    result: dict[str, Any] = {
        "command": command,
        "file": Path(path).name,
        "synthetic_note": synthetic_note,
        "plan": asdict(plan),
        "data": {
            **{k: v for k, v in asdict(data.stats).items() if k != "first_errors"},
            "examples": {s: {t: len(v) for t, v in ex.items()} for s, ex in
                         (("train", train_ex), ("val", val_ex), ("test", test_ex))},
            "test_contexts": {t: tab.n_contexts for t, tab in test.tables.items()},
            "read_seconds": round(data.read_seconds, 2),
        },
        "tasks": tasks,
        "scores": scores,
        "runs": {k: asdict(v) for k, v in runs.items()},
        "comparisons": comparisons,
        "machine": {"torch_threads": threads, "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "taobao_eval.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    (out / "taobao_eval.md").write_text(taobao_report(result))
    return result


def _fmt(value: float, se: float | None = None) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.4f} ± {se:.4f}" if se is not None and not math.isnan(se) else f"{value:.4f}"


def taobao_report(result: Mapping[str, Any]) -> str:
    """The markdown report: data, protocol, the table with SEs, paired comparisons, costs."""
    d, plan, tasks = result["data"], result["plan"], result["tasks"]
    lines = ["# DUPN vs baselines on a Taobao UserBehavior file", ""]
    if result.get("synthetic_note"):
        lines += [f"> **{result['synthetic_note']}**", ""]
    lines += [
        f"Command: `{result['command']}`" if result.get("command") else "",
        "",
        f"File `{result['file']}`: {d['rows']:,} rows read, {d['events']:,} events kept from {d['users']:,} users; "
        f"dropped {d['out_of_range']:,} rows outside 2017-11-25..12-03 (UTC+8), {d['skipped']:,} malformed, "
        f"{d['sampled_out']:,} of users outside the sample (user sample {plan['user_sample']}, "
        f"max rows {plan['max_rows']}).",
        "",
        "Examples (split at time quantiles "
        f"{1 - plan['val_frac'] - plan['test_frac']:.2f} / {1 - plan['test_frac']:.2f}): "
        + "; ".join(f"{s}: " + ", ".join(f"{t} {n:,}" for t, n in ex.items()) for s, ex in d["examples"].items())
        + f". Test contexts scored per task: {d['test_contexts']}.",
        "",
        f"Schedule, same for every model: {plan['train']['steps']} steps × {plan['train']['batch_size']} windows "
        f"per task (window {plan['window']}), AdaGrad lr {plan['train']['lr']} / embeddings "
        f"{plan['train']['embedding_lr']}, seed {plan['train']['seed']}; the checkpoint kept is the best of "
        f"{plan['val_points']} evenly spaced ones on the validation split (mean AUC).",
        "",
        "| model | " + " | ".join(f"{t} test AUC ± SE" for t in tasks) + " | step kept | train s | s/step |",
        "|---|" + "---|" * (len(tasks) + 3),
    ]
    for name, sc in result["scores"].items():
        run = result["runs"][name]
        per_step = run["seconds"] / max(run["steps"], 1)
        cells = [_fmt(sc[METRIC_OF[t]], sc[METRIC_OF[t] + "_se"]) for t in tasks]
        costs = f" | {run['chosen_step']} | {run['seconds']:.1f} | {per_step:.3f} |"
        lines.append(f"| {name} | " + " | ".join(cells) + costs)
    lines += ["", "Paired bootstrap over test contexts (DUPN − baseline; |Δ| ≤ 2 SE is a tie):", ""]
    for c in result["comparisons"]:
        lines.append(
            f"- {c['task']}: DUPN {c['a_value']:.4f} vs {c['b']} {c['b_value']:.4f}: "
            f"Δ {c['a_value'] - c['b_value']:+.4f} ± {c['se']:.4f} → **{c['outcome']}**"
        )
    m = result["machine"]
    lines += [
        "",
        f"Total {result['total_seconds']} s on {m['cpus']} CPUs, {m['torch_threads']} torch threads "
        f"(torch {m['torch']}, Python {m['python']}), reading took {d['read_seconds']} s.",
        "",
        "What the tasks are: **ctr** = the item the user actually clicked next vs 4 items sampled from the "
        "file's events of the day before the click (recent popularity; no impressions exist in this log); "
        "**l2r** = the same candidates, "
        "label 1 if the user acted on the candidate within a day (weight: buy 4, cart/fav 2, click 1), scored "
        "with 4 ranking features (item and category popularity so far, recent-category share, seen before). "
        "The file has no profiles, shops, brands, tags, scenarios, talents or purchasing power.",
        "",
    ]
    return "\n".join(lines)
