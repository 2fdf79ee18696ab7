"""The worker's local copies of table partitions when they cannot be trusted (issue 14 item 7).

Two cases, both recovered without a manual wipe, both logged:

- a partition's RocksDB files are corrupt at start-up (RocksDB refuses to open them): the
  partition's directory is moved aside, renamed with a timestamp (kept for a post-mortem, never
  read again), and the partition opened empty; recovery then rebuilds it from the changelog
  (:func:`move_aside`, installed on each RocksDB table by :func:`guard_tables`);
- the changelog is behind the local copy: the persisted changelog offset (the last changelog
  record applied locally) is above the changelog's end. The changelog was truncated or deleted
  and recreated (on the embedded broker: it restarted without its data). Faust stops with a
  ``ConsistencyError`` then; instead the local copy is discarded and rebuilt from what the
  changelog holds (:func:`discard_stale`, run by :class:`streams.restore.BulkRecovery` before
  Faust builds its offsets). Nothing here asks which broker it is: the check is the offsets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Any

from rocksdict import WriteBatch

from streams import seams

log = logging.getLogger(__name__)


def move_aside(partition: int, path: Path, exc: BaseException) -> Path:
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**6:06d}")
    path.rename(aside)
    log.error(
        "RocksDB partition %d at %s is corrupt (%s): moved aside to %s; it is rebuilt from the changelog",
        partition, path, str(exc)[:300], aside,
    )
    return aside


def guard_tables(tables: Iterable[Any]) -> None:
    """Every RocksDB table of the worker: a corrupt partition is moved aside and rebuilt."""
    for table in tables:
        if table is not None and seams.is_rocksdb(table.data):
            seams.reopen_corrupt_partitions(table.data, move_aside)


def wipe_partition(store: Any, partition: int) -> int:
    """Delete every key of one RocksDB table partition (its persisted offset included); how many."""
    db = seams.db_for_partition(store, partition)
    wb = WriteBatch(raw_mode=True)
    n = 0
    for key in db.keys():  # noqa: SIM118 - an Rdict iterates by index, not by key
        wb.delete(key)
        n += 1
    db.write(wb)
    return n


def discard_stale(
    offsets: MutableMapping[Any, int | None], ends: MutableMapping[Any, int], stores: MutableMapping[Any, Any]
) -> list[Any]:
    """Partitions whose persisted offset is above the changelog's end: wiped, their offset forgotten.

    ``offsets``: TP -> persisted offset (last record applied locally; None: none); ``ends``: TP ->
    offset of the changelog's last record (-1: empty); ``stores``: TP -> its table's RocksDB store.
    """
    stale = []
    for tp, offset in list(offsets.items()):
        end = ends.get(tp)
        store = stores.get(tp)
        if offset is None or end is None or store is None or offset <= end:
            continue
        removed = wipe_partition(store, tp.partition)
        offsets[tp] = None
        stale.append(tp)
        log.warning(
            "changelog %s ends at offset %d but the local copy has applied up to %d: the changelog was "
            "truncated or recreated (e.g. a broker that lost its data). Discarded the local copy (%d keys); "
            "rebuilding it from the changelog",
            tp, end, offset, removed,
        )
    return stale
