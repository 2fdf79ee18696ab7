"""Draining a pre-produced stream with one worker or a group: the clock every worker figure uses."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from core.contracts import peek_vector_message
from core.settings import FIELD_SECTIONS, Settings
from ops.bench.common import (
    BenchConfig,
    Stream,
    bench_env,
    produce_pairs,
    ready_time,
    vector_consumer,
    worker_metrics,
)
from ops.harness import free_port, running_workers


class VectorFollower:
    """Reads ``user-vectors`` in a thread: when is every user's vector current, and how many events are applied.

    Parses only the small fields of each message (no vector decode, v1 or v2), so the
    reader takes as little of the machine as it can.
    """

    def __init__(self, s: Settings, last_event_id: dict[str, str]) -> None:
        self.settings = s
        self.last = last_event_id
        self.behind = set(last_event_id)
        self.events_seen: dict[str, int] = {}
        self.applied = 0  # events reflected in the vectors read so far (sum of each user's newest events_seen)
        self.timeline: list[tuple[float, int]] = []  # (wall time after a poll, applied)
        self.done_at: float | None = None  # wall time when every user was current
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vector-follower", daemon=True)

    def __enter__(self) -> VectorFollower:
        self._thread.start()
        if not self._ready.wait(30) or self.error is not None:
            raise RuntimeError(f"vector reader did not start: {self.error}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def applied_at(self, when: float) -> int:
        """``applied`` as it was at wall time ``when``."""
        before = [n for t, n in self.timeline if t <= when]
        return before[-1] if before else 0

    def wait_current(self, timeout_s: float) -> float:
        """Block until every user's vector reflects their last event; returns that wall time."""
        from tqdm import tqdm

        deadline = time.monotonic() + timeout_s
        total = len(self.last)
        with tqdm(total=total, unit="user", desc="users current", smoothing=0.1, leave=False) as bar:
            while self.done_at is None:
                if self.error is not None:
                    raise RuntimeError(f"vector reader failed: {self.error}") from self.error
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(self.behind)} of {total} users still behind after {timeout_s:.0f}s")
                bar.update(total - len(self.behind) - bar.n)
                time.sleep(0.05)
        return self.done_at

    def _run(self) -> None:
        try:
            consumer = vector_consumer(self.settings)
        except BaseException as exc:  # surfaced by __enter__
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                polled = consumer.poll(timeout_ms=100)
                now = time.time()
                for records in polled.values():
                    for r in records:
                        self._seen(peek_vector_message(r.value))  # v1 or v2, the vector not decoded
                if polled:
                    self.timeline.append((now, self.applied))
                if not self.behind and self.done_at is None:
                    self.done_at = now
        except BaseException as exc:  # surfaced by wait_current
            self.error = exc
        finally:
            consumer.close()

    def _seen(self, doc: dict[str, Any]) -> None:
        user = doc["user_id"]
        seen, before = int(doc["events_seen"]), self.events_seen.get(user, 0)
        if seen > before:
            self.events_seen[user] = seen
            self.applied += seen - before
        if user in self.behind and doc["last_event_id"] == self.last.get(user):
            self.behind.discard(user)


@dataclass(frozen=True)
class Drain:
    """A worker (or group of workers) draining a pre-produced stream."""

    events: int
    users: int
    workers: int
    seconds: float
    applied_before_clock: int  # events applied before the last worker was ready (outside the clock)
    per_worker: list[dict[str, float]]
    settings: dict[str, Any]

    @property
    def events_per_s(self) -> float:
        return (self.events - self.applied_before_clock) / self.seconds

    def to_json(self) -> dict[str, Any]:
        return {
            "events_per_s": round(self.events_per_s),
            "events": self.events,
            "users": self.users,
            "workers": self.workers,
            "seconds": round(self.seconds, 2),
            "applied_before_clock": self.applied_before_clock,
            "per_worker": self.per_worker,
            **self.settings,
        }


@contextlib.contextmanager
def draining(cfg: BenchConfig, s: Settings, stream: Stream, workers: int = 1) -> Iterator[Drain]:
    """Start ``workers`` workers (one group) on the produced stream; yields once all are current, still running.

    The clock runs from the moment the last worker logged Faust's "Worker ready"
    (assignment and table recovery done, fetching starts) until every user's vector
    on ``user-vectors`` reflects that user's last event; events already applied
    before that moment (one member working alone) are not counted.
    """
    group = [s] + [
        s.replace(web_port=free_port(), data_dir=str(s.home_path / f"data-{i}")) for i in range(1, workers)
    ]
    names = ["worker"] if workers == 1 else [f"worker-{i}" for i in range(workers)]
    with VectorFollower(s, stream.last_event_id) as follower, running_workers(
        group, names, cfg.ready_timeout_s
    ):
        healthy = time.time()
        done = follower.wait_current(cfg.timeout_s)
        start = ready_time([w.home_path / f"{n}.log" for w, n in zip(group, names, strict=True)], done) or healthy
        keys = ("update_mode", "reanchor_every", "intake", "roles", "batch_max", "partitions")
        yield Drain(
            len(stream), stream.users, workers, done - start, follower.applied_at(start),
            [worker_metrics(w.http.web_url) for w in group],
            {k: getattr(getattr(s, FIELD_SECTIONS[k]), k) for k in keys},
        )


def drain(cfg: BenchConfig, stream: Stream, workers: int = 1, **overrides: Any) -> Drain:
    """Max sustained events/s: a fresh worker group on a fresh broker drains the pre-produced stream."""
    with bench_env(cfg, "drain", **overrides) as s:
        produce_pairs(s, stream.pairs)
        with draining(cfg, s, stream, workers) as result:
            return result
