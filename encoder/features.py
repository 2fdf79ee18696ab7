"""Model-input encoding of one behavior: hashed ids, property codes and time buckets.

Numpy only (no torch), because the state store keeps behaviors in exactly this
form: a fixed-size record per behavior, so a user's window is one contiguous
array that the encoder consumes without re-parsing anything.

Ids are stored as 32-bit hashes, not as bucket indices, so a checkpoint with
other bucket counts (a model rollout) can reuse the same stored window.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Iterable, Sequence
from itertools import chain
from operator import itemgetter

import numpy as np

from core.contracts import EVENT_TYPES, SCENARIOS

MAX_TAGS = 6

#: Upper edges (ms) of the time buckets; the seed buckets behavior time into
#: windows ("within 1 minute, 5 minutes, half an hour, ...").
TIME_BUCKET_EDGES_MS: tuple[int, ...] = (
    10_000,  # 10 s
    60_000,  # 1 min
    300_000,  # 5 min
    1_800_000,  # 30 min
    7_200_000,  # 2 h
    21_600_000,  # 6 h
    86_400_000,  # 1 d
    259_200_000,  # 3 d
    604_800_000,  # 7 d
    2_592_000_000,  # 30 d
)
#: Bucket 0 is "no previous behavior" (gap of a first event); 1.. are the windows.
N_TIME_BUCKETS = len(TIME_BUCKET_EDGES_MS) + 2
_EDGES = np.asarray(TIME_BUCKET_EDGES_MS, dtype=np.int64)

BEHAVIOR_DTYPE = np.dtype(
    [
        ("ts", "<i8"),
        ("event_hash", "<u8"),
        ("item", "<u4"),
        ("shop", "<u4"),
        ("brand", "<u4"),
        ("category", "<u4"),
        ("tags", "<u4", (MAX_TAGS,)),
        ("event_type", "u1"),
        ("scenario", "u1"),
        ("gap_bucket", "u1"),
    ]
)
"""One behavior as stored and as fed to the encoder (59 bytes).

