"""Running the parts in their fixed order, with the ratios between them, into one result document."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from typing import Any

from ops.bench import latency, offline, recovery, sweep, throughput, write_cost
from ops.bench.common import BenchConfig, Stream, make_stream, note, ratio
from ops.bench.drain import drain
from ops.bench.provenance import provenance
from ops.bench.targets import verdicts

PARTS = (
    "ceiling-a", "ceiling-b", "worker", "freshness", "sweep", "encoder", "state", "recovery", "query", "scaling",
    "write-cost",
)


def run_parts(cfg: BenchConfig, parts: Sequence[str], command: str) -> dict[str, Any]:
    """Every requested part, in ``PARTS`` order, on the same stream; a later part uses an earlier one's figures."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown bench part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    todo = [p for p in PARTS if p in parts]
    if "sweep" in todo and "worker" not in todo and not cfg.drain_rate:
        _drain_rate(cfg, {})  # the clear error, before any other part has run
    stream = make_stream(cfg.users, cfg.events, cfg.seed)
    doc: dict[str, Any] = {
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": _machine(),
        "provenance": provenance(),
        "model_version": _model_version(cfg),
        "config": cfg.describe(),
        "stream": {"events": len(stream), "users": stream.users, "seed": cfg.seed},
        "parts": {},
    }
    got: dict[str, Any] = doc["parts"]
    ahead: dict[str, Any] = {}  # a part already measured with an earlier one (the worker's drains, with A's)
    for part in todo:
        note(f"part {part}")
        t0 = time.monotonic()
        if part == "ceiling-a" and "worker" in todo:
            ahead = throughput.interleaved(cfg, stream, a=True, w=True)
            got[part] = {**ahead.pop("ceiling-a"), "interleaved_with": "worker"}
        elif part == "worker" and ahead:
            got[part] = throughput.worker(cfg, stream, incremental=ahead.pop("worker"))
        else:
            got[part] = _run(part, cfg, stream, got, todo)
        got[part]["part_seconds"] = round(time.monotonic() - t0, 1)
    doc["ratios"] = ratios(got)
    doc["targets"] = [v.to_json() for v in verdicts(got)]
    doc["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return doc


def _run(part: str, cfg: BenchConfig, stream: Stream, got: dict[str, Any], todo: list[str]) -> dict[str, Any]:
    if part == "ceiling-a":
        return throughput.interleaved(cfg, stream, a=True, w=False)["ceiling-a"]
    if part == "ceiling-b":
        return throughput.ceiling_b(cfg, stream)
    if part == "worker":
        return throughput.worker(cfg, stream)
    if part == "freshness":
        rate, source = _freshness_rate(cfg, stream, got)
        note(f"freshness: {rate:.0f} events/s ({source}) for {cfg.warmup_s:g}+{cfg.steady_s:g}s")
        return {"rate_source": source, **latency.freshness(cfg, stream, rate)}
    if part == "sweep":
        rate, source = _drain_rate(cfg, got)
        return {"drain_rate_source": source, **sweep.sweep(cfg, stream, rate)}
    if part == "encoder":
        observed = _observed_batches(got)
        sizes = sorted({*offline.DEFAULT_BATCHES, *(max(1, round(v)) for v in observed.values())})
        return {"batches_observed_in_worker": observed, "rows": offline.encoder_costs(cfg.model_dir, sizes)}
    if part == "state":
        return offline.state_sizes(cfg.model_dir, users=min(cfg.users, 2000), events=min(cfg.events, 100_000))
    if part == "recovery":
        return recovery.recovery(cfg, stream, then_query="query" in todo)
    if part == "query":
        ran = got.get("recovery", {}).pop("query", None)
        return {"on": "the restored worker", **ran} if ran else {"on": "a worker that drained the stream",
                                                                **recovery.query(cfg, stream)}
    if part == "scaling":
        return throughput.scaling(cfg, stream)
    if part == "write-cost":
        return write_cost.write_cost(cfg, stream)
    raise AssertionError(part)


def _freshness_rate(cfg: BenchConfig, stream: Stream, got: dict[str, Any]) -> tuple[float, str]:
    if cfg.freshness_rate:
        return cfg.freshness_rate, "given"
    if "worker" in got:
        return got["worker"]["incremental"]["events_per_s"] / 2, "half the worker part's incremental drain rate"
    note("freshness: measuring the incremental drain rate first (give --rate to skip)")
    return drain(cfg, stream).events_per_s / 2, "half an incremental drain measured just before"


def _drain_rate(cfg: BenchConfig, got: dict[str, Any]) -> tuple[float, str]:
    """100 % load of the sweep: the worker part's incremental drain rate (median of its reps), or the given one."""
    if "worker" in got:
        return float(got["worker"]["incremental"]["events_per_s"]), "the worker part's incremental drain rate"
    if cfg.drain_rate:
        return cfg.drain_rate, "given (--drain-rate)"
    raise ValueError("the sweep's loads are fractions of the worker's drain rate: run the worker part in the same "
                     "command (--part worker,sweep) or give --drain-rate EVENTS_PER_S")


def _observed_batches(got: dict[str, Any]) -> dict[str, float]:
    """Mean events per encoder batch the worker reported (dupn_encoder_batch_size) in earlier parts."""
    out: dict[str, float] = {}
    if "worker" in got:
        mean = got["worker"]["incremental"]["per_worker"][0].get("events_per_batch_mean")
        if mean:
            out["drain_incremental"] = mean
    if got.get("freshness", {}).get("worker_events_per_batch_mean"):
        out["freshness_half_load"] = got["freshness"]["worker_events_per_batch_mean"]
    return out


def ratios(got: dict[str, Any]) -> dict[str, float | None]:
    """Every ratio between parts that both ran."""
    a = got.get("ceiling-a", {}).get("events_per_s")
    b = got.get("ceiling-b", {}).get("events_per_s")
    w = got.get("worker", {})
    inc = w.get("incremental", {}).get("events_per_s")
    exact = w.get("exact", {}).get("events_per_s")
    pairs = w.get("over_a_pairs", {})
    out = {
        "b_over_a": ratio(b, a, 3),
        "worker_incremental_over_a_pairs_median": pairs.get("median"),
        "worker_incremental_over_a": ratio(inc, a, 3),
        "worker_incremental_over_b": ratio(inc, b, 3),
        "worker_exact_over_a": ratio(exact, a, 3),
        "incremental_over_exact": w.get("incremental_over_exact"),
        "evicting_incremental_over_exact": w.get("evicting", {}).get("incremental_over_exact"),
        "freshness_achieved_over_target": got.get("freshness", {}).get("achieved_over_target"),
        "two_workers_over_one": got.get("scaling", {}).get("two_over_one"),
        "restore_over_drain_time": got.get("recovery", {}).get("restore_over_drain_time"),
    }
    return {k: v for k, v in out.items() if v is not None}


def _machine() -> dict[str, Any]:
    import faust
    import torch

    return {
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faust": faust.__version__,
        "platform": platform.platform(),
    }


def _model_version(cfg: BenchConfig) -> str:
    from encoder.checkpoint import load_checkpoint

    return str(load_checkpoint(cfg.model_dir).model_version)
