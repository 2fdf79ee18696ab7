"""What one batch of the worker's own code costs at the small batches of a low load, in process.

At 10 % load a batch holds tens of events, mostly one per user. This times ``VectorUpdater.apply`` plus
the state encode of every updated user (the work between a batch's intake and its writes), on users
whose carried states are warm in the encoder cache, for a range of batch sizes, with the worker's
re-anchoring period R and with re-anchoring practically off (R = 10,000) so the re-anchor replays'
share shows. No broker, no Faust, no RocksDB: the figures bound what our batch code can add to an
event's latency, apart from the fetch path and the writes.

    python -m ops.bench.small_batches MODEL_DIR [--sizes 1,8,32,64,256] [--reanchor 25,10000] [--reps 300]

Torch runs with the worker's thread count (``Settings.model.torch_threads``). Each size is timed over
``--reps`` consecutive batches; the mean is the figure to compare, because whether a batch holds a user
at a re-anchor (a ~100-step replay) varies from batch to batch and the mean counts those at their rate.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np


def batch_costs(
    model_dir: str, sizes: Sequence[int], reanchor: int, users: int = 2000, reps: int = 300
) -> list[dict[str, Any]]:
    """Mean and median ms per batch (and mean µs per event) of apply + state encode, per batch size."""
    from encoder.checkpoint import load_checkpoint
    from encoder.streaming import StreamingEncoder, UpdatePolicy
    from ops.replay import synthetic_events
    from state.codec import decode_state, encode_state
    from streams.updater import Incoming, VectorUpdater

    ckpt = load_checkpoint(model_dir)
    enc = StreamingEncoder(ckpt.model, ckpt.model_version)
    updater = VectorUpdater(enc, UpdatePolicy("incremental", reanchor, enc.window), cache_capacity=1_000_000)
    stream = list(synthetic_events(users, 60 * users + reps * sum(sizes), seed=3, live_time=False))
    store: dict[str, bytes] = {}
    offset = 0

    def run(events: Sequence[dict[str, Any]]) -> None:
        nonlocal offset
        msgs = [
            Incoming(0, offset + i, str(e["user_id"]).encode(), json.dumps(e).encode()) for i, e in enumerate(events)
        ]
        offset += len(events)
        result = updater.apply(msgs, lambda u, _m: decode_state(u, store[u]) if u in store else None)
        for up in result.updates:
            store[up.state.user_id] = encode_state(up.state)

    warm = 60 * users
    for lo in range(0, warm, 2000):
        run(stream[lo : lo + 2000])
    pos, rows = warm, []
    for size in sizes:
        times = []
        for _ in range(reps):
            batch = stream[pos : pos + size]
            pos += size
            t0 = time.perf_counter()
            run(batch)
            times.append(time.perf_counter() - t0)
        mean, median = float(np.mean(times) * 1000), float(np.median(times) * 1000)
        rows.append(
            {
                "reanchor": reanchor,
                "batch": size,
                "ms_mean": round(mean, 2),
                "ms_median": round(median, 2),
                "us_per_event": round(mean * 1000 / size),
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--sizes", default="1,8,32,64,256")
    ap.add_argument("--reanchor", default="25,10000")
    ap.add_argument("--reps", type=int, default=300, help="batches timed per size")
    args = ap.parse_args(argv)
    import torch

    from core.settings import load_settings

    threads = max(1, load_settings().model.torch_threads)
    torch.set_num_threads(threads)  # as the worker runs it (streams.runtime)
    sizes = [int(x) for x in args.sizes.split(",")]
    print(f"torch threads: {threads}; {args.reps} batches per size")
    print("| R | batch | ms per batch, mean | median | µs per event (mean) |")
    print("|---|---|---|---|---|")
    for r in (int(x) for x in args.reanchor.split(",")):
        for row in batch_costs(args.model_dir, sizes, r, reps=args.reps):
            cells = [row[k] for k in ("reanchor", "batch", "ms_mean", "ms_median", "us_per_event")]
            print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
