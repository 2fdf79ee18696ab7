"""`dupn demo` reports freshness per event: each event counts once, when the first vector reflecting it arrives."""

from __future__ import annotations

import numpy as np

from core.contracts import VectorMessage
from ops.demo import VectorTracker


def _vector(user: str, last_event_id: str, events_seen: int) -> VectorMessage:
    return VectorMessage(
        user_id=user, model_version="m", vector=np.zeros(4, np.float32), events_seen=events_seen,
        last_event_id=last_event_id, last_event_ts=0, updated_at=0,
    )


def test_a_vector_counts_every_event_it_reflects_once() -> None:
    tracker = VectorTracker()
    for i, ts in enumerate((1_000, 1_100, 1_200)):
        tracker.sent({"user_id": "u", "event_id": f"e{i}", "ts": ts})
    tracker.sent({"user_id": "v", "event_id": "x0", "ts": 1_050})
    tracker._received(_vector("u", "e1", 2), now=1_500)  # one batch carried e0 and e1
    assert sorted(lat for _, lat in tracker.samples) == [400, 500]
    tracker._received(_vector("u", "e1", 2), now=1_900)  # the same vector again: nothing new
    tracker._received(_vector("u", "elsewhere", 9), now=1_900)  # an event this demo did not send
    assert len(tracker.samples) == 2
    tracker._received(_vector("u", "e2", 3), now=1_700)
    tracker._received(_vector("v", "x0", 1), now=1_100)
    assert sorted(lat for _, lat in tracker.samples) == [50, 400, 500, 500]
    assert tracker.applied == 10 and tracker.received == 5


def test_status_percentiles_cover_the_recent_window_only() -> None:
    tracker = VectorTracker()
    tracker.samples.extend([(0, 5_000), (20_000, 100), (21_000, 300)])
    assert tracker.percentiles()[1] > 3_000
    p50, p99 = tracker.percentiles(within_ms=10_000)
    assert 100 <= p50 <= 300 and p99 <= 300
