"""The paper's three offline experiments, re-run on simulated data.

1. Baselines (Wide, Wide&Deep, CNN-max) vs DUPN-nobp / -bplstm / -bpatt / -all,
   each trained multi-task on CTR, L2R, talent and PPP with the same heads,
   data, seed and step budget.
2. Multi-task vs single-task DUPN-all, with an equal step budget per task.
3. Transfer to shop preference: RS, RA, RT and FT (see :func:`transfer`).

Uncertainty: test examples come in clusters (a slate's candidates share one
user window), so standard errors come from a bootstrap over *contexts*, and
two models are compared with a paired bootstrap on the same resamples.  A
difference within two standard errors is reported as a tie.  The report's
"where we differ from the paper" text is generated from these comparisons and
the training logs, never written by hand.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from encoder.config import EncoderConfig
from encoder.model import DUPN
from training.baselines import make_baseline
from training.data import build_table, subsample_contexts
from training.metrics import (
    BASELINE_NAMES,
    DUPN_VARIANTS,
    FOUR_TASKS,
    METRIC_OF,
    N_BOOT,
    TRANSFER_METHODS,
    Scoreboard,
    evaluate_model,
    majority_accuracy,
)
from training.report import (
    RunFacts,
    differences_paragraph,
    model_claims,
    multitask_claims,
    transfer_claims,
    write_report,
)
from training.simulator import SimConfig, Simulator, split_by_time
from training.train import (
    FitLog,
    Prepared,
    TaskModel,
    TrainConfig,
    TrainData,
    fit,
    init_output_biases,
    prepare,
    set_threads,
)


@dataclass(frozen=True)
class EvalPlan:
    """Data size and budgets of one evaluation run."""

    sim: SimConfig
    window: int  # behaviors per input window (the paper: 100)
    train: TrainConfig  # per-model schedule for experiments 1 and 2
    transfer_steps: int
    test_contexts: int  # per task, for the final metrics
    curve_contexts: int  # per task, for the learning curves
    curve_points: int

def plan_for(quick: bool, seed: int) -> EvalPlan:
    """quick: ≈ 8 min on 2 idle cores (window 50, 250 steps); full: window 100, more data and steps.

    Every model gets the same schedule: 64 contexts (user windows) per task
    and step.  The quick world has many users so that the budget stays near
    one epoch of CTR slates: with fewer users the id embeddings memorise the
    training slates (measured: train AUC 0.84 vs test 0.59 at 600 users).
    """
    if quick:
        sim = SimConfig(
            n_users=3000,
            n_items=10000,
            n_shops=300,
            n_brands=200,
            n_talents=60,
            events_per_user=80,
            seed=seed,
        )
        return EvalPlan(sim, 50, TrainConfig(steps=250, batch_size=64, seed=seed), 250, 1200, 250, 5)
    sim = SimConfig(n_users=6000, n_items=20000, events_per_user=120, seed=seed)
    return EvalPlan(sim, 100, TrainConfig(steps=1000, batch_size=64, seed=seed), 1000, 4000, 500, 8)

@dataclass
class Setup:
    """Prepared train data, scored and curve-sized test sets, the encoder config, bookkeeping."""

    enc: EncoderConfig
    train: Prepared
    board: Scoreboard
    curve: Prepared
    sizes: dict[str, Any]
    logs: dict[str, FitLog] = field(default_factory=dict)

def make_setup(plan: EvalPlan, seed: int) -> Setup:
    sim = Simulator(plan.sim).generate()
    train_ex, test_ex = split_by_time(sim, 0.8)
    enc = EncoderConfig(window=plan.window)
    prep = prepare(TrainData(sim.histories, sim.users, train_ex), enc)
    full = {t: build_table(t, exs, prep.store, enc) for t, exs in test_ex.items() if exs}
    test = {t: subsample_contexts(v, plan.test_contexts, seed) for t, v in full.items()}
    curve = {t: subsample_contexts(v, plan.curve_contexts, seed) for t, v in test.items()}
    sizes = {
        "users": len(sim.users),
        "events": sum(len(h) for h in sim.histories.values()),
        "train_examples": {t: v.n_examples for t, v in prep.tables.items()},
        "train_contexts": {t: v.n_contexts for t, v in prep.tables.items()},
        "test_examples": {t: v.n_examples for t, v in test.items()},
        "test_contexts": {t: v.n_contexts for t, v in test.items()},
        "test_examples_available": {t: v.n_examples for t, v in full.items()},
    }
    board = Scoreboard(Prepared(prep.store, test), N_BOOT, seed)
    return Setup(enc, prep, board, Prepared(prep.store, curve), sizes)

def _curve_fn(model: TaskModel, setup: Setup, tasks: tuple[str, ...]) -> Callable[[int], dict[str, float]]:
    def at_step(_: int) -> dict[str, float]:
        sub = Prepared(setup.curve.store, {t: setup.curve.tables[t] for t in tasks})
        return {k: v for k, v in evaluate_model(model, sub, n_boot=0).items() if not k.endswith("_se")}

    return at_step

def _run(
    name: str,
    model: nn.Module,
    setup: Setup,
    cfg: TrainConfig,
    progress: bool,
    curve_points: int = 0,
    **fit_kw: Any,
) -> dict[str, Any]:
    """Fit one model (every trained head here is new, so biases start at the base rates), then score it."""
    tm: TaskModel = model  # type: ignore[assignment]
    every = max(1, cfg.steps // curve_points) if curve_points else 0
    on_eval = _curve_fn(tm, setup, cfg.tasks[-1:]) if curve_points else None
    init_output_biases(tm, setup.train, cfg.tasks)
    log = fit(tm, setup.train, cfg, progress=progress, desc=name, eval_every=every, on_eval=on_eval, **fit_kw)
    setup.logs[name] = log
    row: dict[str, Any] = setup.board.score(name, tm, cfg.tasks)
    row["train_seconds"] = round(log.seconds, 1)
    row["params"] = sum(p.numel() for p in model.parameters())
    row["final_train_loss"] = {t: round(log.mean_loss(t, last=20), 4) for t in cfg.tasks}
    if log.curve:
        row["curve"] = log.curve
    _say(progress, f"{name}: " + ", ".join(f"{METRIC_OF[t]}={row[METRIC_OF[t]]:.4f}" for t in cfg.tasks))
    return row

def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)

def compare_models(setup: Setup, plan: EvalPlan, progress: bool) -> tuple[dict[str, dict[str, Any]], DUPN]:
    """Experiment 1; also returns the trained DUPN-all (reused by experiments 2 and 3)."""
    cfg = replace(plan.train, tasks=FOUR_TASKS)
    rows = {name: _run(name, make_baseline(name, setup.enc), setup, cfg, progress) for name in BASELINE_NAMES}
    dupn_all = DUPN(setup.enc)
    for variant in DUPN_VARIANTS:
        model = dupn_all if variant == "all" else DUPN(setup.enc.variant(variant))
        rows[f"DUPN-{variant}"] = _run(f"DUPN-{variant}", model, setup, cfg, progress)
    return rows, dupn_all

def multi_vs_single(setup: Setup, plan: EvalPlan, progress: bool) -> dict[str, dict[str, Any]]:
    """Experiment 2: a single-task DUPN-all per task, same steps and per-task batch as the multi-task one."""
    out: dict[str, dict[str, Any]] = {}
    for task in FOUR_TASKS:
        single = _run(f"single-{task}", DUPN(setup.enc), setup, replace(plan.train, tasks=(task,)), progress)
        cmp = setup.board.compare("DUPN-all", f"single-{task}", task)
        out[task] = {
            "metric": METRIC_OF[task],
            "multi": cmp.a_value,
            "single": cmp.b_value,
            "diff_se": cmp.se,
            "single_train_seconds": single["train_seconds"],
        }
    return out

def transfer(setup: Setup, plan: EvalPlan, pretrained: DUPN, progress: bool) -> dict[str, dict[str, Any]]:
    """Experiment 3 on shop preference, the same step budget for each method.

    RS: fresh DUPN trained on shop only.  RA: fresh DUPN trained on all 5
    tasks.  RT: the 4-task DUPN-all frozen, only the shop head trained.  FT:
    the 4-task DUPN-all trained end to end on shop.
    """
    base = replace(plan.train, steps=plan.transfer_steps, tasks=("shop",))
    out: dict[str, dict[str, Any]] = {}
    for name in TRANSFER_METHODS:
        model, cfg, kw = _transfer_setup(name, setup.enc, pretrained, base)
        row = _run(name, model, setup, cfg, progress, plan.curve_points, **kw)
        out[name] = {
            "shop_auc": row["shop_auc"],
            "shop_auc_se": row["shop_auc_se"],
            "train_seconds": row["train_seconds"],
            "curve": [{"step": p["step"], "shop_auc": p["shop_auc"]} for p in row.get("curve", [])],
        }
    return out

def _transfer_setup(
    name: str, enc: EncoderConfig, pretrained: DUPN, base: TrainConfig
) -> tuple[DUPN, TrainConfig, dict[str, Any]]:
    if name == "RS":
        return DUPN(enc), base, {}
    if name == "RA":  # shop last: its curve is the one recorded
        return DUPN(enc), replace(base, tasks=(*FOUR_TASKS, "shop")), {}
    model = copy.deepcopy(pretrained)  # the experiment-1 model stays untouched
    if name == "FT":
        return model, base, {}
    head = [*model.heads.shop.parameters(), *model.heads.shop_emb.parameters()]
    return model, base, {"params": head, "train_encoder": False}

def _facts(setup: Setup, plan: EvalPlan) -> RunFacts:
    ctx = setup.sizes["train_contexts"]
    return RunFacts(
        steps=plan.train.steps,
        batch=plan.train.batch_size,
        epochs={t: plan.train.steps * plan.train.batch_size / max(n, 1) for t, n in ctx.items()},
        train_contexts=ctx,
        losses={
            name: {t: log.mean_loss(t, last=20) for t in log.losses[-1]} for name, log in setup.logs.items()
        },
        momentum_hours=plan.sim.momentum_halflife_hours,
        suppression_days=plan.sim.suppression_halflife_days,
    )

def run_eval(
    quick: bool, out_dir: Path = Path("results"), seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Run the three experiments; write ``out_dir/eval.json`` and ``out_dir/eval.md``; return the results."""
    threads = set_threads()
    torch.manual_seed(seed)
    start = time.perf_counter()
    plan = plan_for(quick, seed)
    setup = make_setup(plan, seed)
    _say(progress, f"data: {setup.sizes}")
    rows, dupn_all = compare_models(setup, plan, progress)
    mt = multi_vs_single(setup, plan, progress)
    tr = transfer(setup, plan, dupn_all, progress)
    claims = model_claims(setup.board) + multitask_claims(setup.board) + transfer_claims(setup.board, tr)
    res: dict[str, Any] = {
        "command": "PYTHONPATH=. python -c "
        f'"from training.experiments import run_eval; run_eval(quick={quick}, seed={seed})"',
        "quick": quick,
        "seed": seed,
        "threads": threads,
        "sim_config": asdict(plan.sim),
        "train_config": asdict(plan.train),
        "transfer_steps": plan.transfer_steps,
        "window": plan.window,
        "sizes": setup.sizes,
        "ppp_majority_acc": majority_accuracy(setup.train.tables["ppp"], setup.board.test.tables["ppp"]),
        "models": rows,
        "multitask": mt,
        "transfer": tr,
        "claims": [{k: v for k, v in asdict(c).items() if k != "comparisons"} for c in claims],
        "differences": differences_paragraph(claims, _facts(setup, plan)),
    }
    res["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_report(res, out_dir)
    _say(progress, f"wrote {out_dir / 'eval.json'} and {out_dir / 'eval.md'} in {res['wall_seconds']:.0f} s")
    return res
