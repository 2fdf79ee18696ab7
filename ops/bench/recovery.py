"""Recovery from the changelog into an empty data dir, the state a worker leaves behind, and queries on it."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from pathlib import Path
from typing import Any

from core.settings import Settings
from core.topics import changelog_topic
from ops.bench.common import (
    WORKER_READY,
    BenchConfig,
    Stream,
    bench_env,
    log_lines,
    log_times,
    note,
    produce_pairs,
    ratio,
)
from ops.bench.drain import draining
from ops.bench.latency import fetch_all, query_load
from ops.harness import running_worker
from state.changelog import split_key
from streams.restore import LOG_MARKER

# Faust's recovery log lines (faust/tables/recovery.py), in the order they appear
RESTORE_START = "Restoring state from changelog topics"
RESTORE_DONE = "Done reading from changelog topics"


def recovery(cfg: BenchConfig, stream: Stream, then_query: bool = False) -> dict[str, Any]:
    """Drain the stream, stop the worker, wipe its data dir, start it again: how fast does the table come back?

    ``restore_s`` is the whole restore phase in the worker log (:func:`restore_phase`: the
    bulk restore and Faust's per-record remainder); ``start_to_ready_s`` is from spawning
    the process to /healthz answering 200 (imports, model load, group join, restore).
    ``recovered_users`` counts users the restored worker serves with their last event.
    With ``then_query`` the query load runs on the restored worker.
    """
    with bench_env(cfg, "recovery") as s:
        produce_pairs(s, stream.pairs)
        with draining(cfg, s, stream) as drained:
            pass
        out: dict[str, Any] = {"users": stream.users, "events": len(stream)}
        out["state"] = state_left_behind(s, stream)
        out["read_floor"] = read_floor(s, out["state"]["changelog_records"])
        shutil.rmtree(s.data_path)
        log = s.home_path / "worker-restarted.log"
        note(f"recovery: restarting on an empty data dir ({out['state']['changelog_records']} changelog records)")
        spawned = time.time()
        with running_worker(s, "worker-restarted", cfg.ready_timeout_s):
            out["start_to_ready_s"] = round(time.time() - spawned, 2)
            out.update(restore_phase(log))
            out["recovered_users"] = fetch_all(s.http.web_url, stream.last_event_id)
            out["lost_users"] = stream.users - out["recovered_users"]
            if then_query:
                note(f"query: {cfg.query_rate:g} requests/s for {cfg.query_s:g}s on the restored worker")
                out["query"] = query_load(cfg, s, list(stream.last_event_id))
    out["users_per_s_restore"] = round(out["users"] / out["restore_s"]) if out.get("restore_s") else None
    out["users_per_s_start_to_ready"] = round(out["users"] / out["start_to_ready_s"])
    out["records_per_s_restore"] = (
        round(out["state"]["changelog_records"] / out["restore_s"]) if out.get("restore_s") else None
    )
    out["drain_s"] = round(drained.seconds, 2)
    out["restore_over_drain_time"] = ratio(out.get("restore_s"), drained.seconds, 3)
    out["restore_over_read_floor_time"] = ratio(out.get("restore_s"), out["read_floor"]["seconds"])
    return out


def read_floor(s: Settings, records: int) -> dict[str, Any]:
    """The client's floor for a restore: read the whole changelog with aiokafka (the bulk restore's fetch
    sizes) keeping the last value per key, nothing written. Users/s here bounds any restore through this
    client and broker at this many records per user."""
    return asyncio.run(_read_floor(s, records))


async def _read_floor(s: Settings, records: int) -> dict[str, Any]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.restore import CHUNK_RECORDS, FETCH_MAX_BYTES, PARTITION_FETCH_BYTES

    consumer = AIOKafkaConsumer(
        bootstrap_servers=s.kafka.bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
        fetch_max_bytes=FETCH_MAX_BYTES, max_partition_fetch_bytes=PARTITION_FETCH_BYTES, fetch_max_wait_ms=10,
        **s.kafka.kafka_client_options(),
    )
    await consumer.start()
    try:
        topic = changelog_topic(s.kafka)
        consumer.assign([TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())])
        await consumer.seek_to_beginning()
        latest: dict[bytes | None, bytes | None] = {}
        read = 0
        start = last = time.monotonic()
        while read < records and time.monotonic() - last < 5.0:  # 5 s without a record: report what was read
            for batch in (await consumer.getmany(timeout_ms=200, max_records=CHUNK_RECORDS)).values():
                read += len(batch)
                last = time.monotonic()
                for r in batch:
                    latest[r.key] = r.value
        seconds = last - start
    finally:
        await consumer.stop()
    users = sum(1 for key in latest if key is not None and split_key(key)[1] is None)  # header/state keys
    return {
        "path": "aiokafka getmany, last value per key, no writes",
        "records": read,
        "keys": len(latest),
        "users": users,
        "seconds": round(seconds, 3),
        "records_per_s": round(read / seconds),
        "users_per_s": round(users / seconds),
    }


def restore_phase(log_path: Path, wait_s: float = 10.0) -> dict[str, Any]:
    """The whole restore, from the worker log (flushed a moment after /healthz turns 200).

    Two paths restore the table: the bulk restore (:mod:`streams.restore`, one line per
    changelog topic when it ends, with its own seconds) and Faust's per-record recovery ("Restoring state" ...
    "Done reading"), which reads what the bulk restore left (nothing, unless it stopped
    at its time budget). The phase runs from the earlier start to the later end of the
    two (a rebalance during recovery repeats them: first start, last end), and up to the
    last "Worker ready".
    """
    deadline = time.monotonic() + wait_s
    while not log_times(log_path, WORKER_READY) and time.monotonic() < deadline:
        time.sleep(0.2)
    bulk = bulk_restore_lines(log_path)
    start, done, ready = (log_times(log_path, m) for m in (RESTORE_START, RESTORE_DONE, WORKER_READY))
    starts = [t - b["seconds"] for t, b in bulk] + start[:1]
    ends = [t for t, _ in bulk] + done[-1:]
    out: dict[str, Any] = {}
    if not (starts and ends):
        note(f"recovery: no restore phase found in {log_path}")
        return out
    out["restore_s"] = round(max(ends) - min(starts), 3)
    out["restore_paths"] = {
        "bulk": [b for _, b in bulk],
        "faust_per_record_s": round(done[-1] - start[0], 3) if start and done else None,
    }
    if ready:
        out["restore_start_to_worker_ready_s"] = round(ready[-1] - min(starts), 3)
    return out


_BULK = re.compile(r"(\d+) partitions, (\d+) records, (\d+) users in ([\d.]+) s")


def bulk_restore_lines(log_path: Path) -> list[tuple[float, dict[str, Any]]]:
    """(log time, {partitions, records, users, seconds}) of each bulk restore line in the worker log."""
    out = []
    for t, line in log_lines(log_path, LOG_MARKER):
        m = _BULK.search(line)
        if m:
            parts, records, users, seconds = m.groups()
            out.append((t, {"partitions": int(parts), "records": int(records), "users": int(users),
                            "seconds": float(seconds)}))
    return out


def state_left_behind(s: Settings, stream: Stream) -> dict[str, Any]:
    """RocksDB bytes on disk per user (worker stopped) and the changelog: records, bytes written, bytes kept."""
    disk = sum(f.stat().st_size for f in s.data_path.rglob("*") if f.is_file())
    records, written, last = _read_changelog(s)
    kept = sum(last.values())
    users = sum(1 for key in last if split_key(key)[1] is None)  # header keys (format 2) or whole states (1)
    return {
        "rocksdb_dir_bytes_per_user": round(disk / stream.users),
        "changelog_records": records,
        "changelog_bytes_written_per_event": round(written / len(stream)),
        "changelog_records_per_event": round(records / len(stream), 3),
        "changelog_bytes_per_user_after_compaction": round(kept / max(1, users)),
        "changelog_keys": len(last),
        "changelog_users": users,
        "changelog_records_per_user": round(records / max(1, users), 2),
    }


def _read_changelog(s: Settings, idle_s: float = 2.0) -> tuple[int, int, dict[bytes, int]]:
    """(records, key+value bytes, {key: bytes of its newest record}): what compaction would keep.

    Read until nothing arrives for ``idle_s`` (the worker is stopped): Tansu's end
    offsets advance by one per record batch, so they cannot say where the end is.
    """
    from ops.bench.common import vector_consumer

    consumer = vector_consumer(s, changelog_topic(s.kafka))
    try:
        records, written = 0, 0
        last: dict[bytes, int] = {}
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle_s:
            for recs in consumer.poll(timeout_ms=200, max_records=20_000).values():
                quiet_since = time.monotonic()
                for r in recs:
                    size = len(r.key or b"") + len(r.value or b"")
                    records += 1
                    written += size
                    last[r.key] = size
        return records, written, last
    finally:
        consumer.close()


def query(cfg: BenchConfig, stream: Stream) -> dict[str, Any]:
    """The query load against a worker that has just drained the stream (its state loaded)."""
    with bench_env(cfg, "query") as s:
        produce_pairs(s, stream.pairs)
        with draining(cfg, s, stream):
            note(f"query: {cfg.query_rate:g} requests/s for {cfg.query_s:g}s")
            return query_load(cfg, s, list(stream.last_event_id))

