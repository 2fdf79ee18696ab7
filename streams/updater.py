"""Apply a batch of raw behavior messages to user states and compute fresh vectors.

Kafka-free and Faust-free so it can be tested and benchmarked alone; the Faust
agent in :mod:`streams.agents` only moves bytes in and out of it.

Per batch:
1. validate each message (bad ones become rejections, nothing else is lost);
2. group by user, keeping each user's arrival order;
3. skip what was already applied (source offset or event id seen);
4. advance every user in one batched encoder call (:meth:`StreamingEncoder.advance`):
   from the cached carried state over the user's new behaviors when the
   policy's run start is unchanged by them, or from zero over the run's stored
   behaviors otherwise (re-anchor, exact mode, cache miss, new model). Only the
   state after a user's last event is ever published, so a run start that moves
   mid-batch costs one rebuild, not one per event;
5. re-pool once per user as of their last event time and emit one vector.
"""

from __future__ import annotations

import copy
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np

from core.contracts import (
    STATE_UNDECODABLE,
    UNKNOWN_PROFILE,
    BehaviorEvent,
    Profile,
    Rejection,
    VectorMessage,
    parse_event,
)
from encoder.features import BEHAVIOR_DTYPE, behavior_records, concat_records, hash_event_id
from encoder.streaming import EncoderState, StreamingEncoder, UpdatePolicy
from state.cache import VersionedLRU
from state.store import ChangelogRecord, StateDecodeError
from state.user_state import UserState


class RawMessage(ChangelogRecord, Protocol):
    """What the updater needs of a ``behavior-events`` message (a Faust or aiokafka record has it):
    a record (offset, key, value) and the partition it came from."""

    @property
    def partition(self) -> int: ...


