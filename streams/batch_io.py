"""The user-state table and the vectors topic, read and written a batch at a time.

Faust writes a table key through ``Table.__setitem__``: the current event picks
the partition (faust-streaming #497 inside batches), the local RocksDB gets a
``put``, the changelog gets one ``FutureMessage`` through Faust's producer
buffer, and on delivery one more RocksDB ``put`` records the changelog offset.
Per user per batch that path cost more than our own work. :class:`BatchWriter`
does the same four things with the partition passed explicitly:

- local RocksDB: one ``WriteBatch`` per table partition;
- changelog: one produce batch per partition (aiokafka ``send_batch``) on the
  app's own producer, same topic, partition, raw key and value as Faust's;
- persisted changelog offset: once per partition, after delivery, the base
  offset of the batch (recovery re-reads from there: re-applying a few
  upserts is harmless, skipping one would not be);
- vectors: one produce batch per partition of ``user-vectors``, partitioned
  by the key with Kafka's default partitioner (murmur2), like any producer.

``start_write`` returns once the local writes are done and the records handed
to the producer, with a future for the broker's acknowledgement; the caller
acks the source messages only after that future is done. Faust's
recovery, standbys and table reads are unchanged: they only see the same
changelog records and RocksDB contents Faust would have written.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from rocksdict import WriteBatch


@dataclass(frozen=True)
class StateWrite:
    partition: int  # the table partition = the source partition of the user's events
    key: bytes
    value: bytes


class BatchWriter:
    def __init__(self, app: Any, table: Any, vectors_topic: str) -> None:
        self._app = app
        self._table = table
        self._vectors_topic = vectors_topic
        self._partitioner = DefaultPartitioner()
        self._vector_partitions: list[int] = []

    @property
    def _store(self) -> Any:
        store = self._table.data
        if not hasattr(store, "_db_for_partition"):
            raise RuntimeError("the user-state table must use the RocksDB store (store='rocksdb://')")
        return store

    def read(self, key: bytes, partition: int) -> bytes | None:
        value = self._store._db_for_partition(partition).get(key)
        return None if value is None else bytes(value)

    async def start_write(
        self, states: Sequence[StateWrite], vectors: Sequence[tuple[bytes, bytes]]
    ) -> asyncio.Future[None]:
        """Write the states locally and hand every record to the producer; the returned future is done
        when the broker acknowledged them all (and the persisted changelog offsets are recorded).

        Local writes are done on return, so the next batch already reads them while this one's
        records are in flight."""
        producer = self._app.producer._ensure_producer()
        by_partition: dict[int, list[StateWrite]] = defaultdict(list)
        for w in states:
            by_partition[w.partition].append(w)
        for partition, writes in by_partition.items():
            self._put_local(partition, writes)
        changelog = self._table.changelog_topic.get_topic_name()
        sent = [
            (p, await _send(producer, changelog, p, [(w.key, w.value) for w in ws]))
            for p, ws in by_partition.items()
        ]
        vector_batches = await self._by_vector_partition(producer, vectors)
        delivered = [await _send(producer, self._vectors_topic, p, kvs) for p, kvs in vector_batches.items()]
        return asyncio.ensure_future(self._delivered(changelog, sent, delivered))

    async def _delivered(self, changelog: str, sent: list[tuple[int, list[Any]]], vectors: list[list[Any]]) -> None:
        for futures in [f for _, f in sent] + vectors:
            await asyncio.gather(*futures)
        store = self._store
        for partition, futures in sent:
            base = futures[-1].result().offset
            if base >= 0:
                store.set_persisted_offset(_tp(changelog, partition), base)

    def _put_local(self, partition: int, writes: Sequence[StateWrite]) -> None:
        wb = WriteBatch(raw_mode=True)
        for w in writes:
            wb.put(w.key, w.value)
        self._store._db_for_partition(partition).write(wb)

    async def _by_vector_partition(
        self, producer: Any, vectors: Sequence[tuple[bytes, bytes]]
    ) -> dict[int, list[tuple[bytes, bytes]]]:
        if not self._vector_partitions:
            self._vector_partitions = sorted(await producer.partitions_for(self._vectors_topic))
        parts = self._vector_partitions
        out: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        for key, value in vectors:
            out[self._partitioner(key, parts, parts)].append((key, value))
        return out


async def _send(producer: Any, topic: str, partition: int, records: Sequence[tuple[bytes, bytes]]) -> list[Any]:
    """Produce records to one partition in as few batches as fit; the delivery futures."""
    futures = []
    batch, count = producer.create_batch(), 0
    for key, value in records:
        if batch.append(key=key, value=value, timestamp=None) is None:
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            batch, count = producer.create_batch(), 0
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"a {len(value)}-byte record exceeds the producer's max batch size")
        count += 1
    if count:
        batch.close()
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


def _tp(topic: str, partition: int) -> Any:
    from faust.types import TP

    return TP(topic, partition)
