"""Is daily incremental training worth it?  ``--init-from`` vs from scratch at equal compute.

One simulated world (``Simulator.generate_until``) is followed day by day:

- **yesterday**: DUPN trained from scratch on days [0, N) (``pretrain_steps``), saved
  with its optimizer state, exactly as ``dupn train --day 0:N`` does;
- on day N (the "new day") every arm gets the same ``day_steps`` steps on the same
  day-N examples, same seed, batch and schedule:
  - **init-from** (weights + AdaGrad accumulators resumed from the checkpoint: the
    daily run as shipped),
  - **init-from, fresh optimizer** (weights only: what ``--init-from`` did before
    the optimizer state was saved),
  - **scratch** (a new model on day N only: equal compute, no history of training);
- **yesterday, not updated** is the reference every arm should beat or tie;
- all are scored on day N + 1, which no arm has seen (labels, and also the behaviour
  of that day: histories stop before each example's moment).

Nothing is tuned here (the schedules are fixed in advance), so there is no
validation split; standard errors are bootstraps over test contexts and arms
are compared by a paired bootstrap (``training.metrics.Scoreboard``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from encoder.checkpoint import load_checkpoint, save_checkpoint
from encoder.config import EncoderConfig
from encoder.model import DUPN
from training.alloc import retain_freed_memory
from training.daily import DEMO_SIM_QUICK, day_examples, optimizer_tensors, resumed_optimizer
from training.data import subsample_contexts
from training.metrics import FOUR_TASKS, METRIC_OF, Scoreboard
from training.simulator import SimConfig, Simulator
from training.train import (
    Prepared,
    TrainConfig,
    TrainData,
    fit,
    init_output_biases,
    prepare,
    set_threads,
    with_tables,
)

ARMS: tuple[str, ...] = ("yesterday (no update)", "init-from", "init-from, fresh optimizer", "scratch")


@dataclass(frozen=True)
class DailyPlan:
    """World, days and budgets of the comparison."""

    sim: SimConfig
    pretrain_days: int  # yesterday's model trains on days [0, pretrain_days)
    pretrain_steps: int
    day_steps: int  # every arm's budget on the new day
    train: TrainConfig  # batch, rates, seed (steps are set per phase)
    window: int
    test_contexts: int
    n_boot: int


def daily_plan(seed: int = 0, quick: bool = True) -> DailyPlan:
    """The quick world of ``dupn train --quick`` (2,000 users, ~8 behaviours per user-day)."""
    train = TrainConfig(tasks=FOUR_TASKS, batch_size=48, max_history=50, seed=seed)
    if quick:
        return DailyPlan(replace(DEMO_SIM_QUICK, seed=seed), 6, 400, 150, train, 50, 2000, 100)
    return DailyPlan(replace(DEMO_SIM_QUICK, seed=seed, n_users=4000), 6, 1000, 300, train, 50, 4000, 200)


def run_daily_eval(
    plan: DailyPlan, out_dir: str | os.PathLike[str] = "results", command: str = "", progress: bool = True
) -> dict[str, Any]:
    """Run the four arms, write ``daily.md`` / ``daily.json`` under ``out_dir``; return the result."""
    retain_freed_memory()
    set_threads()
    t0 = time.perf_counter()
    n = plan.pretrain_days
    sim = Simulator(plan.sim).generate_until(n + 2)
    enc = EncoderConfig(window=plan.window)
    tasks = [t for t in plan.train.tasks]
    past, new_day, next_day = day_examples(sim, 0, n), day_examples(sim, n, n + 1), day_examples(sim, n + 1, n + 2)
    pre = prepare(TrainData(sim.histories, sim.users, past), enc, tasks)
    day = with_tables(pre, new_day, enc)
    test = with_tables(pre, next_day, enc)
    test = Prepared(test.store, {t: subsample_contexts(tab, plan.test_contexts, 1) for t, tab in test.tables.items()})
    board = Scoreboard(test, plan.n_boot, plan.train.seed)
    pre_cfg = replace(plan.train, steps=plan.pretrain_steps)
    day_cfg = replace(plan.train, steps=plan.day_steps)
    seconds: dict[str, float] = {}
    scores: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(plan.train.seed)
        model = DUPN(enc)
        init_output_biases(model, pre, tasks)
        opt, _ = resumed_optimizer(model, pre_cfg, None)
        log = fit(model, pre, pre_cfg, progress=progress, desc="yesterday", optimizer=opt)
        seconds["yesterday (pretrain)"] = round(log.seconds, 1)
        ckpt = Path(tmp) / "yesterday"
        save_checkpoint(model, ckpt, optimizer_state=optimizer_tensors(model, opt))
        scores[ARMS[0]] = board.score(ARMS[0], load_checkpoint(ckpt).model, tasks)
        for arm in ARMS[1:]:
            if arm == "scratch":
                torch.manual_seed(plan.train.seed)
                model = DUPN(enc)
                init_output_biases(model, day, tasks)
                opt, _ = resumed_optimizer(model, day_cfg, None)
            else:
                model = load_checkpoint(ckpt).model
                opt, info = resumed_optimizer(model, day_cfg, ckpt if arm == "init-from" else None)
                assert info["optimizer_resumed"] == (arm == "init-from")
            log = fit(model, day, day_cfg, progress=progress, desc=arm, optimizer=opt)
            seconds[arm] = round(log.seconds, 1)
            scores[arm] = board.score(arm, model, tasks)
    comparisons = [
        {**asdict(c), "delta": c.delta, "outcome": c.outcome}
        for a, b in (("init-from", "scratch"), ("init-from", "init-from, fresh optimizer"),
                     ("init-from", ARMS[0]), ("scratch", ARMS[0]))
        for t in tasks
        for c in [board.compare(a, b, t)]
    ]
    result: dict[str, Any] = {
        "command": command,
        "plan": asdict(plan),
        "examples": {
            name: {t: len(v) for t, v in ex.items() if t in tasks}
            for name, ex in (("days 0..N-1", past), ("day N", new_day), ("day N+1", next_day))
        },
        "test_contexts": {t: tab.n_contexts for t, tab in test.tables.items()},
        "scores": scores,
        "comparisons": comparisons,
        "train_seconds": seconds,
        "torch_threads": torch.get_num_threads(),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "daily.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    (out / "daily.md").write_text(daily_report(result))
    return result


def daily_report(result: dict[str, Any]) -> str:
    """The markdown table (metric ± SE per arm and task) and the paired comparisons."""
    plan, tasks = result["plan"], list(result["test_contexts"])
    n = plan["pretrain_days"]
    lines = [
        "# Daily incremental training: `--init-from` vs from scratch at equal compute",
        "",
        f"Command: `{result['command']}`" if result["command"] else "",
        "",
        f"One simulated world (seed {plan['sim']['seed']}, {plan['sim']['n_users']:,} users, "
        f"{plan['sim']['n_items']:,} items) followed day by day. Yesterday's model: DUPN trained from scratch "
        f"on days 0..{n - 1} for {plan['pretrain_steps']} steps, saved with its AdaGrad state. Every arm then "
        f"gets the same {plan['day_steps']} steps × {plan['train']['batch_size']} windows per task "
        f"(window {plan['window']}, seed {plan['train']['seed']}) on day {n}'s examples only, and is scored on "
        f"day {n + 1} (unseen). Examples: "
        + "; ".join(f"{k}: " + ", ".join(f"{t} {v:,}" for t, v in ex.items()) for k, ex in result["examples"].items())
        + f". Test contexts per task: {result['test_contexts']}. Nothing was tuned (fixed schedules).",
        "",
        "| arm | " + " | ".join(f"{METRIC_OF[t]} ± SE" for t in tasks) + " | train s |",
        "|---|" + "---|" * (len(tasks) + 1),
    ]
    for arm, sc in result["scores"].items():
        secs = result["train_seconds"].get(arm, result["train_seconds"].get("yesterday (pretrain)"))
        cells = [f"{sc[METRIC_OF[t]]:.4f} ± {sc[METRIC_OF[t] + '_se']:.4f}" for t in tasks]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {secs} |")
    lines += ["", "Paired bootstrap on the day-N+1 contexts (|Δ| ≤ 2 SE is a tie):", ""]
    for c in result["comparisons"]:
        lines.append(
            f"- {c['task']}: {c['a']} {c['a_value']:.4f} vs {c['b']} {c['b_value']:.4f}: "
            f"Δ {c['delta']:+.4f} ± {c['se']:.4f} → **{c['outcome']}**"
        )
    lines += [
        "",
        f"{result['torch_threads']} torch thread(s); total {result['total_seconds']} s including simulation. "
        "The yesterday row's train s is its pretraining.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m training.daily_eval [--seed S] [--full] [--out DIR]``."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full", action="store_true", help="more users and steps")
    p.add_argument("--out", type=Path, default=Path("results"))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    command = "python -m training.daily_eval " + " ".join(sys.argv[1:] if argv is None else argv)
    run_daily_eval(daily_plan(args.seed, quick=not args.full), args.out, command.strip(), not args.no_progress)
    print(f"wrote {args.out / 'daily.md'} and {args.out / 'daily.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
