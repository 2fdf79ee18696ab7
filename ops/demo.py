"""`dupn demo`: broker, topics, model, one worker and a synthetic replay in one process tree."""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clients.vectors import follow_vectors
from core.settings import Settings
from ops.broker import EmbeddedBroker
from ops.harness import start_worker, stop_process, wait_healthy
from ops.replay import ReplayStats, replay, synthetic_events
from ops.topics import create_topics


@dataclass
class VectorTracker:
    """Follows ``user-vectors``: per user the newest last_event_id, plus freshness samples."""

    last_event_id: dict[str, str] = field(default_factory=dict)
    events_seen: dict[str, int] = field(default_factory=dict)
    applied: int = 0
    freshness_ms: list[int] = field(default_factory=list)
    received: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def run(self, s: Settings) -> None:
        try:
            for batch in follow_vectors(s):
                for msg, now in batch:
                    self.last_event_id[msg.user_id] = msg.last_event_id
                    self.applied += max(0, msg.events_seen - self.events_seen.get(msg.user_id, 0))
                    self.events_seen[msg.user_id] = max(msg.events_seen, self.events_seen.get(msg.user_id, 0))
                    self.freshness_ms.append(max(0, now - msg.last_event_ts))
                    self.received += 1
                if self.stop.is_set():
                    return
        except BaseException as exc:  # surfaced by the main thread
            self.error = exc

    def percentiles(self) -> tuple[float, float]:
        if not self.freshness_ms:
            return float("nan"), float("nan")
        arr = np.asarray(self.freshness_ms[-100_000:])
        return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def run_demo(
    s: Settings, *, users: int, events: int, seed: int, rate: float | None, exit_when_done: bool,
    timeout_s: float = 600.0,
) -> int:
    from training.daily import ensure_model

    home = s.home_path
    host, port = s.kafka.broker_host_port
    broker = EmbeddedBroker(home / "broker", host, port)
    owned_broker = not broker.status().running
    print(broker.start().describe(), flush=True)
    if owned_broker and s.data_path.exists():
        # The embedded broker keeps nothing across restarts, so a worker state left by an earlier
        # demo points past the new, empty changelogs (Faust refuses to start on that): start clean.
        print(f"fresh embedded broker (memory only): removing an earlier worker state {s.data_path}", flush=True)
        shutil.rmtree(s.data_path)
    for name, what in create_topics(s).items():
        print(f"topic {name}: {what}", flush=True)
    ensure_model(s.model_dir, quick=True, progress=True)
    log_path = home / "worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    worker = None
    try:
        with open(log_path, "ab") as log:
            worker = start_worker(s, log)
            ready = wait_healthy(s.http.web_url, worker, 120, log_path)
            print(f"worker ready in {ready:.1f}s at {s.http.web_url} (log {log_path})", flush=True)
            print(f"live dashboard: {s.http.web_url}/dashboard", flush=True)
            return _stream_and_watch(s, users, events, seed, rate, exit_when_done, timeout_s)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 130
    finally:
        if worker is not None:
            stop_process(worker, timeout_s=15.0)
        if owned_broker:
            broker.stop()


def _stream_and_watch(
    s: Settings, users: int, events: int, seed: int, rate: float | None, exit_when_done: bool, timeout_s: float
) -> int:
    tracker = VectorTracker()
    threading.Thread(target=tracker.run, args=(s,), daemon=True).start()
    stats_box: dict[str, ReplayStats] = {}
    sent = [0]

    def produce() -> None:
        gen = synthetic_events(users, events, seed=seed, live_time=True)
        stats_box["stats"] = replay(
            s, gen, rate=rate, total=events, progress=False, track_last=True,
            on_sent=lambda _e: sent.__setitem__(0, sent[0] + 1),
        )

    producer_thread = threading.Thread(target=produce, daemon=True)
    producer_thread.start()
    start = time.monotonic()
    last_sent, last_applied, last_t = 0, 0, start
    while True:
        time.sleep(1.0)
        if tracker.error is not None:
            raise tracker.error
        now = time.monotonic()
        p50, p99 = tracker.percentiles()
        rate_now = (sent[0] - last_sent) / (now - last_t)
        applied_rate = (tracker.applied - last_applied) / (now - last_t)
        last_sent, last_applied, last_t = sent[0], tracker.applied, now
        print(
            f"[{now - start:6.1f}s] sent {sent[0]:>8} ({rate_now:6.0f}/s) | applied {tracker.applied:>8} "
            f"({applied_rate:6.0f}/s) | users with vector "
            f"{len(tracker.last_event_id):>6} | vectors {tracker.received:>8} | freshness p50 "
            f"{p50:7.1f} ms p99 {p99:7.1f} ms",
            flush=True,
        )
        if producer_thread.is_alive():
            continue
        stats = stats_box.get("stats")
        if stats is None:
            raise RuntimeError("replay failed; see the error above")
        if not exit_when_done:
            continue  # keep serving queries until Ctrl-C
        done = _up_to_date(stats, tracker)
        if done == len(stats.last_event_id or {}) or now - start > timeout_s:
            print(json.dumps(_summary(stats, tracker, done)), flush=True)
            return 0 if done == len(stats.last_event_id or {}) else 1


def _up_to_date(stats: ReplayStats, tracker: VectorTracker) -> int:
    want = stats.last_event_id or {}
    return sum(1 for u, eid in want.items() if tracker.last_event_id.get(u) == eid)


def _summary(stats: ReplayStats, tracker: VectorTracker, up_to_date: int) -> dict[str, Any]:
    p50, p99 = tracker.percentiles()
    want = stats.last_event_id or {}
    return {
        "users": len(want),
        "users_with_vector": sum(1 for u in want if u in tracker.last_event_id),
        "users_up_to_date": up_to_date,
        "events": stats.events,
        "freshness_p50_ms": round(p50, 1),
        "freshness_p99_ms": round(p99, 1),
    }

