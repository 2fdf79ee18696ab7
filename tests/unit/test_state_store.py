"""The user-state store: the in-memory one and the RocksDB one agree on what a user store does.

Both are checked through the same functions: a state written is read back equal (the store
owns the codec), a stored value that does not decode raises StateDecodeError, a chunk of
changelog records is restored as the changelog says (last value per key, no value = delete,
persisted offset = last record). The RocksDB one runs on a real Faust RocksDB store (no broker).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from encoder.features import records_from_events
from state.memory import MemoryStateStore
from state.store import StateDecodeError, StateWrite
from state.user_state import UserState
from streams.table_store import RocksTablePartitions
from streams.updater import vector_message
from tests.support.factories import make_events


@dataclass(frozen=True)
class Rec:
    offset: int
    key: bytes | None
    value: bytes | None


def a_state(user: str, n: int = 5) -> UserState:
    records = records_from_events(make_events(user, n))
    vector = np.arange(256, dtype=np.float32) / 256
    return UserState(user, records, n, f"{user}-e{n - 1}", 3, 40 + n, "m1", vector, 1_700_000_000_000)


def put(store: Any, state: UserState, partition: int) -> None:
    if isinstance(store, MemoryStateStore):
        asyncio.run(store.write_batch([StateWrite(partition, state, vector_message(state))]))
    else:  # the local half of write_batch (the changelog half needs a broker)
        from state.codec import encode_state

        store.partitions.put_many(partition, [(state.user_id.encode(), encode_state(state))])


def test_a_written_state_reads_back_equal_in_its_partition_only(store: Any) -> None:
    state = a_state("ann")
    put(store, state, 2)
    back = store.read("ann", 2)
    assert back is not None
    assert (back.events_seen, back.last_event_id, back.source_offset, back.model_version) == (5, "ann-e4", 45, "m1")
    assert back.records.tobytes() == state.records.tobytes()
    assert back.vector is not None and np.array_equal(back.vector, state.vector)
    assert store.read("ann", 1) is None and store.read("nobody", 2) is None


def test_a_value_that_does_not_decode_raises(store: Any) -> None:
    if isinstance(store, MemoryStateStore):
        store.put_raw("bo", 0, b"\x09garbage")
    else:
        store.partitions.put_many(0, [(b"bo", b"\x09garbage")])
    with pytest.raises(StateDecodeError, match="bo"):
        store.read("bo", 0)


def test_a_changelog_chunk_restores_last_value_per_key_and_its_offset(store: Any) -> None:
    from state.codec import encode_state

    v1, v2, w1 = (encode_state(a_state(u, n)) for u, n in (("cy", 3), ("cy", 7), ("di", 4)))
    put(store, a_state("gone"), 1)
    keys = store.restore_chunk(1, [Rec(10, b"cy", v1), Rec(11, b"di", w1), Rec(12, b"gone", None),
                                   Rec(13, b"cy", v2)])
    assert set(keys) == {b"cy", b"di", b"gone"}
    cy, di = store.read("cy", 1), store.read("di", 1)
    assert cy is not None and cy.events_seen == 7
    assert di is not None and di.events_seen == 4
    assert store.read("gone", 1) is None
    assert store.persisted_offset(1) == 13 and store.persisted_offset(0) is None
    store.restore_chunk(1, [Rec(14, b"di", v1), Rec(15, None, None)])  # a keyless last record still counts
    assert store.persisted_offset(1) == 15


def test_the_memory_store_publishes_only_acknowledged_batches() -> None:
    async def go() -> None:
        store = MemoryStateStore(auto_ack=False)
        state = a_state("ed")
        ack = await store.write_batch([StateWrite(0, state, vector_message(state))])
        assert ack.state_bytes > 0 and not ack.delivered.done()
        assert store.read("ed", 0) is not None and store.published() == [] and store.persisted_offset(0) is None
        store.ack()
        await ack.delivered
        # the persisted offset: the last changelog record (state.changelog: one block of 5 behaviors, the header)
        assert [m.events_seen for m in store.published()] == [5] and store.persisted_offset(0) == 1

    asyncio.run(go())


def test_rocksdb_partitions_need_faust_s_rocksdb_store(tmp_path: Path) -> None:
    import faust

    app = faust.App("memory-table", broker="kafka://127.0.0.1:1", store="memory://", datadir=str(tmp_path))
    table = app.Table("t", default=None, partitions=2, key_type=bytes, value_type=bytes)
    with pytest.raises(RuntimeError, match="RocksDB"):
        RocksTablePartitions.of_table(table)
