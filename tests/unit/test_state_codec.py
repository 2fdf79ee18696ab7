"""The durable user state survives a round trip through its binary codec, and bad bytes are refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from encoder.features import BEHAVIOR_DTYPE, MAX_TAGS, records_from_events
from state.codec import FORMAT_VERSION, StateDecodeError, decode_state, encode_state
from state.user_state import UserState
from tests.support.factories import make_events


def test_round_trip_keeps_every_field() -> None:
    rec = records_from_events(make_events("u", 30))
    vec = np.random.default_rng(0).standard_normal(256).astype(np.float32)
    state = UserState("u", rec, 130, "u-e29", 3, 4242, "abc123", vec, 1_700_000_000_123)
    back = decode_state("u", encode_state(state))
    assert back.records.tobytes() == rec.tobytes()
    assert (back.events_seen, back.last_event_id, back.source_partition, back.source_offset) == (130, "u-e29", 3, 4242)
    assert back.model_version == "abc123" and back.updated_at == 1_700_000_000_123
    assert back.vector is not None and np.array_equal(back.vector, vec)


def test_state_is_compact_binary() -> None:
    rec = records_from_events(make_events("u", 100))
    state = UserState("u", rec, 100, "u-e99", 0, 99, "0123456789abcdef", np.zeros(256, np.float32), 1)
    blob = encode_state(state)
    assert len(blob) == 100 * BEHAVIOR_DTYPE.itemsize + 256 * 4 + 55  # 26 header + 3 length-prefixed fields
    assert not blob.lstrip().startswith(b"{")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_is_refused_with_a_clear_error(raw: bytes) -> None:
    try:
        decode_state("u", raw)
    except StateDecodeError as exc:
        assert "user 'u'" in str(exc) or "version" in str(exc) or "truncated" in str(exc)


def test_unknown_version_is_refused() -> None:
    blob = bytearray(encode_state(UserState("u")))
    blob[0] = FORMAT_VERSION + 1
    with pytest.raises(StateDecodeError, match="version"):
        decode_state("u", bytes(blob))


def test_extend_keeps_only_the_current_run() -> None:
    state = UserState("u")
    rec = records_from_events(make_events("u", 30))
    for i in range(30):
        state.extend(rec[i : i + 1], keep_from=max(0, i + 1 - 10))
    assert state.events_seen == 30 and len(state.records) == 10
    assert state.first_record_index() == 20
    assert (state.records["event_hash"] == rec[-10:]["event_hash"]).all()


def test_tags_beyond_max_are_truncated_not_fatal() -> None:
    ev = make_events("u", 1)[0] | {"tags": [f"t{i}" for i in range(MAX_TAGS + 5)]}
    rec = records_from_events([ev])
    assert (rec["tags"][0] != 0).sum() == MAX_TAGS
