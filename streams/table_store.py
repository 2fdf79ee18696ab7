"""The worker's user-state store: Faust's RocksDB table and its changelog, a batch at a time.

Faust writes a table key through ``Table.__setitem__``: the current event picks
the partition (faust-streaming #497 inside batches), the local RocksDB gets a
``put``, the changelog gets one ``FutureMessage`` through Faust's producer
buffer, and on delivery one more RocksDB ``put`` records the changelog offset.
Per user per batch that path cost more than our own work.
:meth:`TableStateStore.write_batch` does the same four things with the partition
passed explicitly:

- local RocksDB: one ``WriteBatch`` per table partition (the full state, codec
  format 1, under the user key: what reads see);
- changelog: one produce batch per partition (aiokafka ``send_batch``) on the
  app's own producer, same topic and partition as Faust's, but not the full state:
  the user's new behaviors in one block record and a small header (format 2 of
  :mod:`state.changelog`, whose docstring has the design), ~140 bytes per live
  event instead of ~6 KB;
- persisted changelog offset: once per partition, after delivery, the base
  offset of the batch (recovery re-reads from there: re-applying a few
  upserts is harmless, skipping one would not be);
- vectors: one produce batch per partition of ``user-vectors``, partitioned
  by the key with Kafka's default partitioner (murmur2), like any producer.

It returns once the local writes are done and the records handed to the
producer, with a future for the broker's acknowledgement; the caller acks the
source messages only after that future is done. Faust's recovery, standbys and
table reads are unchanged, except that every changelog record reaches RocksDB
through :func:`state.changelog.assemble` (:meth:`TableStateStore.fence_changelog_replay`
and the bulk restore), which turns headers and behavior blocks back into full states.

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
from functools import partial
from typing import Any, NamedTuple

from aiokafka.partitioner import DefaultPartitioner
from faust.types import TP
from rocksdict import WriteBatch

from core.contracts import check_vector_encoding, encode_vector_message
from state.changelog import Assembled, DurableMarks, Mark, assemble, changelog_records, mark_of, ring_for
from state.codec import decode_state, encode_state
from state.store import BatchAck, ChangelogRecord, StateWrite, VectorFill, count_bad, user_key
from state.user_state import UserState
from streams import seams

_ByPartition = dict[int, list[tuple[bytes, bytes]]]


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


Assemble = Callable[[Callable[[bytes], bytes | None], Sequence[tuple[bytes | None, bytes | None]]], Assembled]
"""A chunk of changelog records (key, value; offset order) -> the local writes (:func:`state.changelog.assemble`)."""

DEFAULT_RETAINED = 128  # behaviors kept per user when the worker does not say (>= window 100 + reanchor 25 - 1)


def assemble_counted(
    get: Callable[[bytes], bytes | None], records: Sequence[tuple[bytes | None, bytes | None]]
) -> Assembled:
    """:func:`state.changelog.assemble`, its losing values counted (``dupn_state_decode_errors_total``)."""
    return count_bad(assemble(get, records))


class RocksTablePartitions:
    """The partitions of one Faust RocksDB table (raw keys and values) and its changelog offsets.

    With ``assemble`` (the user-state table: :func:`state.changelog.assemble`), a chunk's records are
    turned into local writes by it (headers and blocks -> full states, zombie writes fenced) instead of
    the last value per key."""

    def __init__(self, store: Any, changelog_topic: str, assemble: Assemble | None = None) -> None:
        self.store = store  # faust.stores.rocksdb.Store
        self.changelog_topic = changelog_topic
        self.assemble = assemble

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
        """Last value per key (None = delete; with ``assemble``: its writes) in one WriteBatch, then the
        persisted offset (Faust's order)."""
        if not records:
            return ()
        tp = self.tp(partition)
        latest: dict[bytes, bytes | None] = {}
        offsets: dict[bytes, int] = {}
        for r in records:
            if r.key is not None:
                latest[r.key] = r.value
                offsets[r.key] = r.offset
        users: Collection[bytes] = latest.keys()
        if self.assemble is not None:
            result = self.assemble(lambda k: self.get(partition, k), [(r.key, r.value) for r in records])
            latest, users = result.writes, result.users
        top = max(offsets.values(), default=-1)
        events = [_Event(_Message(tp, partition, offsets.get(k, top), k, v)) for k, v in latest.items()]
        self.store.apply_changelog_batch(events, _same, _same)  # one WriteBatch, then the offset of its newest
        last = records[-1].offset
        if not events or max(e.message.offset for e in events) < last:  # the chunk ended with other records
            self.store.set_persisted_offset(tp, last)
        return users

    def apply_changelog_events(self, batch: Sequence[Any]) -> None:
        """Faust's per-record recovery and standby path (``Table.apply_changelog_batch``), with ``assemble``:
        per changelog partition, the assembled writes (at the partition's last offset in the batch), then
        the persisted offsets exactly as Faust sets them (the batch's highest offset per partition)."""
        assemble = self.assemble
        if assemble is None:
            self.store.apply_changelog_batch(batch, _same, _same)
            return
        groups: dict[Any, list[Any]] = {}
        for event in batch:
            groups.setdefault(event.message.tp, []).append(event.message)
        chosen = []
        for tp, msgs in groups.items():
            part = tp.partition
            result = assemble(partial(self.get, part), [(m.key, m.value) for m in msgs])
            top = max(m.offset for m in msgs)
            chosen += [_Event(_Message(tp, part, top, k, v)) for k, v in result.writes.items()]
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

    def __init__(
        self, app: Any, table: Any, vectors_topic: str, retained: Callable[[], int] | None = None,
        fill: VectorFill | None = None, vector_encoding: str = "json",
    ) -> None:
        """``retained``: behaviors kept per user, at most (the update policy's ``max_retained``; default
        :data:`DEFAULT_RETAINED`); the changelog's key ring is :func:`state.changelog.ring_for` of it.
        ``fill``: gives a restored state its vector on read (the worker's encoder).
        ``vector_encoding``: of the ``user-vectors`` values (``DUPN_VECTOR_ENCODING``: json, f32, f16)."""
        self._app = app
        self._table = table
        self._vectors_topic = vectors_topic
        self.vector_encoding = check_vector_encoding(vector_encoding)
        self._retained = retained or (lambda: DEFAULT_RETAINED)
        self.fill = fill or VectorFill()
        self.marks = DurableMarks()
        self._partitioner = DefaultPartitioner()
        self._vector_partitions: list[int] = []
        self._partitions: RocksTablePartitions | None = None

    @property
    def partitions(self) -> RocksTablePartitions:
        """Made on first use: the table's store exists once the worker has started."""
        if self._partitions is None:
            self._partitions = RocksTablePartitions.of_table(self._table)
            self._partitions.assemble = assemble_counted
        return self._partitions

    def fence_changelog_replay(self) -> None:
        """Route Faust's own changelog replay of the table (per-record recovery, standbys) through
        :meth:`RocksTablePartitions.apply_changelog_events`: headers and blocks become full states, and a
        restored user keeps the newest complete state (highest ``events_seen``), not the last record
        written (a zombie owner's late write)."""

        def apply_changelog_batch(batch: Any) -> None:
            self.partitions.apply_changelog_events(list(batch))

        self._table.apply_changelog_batch = apply_changelog_batch

    # -- UserStateStore ----------------------------------------------------------------
    def read(self, user_id: str, partition: int) -> UserState | None:
        raw = self.partitions.get(partition, user_key(user_id))
        return None if raw is None else self.fill(decode_state(user_id, raw))

    async def write_batch(self, writes: Sequence[StateWrite]) -> BatchAck:
        """Write the states locally and hand every record to the producer; ``delivered`` is done when
        the broker acknowledged them all (and the persisted changelog offsets are recorded).

        Local writes are done on return, so the next batch already reads them while this one's
        records are in flight."""
        producer = seams.aiokafka_producer(self._app)
        local, records, marks, state_bytes = self.encode(writes)
        for partition, items in local.items():
            self._put_local(partition, items)
        changelog = self.partitions.changelog_topic
        sent = [(p, await _send(producer, changelog, p, items)) for p, items in records.items()]
        vectors = self.vector_records(writes)
        vector_batches = await self._by_vector_partition(producer, vectors)
        delivered = [await _send(producer, self._vectors_topic, p, kvs) for p, kvs in vector_batches.items()]
        return BatchAck(asyncio.ensure_future(self._delivered(sent, delivered, marks)), state_bytes)

    def vector_records(self, writes: Sequence[StateWrite]) -> list[tuple[bytes, bytes]]:
        """The ``user-vectors`` (key, value) of ``writes``, in this store's vector encoding."""
        return [(user_key(w.vector.user_id), encode_vector_message(w.vector, self.vector_encoding)) for w in writes]

    def encode(self, writes: Sequence[StateWrite]) -> tuple[_ByPartition, _ByPartition, list[tuple[bytes, Mark]], int]:
        """Per partition the local (full state) and changelog (block + header) records of ``writes``, the
        marks to record once they are acknowledged, and the encoded size of the states."""
        local: _ByPartition = defaultdict(list)
        records: _ByPartition = defaultdict(list)
        marks = []
        state_bytes = 0
        base = self._retained()
        for w in writes:
            key, value = user_key(w.state.user_id), encode_state(w.state)
            state_bytes += len(value)
            local[w.partition].append((key, value))
            ring = ring_for(max(base, len(w.state.records)))
            records[w.partition] += changelog_records(w.state, ring, self.marks.get(key))
            marks.append((key, mark_of(w.state, ring)))
        return local, records, marks, state_bytes

    def restore_chunk(self, partition: int, records: Sequence[ChangelogRecord]) -> Collection[bytes]:
        return self.partitions.restore_chunk(partition, records)

    def persisted_offset(self, partition: int) -> int | None:
        return self.partitions.persisted_offset(partition)

    def set_persisted_offset(self, partition: int, offset: int) -> None:
        self.partitions.set_persisted_offset(partition, offset)

    # -- steps -------------------------------------------------------------------------
    async def _delivered(
        self, sent: list[tuple[int, list[Any]]], vectors: list[list[Any]], marks: list[tuple[bytes, Mark]]
    ) -> None:
        for futures in [f for _, f in sent] + vectors:
            await asyncio.gather(*futures)
        for key, mark in marks:  # only now does the changelog hold these behaviors
            self.marks.mark(key, mark)
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
