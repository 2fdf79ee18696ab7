"""The user-state changelog, format 2: behavior blocks and a small header per user, not the whole state.

Why: a live event (one event per user per batch) used to rewrite the user's whole state to the
changelog (~6 KB: up to ``max_retained`` 59-byte behaviors and the 1 KB vector). Now it writes the
new behaviors and a header, ~140 bytes per event (``ops/bench/write_cost.py`` measures it), in two
records per user per batch however many events the batch has: every record costs the producer, the
broker and every standby's replay, so a batch's new behaviors travel as one block, not one record
each (one record per behavior made a drain write 6 x the records of the old format, 1.18 per event
against 0.185, and two workers with standbys used ~1.7-2.2 s of CPU each for 9,000 events against
~0.9-1.3 s; with blocks, 0.37 records per event and ~1.65 s against ~1.4 s, same machine and load).

Records (a real Kafka compacts the changelog: only the last record per key survives, so the keys
are chosen so that "the last record per key" still rebuilds every user exactly):

- **block** ``key = user_id + 0xFF + u16 BE slot``, ``value = u8 3, u32 index, k x 59-byte behavior``
  (``k >= 1``): the behaviors with history indexes ``index .. index + k - 1`` of the user, keyed by
  the ring slot of the first, ``index % ring``; ``k <= ring // 2``. UTF-8 never holds a 0xFF byte, so
  a block key never equals a user key.
- **header** ``key = user_id`` (the key a full state had), ``value =`` codec format 2
  (:func:`state.codec.encode_header`): ``events_seen``, source partition/offset, ``updated_at``,
  model version, ``last_event_id``, ``ring`` and ``n``: the state holds history indexes
  ``events_seen - n .. events_seen - 1``. ``ring >= 2 n`` (:func:`ring_for`: twice the policy's
  ``max_retained``).

A user's state = its header + the behaviors of its range, found in the blocks; a block's indexes
outside the range (an older lap, or later ones not yet covered by a header) are ignored. After
compaction the last header survives and so does, per key, the last block written there. A block
``[a, b)`` is replaced only by a later block starting at ``a' = a + m ring`` (``m >= 1``), written
with a header of ``events_seen >= a' + 1`` whose range starts at ``>= a' + 1 - ring // 2 >= a + ring
// 2 + 1 >= b``: none of the replaced indexes is in any later header's range, so compaction keeps
exactly what the last header needs. A behavior's bytes are a function of the event log alone, so two
writes of one index (a redelivery, a zombie) carry the same bytes.

Restore (:func:`assemble`, used by the bulk restore and Faust's per-record/standby replay alike):
per user, of the header candidates (the local state, then the records in offset order; a tombstone
deletes what precedes it) the one with the highest ``events_seen`` whose behaviors are all found wins
(ties: the later); a header whose behaviors are not all found, like a value that does not decode, never
wins over one that is complete and is counted in ``dupn_state_decode_errors_total`` (zombie fencing
of docs/guarantees.md, unchanged). Behaviors are looked up by index in the chunk's blocks, then in the
local state, then in blocks staged locally by an earlier chunk (the block holding index ``i`` starts
at one of ``i, i - 1, .., i - ring // 2 + 1``: at most that many local reads, only for a header whose
blocks came in an earlier chunk). The result is written locally as a full state (codec format 1,
what reads see). Blocks reaching beyond the winner (they precede their header, which a later chunk
holds) are staged locally under their block key and deleted once a header used them all (a staged
block whose behaviors a header found elsewhere stays until a later chunk overwrites its key: reads
never see it). Format 1 values (a changelog written before this version) are complete states on
their own: a rolling upgrade restores them, and the first write of a user by this version writes all
its retained behaviors (the writer's :class:`DurableMarks` knows nothing of it yet).

Writer (:func:`changelog_records`): one block of the indexes the changelog does not hold yet (more
only past ``ring // 2`` of them), then the header, in one partition's produce batch (the header
follows its block). "Holds" is what
:class:`DurableMarks` remembers of this process's *acknowledged* writes: (events_seen, first index,
ring) per user, bounded LRU; a miss (a restart, a user restored from another owner, an eviction)
writes every retained behavior again, which is always correct. A failed delivery clears nothing it
did not mark, since only acknowledged batches are marked. A slot record of this format's first
draft (one behavior) is a block of one, read alike.

The vector does not ride the changelog (1 KB per event would be 20 % of the old cost on its own): a
restored state has no vector until :class:`state.store.UserStateStore`'s reader recomputes it from
the restored behaviors (the carried encoder state is a function of them), or until the next event.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from encoder.features import BEHAVIOR_DTYPE, records_from_bytes
from state.codec import (
    FORMAT_VERSION,
    HEADER_VERSION,
    StateDecodeError,
    claimed_version,
    decode_header,
    decode_state,
    encode_header,
    encode_state,
    format_version,
)
from state.user_state import UserState

SLOT_MARK = b"\xff"
SLOT_VERSION = 3
_SLOT = struct.Struct("<BI")
_SLOT_NO = struct.Struct(">H")
_REC = BEHAVIOR_DTYPE.itemsize
MAX_RING = 1 << 16  # slots are u16


def ring_for(retained: int) -> int:
    """The key ring of a writer keeping up to ``retained`` behaviors per user: twice that, so a block
    key is reused only once everything in the block it replaces is out of every later window."""
    ring = 2 * max(1, retained)
    if ring > MAX_RING:
        raise ValueError(f"{retained} retained behaviors per user: at most {MAX_RING // 2}")
    return ring

Get = Callable[[bytes], bytes | None]


def slot_key(user: bytes, slot: int) -> bytes:
    return user + SLOT_MARK + _SLOT_NO.pack(slot)


def split_key(key: bytes) -> tuple[bytes, int | None]:
    """(user key, slot) of a changelog key; slot None: the user key itself (a header or full state)."""
    if len(key) >= 3 and key[-3:-2] == SLOT_MARK:
        return key[:-3], _SLOT_NO.unpack(key[-2:])[0]
    return key, None


def encode_block(index: int, records: bytes) -> bytes:
    """A block: the behaviors ``records`` (whole 59-byte records) with history indexes from ``index``."""
    if not records or len(records) % _REC:
        raise ValueError(f"a block holds whole {_REC}-byte behavior records, not {len(records)} bytes")
    return _SLOT.pack(SLOT_VERSION, index) + records


def decode_block(raw: bytes) -> tuple[int, bytes]:
    """(first index, its behaviors' bytes) of a block value; StateDecodeError if it is not one."""
    size = len(raw) - _SLOT.size
    if size <= 0 or size % _REC or raw[0] != SLOT_VERSION:
        raise StateDecodeError(f"not a behavior block ({len(raw)} bytes)")
    return _SLOT.unpack_from(raw, 0)[1], raw[_SLOT.size :]


def block_records(first: int, data: bytes) -> dict[int, bytes]:
    """{history index: behavior bytes} of a decoded block."""
    return {first + k: data[k * _REC : (k + 1) * _REC] for k in range(len(data) // _REC)}


# -- writing -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mark:
    """What the changelog is known to hold of a user: the behaviors ``first..seen-1``, keyed in ``ring``."""

    seen: int
    first: int
    ring: int


@dataclass
class DurableMarks:
    """Per user, the last acknowledged write of this process (bounded LRU; a miss = write all behaviors)."""

    capacity: int = 1_000_000
    _marks: OrderedDict[bytes, Mark] = field(default_factory=OrderedDict)

    def get(self, user: bytes) -> Mark | None:
        return self._marks.get(user)

    def mark(self, user: bytes, new: Mark) -> None:
        old = self._marks.get(user)
        if old is not None and old.ring == new.ring and old.seen > new.seen:
            return  # an older batch acknowledged after a newer one
        self._marks[user] = new
        self._marks.move_to_end(user)
        while len(self._marks) > self.capacity:
            self._marks.popitem(last=False)

    def __len__(self) -> int:
        return len(self._marks)


def mark_of(state: UserState, ring: int) -> Mark:
    """What the changelog holds of ``state`` once its records are acknowledged (taken at write time:
    the caller may advance the state object afterwards)."""
    return Mark(state.events_seen, state.first_record_index(), ring)


def changelog_records(state: UserState, ring: int, held: Mark | None) -> list[tuple[bytes, bytes]]:
    """The changelog records of ``state``: blocks of the behaviors the changelog does not hold (per
    ``held``; one block unless more than ``ring // 2``), then the header. ``ring``: :func:`ring_for`."""
    user = state.user_id.encode("utf-8")
    first, seen = state.first_record_index(), state.events_seen
    start = first
    if held is not None and held.ring == ring and held.first <= first and held.seen <= seen:
        start = max(first, held.seen)
    raw = state.records.tobytes() if state.records.dtype == BEHAVIOR_DTYPE else _as_bytes(state)
    step = max(1, ring // 2)
    out = [
        (slot_key(user, a % ring), encode_block(a, raw[(a - first) * _REC : (min(a + step, seen) - first) * _REC]))
        for a in range(start, seen, step)
    ]
    out.append((user, encode_header(state, ring)))
    return out


def _as_bytes(state: UserState) -> bytes:
    import numpy as np

    return np.ascontiguousarray(state.records, dtype=BEHAVIOR_DTYPE).tobytes()


# -- restoring -----------------------------------------------------------------------------------------
@dataclass
class Assembled:
    """A chunk's local writes (None = delete), the user keys written, and the values that lost as
    undecodable or incomplete."""

    writes: dict[bytes, bytes | None] = field(default_factory=dict)
    users: list[bytes] = field(default_factory=list)
    bad: int = 0


def assemble(get: Get, records: Iterable[tuple[bytes | None, bytes | None]]) -> Assembled:
    """Apply changelog ``records`` (key, value; offset order) to a local copy read through ``get``."""
    by_user: dict[bytes, list[tuple[int | None, bytes | None]]] = {}
    for key, value in records:
        if key is not None:
            user, slot = split_key(key)
            by_user.setdefault(user, []).append((slot, value))
    out = Assembled()
    for user, items in by_user.items():
        _assemble_user(get, user, items, out)
    return out


def _assemble_user(get: Get, user: bytes, items: list[tuple[int | None, bytes | None]], out: Assembled) -> None:
    pool: dict[int, bytes] = {}
    blocks: dict[int, tuple[int, bytes]] = {}  # slot -> (end index, its last value in the chunk)
    for slot, value in items:
        if slot is None or value is None:
            continue
        try:
            first, data = decode_block(value)
        except StateDecodeError:
            out.bad += 1
            continue
        got = block_records(first, data)
        pool.update(got)
        blocks[slot] = (first + len(got), value)
    plain = [value for slot, value in items if slot is None]
    if not plain:  # blocks alone: their header is in a later chunk
        out.writes.update({slot_key(user, s): v for s, (_, v) in blocks.items()})
        return
    local = get(user)
    finder = _Finder(get, user, pool, _decoded(user, local))
    chosen, last, bad = _choose(user, [local, *plain], finder)
    out.bad += bad
    if chosen is None:
        if last is None or last != local:
            out.writes[user] = last
            out.users.append(user)
        return
    out.writes[user] = encode_state(chosen)
    out.users.append(user)
    out.writes.update({k: None for k, end in finder.staged_used if end <= chosen.events_seen})
    for slot, (end, value) in blocks.items():  # reaching beyond the chosen state: a later header needs them
        if end > chosen.events_seen:
            out.writes[slot_key(user, slot)] = value


def _choose(user: bytes, values: list[bytes | None], finder: _Finder) -> tuple[UserState | None, bytes | None, int]:
    """(the winning state, the last value (kept when none wins), how many values were tried and lost as bad).

    Values are ranked by the version their fixed-size head claims (a drain writes a header per batch,
    so a chunk often holds many of one user's); only from the top down are they decoded in full, until
    one decodes and has all its behaviors. A value that claims no version counts as bad; one ranked
    below the winner is never decoded, so its corruption (if any) is not counted: it lost either way."""
    start = max((i + 1 for i, v in enumerate(values) if v is None), default=0)  # after the last tombstone
    live = [(i, v) for i, v in enumerate(values) if i >= start and v is not None]
    bad = 0
    ranked = []
    for i, v in live:
        version = claimed_version(v)
        if version is None:
            bad += 1
        else:
            ranked.append((version, i, v))
    for _, _, v in sorted(ranked, reverse=True):
        try:
            state = finder.materialize(v)
        except StateDecodeError:
            state = None
        if state is not None:
            return state, None, bad
        bad += 1
    return None, (live[-1][1] if live else None), bad


def _decoded(user: bytes, raw: bytes | None) -> UserState | None:
    if raw is None or format_version(raw) != FORMAT_VERSION:
        return None
    try:
        return decode_state(user.decode("utf-8"), raw)
    except (StateDecodeError, UnicodeDecodeError):
        return None


@dataclass
class _Finder:
    """Finds a header's behaviors: the chunk's blocks, the local state, then locally staged blocks."""

    get: Get
    user: bytes
    pool: dict[int, bytes]
    local: UserState | None
    staged_used: list[tuple[bytes, int]] = field(default_factory=list)  # (block key, end index)
    _tried: set[bytes] = field(default_factory=set)

    def materialize(self, raw: bytes) -> UserState | None:
        """The full state behind a format 1 or 2 value (None: a header whose records are not all found)."""
        user_id = self.user.decode("utf-8")
        if format_version(raw) != HEADER_VERSION:
            return decode_state(user_id, raw)
        h = decode_header(raw)
        parts = []
        staged: list[tuple[bytes, int]] = []
        for i in range(h.first, h.events_seen):
            rec = self._find(i, h.ring, staged)
            if rec is None:
                return None
            parts.append(rec)
        self.staged_used.extend(staged)
        local = self.local
        same = local is not None and (local.events_seen, local.last_event_id, local.model_version) == (
            h.events_seen, h.last_event_id, h.model_version,
        )
        return UserState(
            user_id=user_id,
            records=records_from_bytes(b"".join(parts)),
            events_seen=h.events_seen,
            last_event_id=h.last_event_id,
            source_partition=h.source_partition,
            source_offset=h.source_offset,
            model_version=h.model_version,
            vector=local.vector if same and local is not None else None,
            updated_at=h.updated_at,
            profile=h.profile,
        )

    def _find(self, index: int, ring: int, staged: list[tuple[bytes, int]]) -> bytes | None:
        rec = self.pool.get(index)
        if rec is not None:
            return rec
        local = self.local
        if local is not None:
            at = index - local.first_record_index()
            if 0 <= at < len(local.records) and at < local.events_seen:
                return bytes(local.records[at : at + 1].tobytes())
        for start in range(index, max(-1, index - ring // 2), -1):  # the staged block holding it starts here
            self._load(slot_key(self.user, start % ring), staged)
            rec = self.pool.get(index)
            if rec is not None:
                return rec
        return None

    def _load(self, key: bytes, staged: list[tuple[bytes, int]]) -> None:
        """A locally staged block's behaviors into the pool (each key read once)."""
        if key in self._tried:
            return
        self._tried.add(key)
        raw = self.get(key)
        if raw is None:
            return
        try:
            first, data = decode_block(raw)
        except StateDecodeError:
            return
        got = block_records(first, data)
        for i, rec in got.items():
            self.pool.setdefault(i, rec)
        staged.append((key, first + len(got)))


def states_from_changelog(records: Sequence[tuple[bytes | None, bytes | None]]) -> dict[str, UserState]:
    """Every user's state as a new owner restores it from these changelog records (offset order)."""
    local: dict[bytes, bytes] = {}
    result = assemble(local.get, records)
    for key, value in result.writes.items():
        if value is None:
            local.pop(key, None)
        else:
            local[key] = value
    out = {}
    for key, value in local.items():
        if split_key(key)[1] is None and format_version(value) == FORMAT_VERSION:
            out[key.decode("utf-8")] = decode_state(key.decode("utf-8"), value)
    return out
