"""The talk's offline experiments on simulated data, over several seeds, on held-out users.

Per seed (:func:`run_seed`): a simulated world, whole users split train / val / test and a
time cutoff no training label crosses (``training.protocol``), then

1. baselines (Wide, Wide&Deep, CNN-max) vs DUPN-all, multi-task on CTR, L2R, talent and PPP,
   the same data, heads, inputs (query and profile in every model's context), schedule and
   training settings for every model; optionally the DUPN ablations (nobp, bplstm, bpatt);
2. multi-task vs single-task, for DUPN-all and (optionally) for every baseline, with an equal
   step budget per task;
3. oracle rows: the simulator's planted scores, with and without its time- and type-dependent
   effects (``TaskExample.oracle``);
4. the served path: DUPN-all's scores from vectors the stream worker itself produces
   (``training.served``), with the test users' profiles on their events and with none, next to
   the offline rows with the same inputs;
5. attention by behavior type × age on the test users (the talk's attention analysis).

Optionally (``transfer_steps > 0``) the transfer experiment (RS / RA / RT / FT) on shop.
Standard errors: a bootstrap over test *users* per seed, and the spread across seeds
(``training.report`` aggregates). :func:`run_validation` scores training choices on the
validation users only; the test users are scored once per reported run.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from encoder.config import EncoderConfig
from encoder.explain import attention_report
from encoder.model import DUPN
from encoder.streaming import StreamingEncoder, UpdatePolicy
from training.baselines import PROBES, make_baseline
from training.data import ExampleTable, build_table, subsample_contexts
from training.metrics import (
    BASELINE_NAMES,
    DUPN_VARIANTS,
    FOUR_TASKS,
    METRIC_OF,
    N_BOOT,
    TRANSFER_METHODS,
    Scoreboard,
    majority_accuracy,
)
from training.protocol import check_split, split_examples, split_users
from training.served import OFFLINE_UNKNOWN, SERVED, SERVED_UNKNOWN, offline_scores, served_scores
from training.simulator import DAY_MS, SimConfig, SimData, Simulator
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
    """World size, split, budgets and the training settings of one evaluation."""

    sim: SimConfig
    window: int  # behaviors per attention window (the talk: 100)
    train: TrainConfig  # every model's schedule and multi-task settings
    query_in_rep: bool = True  # DUPN's representation sees the query, as the baselines' inputs do
    # EncoderConfig fields changed for every model (e.g. {"interaction_dim": 64}); window and query_in_rep
    # come from the fields above
    encoder: dict[str, Any] = field(default_factory=dict)
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)  # users: train / val / test
    reanchor: int = 25  # the worker's default policy (incremental, R)
    test_contexts: int = 2000  # per task, cap on scored test contexts
    single_baselines: bool = True
    variants: bool = False
    transfer_steps: int = 0


def plan_for(quick: bool, seed: int = 0) -> EvalPlan:
    """quick: 3000 users, window 100, 250 steps × 64 windows per task; full: 6000 users, 1000 steps."""
    if quick:
        sim = SimConfig(
            n_users=3000, n_items=10000, n_shops=300, n_brands=200, n_talents=60, events_per_user=80, seed=seed
        )
        return EvalPlan(sim, 100, TrainConfig(steps=250, batch_size=64, seed=seed))
    sim = SimConfig(n_users=6000, n_items=20000, events_per_user=120, seed=seed)
    return EvalPlan(
        sim, 100, TrainConfig(steps=1000, batch_size=64, seed=seed), test_contexts=4000, transfer_steps=1000
    )


@dataclass
class Setup:
    """One seed's world: prepared training data, validation and test scoreboards, bookkeeping."""

    sim: SimData
    enc: EncoderConfig
    train: Prepared
    val: Scoreboard
    test: Scoreboard
    sizes: dict[str, Any]
    logs: dict[str, FitLog] = field(default_factory=dict)


