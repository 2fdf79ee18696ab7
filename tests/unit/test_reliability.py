"""Issue 14, items 1-5: results that must not depend on who wrote last, on a bad record, on batch
boundaries, on the worker's clock, or on a DLQ send nobody waited for.

1. versions: every reader (restore, Faust's per-record replay, VectorCache, the PPP agent) keeps a
   user's newest state or vector (highest ``events_seen``), not the last one written;
2. a stored state that does not decode is never reset and written over;
3. a repeated ``event_id`` is judged on the event sequence itself (identical for any batching);
4. ``ts`` is judged against the record's broker timestamp;
(5, the DLQ sends awaited before the ack, is in test_batch_path.py beside the other ack tests.)
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from clients.vector_cache import VectorCache
from core import metrics
from core.contracts import VectorMessage
from core.settings import load_settings
from encoder.features import records_from_events
from encoder.streaming import StreamingEncoder, UpdatePolicy, reference_vectors
from state.codec import decode_header, decode_state, encode_state
from state.memory import MemoryStateStore
from state.user_state import UserState
from streams.agents import start_batch
from streams.context import Worker
from streams.ppp import process_vector
from streams.runtime import Runtime
from streams.table_store import TableStateStore
from streams.updater import Incoming, VectorUpdater, vector_message
from streams.web import partition_of
from tests.support.factories import T0, make_events, ppp_scorer
from tests.support.fakes import RecordingSink, RecordingTopic
from tests.support.reference import applied_events


@dataclass(frozen=True)
class Rec:
    offset: int
    key: bytes | None
    value: bytes | None


def a_state(user: str, n: int) -> UserState:
    records = records_from_events(make_events(user, n))[-100:]
    vector = np.full(256, n, dtype=np.float32)
    return UserState(user, records, n, f"{user}-e{n - 1}", 0, n - 1, "m1", vector, 1_700_000_000_000 + n)


# -- 1. versions: the newest state / vector wins, not the last written -----------------------------------
def test_restore_keeps_the_newest_state_not_a_zombie_s_late_write(store: Any) -> None:
    new, late = encode_state(a_state("zed", 60)), encode_state(a_state("zed", 40))
    store.restore_chunk(1, [Rec(0, b"zed", new), Rec(1, b"zed", late)])  # the zombie's write came last
    got = store.read("zed", 1)
    assert got is not None and got.events_seen == 60
    store.restore_chunk(1, [Rec(2, b"zed", late)])  # a later chunk: the local state is newer still
    got = store.read("zed", 1)
    assert got is not None and got.events_seen == 60 and store.persisted_offset(1) == 2
    store.restore_chunk(1, [Rec(3, b"zed", encode_state(a_state("zed", 61)))])
    got = store.read("zed", 1)
    assert got is not None and got.events_seen == 61


class _Msg(NamedTuple):
    tp: Any
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class _Ev(NamedTuple):
    message: _Msg


def test_faust_s_per_record_replay_keeps_the_newest_state(faust_table: Any) -> None:
    from faust.types import TP

    store = TableStateStore(None, faust_table, "user-vectors")
    store.fence_changelog_replay()
    tp = TP(store.partitions.changelog_topic, 2)
    new, late = encode_state(a_state("amy", 30)), encode_state(a_state("amy", 20))
    faust_table.apply_changelog_batch([_Ev(_Msg(tp, 2, 5, b"amy", new)), _Ev(_Msg(tp, 2, 6, b"amy", late)),
                                       _Ev(_Msg(tp, 2, 7, None, None))])
    got = store.read("amy", 2)
    assert got is not None and got.events_seen == 30
    assert store.persisted_offset(2) == 7  # Faust's bookkeeping: the highest offset of the batch
    faust_table.apply_changelog_batch([_Ev(_Msg(tp, 2, 8, b"amy", late))])  # a standby sees the late one alone
    got = store.read("amy", 2)
    assert got is not None and got.events_seen == 30 and store.persisted_offset(2) == 8


def test_the_vector_cache_keeps_the_highest_events_seen() -> None:
    cache = VectorCache.__new__(VectorCache)  # no broker: only the merge of polled records
    cache._vectors, cache._lock = {}, threading.Lock()

    class R(NamedTuple):
        offset: int
        value: bytes

    newer, older = vector_message(a_state("kim", 9)), vector_message(a_state("kim", 7))
    cache._apply({0: [R(0, newer.to_bytes()), R(1, older.to_bytes())]})
    got = cache.get("kim")
    assert got is not None and got[0].events_seen == 9
    cache._apply({0: [R(2, older.to_bytes())]})  # a later poll
    got = cache.get("kim")
    assert got is not None and got[0].events_seen == 9


def test_the_ppp_agent_does_not_replace_a_level_by_an_older_vector(tmp_path: Path) -> None:
    version, scorer = ppp_scorer(tmp_path)

    def msg(n: int) -> bytes:
        vec = np.tanh(np.random.default_rng(n).normal(size=256)).astype(np.float32)
        return VectorMessage("lea", version, vec, n, f"e{n}", T0, T0 + n).to_bytes()

    table: dict[bytes, bytes] = {}
    sink = RecordingSink()
    assert asyncio.run(process_vector(scorer, table, sink, b"lea", msg(9))) is not None
    assert asyncio.run(process_vector(scorer, table, sink, b"lea", msg(7))) is None  # the zombie's late vector
    assert json.loads(table[b"lea"])["events_seen"] == 9 and len(sink.sent) == 1
    assert asyncio.run(process_vector(scorer, table, sink, b"lea", msg(10))) is not None


# -- 2. a state that does not decode is never reset ------------------------------------------------------
def make_worker(encoder: StreamingEncoder, store: MemoryStateStore, policy: UpdatePolicy) -> Worker:
    s = load_settings(env={})
    return Worker(s, None, Runtime(s, VectorUpdater(encoder, policy)), None, None, RecordingTopic(), None, store=store)


def test_one_undecodable_changelog_record_costs_no_history(tiny_encoder: StreamingEncoder) -> None:
    """The issue's repro: 50 events; one undecodable record for the user on the changelog; restore into
    an empty data dir; one more event: events_seen is 51 (it was 1: the state was reset and written)."""

    async def go() -> None:
        policy = UpdatePolicy("exact")
        events = make_events("uma", 51)
        first = MemoryStateStore()
        w = make_worker(tiny_encoder, first, policy)
        p = partition_of(b"uma", w.settings.kafka.partitions)
        msgs = [Incoming(p, i, b"uma", json.dumps(e).encode()) for i, e in enumerate(events)]
        await (await start_batch(w, msgs[:50]))[1]
        log = first.changelog[p]  # state.changelog: the user's behavior slots, then its header
        (good,) = [v for k, v in log if k == b"uma"]
        assert decode_header(good).events_seen == 50

        wiped = MemoryStateStore()  # an empty data dir, restored from the changelog
        before = metrics.REGISTRY.get_sample_value("dupn_state_decode_errors_total") or 0.0
        records = [Rec(i, k, v) for i, (k, v) in enumerate(log)]
        wiped.restore_chunk(p, [*records, Rec(len(log), b"uma", b"\x02undecodable")])
        w2 = make_worker(tiny_encoder, wiped, policy)
        result, delivered = await start_batch(w2, msgs[50:])
        await delivered
        assert [up.state.events_seen for up in result.updates] == [51]
        assert [m.events_seen for m in wiped.published()] == [51]
        ref = reference_vectors(tiny_encoder, records_from_events(events), policy)
        assert np.abs(wiped.published()[0].vector - ref[-1]).max() <= 1e-5
        assert (metrics.REGISTRY.get_sample_value("dupn_state_decode_errors_total") or 0.0) == before + 1

    asyncio.run(go())


# -- 3. a repeated event id: the same verdict for any batching or redelivery ------------------------------
def feed(updater: VectorUpdater, messages: list[Incoming], cuts: list[int], table: dict[str, bytes]) -> None:
    """Apply ``messages`` in batches cut at ``cuts``, writing back what the worker writes (updates and
    re-writes), as the worker's table would keep them."""

    def load(user: str, _m: object) -> UserState | None:
        return decode_state(user, table[user]) if user in table else None

    bounds = [0, *cuts, len(messages)]
    for lo, hi in itertools.pairwise(bounds):
        if lo == hi:
            continue
        res = updater.apply(messages[lo:hi], load)
        for up in res.updates:
            table[up.state.user_id] = encode_state(up.state)
        for state, _ in res.redelivered:
            table[state.user_id] = encode_state(state)


