"""The worker's batch path (streams.agents.start_batch, InFlight) and HTTP views, on the in-memory store.

No broker, no Faust app: the agent and the views read and write user states only through
the store (state.memory.MemoryStateStore here, streams.table_store in the worker), so what a
user sees (events_seen, vectors, DLQ records, acks) is checked directly.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from core.settings import load_settings
from encoder.features import records_from_events
from encoder.streaming import StreamingEncoder, UpdatePolicy, reference_vectors
from state.changelog import slot_key
from state.memory import MemoryStateStore
from streams.agents import InFlight, start_batch
from streams.context import Worker
from streams.runtime import Runtime
from streams.updater import Incoming, VectorUpdater
from streams.web import explain_view, partition_of, vector_view
from tests.support.factories import keyed_messages, make_events
from tests.support.fakes import ConsumerApp, RecordingTopic

POLICY = UpdatePolicy("incremental", 10)


class Web:
    """Faust's ``web`` object, as the views use it: the status and body they answer."""

    def json(self, body: Any, status: int = 200, headers: Any = None) -> tuple[int, Any]:
        return status, body


class Request:
    def __init__(self, **query: str) -> None:
        self.query = query


def make_worker(encoder: StreamingEncoder, store: MemoryStateStore) -> Worker:
    s = load_settings(env={})
    runtime = Runtime(s, VectorUpdater(encoder, POLICY))
    return Worker(s, None, runtime, None, None, RecordingTopic(), None, store=store)


def messages(w: Worker, events: Sequence[dict[str, Any]], offset0: int = 0) -> list[Incoming]:
    return keyed_messages(events, w.settings.kafka.partitions, offset0)


def dlq(w: Worker) -> RecordingTopic:
    assert isinstance(w.dlq_topic, RecordingTopic)
    return w.dlq_topic


def test_a_batch_is_readable_at_once_and_published_only_when_acknowledged(tiny_encoder: StreamingEncoder) -> None:
    async def go() -> None:
        store = MemoryStateStore(auto_ack=False)
        w = make_worker(tiny_encoder, store)
        events = {u: make_events(u, 12, seed=k) for k, u in enumerate(["alice", "bob"])}
        result, delivered = await start_batch(w, messages(w, events["alice"] + events["bob"]))
        assert sorted(up.state.user_id for up in result.updates) == ["alice", "bob"]

        n = w.settings.kafka.partitions
        for user in events:  # the local copy has it: the next batch reads it
            state = store.read(user, partition_of(user.encode(), n))
            assert state is not None and state.events_seen == 12
        assert not delivered.done() and store.vectors == [] and store.changelog == {}

        assert store.ack() == 1
        await delivered
        published = {m.user_id: m for m in store.published()}
        assert {u: m.events_seen for u, m in published.items()} == {"alice": 12, "bob": 12}
        for user, evs in events.items():  # one vector per user per batch, the offline one after its last event
            ref = reference_vectors(tiny_encoder, records_from_events(evs), POLICY)[-1]
            assert np.abs(published[user].vector - ref).max() <= 1e-5
            assert published[user].last_event_id == evs[-1]["event_id"]
            partition = partition_of(user.encode(), n)
            # state.changelog: the user's 12 behaviors in one block (keyed by the slot of the first), then its header
            assert [k for k, _ in store.changelog[partition]] == [slot_key(user.encode(), 0), user.encode()]
            assert store.persisted_offset(partition) == len(store.changelog[partition]) - 1

    asyncio.run(go())


def test_messages_are_acked_only_after_the_write_future(tiny_encoder: StreamingEncoder) -> None:
    async def go() -> None:
        store = MemoryStateStore(auto_ack=False)
        w = make_worker(tiny_encoder, store)
        app = ConsumerApp()
        in_flight = InFlight(app)
        first = messages(w, make_events("carol", 5))
        _, delivered = await start_batch(w, first)
        await in_flight.add(delivered, first)
        await asyncio.sleep(0)
        assert app.consumer.acked == []  # applied and written locally, not yet durable

        store.ack()
        await in_flight.settle()
        await asyncio.sleep(0)  # the ack runs as the future's done-callback
        assert app.consumer.acked == first

        second = messages(w, make_events("carol", 8)[5:], offset0=5)
        _, delivered = await start_batch(w, second)
        await in_flight.add(delivered, second)
        store.fail(RuntimeError("broker said no"))
        with pytest.raises(RuntimeError, match="broker said no"):
            await in_flight.settle()
        assert app.consumer.acked == first  # a failed delivery acks nothing

    asyncio.run(go())


