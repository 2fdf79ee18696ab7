"""`dupn bench`: worker throughput on the embedded broker (the first part of the benchmark suite).

Pre-produces a synthetic stream, starts one worker, and times how long the
worker takes until every user's published vector reflects that user's last
event (read back from ``user-vectors``). The broker, producer, worker and
reader share this machine's cores, as in production on one box.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.config import Settings
from ops.replay import synthetic_events
from ops.testing import embedded_broker, isolated_settings, produce, running_worker, setup_topics
from ops.vectors import follow_vectors


@dataclass(frozen=True)
class DrainResult:
    events: int
    users: int
    seconds: float
    settings: dict[str, Any]

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds


def drain_rate(model_dir: Path, users: int, events: int, seed: int = 0, **overrides: Any) -> DrainResult:
    with tempfile.TemporaryDirectory(prefix="dupn-bench-") as tmp:
        home = Path(tmp)
        with embedded_broker(home / "broker") as url:
            s = isolated_settings(url, home, model_dir, **overrides)
            setup_topics(s)
            stream = list(synthetic_events(users, events, seed=seed, live_time=False))
            last = {str(e["user_id"]): str(e["event_id"]) for e in stream}
            produce(s, stream)
            with running_worker(s):
                seconds = _time_until_current(s, last)
    picked = {k: getattr(s, k) for k in ("update_mode", "reanchor_every", "intake", "roles", "batch_max", "partitions")}
    return DrainResult(len(stream), len(last), seconds, picked)


def _time_until_current(s: Settings, last: dict[str, str], timeout_s: float = 900.0) -> float:
    start = time.monotonic()
    seen: dict[str, str] = {}
    behind = set(last)
    for batch in follow_vectors(s):
        for msg, _ in batch:
            seen[msg.user_id] = msg.last_event_id
            if msg.user_id in behind and seen[msg.user_id] == last[msg.user_id]:
                behind.discard(msg.user_id)
        if not behind:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{len(behind)} users still behind after {timeout_s:.0f}s")
    raise RuntimeError("vector reader stopped")