def make_setup(plan: EvalPlan, seed: int, enc_base: EncoderConfig | None = None) -> Setup:
    """``enc_base``: the encoder's sizes (default ``EncoderConfig()``; tests pass a tiny one); the
    plan sets its window and ``query_in_rep``."""
    sim = Simulator(replace(plan.sim, seed=seed)).generate()
    users = split_users(sorted(sim.histories), seed, plan.fractions)
    splits = split_examples(sim, users)
    cutoff = sim.config.start_ms + int(0.8 * sim.config.days * DAY_MS)
    check_split(splits, cutoff, int(sim.config.shop_horizon_days * DAY_MS))
    enc = replace(enc_base or EncoderConfig(), **plan.encoder, window=plan.window, query_in_rep=plan.query_in_rep)
    prep = prepare(TrainData(sim.histories, sim.users, splits["train"]), enc)

    def tables(name: str) -> dict[str, ExampleTable]:
        full = {t: build_table(t, exs, prep.store, enc) for t, exs in splits[name].items() if exs}
        return {t: subsample_contexts(v, plan.test_contexts, seed) for t, v in full.items()}

    val, test = tables("val"), tables("test")
    sizes = {
        "users": {k: len(users.of(k)) for k in ("train", "val", "test")},
        "events": sum(len(h) for h in sim.histories.values()),
        "train_contexts": {t: v.n_contexts for t, v in prep.tables.items()},
        "val_examples": {t: v.n_examples for t, v in val.items()},
        "test_examples": {t: v.n_examples for t, v in test.items()},
        "test_users": {t: len(np.unique(v.ctx_user)) for t, v in test.items()},
    }
    return Setup(
        sim,
        enc,
        prep,
        Scoreboard(Prepared(prep.store, val), N_BOOT, seed, plan.reanchor),
        Scoreboard(Prepared(prep.store, test), N_BOOT, seed, plan.reanchor),
        sizes,
    )


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def train_model(name: str, model: nn.Module, setup: Setup, cfg: TrainConfig, progress: bool, **fit_kw: Any) -> FitLog:
    """Fit one model with fresh heads (output biases at the base rates)."""
    tm: TaskModel = model  # type: ignore[assignment]
    init_output_biases(tm, setup.train, cfg.tasks)
    if not isinstance(model, DUPN):
        cfg = replace(cfg, anchor_every=None)  # no state to warm up: the window is all they see
    log = fit(tm, setup.train, cfg, progress=progress, desc=name, **fit_kw)
    setup.logs[name] = log
    return log


def _scored(name: str, model: nn.Module, board: Scoreboard, log: FitLog, tasks: Sequence[str]) -> dict[str, Any]:
    tm: TaskModel = model  # type: ignore[assignment]
    row: dict[str, Any] = board.score(name, tm, tasks)
    row["train_seconds"] = round(log.seconds, 1)
    row["params"] = sum(p.numel() for p in model.parameters())
    row["final_train_loss"] = {t: round(log.mean_loss(t, last=20), 4) for t in tasks}
    if log.task_weights:
        row["task_weights"] = {t: round(w, 4) for t, w in log.task_weights.items()}
    return row


def _new_model(name: str, enc: EncoderConfig) -> nn.Module:
    if name.startswith("DUPN-"):
        return DUPN(enc.variant(name.removeprefix("DUPN-")))
    if name in PROBES:
        return PROBES[name](enc)
    return make_baseline(name, enc)


def oracle_scores(table: ExampleTable, static: bool) -> np.ndarray:
    """The planted truth as scores: log P(click) (ctr, l2r), follow affinity (talent), the level (ppp)."""
    assert table.oracle is not None
    col = table.oracle[:, 1 if static else 0]
    if table.task == "ppp":
        onehot = np.zeros((len(col), 7))
        onehot[np.arange(len(col)), col.astype(np.int64) - 1] = 1.0
        return onehot
    return col