class Incoming(NamedTuple):
    """A :class:`RawMessage` built by hand (tests, benchmarks, offline tools)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None  # the record's broker timestamp (None: none; the wall clock judges ts)


def record_timestamp_ms(msg: RawMessage) -> int | None:
    """The Kafka record timestamp of ``msg`` in ms, or None when it carries none.

    :class:`Incoming` has ``timestamp_ms``; a Faust ``Message`` (lean intake and Faust's events alike)
    has ``timestamp`` in *seconds* (Faust divides the record's ms by 1000). A negative timestamp
    (Kafka's "none", -1) counts as none.
    """
    ms = getattr(msg, "timestamp_ms", None)
    if ms is None:
        seconds = getattr(msg, "timestamp", None)
        if seconds is None or isinstance(seconds, bool) or not isinstance(seconds, int | float):
            return None
        ms = round(seconds * 1000)
    return int(ms) if ms >= 0 else None


@dataclass
class UserUpdate:
    state: UserState
    vector: VectorMessage
    last_message: RawMessage
    applied: int


@dataclass
class BatchResult:
    updates: list[UserUpdate] = field(default_factory=list)
    rejections: list[tuple[RawMessage, Rejection]] = field(default_factory=list)
    duplicates: int = 0
    # users whose events in this batch were all redeliveries (source offset <= stored offset):
    # their stored state and first message, to be written again (see streams.agents.start_batch)
    redelivered: list[tuple[UserState, RawMessage]] = field(default_factory=list)
    corrupt_states: int = 0
    # the ts (epoch ms) of every event applied, one per event (the per-event freshness metric)
    applied_ts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    steps: int = 0
    rebuilds: int = 0
    encoder_seconds: float = 0.0


StateLoader = Callable[[str, RawMessage], UserState | None]
"""Reads a user's stored state (None: none yet); gets the user's first message of the batch (its partition).

Usually :meth:`state.store.UserStateStore.read`; a stored value that does not decode raises
:class:`StateDecodeError`: counted in ``corrupt_states``, and the user's events of the batch are
rejected with reason ``state_undecodable`` (to the DLQ) instead of being applied to an empty state,
which would write over the user's durable history. Nothing is written for that user."""


@dataclass(frozen=True)
class ReadSnapshot:
    """What a read computes from, taken under the batch lock: the encoder and the user's carried state."""

    encoder: StreamingEncoder
    carried: EncoderState | None  # a copy of the cached one; None: rebuilt from ``records``
    records: np.ndarray
    profile: Profile = UNKNOWN_PROFILE

    def encoder_state(self) -> EncoderState:
        if self.carried is not None:
            return self.carried
        (rebuilt,) = self.encoder.replay([self.records], [self.profile])
        return rebuilt


class VectorUpdater:
    def __init__(self, encoder: StreamingEncoder, policy: UpdatePolicy, cache_capacity: int = 20_000) -> None:
        if policy.window != encoder.window:
            raise ValueError(f"policy window {policy.window} != model window {encoder.window}")
        self.encoder = encoder
        self.policy = policy
        self.cache: VersionedLRU[EncoderState] = VersionedLRU(cache_capacity)
        self.max_future_ms = 600_000

    # -- public ------------------------------------------------------------------------
    def apply(self, messages: Sequence[RawMessage], load: StateLoader) -> BatchResult:
        result = BatchResult()
        pending = self._parse(messages, result)
        batches = []
        for user_id, events in pending.items():
            state = self._load(user_id, events, load, result)
            if state is None:
                continue
            ub = _UserBatch(state, self.policy.window)
            result.duplicates += ub.add_events(events)
            if ub.kept:
                batches.append(ub)
            elif ub.redelivered or ub.advanced:
                result.redelivered.append((ub.state, events[0][0]))
        result.applied_ts = _UserBatch.encode_new(batches)["ts"]
        self._encode(batches, result)
        for ub in batches:
            ub.commit(self.policy.run_start(ub.n))
        self._publish(batches, result)
        return result

    def encoder_state(self, state: UserState) -> EncoderState:
        """The carried encoder state behind a stored user state (cached or rebuilt)."""
        version = (self.encoder.model_version, state.events_seen)
        cached = self.cache.get(state.user_id, version)
        if cached is not None:
            return cached
        (rebuilt,) = self.encoder.replay([self._run_records(state.records, state.events_seen)], [state.profile])
        self.cache.put(state.user_id, version, rebuilt)
        return rebuilt

    def read_snapshot(self, state: UserState) -> ReadSnapshot:
        """For a read (HTTP re-pool, explain), taken under the batch lock: the encoder, a copy of the
        cached carried state (None: not cached), the run's records to rebuild it from and the profile.

        Nothing is put in the cache (a read must not evict the users the batches keep hot), and the
        copy is the reader's own: the next batch advances the cached one in place."""
        cached = self.cache.peek(state.user_id, (self.encoder.model_version, state.events_seen))
        records = self._run_records(state.records, state.events_seen)
        return ReadSnapshot(self.encoder, None if cached is None else copy.deepcopy(cached), records, state.profile)

    # -- steps -------------------------------------------------------------------------
    def _parse(
        self, messages: Sequence[RawMessage], result: BatchResult
    ) -> dict[str, list[tuple[RawMessage, BehaviorEvent]]]:
        now = int(time.time() * 1000)
        pending: dict[str, list[tuple[RawMessage, BehaviorEvent]]] = {}
        for msg in messages:
            # ts is judged against the record's broker timestamp, so a redelivery gets the same verdict;
            # the worker's clock only for a record without one.
            stamp = record_timestamp_ms(msg)
            parsed = parse_event(
                msg.key, msg.value, now_ms=now if stamp is None else stamp, max_future_ms=self.max_future_ms
            )
            if isinstance(parsed, Rejection):
                result.rejections.append((msg, parsed))
            else:
                pending.setdefault(parsed.user_id, []).append((msg, parsed))
        return pending

    def _load(
        self,
        user_id: str,
        events: Sequence[tuple[RawMessage, BehaviorEvent]],
        load: StateLoader,
        result: BatchResult,
    ) -> UserState | None:
        """The user's stored state (a fresh one for a new user); None when it does not decode: then the
        user's events are rejected (``state_undecodable``) and nothing is written for the user."""
        try:
            state = load(user_id, events[0][0])
        except StateDecodeError as exc:
            result.corrupt_states += 1
            why = Rejection(STATE_UNDECODABLE, f"stored state does not decode, event not applied: {exc}"[:500])
            result.rejections.extend((msg, why) for msg, _ in events)
            return None
        return UserState(user_id=user_id) if state is None else state

    def _encode(self, batches: list[_UserBatch], result: BatchResult) -> None:
        """One encoder call for the batch: continue cached runs, rebuild the others."""
        t0 = time.perf_counter()
        starts: list[EncoderState] = []
        sequences: list[np.ndarray] = []
        for ub in batches:
            carried = self._carried(ub)
            if carried is not None:
                carried.use_profile(ub.state.profile)  # an event of this batch may have brought a new one
                starts.append(carried)
                sequences.append(ub.new_records())
                result.steps += len(ub.kept)
            else:
                starts.append(self.encoder.init_state(ub.state.profile))
                sequences.append(self._run_records(ub.records(), ub.n))
                result.rebuilds += 1
        try:
            advanced = self.encoder.advance(starts, sequences)
        except Exception:
            for ub in batches:  # cached states may be half-advanced: drop them
                self.cache.discard(ub.state.user_id)
            raise
        version = self.encoder.model_version
        for ub, st in zip(batches, advanced, strict=True):
            ub.encoded = st
            self.cache.put(ub.state.user_id, (version, ub.n), st)
        result.encoder_seconds += time.perf_counter() - t0

    def _carried(self, ub: _UserBatch) -> EncoderState | None:
        """The cached state to continue from, if the batch's events keep the run start where it was."""
        n0 = ub.state.events_seen
        if self.policy.run_start(ub.n) != self.policy.run_start(n0):
            return None
        if n0 == 0:
            return self.encoder.init_state(ub.state.profile)
        return self.cache.get(ub.state.user_id, (self.encoder.model_version, n0))

    def _run_records(self, records: np.ndarray, n: int) -> np.ndarray:
        """The behaviors of the current run, given the newest ``records`` up to history index ``n``."""
        start = self.policy.run_start(n) - (n - len(records))
        return records[max(0, start) :]

    def _publish(self, batches: list[_UserBatch], result: BatchResult) -> None:
        if not batches:
            return
        t0 = time.perf_counter()
        encoded = [self.encoder_state(ub.state) if ub.encoded is None else ub.encoded for ub in batches]
        vectors = self.encoder.represent(encoded, [ub.kept[-1].ts for ub in batches])  # = state.last_event_ts
        result.encoder_seconds += time.perf_counter() - t0
        now = int(time.time() * 1000)
        version = self.encoder.model_version
        for ub, vec in zip(batches, vectors, strict=True):
            state = ub.state
            state.vector, state.model_version, state.updated_at = vec, version, now
            update = UserUpdate(state, vector_message(state), ub.last_message, applied=len(ub.kept))
            result.updates.append(update)


class _UserBatch:
    """One user's events of the current batch, applied on top of the stored state.

    Duplicates are skipped event by event (cheap set lookups); the kept events of every
    user of the batch then become records in one column-wise pass (:meth:`encode_new`),
    and reach ``state.records`` in one concatenation at the end of the batch.

    A repeated event id is judged on the event sequence itself: it is a duplicate when one of the
    user's last ``dedup_window`` applied events (as of its own position, earlier events of this
    batch included) has the same id. The stored run always holds at least those, so the verdict
    depends neither on batch boundaries nor on redelivery.
    """

    def __init__(self, state: UserState, dedup_window: int) -> None:
        self.state = state
        self.dedup_window = dedup_window
        self.advanced = False  # only duplicates were new: the source offset moved, nothing was applied
        self.kept: list[BehaviorEvent] = []
        self.hashes: list[int] = []  # event-id hashes of ``kept``
        self.n = state.events_seen
        self.last_message: RawMessage = _NO_MESSAGE
        self.encoded: EncoderState | None = None
        self._new: np.ndarray | None = None
        self.redelivered = False  # a message at or below the stored source offset came again

    def add_events(self, events: Sequence[tuple[RawMessage, BehaviorEvent]]) -> int:
        """Keep the user's events of this batch in arrival order, skipping what was already applied:
        a redelivered source message (offset at or below the one stored with the state, or kept
        before it in this batch) or an event id among the last ``dedup_window`` applied events at its position.
        Returns how many were skipped."""
        st = self.state
        partition, offset = st.source_partition, st.source_offset
        recent: deque[int] | None = None  # event hashes of the last dedup_window applied events
        for msg, ev in events:
            if msg.partition == partition and msg.offset <= offset:
                self.redelivered = True
                continue
            # a skipped repeat is still "reflected" by the state: its offset is stored too, so a
            # redelivery of it is skipped by offset, never judged again against a later run
            partition, offset = msg.partition, msg.offset
            event_hash = hash_event_id(ev.event_id)
            if recent is None:
                recent = deque(st.records["event_hash"][-self.dedup_window :].tolist(), self.dedup_window)
            if event_hash in recent:
                continue
            recent.append(event_hash)
            self.kept.append(ev)
            self.hashes.append(event_hash)
            self.last_message = msg
        if self.kept:
            self.n += len(self.kept)
            st.last_event_id = self.kept[-1].event_id
            for ev in reversed(self.kept):  # the newest applied event that carries a profile sets it
                if ev.profile is not None:
                    st.profile = ev.profile
                    break
        if (partition, offset) != (st.source_partition, st.source_offset):
            st.source_partition, st.source_offset = partition, offset
            self.advanced = not self.kept
        return len(events) - len(self.kept)

    @staticmethod
    def encode_new(batches: Sequence[_UserBatch]) -> np.ndarray:
        """The kept events of all users as records in one pass; each user gets its slice (a view).

        Returns all of them (the batch's applied events, in user order)."""
        events = [ev for ub in batches for ev in ub.kept]
        if not events:
            return np.zeros(0, dtype=BEHAVIOR_DTYPE)
        (_, _, ts, event_types, item_ids, shop_ids, brand_ids, category_ids, tags, scenarios, _) = zip(
            *events, strict=True
        )
        runs = [len(ub.kept) for ub in batches]
        records = behavior_records(
            ts=ts,
            event_hashes=[h for ub in batches for h in ub.hashes],
            event_types=event_types,
            item_ids=item_ids,
            shop_ids=shop_ids,
            brand_ids=brand_ids,
            category_ids=category_ids,
            tags=tags,
            scenarios=scenarios,
            runs=runs,
            prev_ts=[ub.state.last_event_ts if ub.state.events_seen else None for ub in batches],
        )
        lo = 0
        for ub, k in zip(batches, runs, strict=True):
            ub._new = records[lo : lo + k]
            lo += k
        return records

    def new_records(self) -> np.ndarray:
        if self._new is None:
            raise RuntimeError("encode_new() first")
        return self._new

    def records(self) -> np.ndarray:
        """Stored records followed by this batch's, as one array."""
        if not self.kept:
            return self.state.records
        return concat_records([self.state.records, self.new_records()])

    def commit(self, keep_from: int) -> None:
        self.state.extend(self.new_records(), keep_from)


_NO_MESSAGE = Incoming(-1, -1, None, None)


def vector_message(state: UserState) -> VectorMessage:
    if state.vector is None:
        raise ValueError(f"user {state.user_id!r} has no vector yet")
    return VectorMessage(
        user_id=state.user_id,
        model_version=state.model_version,
        vector=state.vector,
        events_seen=state.events_seen,
        last_event_id=state.last_event_id,
        last_event_ts=state.last_event_ts,
        updated_at=state.updated_at,
    )
