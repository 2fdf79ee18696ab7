"""Failed batches (issue 14 items 6 and 7): never acknowledged, never passed by a commit, counted,
quarantined after ``DUPN_POISON_ATTEMPTS``, and a full disk ends the worker loudly.

No broker: the batch path on the in-memory store (as in test_batch_path), Faust's consumer and
stream played by fakes that keep what Faust keeps (acks; ``take_events`` acks in a ``finally``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from core.settings import load_settings
from encoder.streaming import StreamingEncoder, UpdatePolicy
from state.memory import MemoryStateStore
from streams import agents, poison
from streams.agents import InFlight, run_batch
from streams.context import Worker
from streams.runtime import Runtime
from streams.updater import Incoming, VectorUpdater
from tests.support.factories import keyed_messages, make_events
from tests.support.fakes import ConsumerApp, RecordingTopic

POLICY = UpdatePolicy("incremental", 10)


def messages(w: Worker, events: Sequence[dict[str, Any]], offset0: int = 0) -> list[Incoming]:
    return keyed_messages(events, w.settings.kafka.partitions, offset0)


def worker(encoder: StreamingEncoder, store: MemoryStateStore, home: Path, app: Any = None, **env: str) -> Worker:
    s = load_settings(env={"DUPN_HOME": str(home), **env})
    return Worker(s, app, Runtime(s, VectorUpdater(encoder, POLICY)), None, None, RecordingTopic(), None, store=store)


class App(ConsumerApp):
    def __init__(self) -> None:
        super().__init__()
        self.crashed: BaseException | None = None
        self.agents: dict[str, Any] = {}

    def agent(self, topic: Any, name: str) -> Any:
        def register(fun: Any) -> Any:
            self.agents[name] = fun
            return fun
        return register

    def task(self, fun: Any) -> Any:
        return fun

    def timer(self, _: float) -> Any:
        return lambda fun: fun

    async def crash(self, exc: BaseException) -> None:
        self.crashed = exc


class Event:
    def __init__(self, message: Any) -> None:
        self.message = message


class Stream:
    """Faust 0.15.3's Stream as the agent uses it: ``take_events`` acks each batch in a ``finally``."""

    def __init__(self, batches: Sequence[Sequence[Any]]) -> None:
        self.batches = [[Event(m) for m in b] for b in batches]
        self.acked: list[Any] = []

    async def ack(self, event: Event) -> bool:
        self.acked.append(event.message)
        return True

    async def take_events(self, max_: int, within: float) -> AsyncIterator[list[Event]]:
        for events in self.batches:
            try:
                yield list(events)
            finally:
                for e in events:
                    await self.ack(e)

    async def noack_take(self, max_: int, within: float) -> AsyncIterator[list[Event]]:
        for events in self.batches:
            yield list(events)


class FailingStore(MemoryStateStore):
    """Writes fail for ``users`` (raise ``exc``)."""

    def __init__(self, users: set[str], exc: BaseException) -> None:
        super().__init__()
        self.users, self.exc = users, exc

    async def write_batch(self, writes: Sequence[Any]) -> Any:
        if any(w.state.user_id in self.users for w in writes):
            raise self.exc
        return await super().write_batch(writes)


def test_stream_intake_acks_nothing_of_a_failed_batch_and_stops(tiny_encoder: StreamingEncoder, tmp_path: Path) -> None:
    """Item 6: Faust's take_events acked a failed batch's events in its finally (and so committed them)."""
    app = App()
    store = FailingStore({"bad"}, RuntimeError("store refused"))
    w = worker(tiny_encoder, store, tmp_path, app=app, DUPN_INTAKE="stream")
    good = messages(w, make_events("ok", 3))
    bad = messages(w, make_events("bad", 3), offset0=10)
    later = messages(w, make_events("ok2", 3), offset0=20)
    stream = Stream([good, bad, later])
    agents.register_agents(w, None)

    async def go() -> None:
        with pytest.raises(RuntimeError, match="store refused"):
            await app.agents["update-vectors"](stream)

    asyncio.run(go())
    assert stream.acked == good  # the good batch, delivered; nothing of the failed one, nothing after it
    assert isinstance(app.crashed, RuntimeError)  # the worker stops: the batch comes back after a restart


def test_a_later_batch_is_not_acked_when_an_earlier_one_failed() -> None:
    """Item 6: Faust commits the first run of consecutive acked offsets; acking batch 2 after batch 1
    failed would commit past batch 1."""
    async def go() -> None:
        app = App()
        in_flight = InFlight(app)
        loop = asyncio.get_running_loop()
        first, second, third = loop.create_future(), loop.create_future(), loop.create_future()
        await in_flight.add(first, ["a0", "a1"])
        await in_flight.add(second, ["b0"])
        second.set_result(None)  # the later batch is delivered first
        await asyncio.sleep(0)
        assert app.consumer.acked == []  # not before the earlier one
        first.set_exception(RuntimeError("delivery failed"))
        await asyncio.sleep(0)
        assert app.consumer.acked == []  # and never, once the earlier one failed
        with pytest.raises(RuntimeError):
            await in_flight.add(third, ["c0"])
        third.set_result(None)
        await asyncio.sleep(0)
        assert app.consumer.acked == []

        ok = InFlight(app)
        f1, f2 = loop.create_future(), loop.create_future()
        await ok.add(f1, ["x"])
        await ok.add(f2, ["y"])
        f2.set_result(None)
        await asyncio.sleep(0)
        assert app.consumer.acked == []
        f1.set_result(None)
        await asyncio.sleep(0)
        assert app.consumer.acked == ["x", "y"]  # in batch order

    asyncio.run(go())


