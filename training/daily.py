"""Daily and incremental training runs that end in a checkpoint: the demo model, `dupn train`, Taobao.

Daily incremental training as the talk describes it: one simulated world
(``SimConfig`` + seed) continues day after day (``Simulator.generate_until``);
day N's run starts from day N-1's checkpoint *and its optimizer state* (AdaGrad's
accumulators, saved beside the weights) and trains on day N's examples only.
``train_and_save(..., days=(a, b))`` trains on days [a, b) of the world and
reports metrics on day b, which it has not seen.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from encoder.checkpoint import load_checkpoint, load_optimizer_state, save_checkpoint
from encoder.config import EncoderConfig
from encoder.model import DUPN
from training.alloc import retain_freed_memory
from training.data import Example
from training.metrics import evaluate_model
from training.simulator import DAY_MS, SimConfig, SimData, Simulator, TaskExample, split_by_time
from training.train import (
    Prepared,
    TaskModel,
    TrainConfig,
    TrainData,
    fit,
    init_output_biases,
    make_optimizer,
    prepare,
    set_threads,
    with_tables,
)

_STATE_SEP = "::"


def _test_metrics(
    model: TaskModel, prep: Prepared, test: Mapping[str, Sequence[Example]]
) -> dict[str, float]:
    return evaluate_model(model, with_tables(prep, test, model.cfg), max_contexts=2000)


def optimizer_tensors(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as named tensors (``<param name>::<key>``), for safetensors.

    Keyed by parameter *name*, not position, so a state saved from one process
    restores into another model object (and a renamed or new parameter simply
    starts fresh).  Non-tensor entries (none in AdaGrad) become 0-d tensors.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, torch.Tensor] = {}
    for p, st in opt.state.items():
        name = names.get(id(p))
        if name is None:
            continue
        for key, value in st.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            out[f"{name}{_STATE_SEP}{key}"] = t.detach().clone()
    return out


def restore_optimizer(model: nn.Module, opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor]) -> int:
    """Load ``optimizer_tensors`` output into ``opt`` (built for ``model``); return parameters restored.

    A parameter whose saved state is missing or has another shape keeps the
    fresh state ``opt`` was built with.
    """
    restored = 0
    for name, p in model.named_parameters():
        entries = {
            key.split(_STATE_SEP, 1)[1]: t for key, t in tensors.items() if key.split(_STATE_SEP, 1)[0] == name
        }
        if not entries or p not in opt.state:
            continue
        fresh = opt.state[p]
        if any(isinstance(fresh.get(k), torch.Tensor) and fresh[k].shape != t.shape for k, t in entries.items()):
            continue
        fresh.update({k: t.clone().to(p.device) for k, t in entries.items()})
        restored += 1
    return restored


def resumed_optimizer(
    model: DUPN, cfg: TrainConfig, init_from: str | Path | None
) -> tuple[torch.optim.Optimizer, dict[str, Any]]:
    """A fresh optimizer for ``model``, with ``init_from``'s saved state in it when there is one."""
    opt = make_optimizer(model, list(model.parameters()), cfg)
    info: dict[str, Any] = {"optimizer": type(opt).__name__, "optimizer_resumed": False}
    if init_from is None:
        return opt, info
    tensors = load_optimizer_state(init_from)
    if tensors is None:
        warnings.warn(
            f"{init_from} has no optimizer state (an older checkpoint): starting a fresh optimizer", stacklevel=3
        )
        return opt, info
    n = restore_optimizer(model, opt, tensors)
    total = sum(1 for _ in model.parameters())
    info.update(optimizer_resumed=n > 0, optimizer_params_restored=n, optimizer_params_total=total)
    return opt, info


def day_examples(data: SimData, first_day: float, end_day: float) -> dict[str, list[TaskExample]]:
    """Examples whose moment lies in days [first_day, end_day) of the world (day 0 starts at start_ms)."""
    lo = data.config.start_ms + first_day * DAY_MS
    hi = data.config.start_ms + end_day * DAY_MS
    return {task: [ex for ex in exs if lo <= ex.now_ms < hi] for task, exs in data.examples.items()}


def train_and_save(
    out_dir: str | Path,
    sim_config: SimConfig,
    train_cfg: TrainConfig,
    enc_cfg: EncoderConfig | None = None,
    init_from: str | Path | None = None,
    progress: bool = True,
    days: tuple[int, int] | None = None,
) -> str:
    """Simulate data, train (from scratch or continuing ``init_from``), save; return the model_version.

    Without ``days`` the world is simulated until each user's event budget and
    split 80/20 by time (the demo model).  With ``days=(a, b)`` the *same* world
    (same config and seed) is run to day b + 1: the model trains on the examples
    of days [a, b) (all earlier behaviour is history) and its test metrics are
    day b's.  The daily run is then ``days=(n, n + 1)`` with ``init_from`` =
    yesterday's checkpoint, whose weights *and optimizer state* are resumed
    (the checkpoint's config wins over ``enc_cfg``).  The new checkpoint keeps
    its optimizer state for tomorrow; meta records the parent version, the days
    and whether the optimizer was resumed.
    """
    retain_freed_memory()
    set_threads()
    parent = load_checkpoint(init_from) if init_from is not None else None
    model = (
        parent.model if parent is not None else DUPN((enc_cfg or EncoderConfig()).variant(train_cfg.variant))
    )
    if days is None:
        sim = Simulator(sim_config).generate()
        train_ex, test_ex = split_by_time(sim, 0.8)
    else:
        a, b = days
        if not 0 <= a < b:
            raise ValueError(f"days must be 0 <= first < end, got {days}")
        sim = Simulator(sim_config).generate_until(b + 1)
        train_ex, test_ex = day_examples(sim, a, b), day_examples(sim, b, b + 1)
    prep = prepare(TrainData(sim.histories, sim.users, train_ex), model.cfg, train_cfg.tasks)
    if parent is None:
        init_output_biases(model, prep, train_cfg.tasks)
    opt, opt_info = resumed_optimizer(model, train_cfg, init_from)
    log = fit(model, prep, train_cfg, progress=progress, desc="train", optimizer=opt)
    metrics = _test_metrics(model, prep, {t: test_ex[t] for t in train_cfg.tasks})
    return save_checkpoint(
        model,
        out_dir,
        optimizer_state=optimizer_tensors(model, opt),
        parent_version=parent.model_version if parent is not None else None,
        sim_config=dataclasses.asdict(sim_config),
        sim_days=list(days) if days is not None else None,
        train_config=dataclasses.asdict(train_cfg),
        train_seconds=round(log.seconds, 2),
        steps_done=len(log.losses),
        test_metrics=metrics,
        **opt_info,
    )