def test_a_failed_dlq_send_fails_the_batch_and_acks_nothing(tiny_encoder: StreamingEncoder) -> None:
    async def go() -> None:
        store = MemoryStateStore()  # the states' records are acknowledged at once
        w = make_worker(tiny_encoder, store)
        dlq(w).fail = RuntimeError("DLQ produce failed")
        good = messages(w, make_events("hal", 2))
        batch = [*good, Incoming(good[0].partition, 2, b"hal", b"{not json")]
        app = ConsumerApp()
        in_flight = InFlight(app)
        _, delivered = await start_batch(w, batch)
        await in_flight.add(delivered, batch)
        with pytest.raises(RuntimeError, match="DLQ produce failed"):
            await in_flight.settle()
        await asyncio.sleep(0)
        assert app.consumer.acked == []  # the rejected event (and its batch) will come again

    asyncio.run(go())


def test_bad_events_go_to_the_dlq_and_the_rest_is_applied(tiny_encoder: StreamingEncoder) -> None:
    async def go() -> None:
        store = MemoryStateStore()
        w = make_worker(tiny_encoder, store)
        good = messages(w, make_events("dave", 3))
        p = good[0].partition
        missing = json.dumps({"user_id": "dave"}).encode()
        bad = [Incoming(p, 10, b"dave", b"{not json"), Incoming(p, 11, b"dave", missing)]
        result, delivered = await start_batch(w, [good[0], bad[0], good[1], bad[1], good[2]])
        await delivered
        assert [up.state.events_seen for up in result.updates] == [3]
        sent = dlq(w).sent
        assert [value for _, value, _ in sent] == [m.value for m in bad]  # the original bytes
        reasons = [dict(headers)["dupn.reason"] for _, _, headers in sent]
        assert reasons == [b"bad_json", b"missing_field"]
        assert [m.events_seen for m in store.published()] == [3]

    asyncio.run(go())


def test_redelivered_events_are_skipped_and_the_state_written_again(tiny_encoder: StreamingEncoder) -> None:
    async def go() -> None:
        store = MemoryStateStore()
        w = make_worker(tiny_encoder, store)
        batch = messages(w, make_events("erin", 6))
        await (await start_batch(w, batch))[1]
        result, delivered = await start_batch(w, batch)  # at-least-once: the same messages again
        await delivered
        assert not result.updates and result.duplicates == 6
        first, again = store.published()
        assert again.events_seen == first.events_seen == 6
        assert np.array_equal(again.vector, first.vector)
        (log,) = store.changelog.values()
        # the stored state, unchanged, reaches the changelog again (state.changelog: one block of 6 behaviors and
        # the header; the rewrite is the header alone, since this process's acknowledged write holds the block)
        assert len(log) == 3 and log[2] == log[1] and log[1][0] == b"erin"

    asyncio.run(go())


def test_a_state_that_does_not_decode_is_counted_and_never_written_over(tiny_encoder: StreamingEncoder) -> None:
    async def go() -> None:
        store = MemoryStateStore()
        w = make_worker(tiny_encoder, store)
        batch = messages(w, make_events("fay", 4))
        store.put_raw("fay", batch[0].partition, b"\x09garbage")
        result, delivered = await start_batch(w, batch)
        await delivered
        assert result.corrupt_states == 1
        assert store.published() == [] and store.changelog == {}  # the stored bytes are kept as they are
        assert store.local[batch[0].partition][b"fay"] == b"\x09garbage"
        assert [r.reason for _, r in result.rejections] == ["state_undecodable"] * 4
        assert [h["dupn.reason"] for _, _, h in dlq(w).sent] == [b"state_undecodable"] * 4

    asyncio.run(go())


def test_http_views_answer_from_the_store(tiny_encoder: StreamingEncoder) -> None:
    async def go() -> None:
        store = MemoryStateStore()
        w = make_worker(tiny_encoder, store)
        events = make_events("gus", 15)
        await (await start_batch(w, messages(w, events)))[1]
        (published,) = store.published()

        status, body = await vector_view(w, Web(), Request(), "gus")
        assert status == 200
        assert (body["events_seen"], body["last_event_id"]) == (15, events[-1]["event_id"])
        assert np.array_equal(np.asarray(body["vector"], np.float32), published.vector)
        assert body["as_of"] == events[-1]["ts"]

        status, later = await vector_view(w, Web(), Request(at=str(int(events[-1]["ts"]) + 86_400_000)), "gus")
        assert status == 200 and later["as_of"] == int(events[-1]["ts"]) + 86_400_000
        assert not np.array_equal(np.asarray(later["vector"], np.float32), published.vector)  # re-pooled

        assert (await vector_view(w, Web(), Request(at="yesterday"), "gus"))[0] == 400
        assert (await vector_view(w, Web(), Request(), "nobody"))[0] == 404
        status, explained = await explain_view(w, Web(), Request(), "gus")
        assert status == 200 and len(explained["behaviors"]) == 15

        store.put_raw("gus", partition_of(b"gus", w.settings.kafka.partitions), b"\x09garbage")
        status, error = await vector_view(w, Web(), Request(), "gus")
        assert status == 500 and "gus" in error["error"]

    asyncio.run(go())


