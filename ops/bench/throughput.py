"""Throughput: the two passthrough ceilings, the worker in both update modes, and two workers vs one."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from core.settings import Settings
from ops.bench.common import (
    BenchConfig,
    Stream,
    bench_env,
    make_stream,
    note,
    produce_pairs,
    ratio,
    ready_time,
)
from ops.bench.drain import drain
from ops.bench.perevent import spread
from ops.harness import running_worker

PASSTHROUGH_ARGV = ("-m", "ops.bench_apps", "passthrough")


def ceiling_a(cfg: BenchConfig, stream: Stream) -> dict[str, Any]:
    """Bare aiokafka: consume -> JSON decode -> JSON encode -> produce, in this process."""
    with bench_env(cfg, "ceiling-a") as s:
        produce_pairs(s, stream.pairs)
        seconds = asyncio.run(_aiokafka_passthrough(s, len(stream)))
    return _rate(len(stream), seconds, path="aiokafka consume -> json.loads -> json.dumps -> produce")


async def _aiokafka_passthrough(s: Settings, expected: int) -> float:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.kafka.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka.bootstrap, linger_ms=2)
    await consumer.start()
    await producer.start()
    try:
        parts = consumer.partitions_for_topic(s.kafka.events_topic) or set()
        consumer.assign([TopicPartition(s.kafka.events_topic, p) for p in parts])
        await consumer.seek_to_beginning()
        done = 0
        start = time.monotonic()
        while done < expected:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                for r in records:
                    doc = json.loads(r.value)
                    await producer.send(s.kafka.vectors_topic, key=r.key, value=json.dumps(doc).encode())
                done += len(records)
        await producer.flush()
        return time.monotonic() - start
    finally:
        await consumer.stop()
        await producer.stop()


def ceiling_b(cfg: BenchConfig, stream: Stream) -> dict[str, Any]:
    """A Faust agent doing ceiling A's work (ops.bench_apps), with the worker's own Faust settings.

    The clock runs from the app logging "Worker ready" (as for the worker) until
    the output topic has yielded every event to a reader.
    """
    with bench_env(cfg, "ceiling-b") as s:
        produce_pairs(s, stream.pairs)
        with running_worker(s, "passthrough", cfg.ready_timeout_s, argv=PASSTHROUGH_ARGV):
            healthy = time.time()
            wait_topic_holds(s, s.kafka.vectors_topic, len(stream), cfg.timeout_s)
            done = time.time()
            seconds = done - (ready_time([s.home_path / "passthrough.log"], done) or healthy)
    path = "Faust agent (streams.worker.faust_options) json.loads -> json.dumps -> send"
    return _rate(len(stream), seconds, path=path)


def wait_topic_holds(s: Settings, topic: str, expected: int, timeout_s: float) -> int:
    """Read the topic until it has yielded ``expected`` records.

    Counted by reading: Tansu's end offsets advance by one per record *batch*, so
    they cannot count records.
    """
    from ops.bench.common import vector_consumer

    consumer = vector_consumer(s, topic)
    try:
        held = 0
        deadline = time.monotonic() + timeout_s
        while held < expected:
            held += sum(len(recs) for recs in consumer.poll(timeout_ms=100).values())
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} holds {held} of {expected} records after {timeout_s:.0f}s")
        return held
    finally:
        consumer.close()


def _rate(events: int, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"events_per_s": round(events / seconds), "events": events, "seconds": round(seconds, 2), **extra}


def interleaved(cfg: BenchConfig, stream: Stream, a: bool, w: bool) -> dict[str, dict[str, Any]]:
    """Ceiling A and the worker's incremental drain, ``cfg.throughput_reps`` times each, interleaved A, W, A, W, ...

    Interleaving spreads the machine's drift (other jobs, thermal) over both, so the
    ratio is taken per pair (each W over the A just before it); the median and range
    of those ratios, and of each rate, are what the spread on this machine allows.
    """
    a_runs: list[dict[str, Any]] = []
    w_runs: list[dict[str, Any]] = []
    for rep in range(max(1, cfg.throughput_reps)):
        if a:
            note(f"ceiling-a: repetition {rep + 1}")
            a_runs.append(ceiling_a(cfg, stream))
        if w:
            note(f"worker: incremental, repetition {rep + 1}, {len(stream)} events, {stream.users} users")
            w_runs.append(drain(cfg, stream, update_mode="incremental").to_json())
    out: dict[str, dict[str, Any]] = {}
    if a:
        out["ceiling-a"] = median_run(a_runs)
    if w:
        out["worker"] = {"incremental": median_run(w_runs)}
    if a and w:
        pairs = [ratio(wr["events_per_s"], ar["events_per_s"], 3) or 0.0 for ar, wr in zip(a_runs, w_runs, strict=True)]
        out["worker"]["over_a_pairs"] = {"ratios": pairs, **spread(pairs)}
    return out


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run at the median rate (the lower middle one for an even count), with every rep's rate and their spread.

    ``events_per_s`` is the median of the reps, so ratios against it are ratios of medians.
    """
    rates = [r["events_per_s"] for r in runs]
    middle = sorted(runs, key=lambda r: r["events_per_s"])[(len(runs) - 1) // 2]
    stats = spread(rates)
    return {**middle, "events_per_s": round(stats["median"]), "reps_events_per_s": rates, "spread": stats}


def worker(cfg: BenchConfig, stream: Stream, incremental: dict[str, Any] | None = None) -> dict[str, Any]:
    """The real worker (state, encoder, publishing): incremental and exact on the stream, and on few users.

    The incremental drain is repeated (``interleaved``; given when it ran interleaved
    with ceiling A). The few-user stream has the same number of events over
    ``evicting_users`` users, so windows fill to 100 and evict: where exact pays its
    100-step recompute.
    """
    out: dict[str, Any] = dict(incremental or interleaved(cfg, stream, a=False, w=True)["worker"])
    note(f"worker: exact, {len(stream)} events, {stream.users} users")
    out["exact"] = drain(cfg, stream, update_mode="exact").to_json()
    out["incremental_over_exact"] = ratio(out["incremental"]["events_per_s"], out["exact"]["events_per_s"])
    few = cfg.evicting_users if cfg.evicting_users is not None else max(50, cfg.users // 20)
    if few:
        evicting = make_stream(few, cfg.events, cfg.seed)
        out["evicting"] = {"users": evicting.users, "events": len(evicting)}
        for mode in ("incremental", "exact"):
            note(f"worker: {mode}, {len(evicting)} events, {evicting.users} users (windows evict)")
            out["evicting"][mode] = drain(cfg, evicting, update_mode=mode).to_json()
        inc, exact = out["evicting"]["incremental"], out["evicting"]["exact"]
        out["evicting"]["incremental_over_exact"] = ratio(inc["events_per_s"], exact["events_per_s"])
    return out


def scaling(cfg: BenchConfig, stream: Stream) -> dict[str, Any]:
    """One worker vs two (one group, own ports and data dirs) on the same partitions: aggregate drain rate."""
    out: dict[str, Any] = {"partitions": cfg.partitions}
    for n in (1, 2):
        note(f"scaling: {n} worker(s) on {cfg.partitions} partitions")
        out[f"workers_{n}"] = drain(cfg, stream, workers=n, update_mode="incremental").to_json()
    out["two_over_one"] = ratio(out["workers_2"]["events_per_s"], out["workers_1"]["events_per_s"])
    return out
