"""The worker's user-state store: Faust's RocksDB table and its changelog, a batch at a time.

Faust writes a table key through ``Table.__setitem__``: the current event picks
the partition (faust-streaming #497 inside batches), the local RocksDB gets a
``put``, the changelog gets one ``FutureMessage`` through Faust's producer
buffer, and on delivery one more RocksDB ``put`` records the changelog offset.
Per user per batch that path cost more than our own work.
:meth:`TableStateStore.write_batch` does the same four things with the partition
passed explicitly:

- local RocksDB: one ``WriteBatch`` per table partition;
- changelog: one produce batch per partition (aiokafka ``send_batch``) on the
  app's own producer, same topic, partition, raw key and value as Faust's;
- persisted changelog offset: once per partition, after delivery, the base
  offset of the batch (recovery re-reads from there: re-applying a few
  upserts is harmless, skipping one would not be);
- vectors: one produce batch per partition of ``user-vectors``, partitioned
  by the key with Kafka's default partitioner (murmur2), like any producer.

It returns once the local writes are done and the records handed to the
producer, with a future for the broker's acknowledgement; the caller acks the
source messages only after that future is done. Faust's recovery, standbys and
table reads are unchanged: they only see the same changelog records and RocksDB
contents Faust would have written.

:class:`RocksTablePartitions` is the bytes-level part, for any raw-bytes RocksDB table:
reads and writes of a given partition, a chunk of changelog records restored in one
``WriteBatch`` (Faust's public ``apply_changelog_batch``), persisted offsets. The bulk
restore (:mod:`streams.restore`) uses it for tables without a state store of their own.
Faust's private names are reached through :mod:`streams.seams` only.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from typing import Any, NamedTuple

from aiokafka.partitioner import DefaultPartitioner
from faust.types import TP
from rocksdict import WriteBatch

from state.codec import decode_state, encode_state
from state.store import BatchAck, ChangelogRecord, StateWrite, pick_newest_state, user_key
from state.user_state import UserState
from streams import seams


class _Message(NamedTuple):
    tp: TP
    partition: int
    offset: int
    key: bytes
    value: bytes | None


class _Event(NamedTuple):
    """What ``Store.apply_changelog_batch`` reads of a changelog event."""

    message: _Message


def _same(value: Any) -> Any:
    return value


Pick = Callable[[Sequence[bytes | None]], bytes | None]
"""Of a key's successive values (local first, then changelog records in order), the one to keep."""


class RocksTablePartitions:
    """The partitions of one Faust RocksDB table (raw keys and values) and its changelog offsets.

    With ``pick`` (the user-state table: :func:`pick_newest_state`), a restored key keeps the value
    ``pick`` chooses among the local one and the chunk's records, instead of the chunk's last."""

    def __init__(self, store: Any, changelog_topic: str, pick: Pick | None = None) -> None:
        self.store = store  # faust.stores.rocksdb.Store
        self.changelog_topic = changelog_topic
        self.pick = pick

    @classmethod
    def of_table(cls, table: Any) -> RocksTablePartitions:
        if not seams.is_rocksdb(table.data):
            raise RuntimeError(f"table {table.name!r} must use the RocksDB store (store='rocksdb://')")
        return cls(table.data, table.changelog_topic.get_topic_name())

    def tp(self, partition: int) -> TP:
        return TP(self.changelog_topic, partition)

    def get(self, partition: int, key: bytes) -> bytes | None:
        value = seams.db_for_partition(self.store, partition).get(key)
        return None if value is None else bytes(value)

    def put_many(self, partition: int, items: Sequence[tuple[bytes, bytes]]) -> None:
        """One ``WriteBatch``; no persisted offset (that follows the broker's acknowledgement)."""
        wb = WriteBatch(raw_mode=True)
        for key, value in items:
            wb.put(key, value)
        seams.db_for_partition(self.store, partition).write(wb)

    def restore_chunk(self, partition: int, records: Sequence[ChangelogRecord]) -> Collection[bytes]:
        """Last value per key (None = delete) in one WriteBatch, then the persisted offset (Faust's order)."""
        if not records:
            return ()
        tp = self.tp(partition)
        latest: dict[bytes, bytes | None] = {}
        offsets: dict[bytes, int] = {}
        if self.pick is None:
            for r in records:
                if r.key is not None:
                    latest[r.key] = r.value
                    offsets[r.key] = r.offset
        else:
            history: dict[bytes, list[bytes | None]] = {}
            for r in records:
                if r.key is not None:
                    history.setdefault(r.key, []).append(r.value)
                    offsets[r.key] = r.offset
            pick = self.pick
            latest = {k: pick([self.get(partition, k), *values]) for k, values in history.items()}
        events = [_Event(_Message(tp, partition, offsets[k], k, v)) for k, v in latest.items()]
        self.store.apply_changelog_batch(events, _same, _same)  # one WriteBatch, then the offset of its newest
        last = records[-1].offset
        if not events or max(offsets.values()) < last:  # the chunk ended with a keyless record
            self.store.set_persisted_offset(tp, last)
        return latest.keys()

    def apply_changelog_events(self, batch: Sequence[Any]) -> None:
        """Faust's per-record recovery and standby path (``Table.apply_changelog_batch``), with ``pick``:
        per changelog partition and key, the picked value (at the key's last offset), then the persisted
        offsets exactly as Faust sets them (the batch's highest offset per partition)."""
        if self.pick is None:
            self.store.apply_changelog_batch(batch, _same, _same)
            return
        groups: dict[tuple[Any, bytes], list[Any]] = {}
        for event in batch:
            msg = event.message
            if msg.key is not None:
                groups.setdefault((msg.tp, msg.key), []).append(msg)
        chosen = []
        for (tp, key), msgs in groups.items():
            value = self.pick([self.get(tp.partition, key), *(m.value for m in msgs)])
            chosen.append(_Event(_Message(tp, tp.partition, msgs[-1].offset, key, value)))
        self.store.apply_changelog_batch(chosen, _same, _same)
        highest: dict[Any, int] = {}
        for event in batch:
            tp, offset = event.message.tp, event.message.offset
            highest[tp] = max(offset, highest.get(tp, offset))
        for tp, offset in highest.items():  # keyless records too (Faust counts them)
            self.store.set_persisted_offset(tp, offset)

    def persisted_offset(self, partition: int) -> int | None:
        offset = self.store.persisted_offset(self.tp(partition))
        return None if offset is None else int(offset)

    def set_persisted_offset(self, partition: int, offset: int) -> None:
        self.store.set_persisted_offset(self.tp(partition), offset)


