"""The stream updater publishes exactly what the offline definition says."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from encoder.features import records_from_events
from encoder.model import UserContext
from encoder.streaming import EncoderState, StreamingEncoder, UpdatePolicy, _stack_window, reference_vectors
from state.codec import decode_state, encode_state
from streams.updater import Incoming, VectorUpdater
from tests.support.factories import interleave, make_events
from tests.support.fakes import MemoryTable, apply_in_batches


@pytest.mark.parametrize("cache_users", [20_000, 1])  # 1: every batch rebuilds most users from their state
@pytest.mark.parametrize(
    "policy", [UpdatePolicy("exact"), UpdatePolicy("incremental", 7), UpdatePolicy("incremental", 100)]
)
def test_published_vectors_equal_offline_reference(
    tiny_encoder: StreamingEncoder, policy: UpdatePolicy, cache_users: int
) -> None:
    users = {f"u{k}": make_events(f"u{k}", 130 + 20 * k, seed=k) for k in range(3)}
    updater = VectorUpdater(tiny_encoder, policy, cache_capacity=cache_users)
    store = MemoryTable()
    published = apply_in_batches(updater, store, interleave(*users.values()), batch=17)
    refs = {u: reference_vectors(tiny_encoder, records_from_events(ev), policy) for u, ev in users.items()}
    assert published
    for msg in published:
        ref = refs[msg.user_id][msg.events_seen - 1]
        assert np.abs(msg.vector - ref).max() <= 1e-5
    for u, ev in users.items():
        state = decode_state(u, store.data[u])
        assert state.events_seen == len(ev)
        assert state.last_event_id == ev[-1]["event_id"]


def test_exact_step_from_zero_equals_encode_window(tiny_encoder: StreamingEncoder) -> None:
    rec = records_from_events(make_events("u", 80))
    state = tiny_encoder.init_state()
    for i in range(len(rec)):
        (state,) = tiny_encoder.step([state], rec[i : i + 1])
    now = int(rec[-1]["ts"]) + 5_000
    stepped = tiny_encoder.represent([state], [now])[0]
    assert np.abs(stepped - tiny_encoder.encode_window(rec, now)).max() <= 1e-5


def test_window_keeps_last_100_of_250(tiny_encoder: StreamingEncoder) -> None:
    events = make_events("u", 250)
    store = MemoryTable()
    apply_in_batches(VectorUpdater(tiny_encoder, UpdatePolicy("exact")), store, events, batch=50)
    state = decode_state("u", store.data["u"])
    expected = records_from_events(events)[-100:]
    assert state.events_seen == 250
    assert len(state.records) == 100
    assert (state.window(100)["event_hash"] == expected["event_hash"]).all()
    assert (state.window(100)["ts"] == expected["ts"]).all()


def test_redelivered_and_duplicate_events_are_not_applied_twice(tiny_encoder: StreamingEncoder) -> None:
    events = make_events("u", 40)
    store = MemoryTable()
    updater = VectorUpdater(tiny_encoder, UpdatePolicy("incremental", 10))
    apply_in_batches(updater, store, events[:30], batch=8)
    # at-least-once redelivery of offsets 20..39, then the same event ids again at new offsets
    apply_in_batches(updater, store, events[20:], batch=8, offset0=20)
    apply_in_batches(updater, store, events[35:], batch=8, offset0=1000)
    state = decode_state("u", store.data["u"])
    assert state.events_seen == 40
    ref = reference_vectors(tiny_encoder, records_from_events(events), UpdatePolicy("incremental", 10))
    assert state.vector is not None
    assert np.abs(state.vector - ref[-1]).max() <= 1e-5


def test_a_user_whose_events_were_all_redelivered_is_reported_with_the_stored_state(
    tiny_encoder: StreamingEncoder,
) -> None:
    """The agent writes such a state again: the changelog may never have received it (kill -9)."""
    store = MemoryTable()
    updater = VectorUpdater(tiny_encoder, UpdatePolicy("incremental", 10))
    apply_in_batches(updater, store, make_events("a", 5) + make_events("b", 5), batch=10)
    stored = {u: decode_state(u, raw) for u, raw in store.data.items()}
    again = [Incoming(0, i, e["user_id"].encode(), json.dumps(e).encode()) for i, e in enumerate(make_events("a", 5))]
    repeated = [Incoming(0, 100 + i, b"b", json.dumps(e).encode()) for i, e in enumerate(make_events("b", 5))]
    res = updater.apply(again + repeated, store.load)
    assert not res.updates and res.duplicates == 10
    # "a" came again at its own offsets: its stored state, unchanged. "b"'s events came again as new
    # messages (same ids): skipped as repeats, but the state now reflects their offsets, so it is
    # written with the new source offset (a redelivery of them is then skipped by offset).
    assert [(s.user_id, m.offset) for s, m in res.redelivered] == [("a", 0), ("b", 100)]
    assert encode_state(res.redelivered[0][0]) == encode_state(stored["a"])
    b_state = res.redelivered[1][0]
    assert b_state.source_offset == 104 and b_state.events_seen == stored["b"].events_seen == 5


def test_bad_messages_are_rejected_and_the_rest_applied(tiny_encoder: StreamingEncoder) -> None:
    good = make_events("u", 3)
    msgs = [
        Incoming(0, 0, b"u", json.dumps(good[0]).encode()),
        Incoming(0, 1, b"u", b"\xff\xfe not utf8"),
        Incoming(0, 2, b"u", b"{not json"),
        Incoming(0, 3, b"other", json.dumps(good[1]).encode()),
        Incoming(0, 4, b"u", json.dumps({**good[2], "event_type": "teleport"}).encode()),
        Incoming(0, 5, b"u", json.dumps(good[2]).encode()),
    ]
    res = VectorUpdater(tiny_encoder, UpdatePolicy("exact")).apply(msgs, lambda _u, _m: None)
    reasons = sorted(r.reason for _, r in res.rejections)
    assert reasons == ["bad_json", "bad_value", "key_mismatch", "not_utf8"]
    (update,) = res.updates
    assert update.state.events_seen == 2
    assert update.vector.last_event_id == good[2]["event_id"]


def test_advance_over_sequences_of_different_lengths_equals_one_user_at_a_time(
    tiny_encoder: StreamingEncoder,
) -> None:
    seqs = [records_from_events(make_events(f"u{k}", n, seed=k)) for k, n in enumerate([5, 0, 130, 1, 37])]
    together = tiny_encoder.replay(seqs)
    for seq, st in zip(seqs, together, strict=True):
        (alone,) = tiny_encoder.replay([seq])
        for name in ("h", "c", "keys", "values", "ts"):
            assert np.allclose(getattr(st, name), getattr(alone, name), atol=1e-6), name
        assert (st.size, st.head) == (alone.size, alone.head) == (min(len(seq), 100), len(seq) % 100)
        if len(seq):  # equal to stepping one behavior at a time
            one = tiny_encoder.init_state()
            for i in range(len(seq)):
                (one,) = tiny_encoder.step([one], seq[i : i + 1])
            assert np.allclose(one.h, st.h, atol=1e-5)


def _pooled_by_definition(enc: StreamingEncoder, state: EncoderState, now: int) -> np.ndarray:
    """The model's own attention over the whole window (nothing kept between calls)."""
    with torch.inference_mode():
        k, v, ts, mask = _stack_window([state], enc.cfg.attention_dim, enc.cfg.value_dim)
        ctx, profile = enc.model.user_context(UserContext(), 1)
        pooled = enc.model.attention(k, v, ts, mask, torch.tensor([now]), ctx)
        return enc.model.representation(pooled, profile).numpy()[0]


