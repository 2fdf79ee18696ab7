"""streams.restore.restore: the changelog into RocksDB in bulk, with Faust's semantics per record.

A real RocksDB (rocksdict, raw mode, as Faust opens it) behind the table store
(streams.table_store.RocksTablePartitions) and a scripted consumer: what a recovery
after it finds in the store and in the persisted offset must be what Faust's per-record
restore of the same records would have left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from faust.types import TP
from rocksdict import Options, Rdict, WriteBatch

from streams.restore import Span, restore
from streams.table_store import RocksTablePartitions

TOPIC = "app-user-state-changelog"


@dataclass(frozen=True)
class Rec:
    offset: int
    key: bytes | None
    value: bytes | None


class Store:
    """What the restore uses of faust.stores.rocksdb.Store (``apply_changelog_batch`` as Faust 0.15.3 has it)."""

    offset_key = b"__faust\0offset__"

    def __init__(self, path: Path) -> None:
        opts = Options(raw_mode=True)
        self.dbs = {p: Rdict(str(path / str(p)), opts) for p in (0, 1)}

    def _db_for_partition(self, partition: int) -> Rdict:
        return self.dbs[partition]

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        self.dbs[tp.partition].put(self.offset_key, str(offset).encode())

    def persisted_offset(self, tp: TP) -> int | None:
        return self.persisted(tp.partition)

    def apply_changelog_batch(
        self, batch: Iterable[Any], to_key: Callable[[Any], Any], to_value: Callable[[Any], Any]
    ) -> None:
        batches: dict[int, WriteBatch] = {}
        tp_offsets: dict[TP, int] = {}
        for event in batch:
            msg = event.message
            tp_offsets[msg.tp] = max(msg.offset, tp_offsets.get(msg.tp, msg.offset))
            wb = batches.setdefault(msg.partition, WriteBatch(raw_mode=True))
            if msg.value is None:
                wb.delete(msg.key)
            else:
                wb.put(msg.key, msg.value)
        for partition, wb in batches.items():
            self._db_for_partition(partition).write(wb)
        for tp, offset in tp_offsets.items():
            self.set_persisted_offset(tp, offset)

    def persisted(self, partition: int) -> int | None:
        raw = self.dbs[partition].get(self.offset_key)
        return None if raw is None else int(raw)

    def get(self, partition: int, key: bytes) -> bytes | None:
        raw = self.dbs[partition].get(key)
        return None if raw is None else bytes(raw)


class Consumer:
    """Serves each partition's log from the seek position, ``chunk`` records per getmany; the position
    moves to the log's end (``ends``, default: after its last record) once every record was served."""

    def __init__(self, logs: dict[int, Sequence[Rec]], ends: dict[int, int] | None = None, chunk: int = 2) -> None:
        self.logs, self.chunk = logs, chunk
        self.ends = {p: (ends or {}).get(p, log[-1].offset + 1 if log else 0) for p, log in logs.items()}
        self.pos: dict[TopicPartition, int] = {}

    def assign(self, tps: list[TopicPartition]) -> None:
        self.pos = dict.fromkeys(tps, 0)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.pos[tp] = offset

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int = 0) -> dict[Any, list[Rec]]:
        out = {}
        for tp in tps:
            recs = [r for r in self.logs[tp.partition] if r.offset >= self.pos[tp]][: self.chunk]
            if recs:
                out[tp] = recs
                self.pos[tp] = recs[-1].offset + 1
            else:
                self.pos[tp] = max(self.pos[tp], self.ends[tp.partition])
        return out

    async def position(self, tp: TopicPartition) -> int:
        return self.pos[tp]


def _run(
    store: Store, logs: dict[int, Sequence[Rec]], spans: dict[int, tuple[int, int]],
    ends: dict[int, int] | None = None, budget_s: float = 60, chunk: int = 2,
) -> Any:
    plan = {TP(TOPIC, p): Span(RocksTablePartitions(store, TOPIC), a, b) for p, (a, b) in spans.items()}
    return asyncio.run(restore(Consumer(logs, ends, chunk=chunk), plan, budget_s=budget_s))