class TableStateStore:
    """:class:`state.store.UserStateStore` on the user-state table, its changelog and ``user-vectors``."""

    def __init__(self, app: Any, table: Any, vectors_topic: str) -> None:
        self._app = app
        self._table = table
        self._vectors_topic = vectors_topic
        self._partitioner = DefaultPartitioner()
        self._vector_partitions: list[int] = []
        self._partitions: RocksTablePartitions | None = None

    @property
    def partitions(self) -> RocksTablePartitions:
        """Made on first use: the table's store exists once the worker has started."""
        if self._partitions is None:
            self._partitions = RocksTablePartitions.of_table(self._table)
            self._partitions.pick = pick_newest_state
        return self._partitions

    def fence_changelog_replay(self) -> None:
        """Route Faust's own changelog replay of the table (per-record recovery, standbys) through
        :meth:`RocksTablePartitions.apply_changelog_events`: a restored user keeps the newest state
        (highest ``events_seen``), not the last record written (a zombie owner's late write)."""

        def apply_changelog_batch(batch: Any) -> None:
            self.partitions.apply_changelog_events(list(batch))

        self._table.apply_changelog_batch = apply_changelog_batch

    # -- UserStateStore ----------------------------------------------------------------
    def read(self, user_id: str, partition: int) -> UserState | None:
        raw = self.partitions.get(partition, user_key(user_id))
        return None if raw is None else decode_state(user_id, raw)

    async def write_batch(self, writes: Sequence[StateWrite]) -> BatchAck:
        """Write the states locally and hand every record to the producer; ``delivered`` is done when
        the broker acknowledged them all (and the persisted changelog offsets are recorded).

        Local writes are done on return, so the next batch already reads them while this one's
        records are in flight."""
        producer = seams.aiokafka_producer(self._app)
        by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        state_bytes = 0
        for w in writes:
            value = encode_state(w.state)
            state_bytes += len(value)
            by_partition[w.partition].append((user_key(w.state.user_id), value))
        for partition, items in by_partition.items():
            self._put_local(partition, items)
        changelog = self.partitions.changelog_topic
        sent = [(p, await _send(producer, changelog, p, items)) for p, items in by_partition.items()]
        vectors = [(user_key(w.vector.user_id), w.vector.to_bytes()) for w in writes]
        vector_batches = await self._by_vector_partition(producer, vectors)
        delivered = [await _send(producer, self._vectors_topic, p, kvs) for p, kvs in vector_batches.items()]
        return BatchAck(asyncio.ensure_future(self._delivered(sent, delivered)), state_bytes)

    def restore_chunk(self, partition: int, records: Sequence[ChangelogRecord]) -> Collection[bytes]:
        return self.partitions.restore_chunk(partition, records)

    def persisted_offset(self, partition: int) -> int | None:
        return self.partitions.persisted_offset(partition)

    def set_persisted_offset(self, partition: int, offset: int) -> None:
        self.partitions.set_persisted_offset(partition, offset)

    # -- steps -------------------------------------------------------------------------
    async def _delivered(self, sent: list[tuple[int, list[Any]]], vectors: list[list[Any]]) -> None:
        for futures in [f for _, f in sent] + vectors:
            await asyncio.gather(*futures)
        for partition, futures in sent:
            base = futures[-1].result().offset
            if base >= 0:
                self.set_persisted_offset(partition, base)

    def _put_local(self, partition: int, items: Sequence[tuple[bytes, bytes]]) -> None:
        self.partitions.put_many(partition, items)

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