def run_seed(plan: EvalPlan, seed: int, progress: bool, model_out: Path | None = None) -> dict[str, Any]:
    """Every experiment of one seed (module docstring); returns rows, pairwise comparisons, attention."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    setup = make_setup(plan, seed)
    _say(progress, f"seed {seed}: {setup.sizes}")
    board, cfg = setup.test, replace(plan.train, seed=seed, tasks=FOUR_TASKS, anchor_every=plan.reanchor)
    rows: dict[str, dict[str, Any]] = {}
    names = [*BASELINE_NAMES, "DUPN-all"] + ([f"DUPN-{v}" for v in DUPN_VARIANTS[:3]] if plan.variants else [])
    models: dict[str, nn.Module] = {}
    for name in names:
        models[name] = _new_model(name, setup.enc)
        log = train_model(name, models[name], setup, cfg, progress)
        rows[name] = _scored(name, models[name], board, log, FOUR_TASKS)
        _say(progress, f"  {name}: " + ", ".join(f"{METRIC_OF[t]}={rows[name][METRIC_OF[t]]:.4f}" for t in FOUR_TASKS))
    dupn = models["DUPN-all"]
    assert isinstance(dupn, DUPN)
    for static, label in ((False, "oracle"), (True, "oracle (static effects only)")):
        rows[label] = board.record(label, {t: oracle_scores(board.test.tables[t], static) for t in FOUR_TASKS})
    policy = UpdatePolicy("incremental", plan.reanchor, plan.window)
    tables = {t: board.test.tables[t] for t in FOUR_TASKS}
    t0 = time.perf_counter()
    profiles = {u.user_id: u.profile for u in setup.sim.users}
    served = served_scores(dupn, board.test.store, setup.sim.histories, tables, policy, profiles=profiles)
    rows[SERVED] = board.record(SERVED, served.with_profile)
    rows[SERVED]["seconds"] = round(time.perf_counter() - t0, 1)
    rows[SERVED_UNKNOWN] = board.record(SERVED_UNKNOWN, served.unknown_profile)
    rows[OFFLINE_UNKNOWN] = board.record(
        OFFLINE_UNKNOWN, offline_scores(dupn, board.test.store, tables, plan.reanchor, True)
    )
    single: dict[str, dict[str, Any]] = {}
    for base in ["DUPN-all", *(BASELINE_NAMES if plan.single_baselines else ())]:
        for task in FOUR_TASKS:
            name = f"{base} single-{task}"
            model = _new_model(base, setup.enc)
            log = train_model(name, model, setup, replace(cfg, tasks=(task,)), progress)
            single[name] = _scored(name, model, board, log, (task,))
    transfer = run_transfer(setup, plan, cfg, dupn, progress) if plan.transfer_steps else {}
    comparisons = _comparisons(board, rows, single, transfer)
    attention = attention_report(
        StreamingEncoder(dupn, "eval"),
        [
            setup.train.store.records[setup.train.store.index(u)]
            for u in sorted(
                {
                    u
                    for u, i in setup.train.store.user_index.items()
                    if i in set(board.test.tables["ppp"].ctx_user.tolist())
                }
            )
        ],
    )
    if model_out is not None:
        from encoder.checkpoint import save_checkpoint

        save_checkpoint(dupn, model_out, seed=seed, train_anchor_every=plan.reanchor, source="dupn eval")
    return {
        "seed": seed,
        "sizes": setup.sizes,
        "ppp_majority_acc": majority_accuracy(setup.train.tables["ppp"], board.test.tables["ppp"]),
        "models": rows,
        "single": single,
        "transfer": transfer,
        "comparisons": comparisons,
        "attention": {
            "mean": np.nan_to_num(attention.mean, nan=-1.0).tolist(),
            "counts": attention.counts.tolist(),
            "users": attention.users,
        },
        "seconds": round(time.perf_counter() - start, 1),
    }


def _comparisons(
    board: Scoreboard, rows: Mapping[str, Any], single: Mapping[str, Any], transfer: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Every paired difference the report uses: (a, b, task, a − b, paired user-bootstrap SE)."""
    pairs: list[tuple[str, str, str]] = []
    for t in FOUR_TASKS:
        pairs += [("DUPN-all", b, t) for b in BASELINE_NAMES]
        pairs += [("CNN-max", "Wide", t), ("CNN-max", "Wide&Deep", t)]
        pairs += [(SERVED, "DUPN-all", t), (SERVED_UNKNOWN, OFFLINE_UNKNOWN, t)]
        pairs += [(SERVED_UNKNOWN, "DUPN-all", t)]
        pairs += [(m, f"{m} single-{t}", t) for m in ["DUPN-all", *BASELINE_NAMES] if f"{m} single-{t}" in single]
        if "DUPN-nobp" in rows:
            pairs += [("DUPN-bplstm", "DUPN-nobp", t), ("DUPN-bpatt", "DUPN-nobp", t), ("DUPN-nobp", "CNN-max", t)]
            pairs += [("DUPN-all", f"DUPN-{v}", t) for v in DUPN_VARIANTS[:3]]
    if transfer:
        pairs += [("FT", m, "shop") for m in ("RS", "RA", "RT")]
    out = []
    for a, b, t in pairs:
        c = board.compare(a, b, t)
        out.append(
            {"a": a, "b": b, "task": t, "a_value": c.a_value, "b_value": c.b_value, "delta": c.delta, "se": c.se}
        )
    return out


