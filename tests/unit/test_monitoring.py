"""The periodic worker gauges: consumer lag per partition and users owned by the worker."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import rocksdict

from core import metrics
from streams.monitoring import consumer_lags, count_owned_users, export_lag, lag_of


class TP(NamedTuple):
    topic: str
    partition: int


class FakeConsumer:
    """The part of Faust's consumer the lag gauge reads."""

    def __init__(
        self,
        ends: dict[TP, int],
        committed: dict[TP, int],
        earliest: dict[TP, int],
        fetched: dict[TP, int] | None = None,
    ) -> None:
        self.ends = ends
        self.fetched = fetched or {}
        self._committed_offset: dict[TP, int | None] = defaultdict(lambda: None, committed)
        self.earliest = earliest
        self.asked_earliest: list[TP] = []

    def assignment(self) -> set[TP]:
        return set(self.ends)

    async def highwaters(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.ends[tp] for tp in tps}

    def highwater(self, tp: TP) -> int | None:
        return self.fetched.get(tp)

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        self.asked_earliest.extend(tps)
        return {tp: self.earliest[tp] for tp in tps}


def test_lag_is_log_end_minus_committed_and_never_negative() -> None:
    assert lag_of(120, 100) == 20
    assert lag_of(100, 100) == 0
    assert lag_of(100, 130) == 0  # a commit ahead of a stale log-end reading
    assert lag_of(50, None) == 50


def test_consumer_lags_only_for_source_topics_uncommitted_from_earliest() -> None:
    ev0, ev1, changelog = TP("events", 0), TP("events", 1), TP("dupn-user-state-changelog", 0)
    consumer = FakeConsumer({ev0: 500, ev1: 90, changelog: 1000}, {ev0: 480}, {ev1: 40, changelog: 0})
    lags = asyncio.run(consumer_lags(consumer, {"events"}))
    assert lags == {("events", 0): 20, ("events", 1): 50}
    assert consumer.asked_earliest == [ev1]


def test_lag_uses_the_fetch_high_watermark_when_list_offsets_under_reports() -> None:
    ev0 = TP("events", 0)
    # the embedded broker answers ListOffsets with the last batch's base offset + 1
    consumer = FakeConsumer({ev0: 301}, {ev0: 300}, {}, fetched={ev0: 414})
    assert asyncio.run(consumer_lags(consumer, {"events"})) == {("events", 0): 114}


def test_export_drops_series_of_revoked_partitions() -> None:
    def series() -> dict[tuple[str, str], float]:
        samples = next(iter(metrics.CONSUMER_LAG.collect())).samples
        return {(s.labels["topic"], s.labels["partition"]): s.value for s in samples if s.labels["topic"] == "t-x"}

    exported = export_lag({("t-x", 0): 5, ("t-x", 1): 7}, set())
    assert series() == {("t-x", "0"): 5, ("t-x", "1"): 7}
    exported = export_lag({("t-x", 1): 2}, exported)
    assert series() == {("t-x", "1"): 2}
    export_lag({}, exported)
    assert series() == {}


class FakeStore:
    """Faust's RocksDB store as the users gauge sees it: active partition DBs and the offset key."""

    offset_key = b"__faust\0offset__"

    def __init__(self, dbs: list[Any]) -> None:
        self.dbs = dbs

    def _dbs_for_actives(self) -> list[Any]:
        return self.dbs


def test_users_are_counted_exactly_despite_rewrites(tmp_path: Path) -> None:
    dbs = []
    for p in range(2):
        db = rocksdict.Rdict(str(tmp_path / f"p{p}"), options=rocksdict.Options(raw_mode=True))
        for rewrite in range(30):  # each batch rewrites a user's state; the memtable keeps every write
            for u in range(2500 * (p + 1)):
                if rewrite == 0 or u < 100:
                    db.put(f"u{p}-{u}".encode(), b"state")
        db.put(FakeStore.offset_key, b"123")
        dbs.append(db)
    assert asyncio.run(count_owned_users(FakeStore(dbs))) == 2500 + 5000
    for db in dbs:
        db.close()


def test_users_unknown_for_a_store_that_is_not_rocksdb() -> None:
    assert asyncio.run(count_owned_users(object())) is None
