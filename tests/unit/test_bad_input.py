"""Bad input never crashes the updater, is rejected with its reason and position, and leaves good input alone.

Property-based (hypothesis, derandomized so CI sees the same inputs every run):
raw (key, value) messages made by mutating a valid event (dropped or mistyped
fields, nested junk, huge or empty strings, lone surrogates, non-UTF-8 bytes,
broken JSON, absurd tag lists, timestamp extremes, wrong keys) and arbitrary
bytes go through ``parse_event`` and through ``VectorUpdater.apply`` mixed
into a fixed stream of valid events. Together the property tests below draw
10,000 examples (``max_examples`` is set on each). The fixed corpus in
``tests/corpus/bad_events.py`` runs through the same checks.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.contracts import (
    DLQ_MAX_DETAIL_CHARS,
    DLQ_MAX_KEY_BYTES,
    DLQ_MAX_VALUE_BYTES,
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    MAX_ID_CHARS,
    MAX_TAGS_ACCEPTED,
    REJECT_REASONS,
    SCENARIOS,
    Rejection,
    dlq_record,
    parse_event,
)
from encoder.streaming import StreamingEncoder, UpdatePolicy
from state.codec import decode_state, encode_state
from state.user_state import UserState
from streams.updater import BatchResult, Incoming, VectorUpdater
from tests.corpus.bad_events import BAD_EVENTS
from tests.support.factories import tiny_model

T0 = 1_700_000_000_000
FAR_FUTURE = 4_102_444_800_000  # 2100-01-01: beyond any "now + max_future_ms" this suite can see
def property_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        derandomize=True,  # the same inputs on every run and machine
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
BASE: dict[str, Any] = {
    "event_id": "h-e1",
    "user_id": "hu",
    "ts": T0,
    "event_type": "cart",
    "item_id": "i7",
    "shop_id": "s2",
    "brand_id": "b3",
    "category_id": "c4",
    "tags": ["t1", "t2"],
    "scenario": "recommend",
}
REQUIRED_IDS = ("event_id", "user_id", "item_id")
OPTIONAL_IDS = ("shop_id", "brand_id", "category_id")
Bad = tuple[bytes | None, bytes, str | None]
"""(key, value, expected reason); None = any known reason (arbitrary input has no single right answer)."""

# -- strategies: one fault per message, with the reason it must be rejected for -----------------

finite = st.floats(allow_nan=False, allow_infinity=False)  # NaN/Infinity are not JSON: bad_json, tested apart
json_scalars = st.none() | st.booleans() | st.integers() | finite | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
#: Nested junk: containers that no field accepts (a list of only strings is a valid tag list).
junk = st.dictionaries(st.text(max_size=8), json_values, max_size=4) | st.lists(
    json_values, min_size=1, max_size=5
).filter(lambda xs: not all(isinstance(x, str) for x in xs))
not_a_string = st.integers() | finite | st.booleans() | junk
surrogate = st.integers(0xD800, 0xDFFF).map(chr)
long_text = st.builds(
    lambda s, n: (s * n)[:n], st.text(min_size=1, max_size=4), st.integers(MAX_ID_CHARS + 1, 3_000)
)
bad_utf8 = st.sampled_from(
    [b"\xff", b"\xfe\xff", b"\x80", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80"]
)
#: every field the events contract reads: BASE's plus the optional profile (an extra field must be none of them)
CONTRACT_FIELDS = frozenset({*BASE, "profile"})
extra_fields = st.dictionaries(
    st.text(min_size=1, max_size=8).filter(lambda k: k not in CONTRACT_FIELDS), json_scalars, max_size=2
)


def _encode(doc: dict[str, Any], key: bytes | None = b"hu") -> tuple[bytes | None, bytes]:
    return key, json.dumps(doc).encode()


@st.composite
def doc_fault(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid event with exactly one field fault (plus ignorable unknown fields)."""
    doc = {**BASE, **draw(extra_fields)}
    kind = draw(st.sampled_from(FAULTS))
    reason = kind(draw, doc)
    return doc, reason