def train_taobao(
    csv_path: str | Path,
    out_dir: str | Path,
    train_cfg: TrainConfig | None = None,
    enc_cfg: EncoderConfig | None = None,
    init_from: str | Path | None = None,
    progress: bool = True,
    limit: int | None = None,
    *,
    quick: bool = False,
    max_rows: int | None = None,
    user_sample: float | None = None,
) -> str:
    """Train on a Taobao UserBehavior CSV for the tasks it supports (ctr, l2r); return the model_version.

    The CSV is streamed (``max_rows`` caps the lines read, ``user_sample`` keeps
    a hash-chosen fraction of users whole; ``limit`` is an older alias of
    ``max_rows``), rows outside the dataset's documented days are dropped, and
    the examples are split at the 85 % time quantile (test metrics in meta).
    ``quick`` uses the small plan of ``training.taobao_eval.taobao_plan``;
    ``train_cfg`` replaces the plan's schedule.  The file has no profiles,
    talents, purchasing power or shop preferences, so only CTR and L2R
    examples exist and every profile stays "unknown".  The optimizer state is
    saved (and resumed from ``init_from``) as in ``train_and_save``.
    """
    from training.taobao_eval import load_taobao, split_by_time_quantile, taobao_plan

    retain_freed_memory()
    set_threads()
    plan = taobao_plan(quick, max_rows=max_rows if max_rows is not None else limit, user_sample=user_sample)
    cfg = train_cfg or plan.train
    data = load_taobao(csv_path, plan.max_rows, plan.user_sample, seed=cfg.seed)
    tasks = tuple(t for t in cfg.tasks if data.examples.get(t))
    if not tasks:
        raise ValueError(f"{csv_path}: no {'/'.join(cfg.tasks)} examples could be built")
    cfg = dataclasses.replace(cfg, tasks=tasks)
    parent = load_checkpoint(init_from) if init_from is not None else None
    model = (
        parent.model
        if parent is not None
        else DUPN((enc_cfg or EncoderConfig(window=plan.window)).variant(cfg.variant))
    )
    train_ex, _, test_ex = split_by_time_quantile({t: data.examples[t] for t in tasks}, 0.0, 0.15)
    prep = prepare(TrainData(data.events_by_user, [], train_ex), model.cfg, tasks)
    if parent is None:
        init_output_biases(model, prep, tasks)
    opt, opt_info = resumed_optimizer(model, cfg, init_from)
    log = fit(model, prep, cfg, progress=progress, desc="train-taobao", optimizer=opt)
    metrics = _test_metrics(model, prep, {t: v for t, v in test_ex.items() if v})
    stats = {k: v for k, v in dataclasses.asdict(data.stats).items() if k != "first_errors"}
    return save_checkpoint(
        model,
        out_dir,
        optimizer_state=optimizer_tensors(model, opt),
        parent_version=parent.model_version if parent is not None else None,
        source=f"taobao:{Path(csv_path).name}",
        taobao_read=stats,
        taobao_sample={"max_rows": plan.max_rows, "user_sample": plan.user_sample, "quick": quick},
        train_config=dataclasses.asdict(cfg),
        train_seconds=round(log.seconds, 2),
        steps_done=len(log.losses),
        test_metrics=metrics,
        **opt_info,
    )


#: The demo world and schedule behind ``ensure_model`` (quick: < 90 s on 2 cores, CTR AUC > 0.5).
DEMO_SIM_QUICK = SimConfig(
    n_users=2000, n_items=8000, n_shops=300, n_brands=200, n_talents=60, events_per_user=80, seed=0
)
DEMO_SIM_FULL = SimConfig(n_users=6000, n_items=20000, events_per_user=120, seed=0)
DEMO_TRAIN_QUICK = TrainConfig(steps=100, batch_size=48, max_seconds=55.0)
DEMO_TRAIN_FULL = TrainConfig(steps=1500, batch_size=64)
#: Rough cost model for the "about N s" message (2 idle cores): simulate + encode, then per step.
_DEMO_SECONDS = {True: 12.0 + 100 * 0.4, False: 40.0 + 1500 * 0.55}


def ensure_model(path: str | Path, quick: bool = True, progress: bool = True) -> Path:
    """Return ``path`` if it holds a checkpoint, else train a small demo model there first."""
    out = Path(path)
    try:
        load_checkpoint(out)
        return out
    except FileNotFoundError:
        pass
    print(
        f"no trained model at {out} — training a small one on simulated data "
        f"(about {_DEMO_SECONDS[quick]:.0f} s)...",
        flush=True,
    )
    sim = DEMO_SIM_QUICK if quick else DEMO_SIM_FULL
    train_and_save(
        out, sim, DEMO_TRAIN_QUICK if quick else DEMO_TRAIN_FULL, EncoderConfig(), progress=progress
    )
    return out