def test_the_issue_s_repro_gives_102_in_one_batch_and_in_two(tiny_encoder: StreamingEncoder) -> None:
    policy = UpdatePolicy("exact")
    events = make_events("ned", 101)
    copy_of_first = {**events[0], "ts": events[-1]["ts"] + 1_000}
    log = [Incoming(0, i, b"ned", json.dumps(e).encode()) for i, e in enumerate([*events, copy_of_first])]
    results = []
    for cuts in ([100], [100, 101]):  # event 101 and the copy in one batch / the copy in a later batch
        table: dict[str, bytes] = {}
        feed(VectorUpdater(tiny_encoder, policy), log, cuts, table)
        results.append(decode_state("ned", table["ned"]).events_seen)
    assert results == [102, 102]  # the copy of event 1 is no longer among the last 100 applied: applied


def test_random_batchings_and_redeliveries_give_identical_results(tiny_encoder: StreamingEncoder) -> None:
    policy = UpdatePolicy("incremental", 7)  # the stored run holds 100..106 behaviors: more than the id window
    rng = random.Random(14)
    users = ["a", "b"]
    log_events: list[dict[str, Any]] = []
    base = {u: make_events(u, 400, seed=k) for k, u in enumerate(users)}
    pos = dict.fromkeys(users, 0)
    for i in range(600):
        u = rng.choice(users)
        earlier = [e for e in log_events if e["user_id"] == u]
        if len(earlier) > 130 and rng.random() < 0.25:  # a repeat of an earlier id, often near the window's edge
            back = rng.choice([rng.randint(1, 130), rng.randint(95, 110)])
            log_events.append({**earlier[-back], "ts": T0 + 10_000_000 + i})
            continue
        log_events.append(base[u][pos[u]])
        pos[u] += 1
    log = [Incoming(0, i, str(e["user_id"]).encode(), json.dumps(e).encode()) for i, e in enumerate(log_events)]
    want = {u: applied_events([e for e in log_events if e["user_id"] == u], policy.window) for u in users}

    finals = []
    for trial in range(12):
        table: dict[str, bytes] = {}
        updater = VectorUpdater(tiny_encoder, policy)
        cuts = sorted(rng.sample(range(1, len(log)), rng.randint(0, 40)))
        if trial % 2:  # a crash: everything after a committed point comes again, on the same states
            committed = rng.randrange(len(log))
            feed(updater, log, cuts, table)
            feed(VectorUpdater(tiny_encoder, policy), log[committed:], sorted(rng.sample(range(1, 40), 5)), table)
        else:
            feed(updater, log, cuts, table)
        finals.append({u: decode_state(u, table[u]) for u in users})

    for u in users:
        history = records_from_events(want[u])
        ref = reference_vectors(tiny_encoder, history, policy)
        for final in finals:
            st = final[u]
            assert st.events_seen == len(want[u]) and st.last_event_id == want[u][-1]["event_id"]
            assert np.array_equal(st.records, history[policy.run_start(st.events_seen):])
            assert st.vector is not None and np.abs(st.vector - ref[-1]).max() <= 1e-5