def run_transfer(setup: Setup, plan: EvalPlan, cfg: TrainConfig, pretrained: DUPN, progress: bool) -> dict[str, Any]:
    """Transfer to shop preference, the same step budget for each method.

    RS: fresh DUPN trained on shop only.  RA: fresh DUPN trained on all 5 tasks.  RT: the
    4-task DUPN-all frozen, only the shop head trained.  FT: the 4-task DUPN-all trained end
    to end on shop.
    """
    base = replace(cfg, steps=plan.transfer_steps, tasks=("shop",))
    out: dict[str, Any] = {}
    for name in TRANSFER_METHODS:
        kw: dict[str, Any] = {}
        run_cfg = base
        if name in ("RS", "RA"):
            model = DUPN(setup.enc)
            run_cfg = base if name == "RS" else replace(base, tasks=(*FOUR_TASKS, "shop"))
        else:
            model = copy.deepcopy(pretrained)
            if name == "RT":
                kw = {
                    "params": [*model.heads.shop.parameters(), *model.heads.shop_emb.parameters()],
                    "train_encoder": False,
                }
        log = train_model(name, model, setup, run_cfg, progress, **kw)
        row = _scored(name, model, setup.test, log, ("shop",))
        out[name] = {
            "shop_auc": row["shop_auc"],
            "shop_auc_se": row["shop_auc_se"],
            "train_seconds": row["train_seconds"],
        }
    return out


