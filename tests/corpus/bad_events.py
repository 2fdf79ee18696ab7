"""A fixed corpus of bad ``behavior-events`` messages: one or more per kind of bad input.

Shared by the unit suite (straight through ``VectorUpdater.apply``) and the
integration suite (through a real broker and worker, read back from the DLQ),
so both check the same bytes against the same reason codes. Every value is
fixed bytes: timestamps are absolute (2100 is always in the future).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

USER = "corpus-u"
T = 1_700_000_000_000  # 2023-11-14, a valid past time
BASE: dict[str, Any] = {
    "event_id": "corpus-e1",
    "user_id": USER,
    "ts": T,
    "event_type": "click",
    "item_id": "i1",
    "shop_id": "s1",
    "category_id": "c1",
    "tags": ["t1"],
    "scenario": "search",
}


@dataclass(frozen=True)
class BadCase:
    name: str
    key: bytes | None
    value: bytes
    reason: str


def _doc(**changes: Any) -> bytes:
    return json.dumps({**BASE, **changes}).encode()


def _without(field: str) -> bytes:
    return json.dumps({k: v for k, v in BASE.items() if k != field}).encode()


_K = USER.encode()
_VALID = _doc()

BAD_EVENTS: tuple[BadCase, ...] = (
    # malformed JSON
    BadCase("truncated_json", _K, _VALID[:-7], "bad_json"),
    BadCase("trailing_garbage", _K, _VALID + b" }{", "bad_json"),
    BadCase("empty_value", _K, b"", "bad_json"),
    BadCase("deeply_nested", _K, b"[" * 60_000, "bad_json"),
    BadCase("int_too_many_digits", _K, _VALID.replace(str(T).encode(), b"9" * 5000), "bad_json"),
    BadCase("json_array", _K, b"[1, 2, 3]", "not_object"),
    BadCase("json_null", _K, b"null", "not_object"),
    BadCase("json_string", _K, b'"click"', "not_object"),
    # bytes that are not UTF-8
    BadCase("invalid_utf8_byte", _K, _VALID.replace(b'"i1"', b'"i\xff1"'), "not_utf8"),
    BadCase("latin1_text", _K, _doc(item_id="caf\u00e9").replace(b"\\u00e9", b"\xe9"), "not_utf8"),
    BadCase("utf8_encoded_surrogate", _K, _VALID.replace(b'"i1"', b'"\xed\xa0\x80"'), "not_utf8"),
    BadCase("lone_surrogate_escape", _K, _doc(event_id="e\ud800"), "bad_json"),
    BadCase("lone_surrogate_user_id", _K, _doc(user_id="\udc00"), "bad_json"),
    # missing fields
    *(
        BadCase(f"missing_{f}", _K, _without(f), "missing_field")
        for f in ("event_id", "user_id", "ts", "event_type", "item_id")
    ),
    BadCase("null_item_id", _K, _doc(item_id=None), "missing_field"),
    # mistyped fields, nested junk
    BadCase("ts_string", _K, _doc(ts="2023-11-14T00:00:00Z"), "bad_type"),
    BadCase("ts_float", _K, _doc(ts=float(T)), "bad_type"),
    BadCase("ts_bool", _K, _doc(ts=True), "bad_type"),
    BadCase("ts_nan", _K, _VALID.replace(str(T).encode(), b"NaN"), "bad_json"),  # NaN is not JSON
    BadCase("event_id_int", _K, _doc(event_id=42), "bad_type"),
    BadCase("item_id_nested", _K, _doc(item_id={"id": ["i1", {"deep": [None]}]}), "bad_type"),
    BadCase("shop_id_list", _K, _doc(shop_id=["s1"]), "bad_type"),
    BadCase("event_type_int", _K, _doc(event_type=1), "bad_type"),
    BadCase("scenario_false", _K, _doc(scenario=False), "bad_type"),
    BadCase("tags_string", _K, _doc(tags="t1,t2"), "bad_type"),
    BadCase("tags_ints", _K, _doc(tags=[1, 2]), "bad_type"),
    BadCase("tags_nested", _K, _doc(tags=[["t1"], {"t": 2}]), "bad_type"),
    # bad values: unknown enums, empty and huge values
    BadCase("unknown_event_type", _K, _doc(event_type="like"), "bad_value"),
    BadCase("event_type_case", _K, _doc(event_type="CLICK"), "bad_value"),
    BadCase("unknown_scenario", _K, _doc(scenario="tv"), "bad_value"),
    BadCase("empty_event_id", _K, _doc(event_id=""), "bad_value"),
    BadCase("empty_user_id", b"", _doc(user_id=""), "bad_value"),
    BadCase("overlong_item_id", _K, _doc(item_id="i" * 257), "bad_value"),
    BadCase("overlong_tag", _K, _doc(tags=["t" * 1000]), "bad_value"),
    BadCase("too_many_tags", _K, _doc(tags=[f"t{i}" for i in range(65)]), "bad_value"),
    BadCase("absurd_tag_list", _K, _doc(tags=["t"] * 12_000), "bad_value"),
    BadCase("value_over_64kib", _K, _doc(pad="x" * (64 * 1024)), "too_large"),
    BadCase("arbitrary_bytes_over_64kib", None, bytes(range(256)) * 300, "too_large"),
    BadCase("value_1_mb", _K, b'{"pad": "' + b"x" * 1_000_000 + b'"}', "too_large"),  # > the DLQ copy limit
    # timestamps
    BadCase("ts_year_2100", _K, _doc(ts=4_102_444_800_000), "ts_out_of_range"),
    BadCase("ts_before_2000", _K, _doc(ts=946_684_799_999), "ts_out_of_range"),
    BadCase("ts_seconds_not_ms", _K, _doc(ts=T // 1000), "ts_out_of_range"),
    BadCase("ts_negative", _K, _doc(ts=-1), "ts_out_of_range"),
    BadCase("ts_huge", _K, _doc(ts=10**30), "bad_type"),  # beyond 64 bits the decoder yields a float
    # message key must be the user id
    BadCase("key_other_user", b"someone-else", _VALID, "key_mismatch"),
    BadCase("key_missing", None, _VALID, "key_mismatch"),
    BadCase("key_case", USER.upper().encode(), _VALID, "key_mismatch"),
    BadCase("key_2_kib", b"k" * 2048, _VALID, "key_mismatch"),
)


def reason_counts() -> dict[str, int]:
    counts: dict[str, int] = {}
    for case in BAD_EVENTS:
        counts[case.reason] = counts.get(case.reason, 0) + 1
    return counts