def test_repooling_with_kept_scores_equals_the_definition_as_buckets_move(tiny_encoder: StreamingEncoder) -> None:
    """Scores are kept per behavior and age bucket: re-pooling later (buckets move), earlier and again
    must each give what the full attention computes, for users re-pooled together at different times."""
    seqs = [records_from_events(make_events(f"u{k}", n, seed=k)) for k, n in enumerate([80, 1, 130])]
    states = tiny_encoder.replay(seqs)
    last = [int(seq[-1]["ts"]) for seq in seqs]
    for shift in (0, 45_000, 4 * 86_400_000, 0, 40 * 86_400_000, 0):
        nows = [t + shift * (1 + k) for k, t in enumerate(last)]
        got = tiny_encoder.represent(states, nows)
        for st, now, vec in zip(states, nows, got, strict=True):
            assert np.abs(vec - _pooled_by_definition(tiny_encoder, st, now)).max() <= 1e-5, shift


def test_one_state_repooled_at_two_times_in_one_call(tiny_encoder: StreamingEncoder) -> None:
    (state,) = tiny_encoder.replay([records_from_events(make_events("u", 60))])
    t = int(state.ts[: state.size].max())
    got = tiny_encoder.represent([state, state], [t, t + 40 * 86_400_000])
    for vec, now in zip(got, (t, t + 40 * 86_400_000), strict=True):
        assert np.abs(vec - _pooled_by_definition(tiny_encoder, state, now)).max() <= 1e-5
