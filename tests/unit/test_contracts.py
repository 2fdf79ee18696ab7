"""Input validation never raises, and names why an event is refused; output messages round-trip."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.contracts import (
    REJECT_REASONS,
    BehaviorEvent,
    Rejection,
    VectorMessage,
    _check_rules,
    _validate,
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


DROP = object()  # the field is absent


def _edge(valid: list[object], invalid: list[object]) -> st.SearchStrategy[object]:
    """Values on both sides of a field's rules, valid ones three times as likely (so whole events pass too)."""
    ok = st.sampled_from([*valid, DROP] if None in valid else valid)
    return st.one_of(ok, ok, ok, st.sampled_from([*invalid, DROP] if None not in valid else invalid) | json_values)


LONGEST = "x" * 256  # the longest id or tag allowed
ID_OK, ID_BAD = ["a", LONGEST], ["x" * 257, "", None, 0, False, [], {}, 1.5]
OPT_OK, OPT_BAD = ["a", LONGEST, "", None], ["x" * 257, 0, False, [], {}, 1.5]
EDGES = {
    "event_id": _edge(ID_OK, ID_BAD),
    "user_id": _edge(["u1"], ["u2", *ID_BAD]),
    "item_id": _edge(ID_OK, ID_BAD),
    "shop_id": _edge(OPT_OK, OPT_BAD),
    "brand_id": _edge(OPT_OK, OPT_BAD),
    "category_id": _edge(OPT_OK, OPT_BAD),
    "ts": _edge([NOW, NOW + 600_000, 946_684_800_000], [NOW + 600_001, 946_684_799_999, True, 1.0, "1", None]),
    "event_type": _edge(["click", "cart", "fav", "buy"], ["Click", "", None, 0, False]),
    "scenario": _edge(["search", "recommend", "promotion", "other", "", None], ["x", 0, False, [], {}]),
    "tags": _edge([None, [], ["t"] * 64, [LONGEST, ""]], [["t"] * 65, ["x" * 257], [1], [None], "t", {}, False, 0]),
    "profile": _edge(
        [None, {}, {"age_group": 0, "gender": 1}, {"age_group": 127}, {"gender": None}, {"age_group": None}],
        [{"age_group": 128}, {"age_group": -1}, {"gender": True}, {"gender": 1.0}, {"age": 1}, [], "m", 0, False],
    ),
}


@settings(max_examples=3_000, deadline=None, derandomize=True, database=None)
@given(st.fixed_dictionaries({}, optional=EDGES), st.sampled_from([b"u1", b"u1", b"u1", b"u2", None]))
def test_fast_path_agrees_with_the_rules(overrides: dict[str, object], key: bytes | None) -> None:
    """The one-pass check accepts exactly what the rule-by-rule check accepts, with the same result."""
    doc = {k: v for k, v in {**GOOD, **overrides}.items() if v is not DROP}
    assert _validate(doc, key, NOW, 600_000) == _check_rules(doc, key, NOW, 600_000)


def test_vector_message_round_trip() -> None:
    vec = np.linspace(-1, 1, 256, dtype=np.float32)
    msg = VectorMessage("u1", "v1", vec, 12, "e12", NOW - 5, NOW)
    doc = json.loads(msg.to_bytes())
    assert doc["dim"] == 256 and doc["schema_version"] == 1
    back = decode_vector_message(msg.to_bytes())
    assert np.array_equal(back.vector, vec) and back.events_seen == 12 and back.last_event_ts == NOW - 5