class WebWithHeaders(Web):
    def json(self, body: Any, status: int = 200, headers: Any = None) -> tuple[int, Any]:
        return status, (body, headers or {})


def test_repooling_reads_run_off_the_loop_and_the_batch_lock_and_leave_the_updater_cache_alone(
    tiny_encoder: StreamingEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14 item 8: ``?at``/``?query``/``/explain`` ran torch on the event loop under the batch lock and
    put their rebuilt states in the updater's cache (evicting the users the batches keep hot)."""
    import threading

    async def go() -> None:
        store = MemoryStateStore()
        w = make_worker(tiny_encoder, store)
        events = make_events("hal", 15)
        await (await start_batch(w, messages(w, events)))[1]
        updater = w.runtime.updater
        updater.cache = type(updater.cache)(4)  # a cold cache: the read must rebuild
        seen: list[tuple[str, bool]] = []
        represent, attention = tiny_encoder.represent, tiny_encoder.attention_weights

        def spy_represent(*a: Any, **k: Any) -> Any:
            seen.append((threading.current_thread().name, w.runtime.batch_lock.locked()))
            return represent(*a, **k)

        def spy_attention(*a: Any, **k: Any) -> Any:
            seen.append((threading.current_thread().name, w.runtime.batch_lock.locked()))
            return attention(*a, **k)

        monkeypatch.setattr(tiny_encoder, "represent", spy_represent)
        monkeypatch.setattr(tiny_encoder, "attention_weights", spy_attention)
        at = str(int(events[-1]["ts"]) + 86_400_000)
        status, body = await vector_view(w, Web(), Request(at=at), "hal")
        assert status == 200 and body["as_of"] == int(at)
        status, _ = await vector_view(w, Web(), Request(query="running shoes"), "hal")
        assert status == 200
        status, explained = await explain_view(w, Web(), Request(at=at), "hal")
        assert status == 200 and len(explained["behaviors"]) == 15
        assert len(seen) == 3
        assert all(name != threading.main_thread().name and not locked for name, locked in seen), seen
        assert len(updater.cache) == 0  # nothing the reads rebuilt went into the updater's cache

    asyncio.run(go())


def test_repooling_reads_past_the_limit_get_429_with_retry_after(
    tiny_encoder: StreamingEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    async def go() -> None:
        store = MemoryStateStore()
        s = load_settings(env={"DUPN_HTTP_MAX_CONCURRENT_READS": "1"})
        runtime = Runtime(s, VectorUpdater(tiny_encoder, POLICY))
        w = Worker(s, None, runtime, None, None, RecordingTopic(), None, store=store)
        await (await start_batch(w, messages(w, make_events("ivy", 5))))[1]
        started, release = threading.Event(), threading.Event()
        represent = tiny_encoder.represent

        def slow(*a: Any, **k: Any) -> Any:
            started.set()
            release.wait(60)
            return represent(*a, **k)

        monkeypatch.setattr(tiny_encoder, "represent", slow)
        first = asyncio.ensure_future(vector_view(w, WebWithHeaders(), Request(at="now"), "ivy"))
        while not started.is_set():
            await asyncio.sleep(0.005)
        status, (body, headers) = await vector_view(w, WebWithHeaders(), Request(query="x"), "ivy")
        assert status == 429 and headers["Retry-After"] == "1" and "retry" in body["error"]
        status, (body, _) = await explain_view(w, WebWithHeaders(), Request(), "ivy")
        assert status == 429
        assert (await vector_view(w, WebWithHeaders(), Request(), "ivy"))[0] == 200  # plain reads are not limited
        release.set()
        assert (await first)[0] == 200
        assert (await vector_view(w, WebWithHeaders(), Request(query="x"), "ivy"))[0] == 200  # a slot again

    asyncio.run(go())