# -- 4. ts is judged against the record's broker timestamp ------------------------------------------------
def test_ts_is_judged_against_the_record_timestamp_not_the_worker_clock(tiny_encoder: StreamingEncoder) -> None:
    updater = VectorUpdater(tiny_encoder, UpdatePolicy("exact"))
    ev = make_events("ola", 1)[0]  # ts ~ 2023-11-14: long past on the worker's clock
    raw = json.dumps(ev).encode()
    stamp = int(ev["ts"]) - 11 * 60_000  # the broker received it 11 min before its ts: too far ahead

    class FaustMessage(NamedTuple):  # what the lean intake and Faust's events hand over: seconds
        partition: int
        offset: int
        key: bytes
        value: bytes
        timestamp: float

    for msg in (Incoming(0, 0, b"ola", raw, stamp), FaustMessage(0, 0, b"ola", raw, stamp / 1000)):
        res = updater.apply([msg], lambda _u, _m: None)
        assert [r.reason for _, r in res.rejections] == ["ts_out_of_range"], msg
    ok = updater.apply([Incoming(0, 0, b"ola", raw, stamp + 2 * 60_000)], lambda _u, _m: None)
    assert not ok.rejections and ok.updates
    no_stamp = updater.apply([Incoming(0, 0, b"ola", raw)], lambda _u, _m: None)  # none: the wall clock
    assert not no_stamp.rejections


