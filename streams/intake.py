"""A lean consumption path for the events topic, inside the Faust worker.

Faust hands every fetched message to its conductor through
``wait_first(callback(message), suspend_flow.wait())``: two tasks and a
future per message, then an Event object, a queue hop and the Stream's
processor chain. On this machine that costs ~130 µs per message, several
times our own work per event. For the events topic we need none of it: the
agent consumes batches anyway.

``streams.seams.install(app, intake=...)`` replaces the consumer's fetch loop with a
copy that diverts the events topic's messages into :class:`BatchIntake` with a plain
list append (blocking only when the buffer is full, interruptibly, exactly
where Faust would block on a full stream buffer). Every other topic (table
changelogs during recovery, standbys, other agents' topics) still goes through
Faust's own callback. The consumer group, assignment, tables, changelogs,
recovery, offset commits and web routing are all Faust's, unchanged: the
batch task acks each message after its batch was applied, and Faust commits
acked offsets (after flushing the producer) as it always does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import numpy as np

from core import metrics


class BatchIntake:
    """A bounded buffer of raw messages of one topic, taken in batches.

    Natural batching: :meth:`take` returns as soon as anything is buffered, with
    everything buffered (up to ``max_batch``). Under light load a batch is the
    few events that arrived while the previous one was applied, so an event
    waits about one batch's processing time; under heavy load the buffer fills
    while a batch is applied and batches grow to ``max_batch`` by themselves.
    ``linger_s`` > 0 trades latency for fuller batches.

    With ``trace`` (``DUPN_TRACE_STAGES``), each message's arrival is stamped and, when its batch is
    taken, two stages are observed per event in ``dupn_stage_seconds``: ``fetch`` (the record's broker
    timestamp to its arrival here) and ``queue`` (arrival to its batch taken). Without it nothing is
    stamped or observed: one attribute test per message.
    """

    def __init__(
        self, topic: str, max_batch: int, linger_s: float = 0.0, max_bytes: int | None = None, trace: bool = False
    ) -> None:
        self.topic = topic
        self.max_batch = max_batch
        self.linger_s = linger_s
        # Memory is bounded by bytes too (DUPN_INTAKE_MAX_BYTES): max_batch messages of up to 1 MB
        # each would otherwise be up to 2 GB held. Past it the fetch loop waits, as for a full buffer.
        self.max_bytes = max_bytes
        self.held_bytes = 0
        self._buffer: list[Any] = []
        self._ready: asyncio.Event | None = None
        self._space: asyncio.Event | None = None
        self.lock = asyncio.Lock()
        self._arrived: list[float] | None = [] if trace else None  # wall-clock arrival per buffered message

    def _events(self) -> tuple[asyncio.Event, asyncio.Event]:
        if self._ready is None or self._space is None:
            self._ready, self._space = asyncio.Event(), asyncio.Event()
            self._space.set()
        return self._ready, self._space

    def offer(self, message: Any) -> bool:
        """Buffer a message; False when the buffer is now full (the caller should wait for space)."""
        ready, space = self._events()
        self._buffer.append(message)
        if self._arrived is not None:
            self._arrived.append(time.time())
        self.held_bytes += message_bytes(message)
        ready.set()
        if self._full():
            space.clear()
            return False
        return True

    def _full(self) -> bool:
        return len(self._buffer) >= self.max_batch or (
            self.max_bytes is not None and self.held_bytes >= self.max_bytes
        )

    async def wait_space(self) -> None:
        await self._events()[1].wait()

    async def take(self) -> list[Any]:
        """The next batch: everything buffered (at most ``max_batch``), as soon as there is something."""
        await self.wait_batch()
        return self._swap()

    @contextlib.asynccontextmanager
    async def next_batch(self) -> AsyncIterator[list[Any]]:
        """Like :meth:`take`, but taken and held under ``lock`` (possibly empty).

        A revoke discards under the same lock, so a batch can never be taken
        before a revoke and applied after it: that would write states of
        partitions whose new owner may already be restoring them.
        """
        await self.wait_batch()
        async with self.lock:
            yield self._swap()

    async def wait_batch(self) -> None:
        """Until something is buffered (then ``linger_s`` more, unless the buffer is full)."""
        await self._events()[0].wait()
        if self.linger_s > 0 and len(self._buffer) < self.max_batch:
            await asyncio.sleep(self.linger_s)

    def _swap(self) -> list[Any]:
        ready, space = self._events()
        batch, self._buffer = self._buffer[: self.max_batch], self._buffer[self.max_batch :]
        if self._arrived is not None:
            arrived, self._arrived = self._arrived[: self.max_batch], self._arrived[self.max_batch :]
            observe_intake_stages(batch, arrived)
        self.held_bytes = sum(map(message_bytes, self._buffer))  # the rest: usually nothing
        if not self._buffer:
            ready.clear()
        if not self._full():
            space.set()
        return batch

    def discard(self, tps: Iterable[Any]) -> int:
        """Drop buffered messages of revoked partitions (they will be redelivered to their new owner)."""
        gone = set(tps)
        keep = [m for m in self._buffer if m.tp not in gone]
        if self._arrived is not None:
            self._arrived = [t for m, t in zip(self._buffer, self._arrived, strict=True) if m.tp not in gone]
        dropped = len(self._buffer) - len(keep)
        self._buffer = keep
        self.held_bytes = sum(map(message_bytes, keep))
        if self._ready is not None and not keep:
            self._ready.clear()
        if not self._full() and self._space is not None:
            self._space.set()
        return dropped


def observe_intake_stages(batch: list[Any], arrived: list[float]) -> None:
    """``fetch`` and ``queue`` per event of a batch taken now (``dupn_stage_seconds``; tracing only).

    ``fetch`` starts at the record's broker timestamp (a Faust message's ``timestamp``, seconds): the
    broker's clock, so it holds the broker's and fetch path's time, not the producer's; a message without
    one is left out of ``fetch``."""
    if not batch:
        return
    now = time.time()
    at = np.asarray(arrived, dtype=np.float64)
    stamps = np.asarray([_broker_seconds(m) for m in batch], dtype=np.float64)
    has = ~np.isnan(stamps)
    metrics.STAGE_SECONDS.observe_many(np.maximum(at[has] - stamps[has], 0.0), "fetch")
    metrics.STAGE_SECONDS.observe_many(now - at, "queue")


def _broker_seconds(message: Any) -> float:
    stamp = getattr(message, "timestamp", None)
    return float(stamp) if isinstance(stamp, int | float) and not isinstance(stamp, bool) and stamp > 0 else np.nan


def message_bytes(message: Any) -> int:
    """What a buffered message holds: its key and value (headers and object overhead not counted)."""
    key, value = getattr(message, "key", None), getattr(message, "value", None)
    return (len(key) if key else 0) + (len(value) if value else 0)

