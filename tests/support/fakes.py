"""In-memory stand-ins for what the updater talks to in a worker: the state table.

``VectorUpdater.apply(messages, load)`` only needs a ``load(user, message)`` that returns the
user's decoded state (the store owns the codec); :class:`MemoryTable` is that, backed by a dict, and
:func:`apply_in_batches` plays the worker's loop (batch, apply, write back what changed),
so updater tests exercise the real updater and codec without Faust or RocksDB.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, NamedTuple

from core.contracts import VectorMessage
from state.codec import decode_state, encode_state
from state.user_state import UserState
from streams.updater import Incoming, VectorUpdater


class MemoryTable:
    """In-memory stand-in for the table: user -> encoded state."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def load(self, user: str, _msg: object = None) -> UserState | None:
        return decode_state(user, self.data[user]) if user in self.data else None


def apply_in_batches(
    updater: VectorUpdater, store: MemoryTable, events: list[dict[str, object]], batch: int, offset0: int = 0
) -> list[VectorMessage]:
    """Feed ``events`` to ``updater`` in batches of ``batch`` at offsets ``offset0``.. of partition 0.

    Each batch's new states are written back to ``store`` before the next, as the
    worker writes its table; returns every published vector in order.
    """
    published = []
    for start in range(0, len(events), batch):
        msgs = [
            Incoming(0, offset0 + start + i, str(e["user_id"]).encode(), json.dumps(e).encode())
            for i, e in enumerate(events[start : start + batch])
        ]
        res = updater.apply(msgs, store.load)
        for up in res.updates:
            store.data[up.state.user_id] = encode_state(up.state)
            published.append(up.vector)
    return published


class RecordingTopic:
    """A topic the agent sends to (the DLQ): records what was sent; each send's delivery is a future
    (Faust's ``FutureMessage``), acknowledged at once unless ``fail`` is set (then it fails with that)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes | None, Any]] = []
        self.fail: BaseException | None = None

    async def send(self, *, key: bytes | None, value: bytes | None, headers: Any = None) -> asyncio.Future[None]:
        self.sent.append((key, value, headers))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail is None:
            fut.set_result(None)
        else:
            fut.set_exception(self.fail)
        return fut


class AckingConsumer:
    """Faust's consumer as the agent sees it: records what was acknowledged, in order."""

    def __init__(self) -> None:
        self.acked: list[Any] = []

    def ack(self, message: Any) -> None:
        self.acked.append(message)


class ConsumerApp:
    """A Faust app reduced to what acknowledging needs: its consumer."""

    def __init__(self) -> None:
        self.consumer = AckingConsumer()


class BatchProducer:
    """The part of ``aiokafka.AIOKafkaProducer`` that ``streams.table_store`` produces through (record
    batches per partition): records every (topic, partition, key, value) sent, each batch acknowledged at
    once, so a store's ``write_batch`` runs without a broker and a test reads exactly what it produced."""

    def __init__(self, partitions: int = 4) -> None:
        self.sent: list[tuple[str, int, bytes, bytes]] = []
        self._partitions = set(range(partitions))

    def create_batch(self) -> _RecordBatch:
        return _RecordBatch()

    async def send_batch(self, batch: _RecordBatch, topic: str, partition: int) -> asyncio.Future[Any]:
        self.sent += [(topic, partition, key, value) for key, value in batch.records]
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(_Delivered(len(self.sent) - 1))
        return fut

    async def partitions_for(self, _topic: str) -> set[int]:
        return self._partitions


class _Delivered(NamedTuple):
    offset: int


class _RecordBatch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, *, key: bytes, value: bytes, timestamp: Any) -> object:
        self.records.append((key, value))
        return self  # not None: the record fit

    def close(self) -> None:
        pass


class RecordingSink:
    """A topic the PPP agent publishes levels to: records each send's key and value, acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []

    async def send(self, *, key: bytes, value: bytes) -> None:
        self.sent.append((key, value))