# -- 1. fencing: a batch that outlived the session is written only if the group still knows the worker --
def test_a_frozen_batch_of_a_fenced_out_worker_writes_nothing(
    tiny_encoder: StreamingEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streams.agents as agents

    class Coordinator:
        member_id, generation = "m-1", 3

        def __init__(self, known: bool) -> None:
            self.known, self.beats, self.rejoin = known, 0, False

        async def _do_heartbeat(self) -> bool:
            self.beats += 1
            return self.known

        def request_rejoin(self) -> None:
            self.rejoin = True

    class Thread:
        def __init__(self, coordinator: Coordinator) -> None:
            self.coordinator = coordinator

        def _ensure_consumer(self) -> Any:
            return type("C", (), {"_coordinator": self.coordinator})()

        async def call_thread(self, fun: Any) -> Any:
            return await fun()

    async def go(known: bool, frozen_s: float) -> tuple[MemoryStateStore, Coordinator, bool]:
        store = MemoryStateStore()
        w = make_worker(tiny_encoder, store, UpdatePolicy("exact"))
        coordinator = Coordinator(known)
        w.app = type("App", (), {"consumer": type("K", (), {"_thread": Thread(coordinator)})()})()
        clock = iter([0.0, frozen_s])  # the batch starts, then (after apply) this much later
        monkeypatch.setattr(agents.time, "monotonic", lambda: next(clock, frozen_s))
        p = partition_of(b"vic", w.settings.kafka.partitions)
        msgs = [Incoming(p, i, b"vic", json.dumps(e).encode()) for i, e in enumerate(make_events("vic", 3))]
        try:
            await (await start_batch(w, msgs))[1]
        except agents.FencedOut:
            return store, coordinator, True
        return store, coordinator, False

    session = load_settings(env={}).kafka.session_timeout_s
    store, coordinator, fenced = asyncio.run(go(known=False, frozen_s=session + 5))  # SIGSTOP past the session
    assert fenced and coordinator.beats == 1 and store.local == {} and store.published() == []
    assert coordinator.rejoin  # a rebalance must follow: batches are dropped until it revokes the partitions
    store, coordinator, fenced = asyncio.run(go(known=True, frozen_s=session + 5))  # slow, still a member
    assert not fenced and coordinator.beats == 1 and [m.events_seen for m in store.published()] == [3]
    assert not coordinator.rejoin
    store, coordinator, fenced = asyncio.run(go(known=False, frozen_s=0.01))  # a quick batch is not checked
    assert not fenced and coordinator.beats == 0
