"""Bulk restore of RocksDB table partitions from their changelogs, before Faust's recovery reads them.

Why: Faust restores a table one changelog record at a time (an event per record through a queue,
with per-record bookkeeping: ~8k records/s), and the embedded broker keeps every changelog record
(no compaction: several records per user). A worker starting on an empty data dir spent most of its
start-up in that loop. For a table on the RocksDB store a changelog record is exactly what RocksDB
holds (raw key, raw value; no value = deleted: ``RocksDB.apply_changelog_batch``), so the records
can go to RocksDB in bulk: a group-less consumer with large fetches reads each partition to Faust's
end offset, keeps the last value per key of each chunk, writes the chunk as one ``WriteBatch`` and
then records the offset of its last record as the persisted offset. Faust's recovery then starts
there and reads only what arrived since (usually nothing).

Where: :class:`BulkRecovery` is Faust's ``Recovery`` with one step added
(:class:`streams.seams.HookedRecovery`, installed by :func:`streams.seams.install`). After Faust
has taken the active partitions' end offsets (raised to the real end by :mod:`streams.highwater`)
and before it builds the offsets it starts reading from, the active partitions of eligible tables
are restored, each through its store: the user-state table's own
:class:`state.store.UserStateStore` when one is registered (:func:`register_store`), else the
table's RocksDB partitions (:class:`streams.table_store.RocksTablePartitions`). Faust's own
machinery stays in charge: a new rebalance or a stop cancels the step (at an await, between
chunks), exactly as it cancels Faust's own steps.

What it keeps (docs/guarantees.md 4 and 6): a chunk's states are written before the persisted
offset that covers them, in one RocksDB instance (Faust's own order), so a kill at any moment
leaves a prefix of the changelog with its offset, and the next recovery continues from there. No
record past Faust's end offset is applied: Faust refuses a persisted offset above it.

Not here: standby partitions. Faust follows them after the worker is ready; restoring them in bulk
at this step would delay readiness by the replay that standbys exist to avoid. And each recovery
step runs under ``broker_request_timeout``; a step that overruns it stops Faust's recovery for good.
So the bulk restore stops at half of it and leaves the rest to Faust's per-record path.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from state.store import ChangelogPartitions
from streams import local_state, seams
from streams.table_store import RocksTablePartitions

log = logging.getLogger(__name__)

LOG_MARKER = "Bulk restore from"  # one INFO line per changelog topic restored (ops.bench.recovery reads it)
CHUNK_RECORDS = 20_000  # records per getmany: one WriteBatch per partition per chunk
FETCH_MAX_BYTES = 64 << 20
PARTITION_FETCH_BYTES = 16 << 20
BUDGET_SHARE = 0.5  # of broker_request_timeout, the limit on one Faust recovery step


@dataclass(frozen=True)
class Span:
    """What to restore of one changelog partition: offsets ``start..end`` (inclusive) into ``store``."""

    store: ChangelogPartitions
    start: int
    end: int


@dataclass
class RestoreStats:
    partitions: int = 0
    records: int = 0
    # distinct keys restored, counted per chunk and summed (a key restored in two chunks counts twice):
    # no set of every key restored is kept, so memory stays one chunk's worth (issue 14 item 9)
    users: int = 0
    seconds: float = 0.0
    complete: bool = True  # False: stopped at the time budget, Faust's recovery reads the rest
    applied: dict[Any, int] = field(default_factory=dict)  # TP -> persisted offset now

    def line(self, topic: str) -> str:
        rate = self.users / self.seconds if self.seconds else 0.0
        rec_rate = self.records / self.seconds if self.seconds else 0.0
        tail = "" if self.complete else "; stopped at the time budget, Faust's recovery reads the rest"
        return (
            f"{LOG_MARKER} {topic}: {self.partitions} partitions, {self.records} records, {self.users} users "
            f"in {self.seconds:.3f} s ({rate:.0f} users/s, {rec_rate:.0f} records/s){tail}"
        )


_STORES: weakref.WeakKeyDictionary[Any, ChangelogPartitions] = weakref.WeakKeyDictionary()


def register_store(table: Any, store: ChangelogPartitions) -> None:
    """Restore ``table``'s active partitions through ``store`` (default: its RocksDB partitions)."""
    _STORES[table] = store