def test_a_poison_batch_is_bisected_after_n_attempts_across_restarts(
    tiny_encoder: StreamingEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 7: the attempts survive a restart (a new worker on the same data dir); after N the batch is
    bisected and only the poison event goes to the DLQ, with reason processing_error."""
    store = MemoryStateStore()
    w = worker(tiny_encoder, store, tmp_path, DUPN_POISON_ATTEMPTS="2")
    batch = messages(w, make_events("amy", 4) + make_events("ben", 4))
    poison_offset = batch[5].offset  # one of ben's events
    real_apply = VectorUpdater.apply

    def apply(self: VectorUpdater, msgs: Sequence[Any], load: Any) -> Any:
        if any(m.offset == poison_offset for m in msgs):
            raise ValueError("the encoder cannot take this one")
        return real_apply(self, msgs, load)

    monkeypatch.setattr(VectorUpdater, "apply", apply)

    async def attempt(w: Worker) -> Any:
        result, delivered = await run_batch(w, batch)
        await delivered
        return result

    for _ in range(2):  # two attempts, each by a "new process": a new worker on the same data dir
        w = worker(tiny_encoder, store, tmp_path, DUPN_POISON_ATTEMPTS="2")
        with pytest.raises(ValueError):
            asyncio.run(attempt(w))
        assert store.published() == []
    w = worker(tiny_encoder, store, tmp_path, DUPN_POISON_ATTEMPTS="2")
    asyncio.run(attempt(w))
    sent = w.dlq_topic.sent
    assert len(sent) == 1 and sent[0][1] == batch[5].value
    assert dict(sent[0][2])["dupn.reason"] == b"processing_error"
    published = {m.user_id: m.events_seen for m in store.published()}
    assert published["amy"] == 4 and published["ben"] == 3  # the batch-mates went through
    assert poison.PoisonLedger(w.settings.data_path / poison.LEDGER_FILE).attempts(poison.batch_keys(batch)) == 0


def test_the_whole_batch_goes_to_the_dlq_when_even_the_bisection_keeps_failing(
    tiny_encoder: StreamingEncoder, tmp_path: Path
) -> None:
    """A process that dies while bisecting counts as an attempt too (counted before trying)."""
    store = MemoryStateStore()
    w = worker(tiny_encoder, store, tmp_path, DUPN_POISON_ATTEMPTS="1")
    batch = messages(w, make_events("cat", 3))
    ledger = poison.PoisonLedger(w.settings.data_path / poison.LEDGER_FILE)
    ledger.begin(poison.batch_keys(batch))  # died in the first attempt
    ledger.begin(poison.batch_keys(batch))  # ... and in the bisection

    async def go() -> None:
        _, delivered = await run_batch(w, batch)
        await delivered

    asyncio.run(go())
    assert [v for _, v, _ in w.dlq_topic.sent] == [m.value for m in batch]
    assert store.published() == []


@pytest.mark.parametrize("exc", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("IO error: No space left on device: While appending to file: /data/000012.log"),  # rocksdict's
])
def test_a_full_disk_exits_loudly_and_acks_nothing(
    tiny_encoder: StreamingEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, exc: BaseException,
) -> None:
    """Item 7: a RocksDB write failing with ENOSPC ends the worker with a log line naming the cause and
    a non-zero exit code; the batch is not acknowledged (nor counted towards quarantine)."""
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(poison, "exit_process", fake_exit)
    app = App()
    store = FailingStore({"dan"}, exc)
    w = worker(tiny_encoder, store, tmp_path, app=app, DUPN_POISON_ATTEMPTS="1")
    in_flight = InFlight(app)
    batch = messages(w, make_events("dan", 3))

    async def go() -> None:
        _, delivered = await run_batch(w, batch)
        await in_flight.add(delivered, batch)

    for _ in range(3):  # past DUPN_POISON_ATTEMPTS: still no DLQ, still an exit
        with caplog.at_level(logging.CRITICAL), pytest.raises(SystemExit):
            asyncio.run(go())
    assert codes == [poison.EXIT_DISK_FULL] * 3 and poison.EXIT_DISK_FULL != 0
    assert "DISK FULL" in caplog.text and "No space left on device" in caplog.text
    assert app.consumer.acked == [] and w.dlq_topic.sent == [] and store.published() == []
