"""Seconds, CPU and page faults per training step on a Taobao-format file (the kernel-time check).

``python -m training.step_profile FILE [--batch-size 256] [--steps 3] [--threads 1] [--window 100]``

Prints wall seconds, user and system CPU seconds and minor page faults per
step, after one warm-up step.  It only uses functions that predate the fixes,
so the same file can be run against an older checkout (``PYTHONPATH=<old tree>
python <this file> ...``) for a before/after comparison.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="per-step cost of DUPN training on a Taobao-format CSV")
    p.add_argument("csv")
    p.add_argument("--batch-size", type=int, default=256, help="windows per task (the old --taobao default)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--no-mallopt", action="store_true", help="do not apply training.alloc (if present)")
    args = p.parse_args(argv)

    from encoder.config import EncoderConfig
    from encoder.model import DUPN
    from training.data import MultiTaskBatches
    from training.taobao import group_by_user, read_taobao_csv, taobao_examples
    from training.train import TrainConfig, TrainData, batch_losses, make_optimizer, prepare

    mallopt = False
    if not args.no_mallopt:
        try:
            from training.alloc import retain_freed_memory

            mallopt = retain_freed_memory()
        except ImportError:  # an older tree
            pass
    torch.set_num_threads(args.threads)
    by_user = group_by_user(read_taobao_csv(args.csv))
    examples = taobao_examples(by_user)
    cfg = EncoderConfig(window=args.window)
    model = DUPN(cfg)
    tc = TrainConfig(tasks=("ctr", "l2r"), steps=args.steps, batch_size=args.batch_size)
    prep = prepare(TrainData(by_user, [], examples), cfg, tc.tasks)
    batches = MultiTaskBatches(prep.store, prep.tables, cfg, args.batch_size, 0, args.window)
    opt = make_optimizer(model, list(model.parameters()), tc)
    model.train()

    def step() -> None:
        losses = batch_losses(model, next(batches), 0.1)
        opt.zero_grad(set_to_none=True)
        torch.stack(list(losses.values())).sum().backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 5.0)
        opt.step()

    step()  # warm-up
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(args.steps):
        step()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    n = args.steps
    print(
        f"batch {args.batch_size} x 2 tasks, window {args.window}, threads {args.threads}, mallopt {mallopt}: "
        f"{wall / n:.3f} s/step, user {(r1.ru_utime - r0.ru_utime) / n:.3f} s, "
        f"sys {(r1.ru_stime - r0.ru_stime) / n:.3f} s, minor faults {(r1.ru_minflt - r0.ru_minflt) / n:,.0f} per step"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