def store_of(table: Any) -> ChangelogPartitions:
    store = _STORES.get(table)
    return RocksTablePartitions.of_table(table) if store is None else store


class BulkRecovery(seams.HookedRecovery):
    async def before_active_offsets(self, tps: Any) -> None:
        self._discard_stale(tps)
        await self._bulk_restore(tps)

    async def before_standby_offsets(self, consumer: Any, tps: Any) -> None:
        """Standbys too: Faust checks them against their end offsets after this step."""
        tps = list(tps)
        if not tps:
            return
        raw = await consumer.highwaters(*tps)
        ends = {tp: (-1 if end is None else int(end) - 1) for tp, end in raw.items()}  # Faust's convention
        self._discard_stale(tps, self.standby_offsets, ends)

    def _discard_stale(self, tps: Iterable[Any], offsets: Any = None, ends: Any = None) -> None:
        """A local copy ahead of its changelog (truncated or recreated) is rebuilt, not a ConsistencyError."""
        stores: dict[Any, Any] = {}
        for tp in tps:
            table: Any = self.tp_to_table.get(tp)
            if table is not None and seams.is_rocksdb(table.data):
                stores[tp] = table.data
        if offsets is None:  # Faust's Counter holds None for "no persisted offset"
            offsets, ends = self.active_offsets, self.active_highwaters
        local_state.discard_stale(offsets, ends, stores)

    async def _bulk_restore(self, tps: Iterable[Any]) -> None:
        # Records Faust has already counted in active_offsets may still sit in its buffers (taken from
        # the queue during the awaits before this step): apply them first, so every offset up to where
        # the bulk restore starts is in RocksDB, and dropping older buffered records later loses nothing.
        self.flush_buffers()
        plans = self._plans(tps)
        if not plans:
            return
        t0 = mark = time.monotonic()
        deadline = t0 + float(self.app.conf.broker_request_timeout) * BUDGET_SHARE
        done: list[tuple[str, RestoreStats]] = []
        consumer = changelog_consumer(self.app, "restore")
        try:
            await consumer.start()  # counted in the first table's seconds, the stop in the last one's
            for topic, plan in plans.items():
                stats = await restore(consumer, plan, deadline - time.monotonic())
                self._applied(stats.applied)
                stats.seconds, mark = time.monotonic() - mark, time.monotonic()
                done.append((topic, stats))
        except Exception as exc:  # not a cancellation: Faust's per-record path does the rest
            self._applied(_persisted(plans))
            log.warning("Bulk restore failed (%r); Faust's recovery reads from the persisted offsets", exc)
            return
        finally:
            await _stop_quietly(consumer)
        done[-1][1].seconds += time.monotonic() - mark
        for topic, stats in done:
            log.info(stats.line(topic))

    def _applied(self, applied: Mapping[Any, int]) -> None:
        """Faust's view: these offsets are read. Its changelog buffers (flushed before the restore) must
        not hold an older record of them to write over the restored state; drop any."""
        for tp, offset in applied.items():
            self.active_offsets[tp] = offset
        for buffered in self.buffers.values():
            buffered[:] = [e for e in buffered if e.message.offset > applied.get(e.message.tp, -1)]

    def _plans(self, tps: Iterable[Any]) -> dict[str, dict[Any, Span]]:
        """Per changelog topic of an eligible table: the partitions with records past the persisted offset."""
        plans: dict[str, dict[Any, Span]] = {}
        for tp in sorted(tps):
            table = self.tp_to_table.get(tp)
            if table is None or not eligible(table):
                continue
            done = self.active_offsets.get(tp)  # the persisted offset: last record applied (None: none)
            start = 0 if done is None else int(done) + 1
            end = int(self.active_highwaters.get(tp, -1))  # Faust's end: offset of the last record
            if end >= start:
                plans.setdefault(tp.topic, {})[tp] = Span(store_of(table), start, end)
        return plans


