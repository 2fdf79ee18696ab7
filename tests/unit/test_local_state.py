"""Local table copies that cannot be trusted (issue 14 item 7): a corrupt RocksDB partition at start-up,
and a changelog that ends before what the local copy applied (truncated or recreated: a broker restarted
without its data). Both are recovered without a manual wipe, and logged."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from faust.types import TP
from rocksdict import Options, Rdict

from core.settings import load_settings
from streams import local_state, seams
from streams.table_store import RocksTablePartitions
from streams.worker import create_app


def _app(tmp_path: Path):  # type: ignore[no-untyped-def]
    return create_app(load_settings(env={}, home=str(tmp_path), model_path=str(tmp_path / "none"), partitions=2))


def _write_partition(path: Path, items: dict[bytes, bytes]) -> None:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    db = Rdict(str(path), opts)
    for k, v in items.items():
        db[k] = v
    db.close()


def test_a_corrupt_partition_is_moved_aside_and_opened_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    w = _app(tmp_path)
    store = w.table.data
    path = store.partition_path(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_partition(path, {b"u1": b"state"})
    (path / "CURRENT").write_text("garbage")  # RocksDB: "Corruption: CURRENT file does not end with newline"

    with caplog.at_level(logging.ERROR):
        db = seams.db_for_partition(store, 0)  # what recovery does first (persisted_offset)
    assert db.get(b"u1") is None  # empty: recovery rebuilds it from the changelog
    aside = [p for p in path.parent.iterdir() if p.name.startswith(path.name + ".corrupt-")]
    assert len(aside) == 1 and (aside[0] / "CURRENT").read_text() == "garbage"  # kept for a post-mortem
    assert "is corrupt" in caplog.text and "rebuilt from the changelog" in caplog.text and str(aside[0]) in caplog.text
    db[b"u2"] = b"new"
    assert db.get(b"u2") == b"new"


def test_other_open_errors_are_not_taken_for_corruption(tmp_path: Path) -> None:
    w = _app(tmp_path)
    store = w.table.data
    path = store.partition_path(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a file where the partition's directory should be")
    with pytest.raises(Exception) as info:
        seams.db_for_partition(store, 1)
    assert "Corruption" not in str(info.value)
    assert path.is_file()  # left alone


def test_a_local_copy_ahead_of_its_changelog_is_discarded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The persisted offset is above the changelog's end (Faust: ConsistencyError until a manual wipe)."""
    w = _app(tmp_path)
    store = w.table.data
    parts = RocksTablePartitions.of_table(w.table)
    parts.put_many(0, [(b"u1", b"a"), (b"u2", b"b")])
    parts.set_persisted_offset(0, 500)
    parts.put_many(1, [(b"v1", b"c")])
    parts.set_persisted_offset(1, 7)
    tp0, tp1 = parts.tp(0), parts.tp(1)
    offsets: dict[TP, int | None] = {tp0: 500, tp1: 7}
    ends = {tp0: 3, tp1: 7}  # partition 0's changelog now ends at offset 3; partition 1's is intact

    with caplog.at_level(logging.WARNING):
        stale = local_state.discard_stale(offsets, ends, {tp0: store, tp1: store})
    assert stale == [tp0]
    assert offsets == {tp0: None, tp1: 7}  # Faust then starts partition 0 from the changelog's start
    assert parts.get(0, b"u1") is None and parts.persisted_offset(0) is None
    assert parts.get(1, b"v1") == b"c" and parts.persisted_offset(1) == 7  # untouched
    assert "truncated or recreated" in caplog.text and "Discarded the local copy (3 keys)" in caplog.text


def test_bulk_recovery_discards_before_faust_checks_consistency(tmp_path: Path) -> None:
    """The check runs where Faust has both offsets, before its ConsistencyError check (BulkRecovery)."""
    from streams.restore import BulkRecovery

    w = _app(tmp_path)
    parts = RocksTablePartitions.of_table(w.table)
    parts.put_many(0, [(b"u1", b"a")])
    parts.set_persisted_offset(0, 99)
    tp0 = parts.tp(0)

    class Probe(BulkRecovery):
        def __init__(self) -> None:  # only what the step reads
            self.tp_to_table = {tp0: w.table}
            self.active_offsets = {tp0: 99}
            self.active_highwaters = {tp0: -1}  # an empty changelog

        async def _bulk_restore(self, tps: object) -> None:  # no broker here
            pass

    probe = Probe()
    asyncio.run(probe.before_active_offsets([tp0]))
    assert probe.active_offsets[tp0] is None and parts.get(0, b"u1") is None


def test_standby_partitions_ahead_of_their_changelog_are_discarded_too(tmp_path: Path) -> None:
    from streams.restore import BulkRecovery

    w = _app(tmp_path)
    parts = RocksTablePartitions.of_table(w.table)
    parts.put_many(1, [(b"v1", b"a")])
    parts.set_persisted_offset(1, 40)
    tp1 = parts.tp(1)

    class Consumer:
        async def highwaters(self, *tps: TP) -> dict[TP, int]:
            return dict.fromkeys(tps, 5)  # the next offset: the last record is at 4

    class Probe(BulkRecovery):
        def __init__(self) -> None:
            self.tp_to_table = {tp1: w.table}
            self.standby_offsets = {tp1: 40}

    probe = Probe()
    asyncio.run(probe.before_standby_offsets(Consumer(), {tp1}))
    assert probe.standby_offsets[tp1] is None and parts.get(1, b"v1") is None
