"""The changelog format 2 (state.changelog): block keys, exact restores from any order, fencing, upgrades."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest

from encoder.features import records_from_events
from state.changelog import (
    DurableMarks,
    assemble,
    changelog_records,
    decode_block,
    encode_block,
    mark_of,
    ring_for,
    slot_key,
    split_key,
    states_from_changelog,
)
from state.codec import StateDecodeError, encode_state
from state.memory import MemoryStateStore
from state.store import VectorFill
from state.user_state import UserState
from tests.support.factories import make_events

KEEP = 6
RING = ring_for(KEEP)  # 12: a block key is reused only once its behaviors left every window
Log = list[tuple[bytes | None, bytes | None]]


def state_at(user: str, n: int, keep: int = KEEP) -> UserState:
    """The user after ``n`` events, keeping the last ``keep`` behaviors (no vector: the changelog has none)."""
    records = records_from_events(make_events(user, 64, seed=3)[:n])[-keep:]  # one event log, its first n
    return UserState(user, records, n, f"{user}-e{n - 1}", 1, 100 + n, "m1", None, 1_700_000_000_000 + n)


def history(user: str, upto: int, marks: DurableMarks | None = None) -> Log:
    """The changelog of a user written one event per batch, every batch acknowledged."""
    marks = DurableMarks() if marks is None else marks
    key = user.encode()
    log: Log = []
    for n in range(1, upto + 1):
        state = state_at(user, n)
        log += changelog_records(state, RING, marks.get(key))
        marks.mark(key, mark_of(state, RING))
    return log


def compacted(log: Log) -> Log:
    """What a compacting broker keeps: the last record per key, at its own offset."""
    last = {key: i for i, (key, _) in enumerate(log)}
    return [rec for i, rec in enumerate(log) if last[rec[0]] == i]


def same(a: UserState, b: UserState) -> bool:
    return (a.events_seen, a.last_event_id, a.source_offset, a.updated_at) == (
        b.events_seen, b.last_event_id, b.source_offset, b.updated_at,
    ) and np.array_equal(a.records, b.records)


def test_slot_keys_round_trip_and_never_equal_a_user_key() -> None:
    for user in [b"u1", "jos\u00e9".encode(), b"x" * 200]:
        for slot in [0, 7, 65535]:
            assert split_key(slot_key(user, slot)) == (user, slot)
        assert split_key(user) == (user, None)
    for bad in [b"\x03short", b"\x03" + bytes(4) + bytes(60), b"\x07" + bytes(4) + bytes(59), b"\x03" + bytes(4)]:
        with pytest.raises(StateDecodeError):
            decode_block(bad)
    assert decode_block(encode_block(9, bytes(range(59)) * 2)) == (9, bytes(range(59)) * 2)
    with pytest.raises(ValueError):
        encode_block(0, bytes(58))
    with pytest.raises(ValueError):
        ring_for(40_000)


def test_a_live_event_writes_one_block_and_a_header() -> None:
    marks = DurableMarks()
    log = history("ann", 20, marks)
    state = state_at("ann", 21)
    records = changelog_records(state, RING, marks.get(b"ann"))
    assert [k for k, _ in records] == [slot_key(b"ann", 20 % RING), b"ann"]
    assert sum(len(k) + len(v) for k, v in records) < len(encode_state(state)) / 2
    everything = changelog_records(state, RING, None)  # unknown to the writer: every retained behavior
    assert [k for k, _ in everything] == [slot_key(b"ann", 15 % RING), b"ann"]
    assert decode_block(everything[0][1])[0] == 15 and len(decode_block(everything[0][1])[1]) == 6 * 59
    assert same(states_from_changelog(log)["ann"], state_at("ann", 20))


@pytest.mark.parametrize("seed", range(5))
def test_restore_is_exact_after_compaction_in_chunks(seed: int) -> None:
    log = history("bo", 37) + history("cy", 5)
    for recs in [log, compacted(log)]:
        store = MemoryStateStore()
        rng = random.Random(seed)
        i = 0
        while i < len(recs):  # chunks cut anywhere: blocks and their header land in different chunks
            j = i + rng.randint(1, 9)
            store.restore_chunk(0, [Rec(i + k, key, value) for k, (key, value) in enumerate(recs[i:j])])
            i = j
        for user, n in [("bo", 37), ("cy", 5)]:
            got = store.read(user, 0)
            assert got is not None and same(got, state_at(user, n))


def batched_history(user: str, upto: int, rng: random.Random) -> Log:
    """The changelog of a user written in batches of 1..8 events (a drain), every batch acknowledged."""
    marks, key, log, n = DurableMarks(), user.encode(), [], 0
    while n < upto:
        n = min(upto, n + rng.randint(1, 8))
        state = state_at(user, n)
        log += changelog_records(state, RING, marks.get(key))
        marks.mark(key, mark_of(state, RING))
    return log


@pytest.mark.parametrize("seed", range(6))
def test_drain_batches_write_one_block_each_and_restore_exactly_after_compaction(seed: int) -> None:
    rng = random.Random(seed)
    log = batched_history("fi", 41, rng)
    headers = [k for k, _ in log if split_key(k)[1] is None]
    blocks = [decode_block(v) for k, v in log if split_key(k)[1] is not None]
    assert len(blocks) <= 2 * len(headers) and all(len(data) <= RING // 2 * 59 for _, data in blocks)
    written = [i for first, data in blocks for i in range(first, first + len(data) // 59)]
    assert len(written) == len(set(written)) and written[-KEEP:] == list(range(41 - KEEP, 41))  # each once
    for recs in [log, compacted(log)]:
        store = MemoryStateStore()
        i = 0
        while i < len(recs):
            j = i + rng.randint(1, 4)
            store.restore_chunk(0, [Rec(i + k, key, value) for k, (key, value) in enumerate(recs[i:j])])
            i = j
        got = store.read("fi", 0)
        assert got is not None and same(got, state_at("fi", 41))


def test_restore_keeps_the_newest_complete_state_against_duplicates_and_a_zombie() -> None:
    log = history("di", 30)
    zombie = changelog_records(state_at("di", 24), RING, None)  # a fenced-out owner writes an older state late
    shuffled_dupes = log + log[-10:]  # a redelivered tail
    got = states_from_changelog(shuffled_dupes + zombie)["di"]
    assert same(got, state_at("di", 30))
    got = states_from_changelog(compacted(log + zombie))["di"]  # compaction after the zombie's header
    assert got.events_seen == 30 or got.events_seen == 24  # (a zombie's late block can overwrite a live one)


def test_a_header_whose_slots_are_missing_never_wins_over_a_complete_state() -> None:
    log = history("ed", 12)
    ahead = changelog_records(state_at("ed", 14), RING, None)
    header_only = [rec for rec in ahead if split_key(rec[0])[1] is None]  # its block never arrived
    result = assemble({}.get, log + header_only)
    assert result.bad == 1
    assert same(states_from_changelog(log + header_only)["ed"], state_at("ed", 12))


@pytest.mark.parametrize("cut", [7, 30, 40])  # inside the fixed head (26 bytes), then past it
def test_a_corrupt_header_claiming_a_newer_version_never_wins(cut: int) -> None:
    """Values are ranked by the version their head claims and decoded from the top: a truncated header that
    claims more events than the good one is tried first, fails, is counted, and the good one wins."""
    log = history("gus", 12)
    ahead = next(v for k, v in changelog_records(state_at("gus", 15), RING, None) if split_key(k)[1] is None)
    broken = (b"gus", ahead[:cut])
    result = assemble({}.get, [*log, broken])
    assert result.bad == 1  # a head cut short claims no version; a longer one is ranked first and fails
    assert same(states_from_changelog([*log, broken])["gus"], state_at("gus", 12))


def test_a_changelog_of_the_previous_version_still_restores_and_the_next_write_rewrites_every_slot() -> None:
    old = [(b"fay", encode_state(state_at("fay", n))) for n in range(1, 10)]  # format 1: the full state
    store = MemoryStateStore()
    store.restore_chunk(0, [Rec(i, k, v) for i, (k, v) in enumerate(old)])
    got = store.read("fay", 0)
    assert got is not None and same(got, state_at("fay", 9))
    upgraded = changelog_records(state_at("fay", 10), RING, store.marks.get(b"fay"))
    assert len(upgraded) == 2 and len(decode_block(upgraded[0][1])[1]) == 6 * 59  # all 6 behaviors + header
    assert same(states_from_changelog(compacted(old + upgraded))["fay"], state_at("fay", 10))


def test_a_tombstone_deletes_the_user() -> None:
    log = [*history("gus", 4), (b"gus", None)]
    assert "gus" not in states_from_changelog(log)


def test_a_restored_state_gets_its_vector_on_read() -> None:
    calls = []

    def vectorize(state: UserState) -> tuple[np.ndarray, str]:
        calls.append(state.events_seen)
        return np.full(4, state.events_seen, np.float32), "m2"

    store = MemoryStateStore(fill=VectorFill(vectorize))
    store.restore_chunk(0, [Rec(i, k, v) for i, (k, v) in enumerate(history("hal", 7))])
    for _ in range(2):
        got = store.read("hal", 0)
        assert got is not None and got.vector is not None and float(got.vector[0]) == 7.0
        assert got.model_version == "m2"
    assert calls == [7]  # cached for that exact state


@dataclass(frozen=True)
class Rec:
    offset: int
    key: bytes | None
    value: bytes | None
