"""Input validation never raises, and names why an event is refused; output messages round-trip."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.contracts import (
    REJECT_REASONS,
    BehaviorEvent,
    Rejection,
    VectorMessage,
    decode_vector_message,
    parse_event,
)

NOW = 1_800_000_000_000
GOOD = {
    "event_id": "e1",
    "user_id": "u1",
    "ts": NOW - 1000,
    "event_type": "buy",
    "item_id": "i1",
    "shop_id": "s1",
    "tags": ["price:3"],
    "scenario": "search",
}


def parse(doc: object, key: bytes | None = b"u1") -> BehaviorEvent | Rejection:
    return parse_event(key, json.dumps(doc).encode(), now_ms=NOW)


def test_valid_event_is_accepted_with_defaults() -> None:
    ev = parse({k: v for k, v in GOOD.items() if k not in ("scenario", "shop_id", "tags")})
    assert isinstance(ev, BehaviorEvent)
    assert ev.scenario == "other" and ev.shop_id == "" and ev.tags == ()


def test_each_kind_of_bad_input_has_its_reason() -> None:
    cases = {
        "too_large": parse_event(b"u1", b"{" + b" " * 70_000 + b"}", now_ms=NOW),
        "not_utf8": parse_event(b"u1", b"\xc3\x28", now_ms=NOW),
        "bad_json": parse_event(b"u1", b"{", now_ms=NOW),
        "not_object": parse([1, 2]),
        "missing_field": parse({**GOOD, "item_id": None}),
        "bad_type": parse({**GOOD, "ts": "yesterday"}),
        "bad_value": parse({**GOOD, "event_type": "like"}),
        "ts_out_of_range": parse({**GOOD, "ts": 1_000}),
        "key_mismatch": parse(GOOD, key=b"u2"),
    }
    for reason, got in cases.items():
        assert isinstance(got, Rejection) and got.reason == reason, (reason, got)
    assert set(cases) == set(REJECT_REASONS)
    future = parse({**GOOD, "ts": NOW + 3_600_000})
    assert isinstance(future, Rejection) and future.reason == "ts_out_of_range"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.one_of(st.none(), st.binary(max_size=20)))
def test_random_bytes_never_raise(value: bytes, key: bytes | None) -> None:
    assert isinstance(parse_event(key, value, now_ms=NOW), BehaviorEvent | Rejection)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(GOOD)), json_values, max_size=8))
def test_mistyped_fields_are_rejected_not_raised(overrides: dict[str, object]) -> None:
    got = parse({**GOOD, **overrides})
    assert isinstance(got, BehaviorEvent | Rejection)
    if isinstance(got, Rejection):
        assert got.reason in REJECT_REASONS


def test_vector_message_round_trip() -> None:
    vec = np.linspace(-1, 1, 256, dtype=np.float32)
    msg = VectorMessage("u1", "v1", vec, 12, "e12", NOW - 5, NOW)
    doc = json.loads(msg.to_bytes())
    assert doc["dim"] == 256 and doc["schema_version"] == 1
    back = decode_vector_message(msg.to_bytes())
    assert np.array_equal(back.vector, vec) and back.events_seen == 12 and back.last_event_ts == NOW - 5