class BulkRestoreTableManager(seams.HookedTableManager):
    """Faust's table manager with :class:`BulkRecovery` (given to :func:`streams.seams.install`)."""

    recovery_class = BulkRecovery


async def _stop_quietly(consumer: Any) -> None:
    """Stop the restore's consumer; a failure to close it must not end Faust's recovery."""
    try:
        await consumer.stop()
    except Exception as exc:  # logged: the restore's outcome stands
        log.warning("Bulk restore: stopping its consumer failed: %r", exc)


def _persisted(plans: Mapping[str, Mapping[Any, Span]]) -> dict[Any, int]:
    """The persisted offsets of the planned partitions, as a partial restore left them."""
    out = {}
    for plan in plans.values():
        for tp, span in plan.items():
            offset = span.store.persisted_offset(tp.partition)
            if offset is not None:
                out[tp] = int(offset)
    return out


def eligible(table: Any) -> bool:
    """RocksDB store, no changelog callback, not windowed: a changelog record is then just a put or delete."""
    return (
        seams.is_rocksdb(table.data)
        and seams.changelog_callback(table) is None
        and getattr(table, "window", None) is None
    )


async def restore(consumer: Any, plan: Mapping[Any, Span], budget_s: float) -> RestoreStats:
    """Read every planned partition to its end into its store; ``consumer`` is started, group-less.

    Stops at ``budget_s``; ``applied`` holds each partition's persisted offset as set (to the last
    record written, or to ``end`` once the consumer's position is past it).
    """
    from aiokafka import TopicPartition

    t0 = time.monotonic()
    stats = RestoreStats(partitions=len(plan))
    ktps = {TopicPartition(tp.topic, tp.partition): tp for tp in plan}
    consumer.assign(list(ktps))
    for ktp, tp in ktps.items():
        consumer.seek(ktp, plan[tp].start)
    pending = set(ktps)
    while pending:
        if time.monotonic() - t0 > budget_s:
            stats.complete = False
            break
        batches = await consumer.getmany(*pending, timeout_ms=200, max_records=CHUNK_RECORDS)
        for ktp, records in batches.items():
            tp = ktps[ktp]
            span = plan[tp]
            wanted = [r for r in records if span.start <= r.offset <= span.end]
            if wanted:
                stats.users += len(span.store.restore_chunk(tp.partition, wanted))
                stats.records += len(wanted)
                stats.applied[tp] = wanted[-1].offset
        for ktp in list(pending):
            tp = ktps[ktp]
            if await consumer.position(ktp) > plan[tp].end:
                pending.discard(ktp)
                if stats.applied.get(tp, -1) < plan[tp].end:  # the last offsets held no data records
                    plan[tp].store.set_persisted_offset(tp.partition, plan[tp].end)
                    stats.applied[tp] = plan[tp].end
    stats.seconds = time.monotonic() - t0
    return stats


def changelog_consumer(app: Any, purpose: str, **options: Any) -> Any:
    """A group-less aiokafka consumer on the app's broker (not started), with large fetches."""
    import aiokafka
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list

    conf = app.conf
    transport = app.transport
    settings: dict[str, Any] = {
        "fetch_max_bytes": FETCH_MAX_BYTES,
        "max_partition_fetch_bytes": PARTITION_FETCH_BYTES,
        "fetch_max_wait_ms": 10,  # Tansu answers a waiting fetch only when the wait expires
        "auto_offset_reset": "earliest",  # a compacted or trimmed head: start at the first record kept
        **options,
    }
    return aiokafka.AIOKafkaConsumer(
        bootstrap_servers=server_list(transport.url, transport.default_port),
        client_id=f"{conf.broker_client_id}-{purpose}",
        group_id=None,
        enable_auto_commit=False,
        **settings,
        **credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
    )
