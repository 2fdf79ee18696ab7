"""What the workers' HTTP API and its clients share: partitioning, limits, statuses, the binary vector format.

Workers (``streams/``) and readers (``clients/``) both import this module, so a
client never needs worker code to route a request or decode an answer.

Binary vector format (``application/octet-stream``, version 1), all integers little-endian::

    offset  size         field
    0       4            magic b"DUPV"
    4       2 (u16)      format version (1)
    6       2 (u16)      flags (0; reserved)
    8       4 (u32)      count: rows
    12      4 (u32)      dim: float32 per row (0 when no row has a vector)
    16      4 (u32)      meta_len: bytes of the JSON metadata
    20      count (u8)   status code per row (STATUS_CODES: 0 found, 1 not_found, 2 stale, 3 unavailable, 4 error)
    ...     meta_len     UTF-8 JSON: {"results": [per-row metadata, the JSON answer's row without "vector"], ...}
    ...     0-3          zero bytes, so the rows start at a multiple of 4 from the start
    ...     count*dim*4  rows, little-endian float32, row-major; all zeros for a row without a vector

A row has a vector exactly when its status is ``found`` or ``stale``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

#: The batch read routes (the only ones that take a request body).
BATCH_PATH = "/vectors"
FEAST_PATH = "/get-online-features"
OWNERS_PATH = "/owners"
BODY_PATHS = frozenset({BATCH_PATH, FEAST_PATH})
MAX_BATCH_IDS = 1000
MAX_BATCH_BODY_BYTES = 64 * 1024
MAX_BATCH_ID_CHARS = 256  # the events contract's id limit (core.contracts.MAX_ID_CHARS)
MAX_AGE_MS_LIMIT = 10**15 - 1  # 15 digits, like ``?at=``

#: ``POST /get-online-features``: the one feature view and its features (Feast's shape).
FEAST_VIEW = "user_vectors"
FEAST_FEATURES = ("vector", "model_version", "events_seen", "last_event_id", "last_event_ts", "updated_at")

#: A user id that may appear in a URL path (``/users/{user_id}/...``): never "." or "..".
USER_ID_RE = re.compile(r"^(?!\.+$)[A-Za-z0-9_.:@~-]{1,128}$")

#: Sent by a worker that forwards a request, so the receiver answers itself (503 / unavailable) instead of
#: forwarding it again.
ROUTED_HEADER = "X-Dupn-Routed-By"

OCTET_STREAM = "application/octet-stream"

FOUND, NOT_FOUND, STALE, UNAVAILABLE, ERROR = "found", "not_found", "stale", "unavailable", "error"
STATUSES: tuple[str, ...] = (FOUND, NOT_FOUND, STALE, UNAVAILABLE, ERROR)
STATUS_CODES = {name: code for code, name in enumerate(STATUSES)}
WITH_VECTOR = frozenset({FOUND, STALE})

MAGIC = b"DUPV"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sHHIII")


class WireError(ValueError):
    """Bytes that are not a well-formed binary vector answer."""


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``) as an unsigned 32-bit int, like aiokafka's."""
    length = len(data)
    m, r = 0x5BD1E995, 24
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(length // 4):
        k = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length & ~3
    extra = length % 4
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of ``key`` under Kafka's default partitioner (murmur2), as every producer here uses.

    A user's events, state (changelog) and vector all live in this partition:
    key = user_id and every topic has ``DUPN_PARTITIONS`` partitions.
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def encode_vectors(results: Sequence[dict[str, Any]], extra: dict[str, Any] | None = None) -> bytes:
    """The binary form of per-row answers: each a dict with ``status`` and, when it has one, ``vector``.

    The metadata keeps every field of a row but ``vector``; ``extra`` adds top-level fields to it.
    """
    dims = {len(r["vector"]) for r in results if r.get("status") in WITH_VECTOR and r.get("vector") is not None}
    if len(dims) > 1:
        raise WireError(f"rows of different sizes {sorted(dims)}")
    dim = dims.pop() if dims else 0
    rows = np.zeros((len(results), dim), dtype="<f4")
    statuses = bytearray()
    meta_rows = []
    for i, r in enumerate(results):
        status = r.get("status")
        if status not in STATUS_CODES:
            raise WireError(f"row {i}: unknown status {status!r}")
        statuses.append(STATUS_CODES[status])
        if status in WITH_VECTOR and r.get("vector") is not None:
            rows[i] = np.asarray(r["vector"], dtype=np.float32)
        meta_rows.append({k: v for k, v in r.items() if k != "vector"})
    meta = orjson.dumps({**(extra or {}), "results": meta_rows})
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(results), dim, len(meta)) + bytes(statuses) + meta
    return head + b"\0" * (-len(head) % 4) + rows.tobytes()


def decode_vectors(raw: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """(metadata with ``results`` (each row's metadata, ``status`` included), float32 rows of shape (count, dim))."""
    if len(raw) < _HEADER.size:
        raise WireError(f"{len(raw)} bytes: shorter than the {_HEADER.size}-byte header")
    magic, version, _flags, count, dim, meta_len = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r} (expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise WireError(f"format version {version}, this reader knows {FORMAT_VERSION}")
    meta_at = _HEADER.size + count
    rows_at = meta_at + meta_len + (-(meta_at + meta_len) % 4)
    if len(raw) != rows_at + count * dim * 4:
        raise WireError(f"{len(raw)} bytes, header says {rows_at + count * dim * 4}")
    codes = raw[_HEADER.size : meta_at]
    try:
        meta = orjson.loads(raw[meta_at : meta_at + meta_len])
    except orjson.JSONDecodeError as exc:
        raise WireError(f"metadata is not JSON: {exc}") from exc
    results = meta.get("results") if isinstance(meta, dict) else None
    if not isinstance(results, list) or len(results) != count:
        raise WireError("metadata must hold one result per row")
    for i, (code, row) in enumerate(zip(codes, results, strict=True)):
        if code >= len(STATUSES) or not isinstance(row, dict) or row.get("status") != STATUSES[code]:
            raise WireError(f"row {i}: status code {code} disagrees with its metadata")
    rows = np.frombuffer(raw, dtype="<f4", count=count * dim, offset=rows_at).reshape(count, dim)
    return meta, rows.astype(np.float32)


def prefers_binary(accept: str) -> bool:
    """Whether an ``Accept`` header asks for the binary form (it must name it; ``*/*`` gets JSON)."""
    return any(part.split(";")[0].strip().lower() == OCTET_STREAM for part in accept.split(","))
