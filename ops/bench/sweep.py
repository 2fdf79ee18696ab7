"""The load sweep: per-event freshness of the worker and of the bare hop floor at fractions of the drain rate.

The points run in passes: the first pass is every load ascending (5, 10, 25, 50, 75 by
default), each further pass the repeated loads again (10, 25). Each pass runs the floor
hop, then the worker, each on its own fresh broker through that pass's points in order;
between points the app drains what it was sent and rests ``sweep_gap_s``
(``ops.bench.paced``). One start per pass saves a group join (8–10 s) per point; a fresh
broker per pass keeps what the broker holds bounded: in one set of all nine points (1.8M
events) both the hop and the worker stopped taking events at ~1.36M on the embedded broker
(the 2026-12-01 run, BENCHMARKS.md), which made the later repetitions measure the broker.
Default timing: 5 s warm-up + 30 s steady per point, 9 points × 2 apps ≈ 15 min.

With ``sweep_model_hop`` each pass also runs the model hop (``ops.bench_apps model-hop``: the
floor plus the worker's ``VectorUpdater`` in line, no Faust, RocksDB or changelog) after the
floor and before the worker, so each point splits the worker's extra time over the floor into
the model and state work and the path around it (Faust's consumer thread, the encoder thread,
RocksDB, the changelog). The targets stay worker against floor.

With ``sweep_spin_hop`` ("FIXED_US,PER_EVENT_US") each pass also runs the spin hop right after the floor
(``ops.bench_apps hop --spin-us``: the floor holding its loop for the model's in-process CPU time per batch),
which tells the model hop's distance from the floor apart into that CPU time and the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ops.bench.common import BenchConfig, Stream, note
from ops.bench.paced import HOP_PATH, MODEL_HOP_PATH, SPIN_HOP_PATH, EventSource, Timing, run_point_set
from ops.bench.perevent import percentile_spread, spread

REPEATED_LOADS = (10.0, 25.0)  # the loads the targets are set at: repeated for their spread
KEYS = ("receive_minus_ts_ms", "publish_minus_ts_ms")
SIDES = ("worker", "floor", "spin_hop", "model_hop")  # a point's figures per app (the hops only when they ran)


def schedule(loads: Sequence[float], reps: int) -> list[tuple[float, int]]:
    """(load %, repetition) in run order: each load once ascending, then the repeated loads' further reps."""
    if not loads or any(not 0 < x <= 100 for x in loads):
        raise ValueError(f"sweep loads are percentages of the drain rate in (0, 100]; got {list(loads)}")
    if reps < 1:
        raise ValueError(f"sweep repetitions must be at least 1; got {reps}")
    ordered = sorted(set(loads))
    out = []
    for rep in range(reps):
        out += [(load, rep + 1) for load in ordered if rep == 0 or load in REPEATED_LOADS]
    return out


def sweep(cfg: BenchConfig, stream: Stream, drain_rate: float) -> dict[str, Any]:
    """Floor (then the model hop) then worker through every point; the per-point figures and, per load, their
    spread over reps."""
    if drain_rate <= 0:
        raise ValueError(f"the drain rate must be positive; got {drain_rate}")
    order = schedule(cfg.sweep_loads, cfg.sweep_reps)
    rates = [drain_rate * load / 100 for load, _ in order]
    timing = Timing(cfg.sweep_warmup_s, cfg.sweep_steady_s, cfg.sweep_gap_s)
    apps = pass_apps(cfg)
    note(f"sweep: {len(order)} points of {timing.warmup_s:g}+{timing.steady_s:g}s, {' then '.join(apps)}")
    runs: dict[str, list[dict[str, Any]]] = {app: [] for app in apps}
    for rep in sorted({r for _, r in order}):
        pass_rates = [rate for rate, (_, r) in zip(rates, order, strict=True) if r == rep]
        note(f"sweep: pass {rep}, {len(pass_rates)} points, {' then '.join(apps)}, each on a fresh broker")
        for app in apps:
            runs[app] += run_point_set(cfg, EventSource(stream), pass_rates, timing, app=app)
    points = [
        {"load_percent": load, "rep": rep, **{side(app): runs[app][i] for app in apps}}
        for i, (load, rep) in enumerate(order)
    ]
    out = {
        "drain_rate_events_per_s": round(drain_rate, 1),
        "warmup_s": timing.warmup_s,
        "steady_s": timing.steady_s,
        "gap_s": timing.gap_s,
        "floor_path": HOP_PATH,
        "points": points,
        "loads": by_load(points),
    }
    if cfg.sweep_model_hop:
        out["model_hop_path"] = MODEL_HOP_PATH
    if cfg.sweep_spin_hop:
        out["spin_hop_path"] = SPIN_HOP_PATH
        out["spin_hop_us"] = cfg.sweep_spin_hop
    return out


def pass_apps(cfg: BenchConfig) -> tuple[str, ...]:
    """The apps of one sweep pass, in run order: the floor, the controls that are on, the worker last."""
    controls = (("spin-hop",) if cfg.sweep_spin_hop else ()) + (("model-hop",) if cfg.sweep_model_hop else ())
    return ("floor", *controls, "worker")


def side(app: str) -> str:
    """A point's key for ``app``'s figures: ``worker``, ``floor``, ``model_hop``."""
    return app.replace("-", "_")


def by_load(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per load: the spread (median, min, max over reps) of every percentile, for each app that ran."""
    out = []
    for load in sorted({p["load_percent"] for p in points}):
        reps = [p for p in points if p["load_percent"] == load]
        row: dict[str, Any] = {
            "load_percent": load,
            "reps": len(reps),
            "target_events_per_s": reps[0]["worker"]["target_events_per_s"],
        }
        for name in [n for n in SIDES if n in reps[0]]:
            runs = [p[name] for p in reps]
            row[name] = {key: percentile_spread(runs, key) for key in KEYS}
            row[name]["events_uncovered"] = sum(r["events_uncovered"] for r in runs)
            row[name]["achieved_over_target"] = spread([r["achieved_over_target"] for r in runs])
            idle = [r["idle_cpu_percent"] for r in runs if r.get("idle_cpu_percent") is not None]
            row[name]["idle_cpu_percent"] = spread(idle) if idle else None
        out.append(row)
    return out