def test_last_write_wins_tombstones_delete_and_offsets_are_faust_s(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.dbs[0].put(b"gone", b"old")  # restored on top of an older copy (a persisted offset)
    log0 = [Rec(0, b"u1", b"a1"), Rec(1, b"u2", b"b1"), Rec(2, b"u1", b"a2"), Rec(3, b"gone", None),
            Rec(4, b"u2", b"b2"), Rec(5, b"u3", b"c1"), Rec(6, b"u1", b"a3")]
    log1 = [Rec(0, b"v1", b"x1"), Rec(1, b"v1", b"x2")]
    stats = _run(store, {0: log0, 1: log1}, {0: (0, 6), 1: (0, 1)})

    assert [store.get(0, k) for k in (b"u1", b"u2", b"u3", b"gone")] == [b"a3", b"b2", b"c1", None]
    assert store.get(1, b"v1") == b"x2"
    assert (store.persisted(0), store.persisted(1)) == (6, 1)
    assert stats.applied == {TP(TOPIC, 0): 6, TP(TOPIC, 1): 1}
    # users: distinct keys per chunk of 2, summed (u1 u2 | u1 gone | u2 u3 | u1, and v1 once)
    assert (stats.records, stats.users, stats.complete) == (9, 8, True)


def test_reads_from_the_start_offset_and_never_past_faust_s_end(tmp_path: Path) -> None:
    """Faust refuses a persisted offset above its end offset, and re-reads nothing below the start."""
    store = Store(tmp_path)
    log0 = [Rec(0, b"u1", b"a1"), Rec(1, b"u1", b"a2"), Rec(2, b"u2", b"b1"), Rec(3, b"u1", b"late")]
    stats = _run(store, {0: log0, 1: []}, {0: (1, 2)}, chunk=3)  # one chunk: offsets 1..3, past the end

    assert store.get(0, b"u1") == b"a2" and store.get(0, b"u2") == b"b1"
    assert store.persisted(0) == 2 and stats.records == 2


def test_offsets_without_data_records_at_the_end_still_complete_the_partition(tmp_path: Path) -> None:
    """The log's last offsets held no data record (a control batch, a compacted gap): done at the end."""
    store = Store(tmp_path)
    stats = _run(store, {0: [Rec(0, b"u1", b"a1"), Rec(5, b"u1", b"a2")], 1: []}, {0: (0, 7)}, ends={0: 8})

    assert store.get(0, b"u1") == b"a2"
    assert store.persisted(0) == 7 and stats.applied == {TP(TOPIC, 0): 7}


def test_stops_at_the_time_budget_with_a_consistent_prefix(tmp_path: Path) -> None:
    """A log that never reaches the end offset (the budget keeps a Faust recovery step from timing out)."""
    store = Store(tmp_path)
    log0 = [Rec(i, f"u{i % 3}".encode(), str(i).encode()) for i in range(4)]
    stats = _run(store, {0: log0, 1: []}, {0: (0, 9)}, budget_s=0.2)

    assert not stats.complete
    assert store.persisted(0) == 3 and stats.applied == {TP(TOPIC, 0): 3}
    assert [store.get(0, k) for k in (b"u0", b"u1", b"u2")] == [b"3", b"1", b"2"]


class _FreshLog:
    """``n`` records of distinct 100-byte keys, made as they are fetched (nothing held by the consumer)."""

    def __init__(self, n: int, chunk: int) -> None:
        self.n, self.chunk, self.pos = n, chunk, 0

    def assign(self, tps: list[TopicPartition]) -> None:
        pass

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.pos = offset

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0, max_records: int = 0) -> dict[Any, list[Rec]]:
        end = min(self.pos + self.chunk, self.n)
        recs = [Rec(o, b"user-%095d" % o, b"v") for o in range(self.pos, end)]
        self.pos = end
        return {tps[0]: recs} if recs else {}

    async def position(self, tp: TopicPartition) -> int:
        return self.pos


class _KeysOnly:
    """A ChangelogPartitions that keeps nothing: what the restore itself holds is all that is measured."""

    def restore_chunk(self, partition: int, records: Sequence[Rec]) -> Any:
        return {r.key: r.value for r in records}.keys()

    def persisted_offset(self, partition: int) -> int | None:
        return None

    def set_persisted_offset(self, partition: int, offset: int) -> None:
        pass


def test_the_restore_holds_one_chunk_of_keys_not_every_key(tmp_path: Path) -> None:
    """Issue 14 item 9: the bulk restore kept every restored key in a set (memory grew with the table)."""
    import tracemalloc

    n, chunk = 100_000, 1_000
    plan = {TP(TOPIC, 0): Span(_KeysOnly(), 0, n - 1)}
    tracemalloc.start()
    try:
        stats = asyncio.run(restore(_FreshLog(n, chunk), plan, budget_s=600))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stats.complete and stats.records == n and stats.users == n
    assert peak < 4 << 20, f"peak {peak} bytes: {n} keys of ~130 bytes each would be ~13 MB"