def _missing(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    name = draw(st.sampled_from(["event_id", "user_id", "ts", "event_type", "item_id"]))
    if draw(st.booleans()):
        del doc[name]
    else:
        doc[name] = None
    return "missing_field"


def _mistyped_id(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    doc[draw(st.sampled_from(REQUIRED_IDS + OPTIONAL_IDS))] = draw(not_a_string)
    return "bad_type"


def _mistyped_ts(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    doc["ts"] = draw(st.text(max_size=20) | finite | st.booleans() | junk)
    return "bad_type"


def _mistyped_enum(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    doc[draw(st.sampled_from(["event_type", "scenario"]))] = draw(not_a_string)
    return "bad_type"


def _mistyped_tags(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    not_a_list = st.one_of(
        st.text(max_size=10), st.integers(), st.booleans(), st.dictionaries(st.text(max_size=4), json_values)
    )
    with_junk = st.lists(st.text(max_size=4), max_size=4).flatmap(
        lambda good: st.lists(not_a_string, min_size=1, max_size=3).map(lambda bad: good + bad)
    )
    doc["tags"] = draw(not_a_list | with_junk)
    return "bad_type"


def _unknown_enum(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    name = draw(st.sampled_from(["event_type", "scenario"]))
    allowed = EVENT_TYPES if name == "event_type" else (*SCENARIOS, "")
    doc[name] = draw(st.text(max_size=12).map(lambda t: t + "?" if t in allowed else t))
    return "bad_value"


def _bad_id_value(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    name = draw(st.sampled_from(REQUIRED_IDS + OPTIONAL_IDS))
    choice = draw(st.sampled_from(["empty", "long", "surrogate"] if name in REQUIRED_IDS else ["long", "surrogate"]))
    if choice == "empty":
        doc[name] = ""
    elif choice == "long":
        doc[name] = draw(long_text)
    else:  # a JSON-escaped lone surrogate is not valid JSON text for the decoder
        head, tail = draw(st.text(max_size=6)), draw(st.text(max_size=6))
        doc[name] = head + draw(surrogate) + tail
        return "bad_json"
    return "bad_value"


def _absurd_tags(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    choice = draw(st.sampled_from(["many", "long", "surrogate"]))
    if choice == "many":
        doc["tags"] = [f"t{i % 7}" for i in range(draw(st.integers(MAX_TAGS_ACCEPTED + 1, 5_000)))]
    elif choice == "long":
        doc["tags"] = [*draw(st.lists(st.text(max_size=5), max_size=3)), draw(long_text)]
    else:
        doc["tags"] = ["ok", "x" + draw(surrogate)]
        return "bad_json"
    return "bad_value"


def _ts_extreme(draw: st.DrawFn, doc: dict[str, Any]) -> str:
    ts = draw(st.integers(max_value=946_684_799_999) | st.integers(min_value=FAR_FUTURE, max_value=10**40))
    doc["ts"] = ts
    # beyond 64 bits the JSON decoder yields a float: not an integer at all
    return "ts_out_of_range" if -(2**63) <= ts < 2**64 else "bad_type"


FAULTS = (
    _missing, _mistyped_id, _mistyped_ts, _mistyped_enum, _mistyped_tags,
    _unknown_enum, _bad_id_value, _absurd_tags, _ts_extreme,
)


@st.composite
def bad_message(draw: st.DrawFn) -> Bad:
    kind = draw(st.sampled_from(["field", "key", "bytes", "json", "not_object", "too_large", "arbitrary"]))
    if kind == "field":
        doc, reason = draw(doc_fault())
        return (*_encode(doc), reason)
    valid = json.dumps({**BASE, **draw(extra_fields)}).encode()
    if kind == "key":
        key = draw(st.none() | st.binary(max_size=12).filter(lambda k: k != b"hu"))
        return key, valid, "key_mismatch"
    if kind == "bytes":
        at = draw(st.integers(0, len(valid)))
        return b"hu", valid[:at] + draw(bad_utf8) + valid[at:], "not_utf8"
    if kind == "json":
        return b"hu", draw(_broken_json(valid)), "bad_json"
    if kind == "not_object":
        value = draw(json_scalars | st.lists(json_values, max_size=4))
        return b"hu", json.dumps(value).encode(), "not_object"
    if kind == "too_large":
        head = draw(st.sampled_from([valid, b"", b"\xff\xfe", b"[" * 10]))
        return b"hu", head + b" " * (MAX_EVENT_BYTES + 1 - len(head) + draw(st.integers(0, 4096))), "too_large"
    key = draw(st.none() | st.just(b"hu") | st.binary(max_size=8))
    return key, draw(st.binary(max_size=400) | json_values.map(lambda v: json.dumps(v).encode())), None


def _broken_json(valid: bytes) -> st.SearchStrategy[bytes]:
    truncated = st.integers(0, len(valid) - 1).map(lambda n: valid[:n])  # any proper prefix of an object
    trailing = st.sampled_from([b"}", b",", b"x", b" {}", b"]", b"\x00"]).map(lambda junk_: valid + junk_)
    nested = st.integers(1_000, MAX_EVENT_BYTES // 5).map(lambda depth: b'{"a":' * depth)  # deep, <= 64 KiB
    return truncated | trailing | nested


# -- the fixed valid stream the bad messages are mixed into --------------------------------------

ENCODER = StreamingEncoder(tiny_model(), "tiny-0")
POLICY = UpdatePolicy("incremental", 3)


def _ev(user: str, i: int, ts: int, **extra: Any) -> dict[str, Any]:
    return {"event_id": f"{user}-e{i}", "user_id": user, "ts": ts, "event_type": EVENT_TYPES[i % 4],
            "item_id": f"i{i % 5}", "tags": [f"t{i % 3}"], **extra}


def _valid_stream() -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """Users with stored state, a redelivery, a duplicate id, an out-of-order event; and their stored states."""
    prior = [_ev("va", i, T0 + i * 60_000) for i in range(4)]
    res = VectorUpdater(ENCODER, POLICY).apply(
        [Incoming(0, 100 + i, b"va", json.dumps(e).encode()) for i, e in enumerate(prior)], lambda _u, _m: None
    )
    stored = {up.state.user_id: encode_state(up.state) for up in res.updates}  # va at source offset 103
    stream = [
        prior[3],  # redelivered: partition 0 offset 103 is already in va's state
        _ev("va", 4, T0 + 300_000),
        _ev("vb", 0, T0 + 10_000),
        _ev("vc", 0, T0 + 20_000, scenario="search"),
        _ev("va", 5, T0 + 400_000),
        _ev("vb", 1, T0 + 50_000),
        _ev("vb", 0, T0 + 60_000),  # repeated event id: applied once
        _ev("vc", 1, T0 + 5_000),  # older than vc's previous event: applied in arrival order
        _ev("vb", 2, T0 + 90_000),
        _ev("va", 6, T0 + 500_000),
        _ev("vc", 2, T0 + 600_000),
    ]
    return stream, stored


STREAM, STORED = _valid_stream()
VALID_OFFSETS = [103] + [1_000 * i for i in range(1, len(STREAM))]
VALID = [Incoming(0, off, str(e["user_id"]).encode(), json.dumps(e).encode()) for off, e in zip(VALID_OFFSETS, STREAM)]


def load(user: str, _msg: Incoming) -> UserState | None:
    return decode_state(user, STORED[user]) if user in STORED else None


def outcome(res: BatchResult) -> dict[str, tuple[bytes, bytes, int, int, int]]:
    """Per user: state bytes and vector bytes (wall-clock ``updated_at`` zeroed), last offset, applied count."""
    out = {}
    for up in res.updates:
        up.state.updated_at = 0
        out[up.state.user_id] = (
            encode_state(up.state), up.vector.vector.tobytes(), up.vector.events_seen,
            up.last_message.offset, up.applied,
        )
    return out


@functools.cache
def valid_alone() -> tuple[dict[str, tuple[bytes, bytes, int, int, int]], int]:
    res = VectorUpdater(ENCODER, POLICY).apply(VALID, load)
    assert not res.rejections
    return outcome(res), res.duplicates


def mix(
    bad: Sequence[Bad], slots: Sequence[int], partitions: Sequence[int]
) -> tuple[list[Incoming], list[tuple[Incoming, str | None]]]:
    """Insert bad message i before valid message ``slots[i]``, at an offset between its neighbours'.

    Returns the batch and, in batch order, each bad message with the reason it must get.
    """
    before: dict[int, list[int]] = {}
    for i, slot in enumerate(slots):
        before.setdefault(slot, []).append(i)
    batch: list[Incoming] = []
    bad_in_order: list[tuple[Incoming, str | None]] = []
    for pos in range(len(VALID) + 1):
        for j, i in enumerate(before.get(pos, [])):
            key, value, reason = bad[i]
            msg = Incoming(partitions[i], (VALID[pos - 1].offset if pos else 0) + 1 + j, key, value)
            batch.append(msg)
            bad_in_order.append((msg, reason))
        if pos < len(VALID):
            batch.append(VALID[pos])
    return batch, bad_in_order


def check_mixed(bad: Sequence[Bad], slots: Sequence[int], partitions: Sequence[int]) -> None:
    batch, bad_in_order = mix(bad, slots, partitions)
    res = VectorUpdater(ENCODER, POLICY).apply(batch, load)  # must not raise
    assert len(res.rejections) == len(bad_in_order)
    for (msg, rejection), (sent, want) in zip(res.rejections, bad_in_order, strict=True):
        assert msg is sent, "the rejection carries the original message: key, bytes, partition, offset"
        assert isinstance(rejection, Rejection) and rejection.reason in REJECT_REASONS and rejection.detail
        assert want is None or rejection.reason == want, (rejection, want, sent)
    expected, duplicates = valid_alone()
    assert outcome(res) == expected, "valid users' states and vectors are bit-identical to the valid events alone"
    assert res.duplicates == duplicates


# -- properties ------------------------------------------------------------------------------------


@property_settings(6_500)
@given(bad_message())
def test_each_fault_is_rejected_with_its_reason(msg: Bad) -> None:
    key, value, want = msg
    got = parse_event(key, value)
    assert isinstance(got, Rejection), got
    assert got.reason in REJECT_REASONS
    assert want is None or got.reason == want, (got, want)


@property_settings(1_500)
@given(st.binary(max_size=2_000), st.none() | st.binary(max_size=40))
def test_arbitrary_bytes_never_raise(value: bytes, key: bytes | None) -> None:
    got = parse_event(key, value)
    assert not isinstance(got, Rejection) or got.reason in REJECT_REASONS


@property_settings(2_000)
@given(st.data())
def test_updater_rejects_bad_messages_and_leaves_valid_users_bit_identical(data: st.DataObject) -> None:
    bad = data.draw(st.lists(bad_message(), min_size=1, max_size=6), label="bad")
    n = len(bad)
    slots = data.draw(st.lists(st.integers(0, len(VALID)), min_size=n, max_size=n), label="slots")
    partitions = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n), label="partitions")
    check_mixed(bad, slots, partitions)


# -- the fixed corpus --------------------------------------------------------------------------------


def test_corpus_has_every_reason_and_a_value_over_64_kib() -> None:
    assert {c.reason for c in BAD_EVENTS} == set(REJECT_REASONS)
    assert any(len(c.value) > MAX_EVENT_BYTES for c in BAD_EVENTS)
    assert len({c.name for c in BAD_EVENTS}) == len(BAD_EVENTS)


def test_corpus_through_the_updater() -> None:
    n = len(BAD_EVENTS)
    check_mixed(
        [(c.key, c.value, c.reason) for c in BAD_EVENTS],
        [i % (len(VALID) + 1) for i in range(n)],
        [i % 4 for i in range(n)],
    )


def test_the_valid_stream_exercises_redelivery_duplicates_and_order() -> None:
    expected, duplicates = valid_alone()
    assert duplicates == 2  # the redelivered offset and the repeated event id
    assert {u: row[2] for u, row in expected.items()} == {"va": 7, "vb": 3, "vc": 3}


def test_dlq_record_keeps_original_bytes_and_cuts_only_what_cannot_be_forwarded() -> None:
    why = Rejection("bad_json", "Expecting value " + "x" * 1_000)
    key, value, headers = dlq_record(b"u1", b"{not json", why, "behavior-events", 3, 42)
    assert (key, value) == (b"u1", b"{not json")
    assert headers == {
        "dupn.reason": b"bad_json",
        "dupn.detail": why.detail[:DLQ_MAX_DETAIL_CHARS].encode(),
        "dupn.source.topic": b"behavior-events",
        "dupn.source.partition": b"3",
        "dupn.source.offset": b"42",
    }
    at_limit = b"v" * DLQ_MAX_VALUE_BYTES
    assert dlq_record(None, at_limit, why, "t", 0, 0)[:2] == (None, at_limit)
    huge, long_key = b"h" * (DLQ_MAX_VALUE_BYTES + 1), b"k" * (DLQ_MAX_KEY_BYTES + 1)
    key, value, headers = dlq_record(long_key, huge, why, "t", 0, 0)
    assert key == long_key[:DLQ_MAX_KEY_BYTES] and value == huge[:DLQ_MAX_VALUE_BYTES]
    assert headers["dupn.truncated"] == f"value:{len(huge)},key:{len(long_key)}".encode()
    assert headers["dupn.sha256"] == hashlib.sha256(huge).hexdigest().encode()
    assert dlq_record(b"u1", None, why, "t", 0, 0)[1] == b""
