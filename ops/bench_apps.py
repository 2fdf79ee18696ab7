"""Helper processes of ``dupn bench``, configured like a worker (DUPN_* env vars); not part of the service.

``python -m ops.bench_apps passthrough``: ceiling B, a Faust app with the worker's own
Faust settings (``streams.worker.faust_options``) whose one agent does ceiling A's
work per message (JSON decode, JSON encode, send to the vectors topic), and the
worker's ``/healthz`` readiness rule.

``python -m ops.bench_apps hop``: the freshness floor, ceiling A's path as a process: a
bare aiokafka consumer (the worker's fetch wait) decodes each event and produces a
vector message of zeros in the worker's encoding (``DUPN_VECTOR_ENCODING``, so it is the
size of the worker's; ``last_event_ts`` = the event's ts, ``updated_at`` = now,
``events_seen`` = how many of the user's events it has consumed so far) to the vectors
topic, one per user per fetched batch, for the user's last event (the worker's publishing rule); prints
``ready`` once assigned and keeps the count of events consumed in ``hop.count`` under
its home dir. ``events_seen`` has the worker's meaning, so one reader measures both per
event. Measured by the same probe at the same paced load as the worker, it is what one
Kafka hop costs on this broker and machine before any work of ours.

``python -m ops.bench_apps model-hop``: the same bare hop, but each fetched batch (every partition's records
of one ``getmany``, as the worker takes a batch) goes through the worker's own ``VectorUpdater.apply``
(the checkpoint and update policy of ``DUPN_MODEL_PATH``, ``streams.runtime.Runtime``), in line on the
event loop, with each user's state kept encoded (``state.codec``) in a dict, and publishes the real
vectors. No Faust, no consumer thread, no RocksDB, no changelog: between the floor and the worker, it
shows how much of the worker's extra latency is the model and state work itself and how much is the
path around it.

``python -m ops.bench_apps hop --spin-us FIXED,PER_EVENT``: the floor hop that, before producing each
fetched batch's vectors, holds its event loop in a busy wait of FIXED + PER_EVENT × (events in the batch) µs,
the CPU time the model hop's ``apply`` takes in process (``ops.bench.small_batches``). Why: it tells whether
the model hop's distance from the floor is that CPU time spent in line (the spin hop lands where the model
hop does) or something else the model work brings (the spin hop stays near the floor).

``python -m ops.bench_apps latency-probe --out FILE``: follows the vectors topic,
prints ``ready`` once assigned, and on SIGTERM writes every vector's receive ms, user,
``events_seen`` and ``updated_at`` to FILE (``.npz``: columns ``receive_ms``, ``user``
(an index into ``users``), ``events_seen``, ``updated_ms``). It runs apart from the
benchmark's pacing producer so neither delays the other's clock.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
import time
from array import array
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from core.settings import Settings, load_settings


def create_passthrough(s: Settings) -> Any:
    import faust

    from streams.worker import faust_options

    app = faust.App(s.faust_app_id, **faust_options(s))
    source = _raw_topic(app, s.kafka.events_topic, s.kafka.partitions)
    sink = _raw_topic(app, s.kafka.vectors_topic, s.kafka.partitions)

    @app.agent(source, name="passthrough")
    async def passthrough(stream: Any) -> None:
        async for event in stream.events():
            doc = json.loads(event.value)
            await sink.send(key=event.key, value=json.dumps(doc).encode())

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        recovery = getattr(app.tables, "recovery", None)
        ready = recovery is not None and recovery.completed.is_set() and not app.rebalancing
        return web.json({"status": "ok" if ready else "starting"}, status=200 if ready else 503)

    return app


def _raw_topic(app: Any, name: str, partitions: int) -> Any:
    return app.topic(
        name, partitions=partitions, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


def run_passthrough(s: Settings) -> int:
    from faust.worker import Worker as FaustWorker

    FaustWorker(create_passthrough(s), loglevel="info").execute_from_commandline()
    return 0


HOP_COUNT_FILE = "hop.count"  # events consumed so far, rewritten every 200 ms


def run_hop(s: Settings, model: bool = False, spin_us: tuple[float, float] | None = None) -> int:
    if model:
        return asyncio.run(_run_hop(s, _model_step(s)))
    return asyncio.run(_run_hop(s, _floor_step(s) if spin_us is None else _spin_step(s, *spin_us)))


def parse_spin(text: str) -> tuple[float, float]:
    """``"FIXED,PER_EVENT"`` (µs, both finite and ≥ 0) as a pair; a clear error otherwise (``inf`` would
    spin the hop forever, ``nan`` compares false with every deadline)."""
    parts = text.split(",")
    try:
        fixed, per_event = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"spin is FIXED_US,PER_EVENT_US (two numbers); got {text!r}") from None
    if not (math.isfinite(fixed) and math.isfinite(per_event)) or fixed < 0 or per_event < 0:
        raise ValueError(f"spin times must be finite and >= 0 µs; got {text!r}")
    return fixed, per_event


def spin_us_for(events: int, fixed_us: float, per_event_us: float) -> float:
    """The busy wait for a fetch of ``events`` events: nothing for an empty fetch, as the model hop applies none."""
    return fixed_us + per_event_us * events if events else 0.0


HopStep = Callable[[Any, list[list[Any]]], Awaitable[int]]
"""``(producer, each partition's fetched records) -> events consumed``: what a hop does with one fetch."""


async def _run_hop(s: Settings, step: HopStep) -> int:
    """The hops' shared loop: a bare aiokafka consumer (the worker's fetch wait) on every events partition, a
    producer without linger, ``ready`` once assigned, ``step`` per fetch, and the count file for the bench."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    options = s.kafka.kafka_client_options()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.kafka.bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=s.kafka.fetch_max_wait_ms, **options,
    )
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka.bootstrap, linger_ms=0, **options)
    counter, consumed, counted_at = s.home_path / HOP_COUNT_FILE, 0, 0.0
    await consumer.start()
    await producer.start()
    try:
        parts = consumer.partitions_for_topic(s.kafka.events_topic) or set()
        consumer.assign([TopicPartition(s.kafka.events_topic, p) for p in sorted(parts)])
        print("ready", flush=True)
        while not stopping.is_set():
            consumed += await step(producer, list((await consumer.getmany(timeout_ms=50)).values()))
            if time.monotonic() - counted_at > 0.2:  # how far it got, for the bench to wait on
                counter.write_text(str(consumed))
                counted_at = time.monotonic()
    finally:
        await consumer.stop()
        await producer.stop()
    return 0


def _floor_step(s: Settings) -> HopStep:
    """Per partition's records: one vector message of zeros per user, for the user's last event."""
    import numpy as np
    import orjson

    from core.contracts import VectorMessage, encode_vector_message

    zeros = np.zeros(256, np.float32)  # a vector message as large as the worker's, in its encoding
    encoding = s.worker.vector_encoding
    seen: dict[bytes, int] = {}  # events consumed per user: the vector's events_seen

    async def step(producer: Any, fetched: list[list[Any]]) -> int:
        for records in fetched:
            latest = {}  # the worker's publishing rule: one document per user per batch, for the last event
            for r in records:
                latest[r.key] = orjson.loads(r.value)
                seen[r.key] = seen.get(r.key, 0) + 1
            now_ms = time.time_ns() // 1_000_000
            for key, doc in latest.items():
                out = VectorMessage(str(doc["user_id"]), "hop", zeros, seen[key], str(doc["event_id"]),
                                    int(doc["ts"]), now_ms)
                await producer.send(s.kafka.vectors_topic, key=key, value=encode_vector_message(out, encoding))
        return sum(len(records) for records in fetched)

    return step


def _spin_step(s: Settings, fixed_us: float, per_event_us: float) -> HopStep:
    """The floor's step after a busy wait of :func:`spin_us_for` the fetch: the model's CPU time, without the model."""
    floor = _floor_step(s)

    async def step(producer: Any, fetched: list[list[Any]]) -> int:
        until = time.perf_counter() + spin_us_for(sum(len(rs) for rs in fetched), fixed_us, per_event_us) / 1e6
        while time.perf_counter() < until:  # holds the loop and the GIL, as apply does
            pass
        return await floor(producer, fetched)

    return step


def _model_step(s: Settings) -> HopStep:
    """Every partition's records as one batch through the worker's ``VectorUpdater``, its vectors published."""
    from core.contracts import encode_vector_message
    from state.codec import decode_state, encode_state
    from state.store import user_key
    from streams.runtime import Runtime, tune_gc_for_worker
    from streams.updater import Incoming

    tune_gc_for_worker()  # as the worker does, after the imports
    updater = Runtime(s).updater  # the worker's model, policy and encoder cache
    encoding = s.worker.vector_encoding
    states: dict[str, bytes] = {}  # user -> encoded state, what the worker keeps in RocksDB

    def load(user_id: str, _msg: Any) -> Any:
        return decode_state(user_id, states[user_id]) if user_id in states else None

    async def step(producer: Any, fetched: list[list[Any]]) -> int:
        # aiokafka's timestamp is in ms; Faust's (what the updater reads as ``timestamp``) in seconds
        batch = [Incoming(r.partition, r.offset, r.key, r.value, r.timestamp) for rs in fetched for r in rs]
        if batch:
            for up in updater.apply(batch, load).updates:
                states[up.state.user_id] = encode_state(up.state)
                value = encode_vector_message(up.vector, encoding)
                await producer.send(s.kafka.vectors_topic, key=user_key(up.state.user_id), value=value)
        return len(batch)

    return step


def run_latency_probe(s: Settings, out: Path) -> int:
    """Stamp each vector's arrival. Kept light (aiokafka's C record parser, no vector decode:
    ``core.contracts.peek_vector_message``, v1 or v2): on two cores every percent this reader takes is a
    percent the worker under test does not get."""
    return asyncio.run(_probe(s, out))


async def _probe(s: Settings, out: Path) -> int:
    import numpy as np
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from core.contracts import peek_vector_message

    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.kafka.bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_wait_ms=20, max_partition_fetch_bytes=8 << 20, security_protocol=s.kafka.kafka_security_protocol,
    )
    await consumer.start()
    users: dict[str, int] = {}
    cols = {name: array("q") for name in ("receive_ms", "user", "events_seen", "updated_ms")}  # compact
    try:
        parts = consumer.partitions_for_topic(s.kafka.vectors_topic) or set()
        consumer.assign([TopicPartition(s.kafka.vectors_topic, p) for p in sorted(parts)])
        print("ready", flush=True)
        while not stopping.is_set():
            polled = await consumer.getmany(timeout_ms=50)
            now_ms = time.time_ns() // 1_000_000
            for records in polled.values():
                for r in records:
                    doc = peek_vector_message(r.value)
                    cols["receive_ms"].append(now_ms)
                    cols["user"].append(users.setdefault(doc["user_id"], len(users)))
                    cols["events_seen"].append(int(doc["events_seen"]))
                    cols["updated_ms"].append(int(doc["updated_at"]))
    finally:
        await consumer.stop()
    column = {k: np.frombuffer(v, dtype=np.int64) for k, v in cols.items()}
    with open(out, "wb") as fh:
        np.savez(fh, users=np.asarray(list(users), dtype=str), receive_ms=column["receive_ms"], user=column["user"],
                 events_seen=column["events_seen"], updated_ms=column["updated_ms"])
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.bench_apps", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="app", required=True)
    sub.add_parser("passthrough", help="ceiling B: a no-op Faust agent with the worker's settings")
    hop = sub.add_parser("hop", help="the freshness floor: bare aiokafka consume -> decode -> produce, until SIGTERM")
    hop.add_argument("--spin-us", type=parse_spin, help="FIXED,PER_EVENT: busy-wait that many µs per fetched batch")
    sub.add_parser("model-hop", help="the bare hop plus the worker's VectorUpdater in line, until SIGTERM")
    probe = sub.add_parser("latency-probe", help="receive time, user and events_seen of every vector, until SIGTERM")
    probe.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    s = load_settings()
    if args.app == "passthrough":
        return run_passthrough(s)
    if args.app in ("hop", "model-hop"):
        return run_hop(s, model=args.app == "model-hop", spin_us=getattr(args, "spin_us", None))
    return run_latency_probe(s, args.out)


if __name__ == "__main__":
    sys.exit(main())
