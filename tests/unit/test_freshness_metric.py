"""Per-event freshness at the broker's acknowledgement, the batch-aware histogram behind it, and the
stage tracing of DUPN_TRACE_STAGES (counts only: speed is reported by benchmarks, never asserted)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from core import metrics
from core.metrics import BatchHistogram
from core.settings import load_settings
from encoder.streaming import StreamingEncoder, UpdatePolicy
from state.memory import MemoryStateStore
from streams.agents import start_batch
from streams.context import Worker
from streams.intake import BatchIntake
from streams.runtime import Runtime
from streams.updater import VectorUpdater
from tests.support.factories import keyed_messages, make_events
from tests.support.fakes import RecordingTopic

FRESHNESS_COUNT = "dupn_event_to_vector_seconds_count"


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def stage_count(stage: str) -> float:
    return sample("dupn_stage_seconds_count", stage=stage)


def exposition(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if line and not line.startswith("#") and "_created" not in line]


def test_a_batch_histogram_exposes_what_prometheus_histogram_does_for_the_same_values() -> None:
    buckets = (0.001, 0.01, 0.1, 1, 10)
    values = [0.0, 0.001, 0.0011, 0.05, 0.1, 0.7, 3.0, 11.0, 500.0]  # edges included: le is inclusive
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("h_seconds", "help", buckets, registry=ours)
    reference = Histogram("h_seconds", "help", buckets=buckets, registry=theirs)
    batch.observe_many(np.array(values[:4]))
    batch.observe_many(values[4:])
    for v in values:
        reference.observe(v)
    assert exposition(ours) == exposition(theirs)


def test_a_batch_histogram_checks_its_labels_and_buckets() -> None:
    h = BatchHistogram("s_seconds", "help", (0.1, 1), labelnames=("stage",))
    assert next(iter(h.collect())).samples == []  # a labelled histogram shows children once observed
    h.observe_many([0.5, 2.0], "fetch")
    assert {s.labels["stage"] for s in next(iter(h.collect())).samples} == {"fetch"}
    with pytest.raises(ValueError, match="takes labels"):
        h.observe_many([0.5])
    with pytest.raises(ValueError, match="increasing"):
        BatchHistogram("bad_seconds", "help", (1, 0.1))


def make_worker(encoder: StreamingEncoder, store: MemoryStateStore, **env: str) -> Worker:
    s = load_settings(env=env)
    runtime = Runtime(s, VectorUpdater(encoder, UpdatePolicy("incremental", 10)))
    return Worker(s, None, runtime, None, None, RecordingTopic(), None, store=store)


def test_freshness_is_observed_per_applied_event_once_the_broker_acknowledged(tiny_encoder: StreamingEncoder) -> None:
    async def go() -> None:
        store = MemoryStateStore(auto_ack=False)
        w = make_worker(tiny_encoder, store)
        n = w.settings.kafka.partitions
        events = make_events("dana", 6) + make_events("eve", 4, seed=3)
        batch = keyed_messages(events + events[:2], n)  # the two repeats (new offsets, same ids) are skipped
        before = sample(FRESHNESS_COUNT)
        result, delivered = await start_batch(w, batch)
        assert result.duplicates == 2 and sum(up.applied for up in result.updates) == 10
        await asyncio.sleep(0)
        assert sample(FRESHNESS_COUNT) == before  # handed to the producer, not yet acknowledged

        store.ack()
        await delivered
        await asyncio.sleep(0)  # observed in the future's done-callback
        assert sample(FRESHNESS_COUNT) == before + 10  # one per applied event, not one per vector

        again = keyed_messages(make_events("dana", 9)[6:], n, offset0=len(batch))
        _, delivered = await start_batch(w, again)
        store.fail(RuntimeError("broker said no"))
        with pytest.raises(RuntimeError):
            await delivered
        await asyncio.sleep(0)
        assert sample(FRESHNESS_COUNT) == before + 10  # a failed delivery observes nothing

    asyncio.run(go())


def test_stages_are_timed_only_when_traced(tiny_encoder: StreamingEncoder) -> None:
    stages = ("hop", "apply", "write", "ack")

    async def go(w: Worker, store: MemoryStateStore, user: str) -> None:
        _, delivered = await start_batch(w, keyed_messages(make_events(user, 3), w.settings.kafka.partitions))
        await delivered
        await asyncio.sleep(0)

    before = {st: stage_count(st) for st in stages}
    store = MemoryStateStore()
    asyncio.run(go(make_worker(tiny_encoder, store), store, "fay"))
    assert {st: stage_count(st) for st in stages} == before  # off by default: nothing timed
    store = MemoryStateStore()
    asyncio.run(go(make_worker(tiny_encoder, store, DUPN_TRACE_STAGES="1"), store, "gus"))
    assert {st: stage_count(st) for st in stages} == {st: before[st] + 1 for st in stages}  # one per batch


@dataclass(frozen=True)
class Msg:
    tp: tuple[str, int]
    offset: int
    timestamp: Any  # a Faust message's broker timestamp, in seconds


def test_a_traced_intake_times_fetch_and_queue_per_event() -> None:
    async def go(trace: bool) -> list[Msg]:
        intake = BatchIntake("events", max_batch=10, trace=trace)
        now = time.time()
        msgs = [Msg(("events", i % 2), i, now - 0.5) for i in range(4)] + [Msg(("events", 0), 4, None)]
        for m in msgs:
            intake.offer(m)
        assert intake.discard([("events", 1)]) == 2
        return await intake.take()

    before = (stage_count("fetch"), stage_count("queue"))
    assert [m.offset for m in asyncio.run(go(trace=False))] == [0, 2, 4]
    assert (stage_count("fetch"), stage_count("queue")) == before
    assert [m.offset for m in asyncio.run(go(trace=True))] == [0, 2, 4]
    # fetch: the two kept messages with a broker timestamp; queue: all three kept
    assert (stage_count("fetch"), stage_count("queue")) == (before[0] + 2, before[1] + 3)
    assert sample("dupn_stage_seconds_bucket", stage="fetch", le="0.25") < before[0] + 2  # 0.5 s old at arrival
