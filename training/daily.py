"""Daily and incremental training runs that end in a checkpoint: the demo model, `dupn train`, Taobao."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

from encoder.checkpoint import load_checkpoint, save_checkpoint
from encoder.config import EncoderConfig
from encoder.model import DUPN
from training.data import (
    Example,
    split_examples_by_time,
)
from training.metrics import evaluate_model
from training.simulator import SimConfig, Simulator, split_by_time
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


def _test_metrics(
    model: TaskModel, prep: Prepared, test: Mapping[str, Sequence[Example]]
) -> dict[str, float]:
    return evaluate_model(model, with_tables(prep, test, model.cfg), max_contexts=2000)


def train_and_save(
    out_dir: str | Path,
    sim_config: SimConfig,
    train_cfg: TrainConfig,
    enc_cfg: EncoderConfig | None = None,
    init_from: str | Path | None = None,
    progress: bool = True,
) -> str:
    """Simulate data, train (from scratch or continuing ``init_from``), save; return the model_version.

    This is the seed's daily incremental training: a full run once, then each
    day ``init_from`` = yesterday's checkpoint is trained further on the new
    day's data only (the checkpoint's config wins over ``enc_cfg``).  The test
    split's metrics and the parent version are recorded in the checkpoint meta.
    """
    set_threads()
    parent = load_checkpoint(init_from) if init_from is not None else None
    model = (
        parent.model if parent is not None else DUPN((enc_cfg or EncoderConfig()).variant(train_cfg.variant))
    )
    sim = Simulator(sim_config).generate()
    train_ex, test_ex = split_by_time(sim, 0.8)
    prep = prepare(TrainData(sim.histories, sim.users, train_ex), model.cfg, train_cfg.tasks)
    if parent is None:
        init_output_biases(model, prep, train_cfg.tasks)
    log = fit(model, prep, train_cfg, progress=progress, desc="train")
    metrics = _test_metrics(model, prep, {t: test_ex[t] for t in train_cfg.tasks})
    return save_checkpoint(
        model,
        out_dir,
        parent_version=parent.model_version if parent is not None else None,
        sim_config=dataclasses.asdict(sim_config),
        train_config=dataclasses.asdict(train_cfg),
        train_seconds=round(log.seconds, 2),
        steps_done=len(log.losses),
        test_metrics=metrics,
    )


def train_taobao(
    csv_path: str | Path,
    out_dir: str | Path,
    train_cfg: TrainConfig | None = None,
    enc_cfg: EncoderConfig | None = None,
    init_from: str | Path | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> str:
    """Train on a Taobao UserBehavior CSV for the tasks it supports (ctr, l2r); return the model_version.

    The CSV has no profiles, talents, purchasing power or shop preferences,
    so only CTR and L2R examples exist and every profile stays "unknown".
    ``limit`` caps the rows read (the full file has 100M).
    """
    from training.taobao import group_by_user, read_taobao_csv, taobao_examples

    set_threads()
    events_by_user = group_by_user(read_taobao_csv(csv_path, limit=limit))
    examples = taobao_examples(events_by_user, seed=(train_cfg or TrainConfig()).seed)
    cfg = train_cfg or TrainConfig(tasks=("ctr", "l2r"), steps=300, batch_size=256)
    tasks = tuple(t for t in cfg.tasks if examples.get(t))
    if not tasks:
        raise ValueError(f"{csv_path}: no ctr/l2r examples could be built")
    cfg = dataclasses.replace(cfg, tasks=tasks)
    parent = load_checkpoint(init_from) if init_from is not None else None
    model = parent.model if parent is not None else DUPN((enc_cfg or EncoderConfig()).variant(cfg.variant))
    train_ex, test_ex = split_examples_by_time({t: examples[t] for t in tasks}, 0.8)
    prep = prepare(TrainData(events_by_user, [], train_ex), model.cfg, tasks)
    if parent is None:
        init_output_biases(model, prep, tasks)
    log = fit(model, prep, cfg, progress=progress, desc="train-taobao")
    metrics = _test_metrics(model, prep, {t: v for t, v in test_ex.items() if v})
    return save_checkpoint(
        model,
        out_dir,
        parent_version=parent.model_version if parent is not None else None,
        source=f"taobao:{Path(csv_path).name}",
        train_config=dataclasses.asdict(cfg),
        train_seconds=round(log.seconds, 2),
        steps_done=len(log.losses),
        test_metrics=metrics,
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