def run_eval(
    quick: bool,
    out_dir: Path = Path("results"),
    seeds: Sequence[int] = (0, 1, 2),
    progress: bool = True,
    command: str | None = None,
    model_out: Path | None = None,
    plan_overrides: Mapping[str, Any] | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run every seed; write ``out_dir/eval.json`` and ``out_dir/eval.md``; return the results.

    ``model_out``: where to save seed ``seeds[0]``'s DUPN-all (for ``dupn drift`` and the
    attention figure). ``jobs`` > 1 runs the seeds in that many processes, 1 torch thread each.
    """
    from training.report import write_report

    threads = set_threads()
    start = time.perf_counter()
    plan = replace(plan_for(quick, seeds[0]), **dict(plan_overrides or {}))
    outs = [model_out if i == 0 else None for i in range(len(seeds))]
    if jobs > 1:  # one process per seed (1 torch thread each): the seeds are independent
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(jobs, len(seeds)), mp_context=mp.get_context("spawn")) as pool:
            per_seed = list(pool.map(_seed_job, [(plan, s, o) for s, o in zip(seeds, outs, strict=True)]))
    else:
        per_seed = [run_seed(plan, seed, progress, out) for seed, out in zip(seeds, outs, strict=True)]
    res: dict[str, Any] = {
        "command": command or f"dupn eval{' --quick' if quick else ''} --seeds {','.join(map(str, seeds))}",
        "quick": quick,
        "seeds": list(seeds),
        "threads": 1 if jobs > 1 else threads,
        "jobs": jobs,
        "plan": _plan_json(plan),
        "per_seed": per_seed,
    }
    res["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_report(res, out_dir)
    _say(progress, f"wrote {out_dir / 'eval.json'} and {out_dir / 'eval.md'} in {res['wall_seconds']:.0f} s")
    return res


def _seed_job(args: tuple[EvalPlan, int, Path | None]) -> dict[str, Any]:
    torch.set_num_threads(1)
    plan, seed, out = args
    return run_seed(plan, seed, False, out)


def _plan_json(plan: EvalPlan) -> dict[str, Any]:
    d = asdict(plan)
    d["sim"] = asdict(plan.sim)
    d["train"] = asdict(plan.train)
    return d


# -- validation: training choices, scored on the validation users only -----------------

#: name → (TrainConfig overrides, query_in_rep). The first is today's recipe.
CHOICES: dict[str, tuple[dict[str, Any], bool]] = {
    "plain sum (today)": ({}, False),
    "sum + query in rep": ({}, True),
    "norm": ({"weighting": "norm"}, True),
    "uncertainty": ({"weighting": "uncertainty"}, True),
    "task_clip": ({"grad_mode": "task_clip"}, True),
    "pcgrad": ({"grad_mode": "pcgrad"}, True),
    "round_robin": ({"schedule": "round_robin"}, True),
    "anchored R=25 + profile dropout 0.2": ({"anchor_every": 25, "profile_dropout": 0.2}, True),
    "norm + anchored R=25 + profile dropout 0.2": (
        {"weighting": "norm", "anchor_every": 25, "profile_dropout": 0.2},
        True,
    ),
    "init_norm + anchored R=25 + profile dropout 0.2": (
        {"weighting": "init_norm", "anchor_every": 25, "profile_dropout": 0.2},
        True,
    ),
    # results/eval.md's settings with the id embeddings' AdaGrad rate 0.1 -> 0.02 (docs/eval.md, test (b))
    "norm + anchored R=25 + profile dropout 0.2 + id lr 0.02": (
        {"weighting": "norm", "anchor_every": 25, "profile_dropout": 0.2, "embedding_lr": 0.02},
        True,
    ),
}


def run_validation(
    quick: bool,
    choices: Sequence[str],
    seed: int = 0,
    out: Path | None = None,
    singles: Sequence[str] = FOUR_TASKS,
    progress: bool = True,
    extra: Mapping[str, tuple[dict[str, Any], bool]] | None = None,
    on_row: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """DUPN-all under each training choice, and single-task references, scored on the validation users."""
    set_threads()
    table = {**CHOICES, **dict(extra or {})}
    plan = plan_for(quick, seed)
    setups: dict[bool, Setup] = {}
    res: dict[str, Any] = {"seed": seed, "quick": quick, "rows": {}}

    def setup_for(q: bool) -> Setup:
        if q not in setups:
            setups[q] = make_setup(replace(plan, query_in_rep=q), seed)
        return setups[q]

    base = replace(plan.train, seed=seed, tasks=FOUR_TASKS)
    runs: list[tuple[str, str, dict[str, Any], bool, tuple[str, ...]]] = [
        (c, "DUPN-all", table[c][0], table[c][1], FOUR_TASKS) for c in choices
    ]
    runs += [(f"single-{t}", "DUPN-all", {}, True, (t,)) for t in singles]
    for label, model_name, over, q, tasks in runs:
        setup = setup_for(q)
        cfg = replace(base, tasks=tasks, **over)
        model = _new_model(model_name, setup.enc)
        log = train_model(label, model, setup, cfg, progress)
        row = _scored(label, model, setup.val, log, tasks)
        res["rows"][label] = row
        _say(
            progress,
            f"  {label}: "
            + ", ".join(f"{METRIC_OF[t]}={row[METRIC_OF[t]]:.4f}±{row[METRIC_OF[t] + '_se']:.4f}" for t in tasks)
            + f" ({log.seconds:.0f}s)",
        )
        if on_row is not None:
            on_row(label, row)
        if out is not None:
            import json

            out.write_text(json.dumps(res, indent=1))
    return res


# -- learning curves: every model trained once, scored on the validation users every k steps ----

#: DUPN-all's settings in results/eval.md (the baselines get the same TrainConfig; ``train_model``
#: drops ``anchor_every`` for them, as in :func:`run_seed`).
EVAL_CHOICE = "norm + anchored R=25 + profile dropout 0.2"
CURVE_MODELS: tuple[str, ...] = ("DUPN-all", *BASELINE_NAMES, *PROBES)


def _at(name: str, step: int) -> str:
    return f"{name}@{step}"


def run_curve(
    models: Sequence[str],
    steps: int,
    every: int,
    seed: int = 0,
    out: Path | None = None,
    choice: str = EVAL_CHOICE,
    progress: bool = True,
    command: str | None = None,
    plan: EvalPlan | None = None,
    enc_base: EncoderConfig | None = None,
    quick: bool = True,
) -> dict[str, Any]:
    """Learning curves on the validation users: each model trained once for ``steps`` steps and
    scored every ``every`` steps (and at the last), through ``fit``'s evaluation hook (scoring
    leaves training untouched: ``training.train._isolated_eval``).

    Every model gets the quick (``quick=False``: the full) plan's world, split and batch size and the TrainConfig of the
    ``choice`` row of :data:`CHOICES` (results/eval.md's settings), with only ``steps`` changed,
    and is initialised right after ``torch.manual_seed(seed)`` (its row does not depend on which
    models ran before it).
    Rows: one per model and checkpoint (metric ± user-bootstrap SE, mean train loss per task over
    the 20 steps up to the checkpoint). Comparisons: DUPN-all − each baseline at each checkpoint
    and each model's last − first checkpoint, paired bootstrap on the same user resamples.

    ``out``: the JSON, rewritten after every checkpoint; the validation scores go next to it
    (``<out>.scores.npz``) so that a later invocation with other models (same seed, steps,
    every, choice) is merged into the same file, its comparisons paired with the earlier rows.
    """
    if steps < 1 or every < 1:
        raise ValueError("steps >= 1 and every >= 1 required")
    unknown = [m for m in models if m != "DUPN-all" and m not in BASELINE_NAMES and m not in PROBES]
    if unknown or not models:
        raise ValueError(f"models must be among {CURVE_MODELS}, got {list(models)}")
    set_threads()
    start = time.perf_counter()
    over, q = CHOICES[choice]
    plan = replace(plan or plan_for(quick, seed), query_in_rep=q)
    cfg = replace(plan.train, seed=seed, tasks=FOUR_TASKS, steps=steps, **over)
    setup = make_setup(plan, seed, enc_base)
    board = setup.val
    checkpoints = sorted({*range(every, steps + 1, every), steps})
    res: dict[str, Any] = {
        "commands": [],
        "seed": seed,
        "quick": quick,
        "steps": steps,
        "every": every,
        "checkpoints": checkpoints,
        "choice": choice,
        "train": asdict(cfg),
        "plan": _plan_json(plan),
        "sizes": setup.sizes,
        "threads": torch.get_num_threads(),
        "oracle": {},
        "models": {},
        "rows": [],
        "comparisons": [],
        "invocations": [],
    }
    scores_path = None if out is None else out.with_name(out.name.removesuffix(".json") + ".scores.npz")
    if out is not None and out.exists():
        res = _merge_previous(res, out, scores_path, board, models)
    default = f"dupn validate --curve --steps {steps} --every {every} --models {','.join(models)}"
    res["commands"].append(command or default)
    for static, label in ((False, "oracle"), (True, "oracle (static effects only)")):
        res["oracle"][label] = board.record(label, {t: oracle_scores(board.test.tables[t], static) for t in FOUR_TASKS})
    invocation = {"command": res["commands"][-1], "models": list(models), "wall_seconds": 0.0}
    res["invocations"].append(invocation)

    def save() -> None:
        invocation["wall_seconds"] = round(time.perf_counter() - start, 1)
        if out is None:
            return
        import json

        out.write_text(json.dumps(res, indent=1))
        assert scores_path is not None
        arrays = {f"{k}/{t}": v for k, per in board.scores.items() if "@" in k for t, v in per.items()}
        np.savez_compressed(scores_path, **arrays)  # type: ignore[arg-type]

    for name in models:
        torch.manual_seed(seed)  # each model's init independent of the models trained before it (and of merging)
        model = _new_model(name, setup.enc)
        log = FitLog()
        model_start = time.perf_counter()
        entry: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters()), "checkpoints_done": []}
        res["models"][name] = entry
        res["rows"] = [r for r in res["rows"] if r["model"] != name]
        res["comparisons"] = [c for c in res["comparisons"] if name not in (c["a"], c["b"])]
        score_seconds = [0.0]

        def on_eval(step: int, name: str = name, model: nn.Module = model, log: FitLog = log,
                    entry: dict[str, Any] = entry, model_start: float = model_start,
                    score_seconds: list[float] = score_seconds) -> dict[str, float]:  # fmt: skip
            t0 = time.perf_counter()
            tm: TaskModel = model  # type: ignore[assignment]
            metrics = board.score(_at(name, step), tm, FOUR_TASKS)
            score_seconds[0] += time.perf_counter() - t0
            elapsed = time.perf_counter() - model_start
            row: dict[str, Any] = {
                "model": name,
                "step": step,
                **metrics,
                "train_loss_last20": {t: round(log.mean_loss(t, last=20), 4) for t in FOUR_TASKS},
                "grad_norm_median_last20": round(float(np.median(log.grad_norms[-20:])), 3) if log.grad_norms
                else None,
                "clipped_share_last20": round(log.clipped_share(cfg.clip_norm, 20), 3) if log.grad_norms else None,
                "train_seconds": round(elapsed - score_seconds[0], 1),
            }
            res["rows"].append(row)
            res["comparisons"] += _curve_comparisons(board, name, step, checkpoints)
            entry["checkpoints_done"].append(step)
            entry["wall_seconds"] = round(elapsed, 1)
            entry["score_seconds"] = round(score_seconds[0], 1)
            save()
            _say(
                progress,
                f"  {name} @ {step}: "
                + ", ".join(f"{METRIC_OF[t]}={metrics[METRIC_OF[t]]:.4f}±{metrics[METRIC_OF[t] + '_se']:.4f}"
                            for t in FOUR_TASKS)
                + f" ({elapsed:.0f}s)",
            )
            return {METRIC_OF[t]: metrics[METRIC_OF[t]] for t in FOUR_TASKS}

        train_model(name, model, setup, cfg, progress, eval_every=every, on_eval=on_eval, log=log)
        entry["train_seconds"] = round(log.seconds - score_seconds[0], 1)
        entry["stopped_early"] = log.stopped_early
        if log.task_weights:
            entry["task_weights"] = {t: round(w, 4) for t, w in log.task_weights.items()}
        save()
    res["wall_seconds"] = round(sum(i["wall_seconds"] for i in res["invocations"]), 1)
    save()
    return res


def _curve_comparisons(board: Scoreboard, name: str, step: int, checkpoints: Sequence[int]) -> list[dict[str, Any]]:
    """The paired differences a new checkpoint makes possible (see :func:`run_curve`)."""
    pairs: list[tuple[str, str, str]] = []
    if name == "DUPN-all":
        pairs += [("DUPN-all", b, "vs baseline") for b in BASELINE_NAMES if _at(b, step) in board.scores]
    elif _at("DUPN-all", step) in board.scores:
        pairs.append(("DUPN-all", name, "vs baseline"))
    out: list[dict[str, Any]] = []
    for a, b, kind in pairs:
        for t in FOUR_TASKS:
            c = board.compare(_at(a, step), _at(b, step), t)
            out.append({"kind": kind, "a": a, "b": b, "a_step": step, "b_step": step, "task": t,
                        "a_value": c.a_value, "b_value": c.b_value, "delta": c.delta, "se": c.se})  # fmt: skip
    if step == checkpoints[-1] and len(checkpoints) > 1 and _at(name, checkpoints[0]) in board.scores:
        for t in FOUR_TASKS:
            c = board.compare(_at(name, step), _at(name, checkpoints[0]), t)
            out.append({"kind": "last vs first", "a": name, "b": name, "a_step": step,
                        "b_step": checkpoints[0], "task": t, "a_value": c.a_value, "b_value": c.b_value,
                        "delta": c.delta, "se": c.se})  # fmt: skip
    return out


def _merge_previous(
    res: dict[str, Any], out: Path, scores_path: Path | None, board: Scoreboard, models: Sequence[str]
) -> dict[str, Any]:
    """Keep an earlier invocation's rows (other models, same seed / steps / every / choice / plan)."""
    import json

    prev = json.loads(out.read_text())
    same = ("seed", "steps", "every", "choice", "train", "plan")
    if any(prev.get(k) != json.loads(json.dumps(res[k])) for k in same):
        raise ValueError(f"{out} holds a curve with other settings ({', '.join(same)}); use another --out")
    if scores_path is not None and scores_path.exists():
        with np.load(scores_path) as z:
            per: dict[str, dict[str, np.ndarray]] = {}
            for key in z.files:
                label, _, task = key.rpartition("/")
                if label.partition("@")[0] not in models:
                    per.setdefault(label, {})[task] = z[key]
        for label, scores in per.items():
            board.record(label, scores)
    for k in ("commands", "invocations"):
        res[k] = list(prev.get(k, []))
    res["models"] = {m: v for m, v in prev.get("models", {}).items() if m not in models}
    res["rows"] = [r for r in prev.get("rows", []) if r["model"] not in models]
    res["comparisons"] = [c for c in prev.get("comparisons", []) if c["a"] not in models and c["b"] not in models]
    return res
