"""Binary codec of :class:`UserState` (versioned; not JSON text).

Layout (little-endian), format version 1::

    u8   format version (=1)
    u8   flags (bit 0: vector present)
    u32  events_seen
    i32  source_partition
    i64  source_offset
    i64  updated_at (ms)
    u16  len(model_version), then its UTF-8 bytes
    u16  len(last_event_id), then its UTF-8 bytes
    u16  n records, then n × BEHAVIOR_DTYPE (59 bytes each)
    [u16 dim, then dim × f32]   if flags bit 0

A reader rejects unknown versions instead of guessing, so a rollout that
changes the layout must bump the version and keep decoding the old one.
"""

from __future__ import annotations

import struct

import numpy as np

from encoder.features import BEHAVIOR_DTYPE, records_from_bytes
from state.user_state import UserState

FORMAT_VERSION = 1
_HEAD = struct.Struct("<BBIiqq")
_U16 = struct.Struct("<H")
_HAS_VECTOR = 1


class StateDecodeError(ValueError):
    """Stored bytes are not a user state this version understands."""


def encode_state(state: UserState) -> bytes:
    flags = _HAS_VECTOR if state.vector is not None else 0
    parts = [
        _HEAD.pack(
            FORMAT_VERSION,
            flags,
            state.events_seen,
            state.source_partition,
            state.source_offset,
            state.updated_at,
        ),
        _short_str(state.model_version),
        _short_str(state.last_event_id),
        _U16.pack(len(state.records)),
        np.ascontiguousarray(state.records, dtype=BEHAVIOR_DTYPE).tobytes(),
    ]
    if state.vector is not None:
        vec = np.asarray(state.vector, dtype="<f4")
        parts += [_U16.pack(vec.shape[0]), vec.tobytes()]
    return b"".join(parts)


def decode_state(user_id: str, raw: bytes) -> UserState:
    try:
        return _decode(user_id, memoryview(raw))
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise StateDecodeError(f"cannot decode state of user {user_id!r}: {exc}") from exc


def _decode(user_id: str, buf: memoryview) -> UserState:
    version, flags, seen, part, offset, updated = _HEAD.unpack_from(buf, 0)
    if version != FORMAT_VERSION:
        raise StateDecodeError(f"unknown state format version {version}")
    pos = _HEAD.size
    model_version, pos = _read_str(buf, pos)
    last_event_id, pos = _read_str(buf, pos)
    (n,) = _U16.unpack_from(buf, pos)
    pos += _U16.size
    size = n * BEHAVIOR_DTYPE.itemsize
    records = records_from_bytes(buf[pos : pos + size])
    if len(records) != n:
        raise StateDecodeError("truncated records")
    pos += size
    vector = None
    if flags & _HAS_VECTOR:
        (dim,) = _U16.unpack_from(buf, pos)
        pos += _U16.size
        vector = np.frombuffer(buf[pos : pos + 4 * dim], dtype="<f4").astype(np.float32)
        if vector.shape[0] != dim:
            raise StateDecodeError("truncated vector")
    return UserState(
        user_id=user_id,
        records=records,
        events_seen=seen,
        last_event_id=last_event_id,
        source_partition=part,
        source_offset=offset,
        model_version=model_version,
        vector=vector,
        updated_at=updated,
    )


def _short_str(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("string too long for state codec")
    return _U16.pack(len(raw)) + raw


def _read_str(buf: memoryview, pos: int) -> tuple[str, int]:
    (length,) = _U16.unpack_from(buf, pos)
    pos += _U16.size
    return bytes(buf[pos : pos + length]).decode("utf-8"), pos + length
