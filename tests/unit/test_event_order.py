"""The documented rule for out-of-order events and repeated event ids (README, "Event order and duplicates").

- A user's events are applied in arrival order (partition order), never re-sorted by ``ts``.
- An event older than the one before it gets a time-since-previous gap of 0 (the first bucket).
- The vector is computed as of the last *applied* event's ``ts``, so a late event moves
  ``last_event_ts`` back; behaviors newer than that count as age 0.
- A repeated ``event_id`` among the user's last 100 applied events (at the repeat's position) is
  skipped (the first one wins, even if the repeat differs); an older one is applied again.
- A redelivered message (same partition, offset <= the stored source offset) is skipped.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from encoder.features import gap_bucket, records_from_events
from encoder.streaming import StreamingEncoder, UpdatePolicy, reference_vectors
from state.codec import decode_state, encode_state
from streams.updater import Incoming, VectorUpdater

T0 = 1_700_000_000_000
MIN = 60_000


def ev(user: str, i: int, ts: int, **extra: Any) -> dict[str, Any]:
    return {"event_id": f"{user}-e{i}", "user_id": user, "ts": ts, "event_type": "click", "item_id": f"i{i}", **extra}


class Feed:
    """Applies events in batches at increasing offsets of partition 0, keeping states like the table does."""

    def __init__(self, encoder: StreamingEncoder, policy: UpdatePolicy) -> None:
        self.updater = VectorUpdater(encoder, policy)
        self.store: dict[str, bytes] = {}
        self.offset = 0
        self.published: list[Any] = []
        self.duplicates = 0

    def send(self, events: list[dict[str, Any]], batch: int = 1_000) -> None:
        for start in range(0, len(events), batch):
            msgs = []
            for e in events[start : start + batch]:
                msgs.append(Incoming(0, self.offset, str(e["user_id"]).encode(), json.dumps(e).encode()))
                self.offset += 1
            self.apply(msgs)

    def apply(self, msgs: list[Incoming]) -> None:
        res = self.updater.apply(msgs, lambda user, _m: self.state(user) if user in self.store else None)
        assert not res.rejections
        self.duplicates += res.duplicates
        for up in res.updates:
            self.store[up.state.user_id] = encode_state(up.state)
            self.published.append(up.vector)

    def state(self, user: str):  # type: ignore[no-untyped-def]
        return decode_state(user, self.store[user])


def test_late_event_is_applied_in_arrival_order_with_gap_clamped_to_zero(tiny_encoder: StreamingEncoder) -> None:
    arrival = [ev("u", 0, T0), ev("u", 1, T0 + 30 * MIN), ev("u", 2, T0 + 10 * MIN), ev("u", 3, T0 + 40 * MIN)]
    policy = UpdatePolicy("incremental", 2)
    one_batch, one_by_one = Feed(tiny_encoder, policy), Feed(tiny_encoder, policy)
    one_batch.send(arrival)
    one_by_one.send(arrival, batch=1)
    for feed in (one_batch, one_by_one):
        st = feed.state("u")
        assert st.records["ts"].tolist() == [e["ts"] for e in arrival], "not re-sorted by ts"
        assert st.records["gap_bucket"][2] == gap_bucket(0, 0), "older than its predecessor: gap 0"
        assert st.records["gap_bucket"][3] == gap_bucket(T0 + 40 * MIN, T0 + 10 * MIN), "gap from the late event"
    ref = reference_vectors(tiny_encoder, records_from_events(arrival), policy)
    assert np.abs(one_batch.state("u").vector - ref[-1]).max() <= 1e-5
    for msg in one_by_one.published:
        assert np.abs(msg.vector - ref[msg.events_seen - 1]).max() <= 1e-5


def test_vector_after_a_late_event_is_as_of_that_event(tiny_encoder: StreamingEncoder) -> None:
    feed = Feed(tiny_encoder, UpdatePolicy("exact"))
    feed.send([ev("u", 0, T0), ev("u", 1, T0 + 60 * MIN)])
    feed.send([ev("u", 2, T0 + 5 * MIN)])  # arrives last, happened second
    first, late = feed.published
    assert first.last_event_ts == T0 + 60 * MIN
    assert late.last_event_ts == T0 + 5 * MIN and late.last_event_id == "u-e2"
    window = records_from_events([ev("u", 0, T0), ev("u", 1, T0 + 60 * MIN), ev("u", 2, T0 + 5 * MIN)])
    expected = tiny_encoder.encode_window(window, T0 + 5 * MIN)
    assert np.abs(late.vector - expected).max() <= 1e-5


def test_repeated_event_id_is_skipped_first_wins(tiny_encoder: StreamingEncoder) -> None:
    feed = Feed(tiny_encoder, UpdatePolicy("incremental", 3))
    original = ev("u", 0, T0, event_type="buy")
    feed.send([original, ev("u", 1, T0 + MIN), {**original, "event_type": "click", "ts": T0 + 2 * MIN}])
    feed.send([ev("u", 1, T0 + 3 * MIN)])  # a later batch repeats an id too
    st = feed.state("u")
    assert st.events_seen == 2 and feed.duplicates == 2
    assert st.records["ts"].tolist() == [T0, T0 + MIN]
    assert st.records["event_type"][0] == 3  # "buy": the first occurrence was kept


def test_event_ids_are_per_user(tiny_encoder: StreamingEncoder) -> None:
    feed = Feed(tiny_encoder, UpdatePolicy("exact"))
    feed.send([{**ev("a", 0, T0), "event_id": "shared"}, {**ev("b", 0, T0), "event_id": "shared"}])
    assert feed.state("a").events_seen == 1 and feed.state("b").events_seen == 1 and feed.duplicates == 0


def test_repeat_older_than_the_stored_run_is_applied_again(tiny_encoder: StreamingEncoder) -> None:
    policy = UpdatePolicy("exact")
    feed = Feed(tiny_encoder, policy)
    history = [ev("u", i, T0 + i * MIN) for i in range(policy.max_retained + 1)]
    feed.send(history, batch=50)
    assert feed.state("u").events_seen == len(history)
    feed.send([{**history[0], "ts": T0 + 1_000 * MIN}])  # e0 is no longer among the last 100 applied: applied
    feed.send([{**history[-1], "ts": T0 + 1_001 * MIN}])  # the newest is still stored: skipped
    assert feed.state("u").events_seen == len(history) + 1 and feed.duplicates == 1


def test_redelivered_offset_is_skipped_even_with_a_new_event_id(tiny_encoder: StreamingEncoder) -> None:
    feed = Feed(tiny_encoder, UpdatePolicy("exact"))
    feed.send([ev("u", 0, T0), ev("u", 1, T0 + MIN)])
    assert feed.state("u").source_offset == 1
    redelivered = Incoming(0, 1, b"u", json.dumps(ev("u", 9, T0 + 2 * MIN)).encode())
    other_partition = Incoming(1, 1, b"u", json.dumps(ev("u", 10, T0 + 3 * MIN)).encode())
    feed.apply([redelivered, other_partition])
    st = feed.state("u")
    assert st.events_seen == 3 and st.last_event_id == "u-e10" and feed.duplicates == 1
    assert (st.source_partition, st.source_offset) == (1, 1)
