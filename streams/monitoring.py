"""Worker metrics that no single event updates: consumer lag, owned users, and Faust's own sensor.

``register_monitoring(w)`` is the one call from :func:`streams.worker.create_app`.
Everything lands in :data:`core.metrics.REGISTRY`, served by the worker's
(token-guarded) ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from core import metrics
from streams import seams
from streams.context import Worker

log = logging.getLogger(__name__)

LAG_EVERY_S = 5.0
USERS_EVERY_S = 10.0
USERS_MAX_DUTY = 0.05  # counting owned users may use at most this share of the worker's time
KEYS_PER_YIELD = 2000  # let the event loop run between chunks of a count

_faust_metrics: Any = None


def register_monitoring(w: Worker) -> None:
    """Faust's Prometheus sensor, and background tasks for the lag and users gauges."""
    app = w.app
    enable_faust_sensor(app)
    source_topics = source_topic_names(w)

    @app.task
    async def consumer_lag_gauge() -> None:
        exported: set[tuple[str, str]] = set()
        while not app.should_stop:
            await app.sleep(LAG_EVERY_S)
            try:
                lags = await consumer_lags(app.consumer, source_topics)
            except Exception as exc:  # mid-rebalance or broker hiccup: the next tick retries
                log.debug("consumer lag not refreshed: %r", exc)
                continue
            exported = export_lag(lags, exported)

    if w.table is not None:

        @app.task
        async def users_gauge() -> None:
            while not app.should_stop:
                started = time.monotonic()
                count = await count_owned_users(w.table.data)
                if count is not None:
                    metrics.USERS.set(count)
                spent = time.monotonic() - started
                await app.sleep(max(USERS_EVERY_S, spent / USERS_MAX_DUTY))


def enable_faust_sensor(app: Any) -> None:
    """Faust's PrometheusMonitor, its metrics (``faust_*``) in our registry.

    ``faust.sensors.prometheus.setup_prometheus_sensors`` does the same and also
    adds its own ``/metrics`` route: aiohttp then holds two resources for the path
    and silently serves whichever was added first (checked: with ours first,
    Faust's is dead; the other way round the bearer-token check is skipped). So
    the sensor is installed here without a route. The metric objects are created once per
    process (a registry refuses duplicates), with a fixed ``faust`` prefix so the
    names do not depend on the app id.
    """
    from faust.sensors.prometheus import FaustMetrics

    global _faust_metrics
    if _faust_metrics is None:
        _faust_metrics = FaustMetrics.create(metrics.REGISTRY, "faust")
    app.monitor = _monitor_class()(metrics=_faust_metrics)


def _monitor_class() -> Any:
    from faust.sensors.prometheus import PrometheusMonitor

    class EndOffsetOncePerChange(PrometheusMonitor):  # type: ignore[misc]
        """Faust calls ``track_tp_end_offset`` for every consumed message, and the Prometheus
        sensor then looks up a labelled gauge each time (~8 % of the worker's CPU, py-spy);
        the end offset only changes once per fetch, so update the gauge only when it changes."""

        _last_end: dict[Any, int]

        def track_tp_end_offset(self, tp: Any, offset: int) -> None:
            last = self.__dict__.setdefault("_last_end", {})
            if last.get(tp) != offset:
                last[tp] = offset
                super().track_tp_end_offset(tp, offset)

    return EndOffsetOncePerChange


def source_topic_names(w: Worker) -> frozenset[str]:
    """The topics this worker's agents consume (not table changelogs)."""
    roles = w.settings.worker.role_set
    names = set()
    if "vectors" in roles:
        names.add(w.settings.kafka.events_topic)
    if "ppp" in roles:
        names.add(w.settings.kafka.vectors_topic)
    return frozenset(names)


async def consumer_lags(consumer: Any, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """Per assigned partition of ``topics``: log-end offset minus the group's committed offset.

    The committed offset is Faust's own bookkeeping (seeded from the broker on
    assignment, advanced on every commit); a partition never committed counts
    from its earliest offset.
    """
    wanted = set(topics)
    tps = sorted((tp for tp in consumer.assignment() if tp.topic in wanted), key=lambda tp: (tp.topic, tp.partition))
    if not tps:
        return {}
    ends = dict(await consumer.highwaters(*tps))
    for tp in tps:  # ListOffsets may under-report (the embedded broker: per batch); the last fetch's high watermark
        fetched = consumer.highwater(tp)
        if fetched is not None and (ends.get(tp) is None or fetched > ends[tp]):
            ends[tp] = fetched
    committed = {tp: seams.committed_offset(consumer, tp) for tp in tps}
    missing = [tp for tp, offset in committed.items() if offset is None]
    starts = await consumer.earliest_offsets(*missing) if missing else {}
    out = {}
    for tp in tps:
        if ends.get(tp) is None:
            continue
        position = committed[tp]
        out[(tp.topic, tp.partition)] = lag_of(ends[tp], position if position is not None else starts.get(tp))
    return out


def lag_of(end_offset: int, position: int | None) -> int:
    """Events between the consumer's position and the log end (never negative)."""
    return max(0, end_offset - (position or 0))


def export_lag(lags: Mapping[tuple[str, int], int], exported: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Set the gauge per partition; drop series of partitions no longer assigned. Returns what is exported."""
    now = {(topic, str(partition)): lag for (topic, partition), lag in lags.items()}
    for labels in exported - now.keys():
        metrics.CONSUMER_LAG.remove(*labels)
    for (topic, partition), lag in now.items():
        metrics.CONSUMER_LAG.labels(topic=topic, partition=partition).set(lag)
    return set(now)


async def count_owned_users(store: Any) -> int | None:
    """Keys in the RocksDB partitions this worker actively owns (standbys excluded), counted exactly.

    RocksDB's ``estimate-num-keys`` counts every overwrite still in a memtable,
    and a user's state is rewritten on each of their batches, so it can be off
    by the events-per-user factor; a key scan is exact (≈ 4 µs per user, in
    chunks between which the event loop runs). None if the store is not RocksDB.
    """
    owned = seams.dbs_for_actives(store)
    if owned is None:
        return None
    skip = getattr(store, "offset_key", None)
    count = 0
    for db in list(owned):
        for i, key in enumerate(db.keys(), 1):
            count += key != skip
            if i % KEYS_PER_YIELD == 0:
                await asyncio.sleep(0)
    return count
