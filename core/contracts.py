"""The two data contracts: behavior events in, user vectors out (both versioned).

``parse_event`` never raises on bad input: it returns a :class:`Rejection`
with a stable reason code, so one bad event costs one DLQ message and nothing
else.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import orjson

#: The behavior vocabulary of the events contract (the model's property codes index these tuples).
EVENT_TYPES: tuple[str, ...] = ("click", "cart", "fav", "buy")
SCENARIOS: tuple[str, ...] = ("other", "search", "recommend", "promotion")

EVENTS_SCHEMA_VERSION = 1
VECTORS_SCHEMA_VERSION = 1

MAX_EVENT_BYTES = 64 * 1024
MAX_ID_CHARS = 256
MAX_TAGS_ACCEPTED = 64
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
REQUIRED_FIELDS = ("event_id", "user_id", "ts", "event_type", "item_id")
ID_FIELDS = ("event_id", "user_id", "item_id", "shop_id", "brand_id", "category_id")
_EVENT_TYPE_SET = frozenset(EVENT_TYPES)
_SCENARIO_OR_EMPTY = frozenset((*SCENARIOS, ""))  # "" (like null) means the default scenario

#: The optional user profile an event may carry: ``{"age_group": int | null, "gender": int | null}``.
#: Codes are the producer's (the model was trained on the same coding, see docs/data-contract.md);
#: null or absent = unknown. A code the model has no row for is served as unknown, not rejected:
#: the contract does not depend on a model version.
PROFILE_FIELDS: tuple[str, ...] = ("age_group", "gender")
MAX_PROFILE_CODE = 127
UNKNOWN_CODE = -1
Profile = tuple[int, int]
UNKNOWN_PROFILE: Profile = (UNKNOWN_CODE, UNKNOWN_CODE)

#: A rejected message goes to the DLQ whole up to these sizes (4x the event limit), else truncated with
#: its length and SHA-256 in headers: the DLQ producer (and the broker) must accept the record, or one
#: huge message would crash the worker, and again on every restart.
DLQ_MAX_VALUE_BYTES = 4 * MAX_EVENT_BYTES
DLQ_MAX_KEY_BYTES = 1024
DLQ_MAX_DETAIL_CHARS = 500

REJECT_REASONS = (
    "too_large",
    "not_utf8",
    "bad_json",
    "not_object",
    "missing_field",
    "bad_type",
    "bad_value",
    "ts_out_of_range",
    "key_mismatch",
)
#: Not a contract violation: the event is valid, but its user's stored state does not decode, so it
#: cannot be applied without erasing the user's history (docs/guarantees.md, "A state that does not decode").
STATE_UNDECODABLE = "state_undecodable"


class BehaviorEvent(NamedTuple):
    """A validated behavior (a NamedTuple: the worker makes one per event, so construction cost counts)."""

    event_id: str
    user_id: str
    ts: int
    event_type: str
    item_id: str
    shop_id: str = ""
    brand_id: str = ""
    category_id: str = ""
    tags: tuple[str, ...] = ()
    scenario: str = "other"
    #: (age_group, gender), -1 = unknown; None: the event carries no profile (the user's stays as it was)
    profile: Profile | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "ts": self.ts,
            "event_type": self.event_type,
            "item_id": self.item_id,
            "shop_id": self.shop_id,
            "brand_id": self.brand_id,
            "category_id": self.category_id,
            "tags": list(self.tags),
            "scenario": self.scenario,
        }
        if self.profile is not None:
            codes = zip(PROFILE_FIELDS, self.profile, strict=True)
            doc["profile"] = {name: (None if code < 0 else code) for name, code in codes}
        return doc


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str


def parse_event(
    key: bytes | None, value: bytes | None, *, now_ms: int | None = None, max_future_ms: int = 600_000
) -> BehaviorEvent | Rejection:
    """Validate one raw ``behavior-events`` message against contract v1."""
    if not value:
        return Rejection("bad_json", "empty message value (null or zero bytes)")
    if len(value) > MAX_EVENT_BYTES:
        return Rejection("too_large", f"{len(value)} bytes > {MAX_EVENT_BYTES}")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:  # also lone surrogates, NaN, ints beyond 64 bits, nesting > 1024
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as utf8_exc:
            return Rejection("not_utf8", str(utf8_exc))
        return Rejection("bad_json", str(exc)[:200])
    if not isinstance(doc, dict):
        return Rejection("not_object", f"top-level JSON is {type(doc).__name__}")
    return _validate(doc, key, now_ms if now_ms is not None else int(time.time() * 1000), max_future_ms)


def _validate(doc: dict[str, Any], key: bytes | None, now_ms: int, max_future_ms: int) -> BehaviorEvent | Rejection:
    """A valid event in one pass of cheap checks (the worker's common case, once per event);
    anything else goes through :func:`_check_rules`, which finds the first broken rule and its reason.

    The fast path accepts exactly what the rules accept: orjson yields only exact ``str``/``int``/
    ``list``/... types (no subclasses), so ``type(x) is str`` is ``isinstance(x, str)`` here and
    ``type(ts) is int`` excludes ``bool``.
    """
    get = doc.get
    event_id, user_id, item_id = get("event_id"), get("user_id"), get("item_id")
    ts, event_type, tags = get("ts"), get("event_type"), get("tags")
    shop_id, brand_id, category_id = get("shop_id"), get("brand_id"), get("category_id")
    scenario, profile = get("scenario"), get("profile")
    if (
        type(event_id) is str
        and type(user_id) is str
        and type(item_id) is str
        and type(ts) is int
        and type(event_type) is str
        and 0 < len(event_id) <= MAX_ID_CHARS
        and 0 < len(user_id) <= MAX_ID_CHARS
        and 0 < len(item_id) <= MAX_ID_CHARS
        and (shop_id is None or (type(shop_id) is str and len(shop_id) <= MAX_ID_CHARS))
        and (brand_id is None or (type(brand_id) is str and len(brand_id) <= MAX_ID_CHARS))
        and (category_id is None or (type(category_id) is str and len(category_id) <= MAX_ID_CHARS))
        and MIN_TS_MS <= ts <= now_ms + max_future_ms
        and event_type in _EVENT_TYPE_SET
        and (scenario is None or (type(scenario) is str and scenario in _SCENARIO_OR_EMPTY))
        and (tags is None or _plain_tags(tags))
        and (profile is None or _plain_profile(profile))
        and key is not None
        and key == user_id.encode("utf-8")
    ):
        return BehaviorEvent(  # positional: the keyword form costs more, once per event
            event_id, user_id, ts, event_type, item_id, shop_id or "", brand_id or "", category_id or "",
            () if tags is None else tuple(tags), scenario or "other",
            None if profile is None else _profile_codes(profile),
        )
    return _check_rules(doc, key, now_ms, max_future_ms)


def _plain_tags(tags: object) -> bool:
    """A tag list the rules accept: a list of at most MAX_TAGS_ACCEPTED strings, none too long."""
    if type(tags) is not list or len(tags) > MAX_TAGS_ACCEPTED:
        return False
    for tag in tags:  # noqa: SIM110 - a plain loop: all() over a generator costs more, once per event
        if type(tag) is not str or len(tag) > MAX_ID_CHARS:
            return False
    return True


def _plain_profile(profile: object) -> bool:
    """A profile object the rules accept: only known fields, each null or an int code in range."""
    if type(profile) is not dict:
        return False
    for name, code in profile.items():
        if name not in PROFILE_FIELDS or not (code is None or (type(code) is int and 0 <= code <= MAX_PROFILE_CODE)):
            return False
    return True


def _profile_codes(profile: dict[str, Any]) -> Profile:
    age, gender = profile.get("age_group"), profile.get("gender")
    return (UNKNOWN_CODE if age is None else age, UNKNOWN_CODE if gender is None else gender)


def _check_rules(doc: dict[str, Any], key: bytes | None, now_ms: int, max_future_ms: int) -> BehaviorEvent | Rejection:
    """Each contract rule in order: the first broken one is the rejection's reason."""
    for name in REQUIRED_FIELDS:
        if doc.get(name) is None:
            return Rejection("missing_field", name)
    ids: dict[str, str] = {}
    for name in ID_FIELDS:
        checked = _id_field(name, doc.get(name), required=name in REQUIRED_FIELDS)
        if isinstance(checked, Rejection):
            return checked
        ids[name] = checked
    ts = doc["ts"]
    if isinstance(ts, bool) or not isinstance(ts, int):
        return Rejection("bad_type", "ts must be an integer (epoch ms)")
    if ts < MIN_TS_MS or ts > now_ms + max_future_ms:
        return Rejection("ts_out_of_range", f"ts {ts} outside [2000-01-01, now + {max_future_ms} ms]")
    event_type = _choice("event_type", doc["event_type"], EVENT_TYPES)
    if isinstance(event_type, Rejection):
        return event_type
    raw_scenario = doc.get("scenario")
    scenario = _choice("scenario", "other" if raw_scenario in (None, "") else raw_scenario, SCENARIOS)
    if isinstance(scenario, Rejection):
        return scenario
    tags = _tags(doc.get("tags"))
    if isinstance(tags, Rejection):
        return tags
    profile = _profile(doc.get("profile"))
    if isinstance(profile, Rejection):
        return profile
    if key is None:
        return Rejection("key_mismatch", "message has no key; produce it with key = user_id")
    if key != ids["user_id"].encode("utf-8"):
        return Rejection("key_mismatch", "message key differs from user_id")
    return BehaviorEvent(
        event_id=ids["event_id"],
        user_id=ids["user_id"],
        ts=ts,
        event_type=event_type,
        item_id=ids["item_id"],
        shop_id=ids["shop_id"],
        brand_id=ids["brand_id"],
        category_id=ids["category_id"],
        tags=tags,
        scenario=scenario,
        profile=profile,
    )


def _profile(raw: object) -> Profile | Rejection | None:
    """The event's profile codes (None: it carries none), or why it is refused."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        return Rejection("bad_type", "profile must be an object {age_group, gender}")
    for name, code in raw.items():
        if name not in PROFILE_FIELDS:
            return Rejection("bad_value", f"profile field {str(name)[:40]!r} not in {PROFILE_FIELDS}")
        if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
            return Rejection("bad_type", f"profile.{name} must be an integer code or null")
        if code is not None and not 0 <= code <= MAX_PROFILE_CODE:
            return Rejection("bad_value", f"profile.{name} {code} outside 0..{MAX_PROFILE_CODE}")
    return _profile_codes(raw)


def _id_field(name: str, raw: object, *, required: bool) -> str | Rejection:
    if raw is None:
        raw = ""
    if not isinstance(raw, str):
        return Rejection("bad_type", f"{name} must be a string")
    problem = _string_problem(raw)
    if problem:
        return Rejection("bad_value", f"{name} {problem}")
    if required and not raw:
        return Rejection("bad_value", f"{name} is empty")
    return raw


def _choice(name: str, raw: object, allowed: tuple[str, ...]) -> str | Rejection:
    if not isinstance(raw, str):
        return Rejection("bad_type", f"{name} must be a string")
    if raw not in allowed:
        return Rejection("bad_value", f"{name} {raw[:40]!r} not in {allowed}")
    return raw


def _tags(raw: object) -> tuple[str, ...] | Rejection:
    if raw is None:
        return ()
    if type(raw) is not list:
        return Rejection("bad_type", "tags must be a list of strings")
    for tag in raw:  # one plain loop: this runs for every event
        if type(tag) is not str:
            return Rejection("bad_type", "tags must be a list of strings")
    if len(raw) > MAX_TAGS_ACCEPTED:
        return Rejection("bad_value", f"{len(raw)} tags > {MAX_TAGS_ACCEPTED}")
    for tag in raw:
        if len(tag) > MAX_ID_CHARS:
            return Rejection("bad_value", f"tag longer than {MAX_ID_CHARS} chars")
    return tuple(raw)


def _string_problem(text: str) -> str:
    """Why a string can't be an id ('' if it can).

    Every string here came out of orjson, which refuses lone surrogates (``"\\ud800"``):
    each is valid Unicode, so hashing and key encoding can't fail on it.
    """
    if len(text) > MAX_ID_CHARS:
        return f"longer than {MAX_ID_CHARS} chars"
    return ""


def dlq_record(
    key: bytes | None, value: bytes | None, rejection: Rejection, topic: str, partition: int, offset: int
) -> tuple[bytes | None, bytes, dict[str, bytes]]:
    """(key, value, headers) of the ``behavior-events-dlq`` message for one rejected event.

    The original bytes, untouched, with why and where in headers; a value or key too large to
    forward safely is cut to its first bytes and ``dupn.truncated`` / ``dupn.sha256`` say so.
    """
    headers = {
        "dupn.reason": rejection.reason.encode(),
        "dupn.detail": rejection.detail[:DLQ_MAX_DETAIL_CHARS].encode("utf-8", "replace"),
        "dupn.source.topic": topic.encode(),
        "dupn.source.partition": str(partition).encode(),
        "dupn.source.offset": str(offset).encode(),
    }
    body = value or b""
    truncated = []
    if len(body) > DLQ_MAX_VALUE_BYTES:
        headers["dupn.sha256"] = hashlib.sha256(body).hexdigest().encode()
        truncated.append(f"value:{len(body)}")
        body = body[:DLQ_MAX_VALUE_BYTES]
    if key is not None and len(key) > DLQ_MAX_KEY_BYTES:
        truncated.append(f"key:{len(key)}")
        key = key[:DLQ_MAX_KEY_BYTES]
    if truncated:
        headers["dupn.truncated"] = ",".join(truncated).encode()
    return key, body, headers


@dataclass(frozen=True)
class VectorMessage:
    """A ``user-vectors`` message, contract v1."""

    user_id: str
    model_version: str
    vector: np.ndarray
    events_seen: int
    last_event_id: str
    last_event_ts: int
    updated_at: int

    @property
    def dim(self) -> int:
        return int(self.vector.shape[0])

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": VECTORS_SCHEMA_VERSION,
            "user_id": self.user_id,
            "model_version": self.model_version,
            "dim": self.dim,
            "vector_b64": base64.b64encode(np.asarray(self.vector, "<f4").tobytes()).decode("ascii"),
            "events_seen": self.events_seen,
            "last_event_id": self.last_event_id,
            "last_event_ts": self.last_event_ts,
            "updated_at": self.updated_at,
        }

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json())


def newer_vector(current: VectorMessage | None, candidate: VectorMessage) -> bool:
    """Whether a reader keeping one vector per user should replace ``current`` by ``candidate``.

    ``events_seen`` is the vector's version: it only grows along the user's event log, so a message
    with fewer events seen is older however late it arrives (a zombie owner's late write); equal
    versions: the later message wins (a rewrite of the same state, or a re-publication by a new model)."""
    return current is None or candidate.events_seen >= current.events_seen


def decode_vector_message(raw: bytes | str | dict[str, Any]) -> VectorMessage:
    """Decode a ``user-vectors`` message value (bytes, text or parsed JSON)."""
    doc = raw if isinstance(raw, dict) else orjson.loads(raw)
    vector = np.frombuffer(base64.b64decode(doc["vector_b64"]), dtype="<f4").astype(np.float32)
    if vector.shape[0] != int(doc["dim"]):
        raise ValueError(f"vector has {vector.shape[0]} floats, dim says {doc['dim']}")
    return VectorMessage(
        user_id=str(doc["user_id"]),
        model_version=str(doc["model_version"]),
        vector=vector,
        events_seen=int(doc["events_seen"]),
        last_event_id=str(doc["last_event_id"]),
        last_event_ts=int(doc["last_event_ts"]),
        updated_at=int(doc["updated_at"]),
    )
