"""Binary codec of :class:`UserState` (versioned; not JSON text).

Layout (little-endian), format version 1::

    u8   format version (=1)
    u8   flags (bit 0: vector present, bit 1: profile present)
    u32  events_seen
    i32  source_partition
    i64  source_offset
    i64  updated_at (ms)
    u16  len(model_version), then its UTF-8 bytes
    u16  len(last_event_id), then its UTF-8 bytes
    u16  n records, then n × BEHAVIOR_DTYPE (59 bytes each)
    [u16 dim, then dim × f32]   if flags bit 0
    [i8 age_group, i8 gender]   if flags bit 1 (-1 = unknown; absent = both unknown)

Format version 2 is a *header* (:mod:`state.changelog`): the same fields up to
``last_event_id``, then ``u16 ring, u16 n`` instead of the records and no vector, then the
profile bytes if flags bit 1.

The profile is a trailing optional field behind a flag, not a new version: a reader from before it
ignores unknown flag bits and trailing bytes, so rolling a worker back keeps the behaviors (the profile
reads as unknown until an event carries it again).
The records live in slot records of their own; :func:`decode_header` reads it,
:func:`decode_state` refuses it (a header alone is not a state).

A reader rejects unknown versions instead of guessing, so a rollout that
changes the layout must bump the version and keep decoding the old one.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.contracts import UNKNOWN_PROFILE, Profile
from encoder.features import BEHAVIOR_DTYPE, records_from_bytes
from state.user_state import UserState

FORMAT_VERSION = 1
HEADER_VERSION = 2
_HEAD = struct.Struct("<BBIiqq")
_U16 = struct.Struct("<H")
_RING = struct.Struct("<HH")
_PROFILE = struct.Struct("<bb")
_HAS_VECTOR = 1
_HAS_PROFILE = 2


class StateDecodeError(ValueError):
    """Stored bytes are not a user state this version understands."""


def encode_state(state: UserState) -> bytes:
    flags = (_HAS_VECTOR if state.vector is not None else 0) | _profile_flag(state.profile)
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
    if flags & _HAS_PROFILE:
        parts.append(_PROFILE.pack(*state.profile))
    return b"".join(parts)


def _profile_flag(profile: Profile) -> int:
    """An unknown profile is not written (the state of a user whose events carry none keeps its size)."""
    return 0 if profile == UNKNOWN_PROFILE else _HAS_PROFILE


def _read_profile(buf: memoryview, pos: int, flags: int) -> Profile:
    if not flags & _HAS_PROFILE:
        return UNKNOWN_PROFILE
    age, gender = _PROFILE.unpack_from(buf, pos)
    return (age, gender)


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
        pos += 4 * dim
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
        profile=_read_profile(buf, pos, flags),
    )


@dataclass(frozen=True)
class StateHeader:
    """A state without its records and vector: what a changelog header record holds (format 2)."""

    events_seen: int
    source_partition: int
    source_offset: int
    updated_at: int
    model_version: str
    last_event_id: str
    ring: int  # slot of history index i = i % ring
    n: int  # records retained: history indexes events_seen - n .. events_seen - 1
    profile: Profile = UNKNOWN_PROFILE

    @property
    def first(self) -> int:
        return self.events_seen - self.n


def encode_header(state: UserState, ring: int) -> bytes:
    """The header of ``state`` whose records sit in ``ring`` slots (``ring >= len(state.records)``)."""
    if not len(state.records) <= ring <= 0xFFFF:
        raise ValueError(f"ring {ring} must hold the {len(state.records)} records and fit in u16")
    flags = _profile_flag(state.profile)
    return b"".join(
        [
            _HEAD.pack(
                HEADER_VERSION, flags, state.events_seen, state.source_partition, state.source_offset,
                state.updated_at,
            ),
            _short_str(state.model_version),
            _short_str(state.last_event_id),
            _RING.pack(ring, len(state.records)),
            _PROFILE.pack(*state.profile) if flags else b"",
        ]
    )


def decode_header(raw: bytes) -> StateHeader:
    try:
        buf = memoryview(raw)
        version, flags, seen, part, offset, updated = _HEAD.unpack_from(buf, 0)
        if version != HEADER_VERSION:
            raise StateDecodeError(f"not a state header (format version {version})")
        model_version, pos = _read_str(buf, _HEAD.size)
        last_event_id, pos = _read_str(buf, pos)
        ring, n = _RING.unpack_from(buf, pos)
        profile = _read_profile(buf, pos + _RING.size, flags)
    except (struct.error, UnicodeDecodeError) as exc:
        raise StateDecodeError(f"cannot decode state header: {exc}") from exc
    if n > ring or n > seen:
        raise StateDecodeError(f"state header holds {n} records of {seen} in a ring of {ring}")
    return StateHeader(seen, part, offset, updated, model_version, last_event_id, ring, n, profile)


def format_version(raw: bytes) -> int:
    """The first byte of a stored value: 1 = full state, 2 = header (0: empty)."""
    return raw[0] if raw else 0


def claimed_version(raw: bytes) -> int | None:
    """The ``events_seen`` a stored value claims, read from its fixed-size head without decoding the rest
    (None: not even a head of a known format). Cheap enough to rank many values of one key; the winner
    must still decode in full (:func:`state_version` is the checked form)."""
    if len(raw) < _HEAD.size or raw[0] not in (FORMAT_VERSION, HEADER_VERSION):
        return None
    return int(_HEAD.unpack_from(raw, 0)[2])


def state_version(raw: bytes) -> int | None:
    """The version of an encoded state: its ``events_seen`` (None: it does not decode).

    ``events_seen`` only grows along a user's event log (every applied event adds one, a skipped or
    redelivered one adds nothing, and a state that does not decode is never reset and written over),
    so of two records of one user the one with more events seen is the newer, whoever wrote it last."""
    try:
        if format_version(raw) == HEADER_VERSION:
            return decode_header(raw).events_seen
        return decode_state("", raw).events_seen
    except StateDecodeError:
        return None


def newest_state(values: Sequence[bytes | None]) -> tuple[bytes | None, int]:
    """Of one key's successive values (the local one first, then changelog records in offset order), the
    one to keep, and how many of them did not decode.

    A tombstone (None) deletes everything before it. After it, the decodable value with the highest
    version wins (ties: the later one, as a plain changelog replay would), so a late write by a zombie
    owner never replaces a newer state; a value that does not decode never replaces one that does
    (the last decodable state is kept: a bad record costs no history). When none decodes, the last
    value is kept, and the worker refuses that user (streams.updater: ``state_undecodable``)."""
    best: bytes | None = None
    best_version = -1
    bad = 0
    for value in values:
        if value is None:
            best, best_version = None, -1
            continue
        version = state_version(value)
        if version is None:
            bad += 1
            if best is None or best_version < 0:
                best, best_version = value, -1  # nothing decodable yet: keep the bytes, refused later
            continue
        if version >= best_version:
            best, best_version = value, version
    return best, bad


def _short_str(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("string too long for state codec")
    return _U16.pack(len(raw)) + raw


def _read_str(buf: memoryview, pos: int) -> tuple[str, int]:
    (length,) = _U16.unpack_from(buf, pos)
    pos += _U16.size
    return bytes(buf[pos : pos + length]).decode("utf-8"), pos + length
