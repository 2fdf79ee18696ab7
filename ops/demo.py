"""`dupn demo`: broker, topics, model, one worker and a synthetic replay in one process tree."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clients.vectors import follow_vectors
from core.contracts import VectorMessage
from core.settings import Settings
from ops.broker import EmbeddedBroker
from ops.harness import start_worker, stop_process, wait_healthy
from ops.replay import ReplayStats, replay, synthetic_events
from ops.topics import create_topics

#: The live stream's default pace: a few hundred events/s, as a small shop's traffic, not a backlog.
LIVE_RATE = 300.0
#: The status line's freshness window: recent events only, so it shows the steady state.
STATUS_WINDOW_S = 10.0


@dataclass
class VectorTracker:
    """Follows ``user-vectors`` as an independent reader and measures freshness per event.

    The producer registers every event it sends (:meth:`sent`); a vector whose ``last_event_id``
    is a user's k-th pending event reflects that event and every earlier one of the user (a user's
    events are applied in order), so each of them gets one sample: the reader's receive time
    minus the event's ``ts``. A batch that carries several events of a user thus counts the
    earlier ones' longer wait, which one sample per vector would hide.
    """

    last_event_id: dict[str, str] = field(default_factory=dict)
    events_seen: dict[str, int] = field(default_factory=dict)
    applied: int = 0
    received: int = 0
    samples: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=200_000))  # (receive ms, latency)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    _pending: dict[str, deque[tuple[str, int]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sent(self, event: dict[str, Any]) -> None:
        with self._lock:
            user = str(event["user_id"])
            self._pending.setdefault(user, deque()).append((str(event["event_id"]), int(event["ts"])))

    def run(self, s: Settings) -> None:
        try:
            with contextlib.closing(follow_vectors(s)) as batches:
                for batch in batches:  # an empty batch at least every poll: the stop flag is seen
                    for msg, now in batch:
                        self._received(msg, now)
                    if self.stop.is_set():
                        return
        except BaseException as exc:  # surfaced by the main thread
            self.error = exc

    def _received(self, msg: VectorMessage, now: int) -> None:
        self.last_event_id[msg.user_id] = msg.last_event_id
        self.applied += max(0, msg.events_seen - self.events_seen.get(msg.user_id, 0))
        self.events_seen[msg.user_id] = max(msg.events_seen, self.events_seen.get(msg.user_id, 0))
        self.received += 1
        with self._lock:
            pending = self._pending.get(msg.user_id)
            if not pending or all(eid != msg.last_event_id for eid, _ in pending):
                return  # an older vector, or events this demo did not send
            while pending:
                eid, ts = pending.popleft()
                self.samples.append((now, max(0, now - ts)))
                if eid == msg.last_event_id:
                    break

    def percentiles(self, within_ms: float | None = None) -> tuple[float, float]:
        """p50 and p99 of per-event freshness (ms), over the samples received in the last ``within_ms``."""
        samples = list(self.samples)
        if within_ms is not None and samples:
            since = samples[-1][0] - within_ms
            samples = [x for x in samples if x[0] >= since]
        if not samples:
            return float("nan"), float("nan")
        arr = np.asarray([lat for _, lat in samples])
        return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def run_demo(
    s: Settings, *, users: int, events: int | None, seed: int, rate: float | None, exit_when_done: bool,
    timeout_s: float = 600.0,
) -> int:
    """Broker, topics, model, a worker, then a synthetic stream until Ctrl-C (or, with ``exit_when_done``,
    until every user's vector reflects their last event). ``rate`` None = as fast as possible (a burst);
    ``events`` None = an unbounded stream."""
    from training.daily import ensure_model

    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the tree in order too, like Ctrl-C
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
    interrupted = False
    try:
        with open(log_path, "ab") as log:
            worker = start_worker(s, log, own_session=True)  # Ctrl-C reaches us; we stop it after the readers
            ready = wait_healthy(s.http.web_url, worker, 120, log_path)
            print(f"worker ready in {ready:.1f}s at {s.http.web_url} (log {log_path})", flush=True)
            print(f"live dashboard: {s.http.web_url}/dashboard", flush=True)
            return _stream_and_watch(s, users, events, seed, rate, exit_when_done, timeout_s)
    except KeyboardInterrupt:
        print("\nstopping: readers, then the worker, then the broker", flush=True)
        interrupted = True
        return 130
    finally:
        if worker is not None:
            stop_process(worker, timeout_s=15.0)
        if owned_broker:
            broker.stop()
        if interrupted:  # with --exit the last line stays the JSON summary
            print("stopped", flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stream_and_watch(
    s: Settings, users: int, events: int | None, seed: int, rate: float | None, exit_when_done: bool,
    timeout_s: float,
) -> int:
    """Produce and follow in two threads, print a status line a second; always stop both before returning."""
    tracker = VectorTracker()
    reader = threading.Thread(target=tracker.run, args=(s,), name="vector-reader")
    stats_box: dict[str, ReplayStats] = {}
    sent = [0]

    def on_sent(_event: dict[str, Any]) -> None:
        sent[0] += 1

    def produce() -> None:
        gen = synthetic_events(users, events if events is not None else 10**15, seed=seed, live_time=True)
        stats_box["stats"] = replay(
            s, _registered(tracker, gen), rate=rate, total=events, progress=False, track_last=True, on_sent=on_sent
        )

    producer = threading.Thread(target=produce, name="producer")
    reader.start()
    producer.start()
    try:
        return _watch(tracker, producer, stats_box, sent, exit_when_done, timeout_s)
    finally:
        tracker.stop.set()  # the producer stops at its next event, the reader at its next poll
        producer.join(timeout=30)
        reader.join(timeout=30)


def _watch(
    tracker: VectorTracker, producer: threading.Thread, stats_box: dict[str, ReplayStats], sent: list[int],
    exit_when_done: bool, timeout_s: float,
) -> int:
    start = time.monotonic()
    last_sent, last_applied, last_t = 0, 0, start
    while True:
        time.sleep(1.0)
        if tracker.error is not None:
            raise tracker.error
        now = time.monotonic()
        p50, p99 = tracker.percentiles(within_ms=STATUS_WINDOW_S * 1000)
        rate_now = (sent[0] - last_sent) / (now - last_t)
        applied_rate = (tracker.applied - last_applied) / (now - last_t)
        last_sent, last_applied, last_t = sent[0], tracker.applied, now
        print(
            f"[{now - start:6.1f}s] sent {sent[0]:>8} ({rate_now:6.0f}/s) | applied {tracker.applied:>8} "
            f"({applied_rate:6.0f}/s) | users with vector {len(tracker.last_event_id):>6} | "
            f"per-event freshness (last {STATUS_WINDOW_S:.0f} s) p50 {p50:7.1f} ms p99 {p99:7.1f} ms",
            flush=True,
        )
        if producer.is_alive():
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


def _registered(tracker: VectorTracker, events: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Each event registered with the tracker before it is sent (its vector can't arrive first); ends on stop."""
    for event in events:
        if tracker.stop.is_set():
            return
        tracker.sent(event)
        yield event


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