``gap_bucket`` is the bucketed time since the user's previous behavior, fixed
when the behavior is appended. It is a gate property that never changes later,
which is what makes an incremental LSTM step valid (ages relative to *now*
belong to the attention instead)."""
_RECORD_BYTES = np.dtype((np.void, BEHAVIOR_DTYPE.itemsize))  # a record as opaque bytes, for plain copies


def hash_id(value: str) -> int:
    """Stable 32-bit hash of an id; 0 is reserved for "absent"."""
    if not value:
        return 0
    return (zlib.crc32(value.encode("utf-8")) % 0xFFFF_FFFF) + 1


def hash_event_id(value: str) -> int:
    """64-bit hash of an event id, for duplicate detection within a window."""
    raw = value.encode("utf-8")
    return (zlib.adler32(raw) << 32) | zlib.crc32(raw)


_ID_HASHES: dict[str, int] = {"": 0}
_ID_HASHES_MAX = 1 << 16


def hash_ids(values: Sequence[str]) -> list[int]:
    """:func:`hash_id` of each value, memoised.

    A stream repeats the same shops, brands, categories, tags and popular items, and a
    dict lookup costs a fifth of encoding and hashing the string again. The memo is
    emptied when it reaches 65,536 ids (~20 MB with 256-character ASCII ids; up to ~70 MB
    if they are all characters outside the BMP, 4 bytes each).
    """
    memo = _ID_HASHES
    try:
        return list(map(memo.__getitem__, values))  # all known: one C-level pass
    except KeyError:
        pass
    out = []
    for value in values:
        hashed = memo.get(value)
        if hashed is None:
            hashed = hash_id(value)
            if len(memo) >= _ID_HASHES_MAX:
                memo.clear()
                memo[""] = 0
            memo[value] = hashed
        out.append(hashed)
    return out


def bucketize(hashes: np.ndarray, buckets: int) -> np.ndarray:
    """Map 32-bit id hashes to embedding rows; hash 0 (absent) → row 0."""
    h = hashes.astype(np.int64)
    return np.where(h == 0, 0, h % (buckets - 1) + 1)


def query_bucket(query: str | None, buckets: int) -> int:
    """Query id → embedding row (``buckets`` rows); 0 = no query."""
    if not query:
        return 0
    return int(bucketize(np.array([hash_id(query)], dtype=np.uint32), buckets)[0])


def time_bucket(delta_ms: np.ndarray | int) -> np.ndarray:
    """Bucket a time difference (ms, clamped at 0) into 1..N_TIME_BUCKETS-1."""
    d = np.maximum(np.asarray(delta_ms, dtype=np.int64), 0)
    return (np.searchsorted(_EDGES, d, side="right") + 1).astype(np.uint8)


def gap_bucket(ts_ms: int, prev_ts_ms: int | None) -> int:
    """Gate property "time since the previous behavior"; 0 for a first behavior."""
    if prev_ts_ms is None:
        return 0
    return bisect.bisect_right(TIME_BUCKET_EDGES_MS, max(0, ts_ms - prev_ts_ms)) + 1


_TYPE_INDEX = {name: i for i, name in enumerate(EVENT_TYPES)}
_SCENARIO_INDEX = {name: i for i, name in enumerate(SCENARIOS)}
_NO_TAGS = (0,) * MAX_TAGS

BehaviorRow = tuple[int, int, int, int, int, int, tuple[int, ...], int, int, int]
"""One behavior as a plain tuple in BEHAVIOR_DTYPE field order (``np.array(rows, BEHAVIOR_DTYPE)``)."""


def behavior_row(
    *,
    ts: int,
    event_id: str,
    event_type: str,
    item_id: str,
    shop_id: str = "",
    brand_id: str = "",
    category_id: str = "",
    tags: Sequence[str] = (),
    scenario: str = "other",
    prev_ts: int | None = None,
) -> BehaviorRow:
    """Encode one validated behavior as a tuple, so a batch becomes one array in one call."""
    if tags:
        hashed = [hash_id(t) for t in tags[:MAX_TAGS]]
        tag_row = tuple(hashed) + (0,) * (MAX_TAGS - len(hashed))
    else:
        tag_row = _NO_TAGS
    return (
        ts,
        hash_event_id(event_id),
        hash_id(item_id),
        hash_id(shop_id),
        hash_id(brand_id),
        hash_id(category_id),
        tag_row,
        _TYPE_INDEX[event_type],
        _SCENARIO_INDEX[scenario],
        gap_bucket(ts, prev_ts),
    )


def behavior_records(
    *,
    ts: Sequence[int],
    event_hashes: Sequence[int],
    event_types: Sequence[str],
    item_ids: Sequence[str],
    shop_ids: Sequence[str],
    brand_ids: Sequence[str],
    category_ids: Sequence[str],
    tags: Sequence[Sequence[str]],
    scenarios: Sequence[str],
    runs: Sequence[int],
    prev_ts: Sequence[int | None],
) -> np.ndarray:
    """Many validated behaviors as one record array, column by column (what :func:`behavior_row` gives one by one).

    The behaviors are ``len(runs)`` consecutive runs (one user's behaviors each, in order) of
    ``runs[j]`` behaviors, the first following a behavior at ``prev_ts[j]`` (None: none), so
    each gap is taken from the previous behavior of its run. Filling fields from whole columns
    replaces per-behavior function calls and tuple building with a few C-level passes
    (``event_hashes`` come in: the caller needs them before, to skip duplicates).
    """
    n = len(ts)
    out = np.zeros(n, dtype=BEHAVIOR_DTYPE)
    if not n:
        return out
    if sum(runs) != n or min(runs) < 1:
        raise ValueError(f"runs must be non-empty and cover the {n} behaviors")
    ts_col = np.array(ts, dtype=np.int64)
    out["ts"] = ts_col
    out["event_hash"] = event_hashes
    out["item"] = hash_ids(item_ids)
    out["shop"] = hash_ids(shop_ids)
    out["brand"] = hash_ids(brand_ids)
    out["category"] = hash_ids(category_ids)
    out["event_type"] = list(map(_TYPE_INDEX.__getitem__, event_types))
    out["scenario"] = list(map(_SCENARIO_INDEX.__getitem__, scenarios))
    _fill_tags(out["tags"], tags)
    out["gap_bucket"] = _gap_buckets(ts_col, runs, prev_ts)
    return out


def _fill_tags(dest: np.ndarray, tags: Sequence[Sequence[str]]) -> None:
    """The first MAX_TAGS tags of each behavior, hashed, left-aligned in ``dest`` (n, MAX_TAGS) of zeros."""
    used = list(map(itemgetter(slice(0, MAX_TAGS)), tags))
    flat = list(chain.from_iterable(used))
    if not flat:
        return
    counts = np.fromiter(map(len, used), np.int64, len(used))
    rows = np.repeat(np.arange(len(used)), counts)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
    dest[rows, cols] = hash_ids(flat)


def _gap_buckets(ts: np.ndarray, runs: Sequence[int], prev_ts: Sequence[int | None]) -> np.ndarray:
    """:func:`gap_bucket` of every behavior: from the previous one in its run, the run's first from ``prev_ts``.

    The run's first gap is computed in Python (a stored ``prev_ts`` is not bounded like a validated one).
    """
    gaps = np.empty(len(ts), dtype=np.uint8)
    if len(ts) > 1:
        gaps[1:] = time_bucket(ts[1:] - ts[:-1])
    firsts = np.cumsum(runs) - np.asarray(runs, dtype=np.int64)
    gaps[firsts] = [gap_bucket(int(ts[i]), p) for i, p in zip(firsts.tolist(), prev_ts, strict=True)]
    return gaps


def rows_to_records(rows: Sequence[BehaviorRow]) -> np.ndarray:
    return np.array(rows, dtype=BEHAVIOR_DTYPE) if rows else np.zeros(0, dtype=BEHAVIOR_DTYPE)


def concat_records(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate record arrays as raw bytes (writable result).

    numpy copies a structured dtype field by field (and ``np.concatenate`` also re-promotes it
    per call): ~10 us for one user's ~110 records, against ~1.5 us for one bytes join.
    """
    return np.frombuffer(bytearray().join([_record_bytes(p) for p in parts]), dtype=BEHAVIOR_DTYPE)


def take_records(records: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``records[index]`` through an opaque-bytes view: numpy's structured take goes field by field (~5x slower)."""
    if records.dtype != BEHAVIOR_DTYPE:
        return records[index]
    return records.view(_RECORD_BYTES)[index].view(BEHAVIOR_DTYPE)


def records_from_bytes(raw: bytes | bytearray | memoryview) -> np.ndarray:
    """A writable record array over a copy of ``raw`` (``frombuffer(...).copy()`` is ~20x slower)."""
    return np.frombuffer(bytearray(raw), dtype=BEHAVIOR_DTYPE)


def _record_bytes(part: np.ndarray) -> bytes:
    if part.dtype != BEHAVIOR_DTYPE:  # same fields, other layout: convert field by field
        part = np.asarray(part, dtype=BEHAVIOR_DTYPE)
    return part.tobytes()


def records_from_events(events: Iterable[dict[str, object]]) -> np.ndarray:
    """Encode one user's time-ordered contract events (dicts) as a record array.

    The gap property of each behavior is taken relative to the previous one in
    the given order, exactly as the stream worker does on append.
    """
    rows: list[BehaviorRow] = []
    prev: int | None = None
    for ev in events:
        ts = int(ev["ts"])  # type: ignore[call-overload]
        rows.append(
            behavior_row(
                ts=ts,
                event_id=str(ev["event_id"]),
                event_type=str(ev["event_type"]),
                item_id=str(ev["item_id"]),
                shop_id=str(ev.get("shop_id") or ""),
                brand_id=str(ev.get("brand_id") or ""),
                category_id=str(ev.get("category_id") or ""),
                tags=[str(t) for t in ev.get("tags") or ()],  # type: ignore[attr-defined]
                scenario=str(ev.get("scenario") or "other"),
                prev_ts=prev,
            )
        )
        prev = ts
    return rows_to_records(rows)


def item_record(item: dict[str, object]) -> np.ndarray:
    """Encode a candidate item (no behavior properties) for the item part of the model."""
    row = behavior_row(
        ts=0,
        event_id="",
        event_type="click",
        item_id=str(item.get("item_id", "")),
        shop_id=str(item.get("shop_id") or ""),
        brand_id=str(item.get("brand_id") or ""),
        category_id=str(item.get("category_id") or ""),
        tags=[str(t) for t in item.get("tags") or ()],  # type: ignore[attr-defined]
    )
    return np.array(row, dtype=BEHAVIOR_DTYPE)
