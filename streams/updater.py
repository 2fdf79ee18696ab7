"""Apply a batch of raw behavior messages to user states and compute fresh vectors.

Kafka-free and Faust-free so it can be tested and benchmarked alone; the Faust
agent in :mod:`streams.agents` only moves bytes in and out of it.

Per batch:
1. validate each message (bad ones become rejections, nothing else is lost);
2. group by user, keeping each user's arrival order;
3. skip what was already applied (source offset or event id seen);
4. advance users round by round (the r-th pending event of every user in one
   batched encoder call), stepping from the cached carried state when the
   policy's run start is unchanged, or rebuilding the run from the stored
   behaviors otherwise (re-anchor, exact mode, cache miss, new model);
5. re-pool once per user as of their last event time and emit one vector.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from encoder.features import make_record
from encoder.streaming import EncoderState, StreamingEncoder, UpdatePolicy
from state.cache import VersionedLRU
from state.codec import StateDecodeError, decode_state
from state.user_state import UserState
from streams.contracts import BehaviorEvent, Rejection, VectorMessage, parse_event


@dataclass(frozen=True)
class Incoming:
    """One raw message from ``behavior-events`` (``handle`` is opaque to this module)."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    handle: Any = None


@dataclass
class UserUpdate:
    state: UserState
    vector: VectorMessage
    last_message: Incoming
    applied: int


@dataclass
class BatchResult:
    updates: list[UserUpdate] = field(default_factory=list)
    rejections: list[tuple[Incoming, Rejection]] = field(default_factory=list)
    duplicates: int = 0
    corrupt_states: int = 0
    steps: int = 0
    rebuilds: int = 0
    encoder_seconds: float = 0.0


StateLoader = Callable[[str, Incoming], bytes | None]
"""Reads a user's stored state; gets the user's first message of the batch (its partition)."""


class VectorUpdater:
    def __init__(self, encoder: StreamingEncoder, policy: UpdatePolicy, cache_capacity: int = 20_000) -> None:
        if policy.window != encoder.window:
            raise ValueError(f"policy window {policy.window} != model window {encoder.window}")
        self.encoder = encoder
        self.policy = policy
        self.cache: VersionedLRU[EncoderState] = VersionedLRU(cache_capacity)
        self.max_future_ms = 600_000

    # -- public ------------------------------------------------------------------------
    def apply(self, messages: Sequence[Incoming], load: StateLoader) -> BatchResult:
        result = BatchResult()
        pending = self._parse(messages, result)
        states: dict[str, UserState] = {}
        for user_id, events in pending.items():
            states[user_id] = self._load(user_id, events[0][0], load, result)
        applied = self._advance(pending, states, result)
        self._publish(applied, states, result)
        return result

    def encoder_state(self, state: UserState) -> EncoderState:
        """The carried encoder state behind a stored user state (cached or rebuilt)."""
        version = (self.encoder.model_version, state.events_seen)
        cached = self.cache.get(state.user_id, version)
        if cached is not None:
            return cached
        (rebuilt,) = self.encoder.replay([self._run_records(state)])
        self.cache.put(state.user_id, version, rebuilt)
        return rebuilt

    # -- steps -------------------------------------------------------------------------
    def _parse(
        self, messages: Sequence[Incoming], result: BatchResult
    ) -> dict[str, list[tuple[Incoming, BehaviorEvent]]]:
        now = int(time.time() * 1000)
        pending: dict[str, list[tuple[Incoming, BehaviorEvent]]] = {}
        for msg in messages:
            parsed = parse_event(msg.key, msg.value, now_ms=now, max_future_ms=self.max_future_ms)
            if isinstance(parsed, Rejection):
                result.rejections.append((msg, parsed))
            else:
                pending.setdefault(parsed.user_id, []).append((msg, parsed))
        return pending

    def _load(self, user_id: str, msg: Incoming, load: StateLoader, result: BatchResult) -> UserState:
        raw = load(user_id, msg)
        if raw is None:
            return UserState(user_id=user_id)
        try:
            return decode_state(user_id, raw)
        except StateDecodeError:
            result.corrupt_states += 1
            return UserState(user_id=user_id)

    def _advance(
        self,
        pending: dict[str, list[tuple[Incoming, BehaviorEvent]]],
        states: dict[str, UserState],
        result: BatchResult,
    ) -> dict[str, tuple[Incoming, int]]:
        applied: dict[str, tuple[Incoming, int]] = {}
        rounds = max((len(v) for v in pending.values()), default=0)
        for r in range(rounds):
            to_step: list[tuple[str, EncoderState, np.ndarray]] = []
            to_rebuild: list[str] = []
            for user_id, events in pending.items():
                if r >= len(events):
                    continue
                msg, ev = events[r]
                state = states[user_id]
                record = self._record(ev, state)
                if state.already_applied(msg.partition, msg.offset, int(record["event_hash"])):
                    result.duplicates += 1
                    continue
                carried = self._carried_before(state)
                state.append(record, keep_from=self.policy.run_start(state.events_seen + 1))
                state.source_partition, state.source_offset = msg.partition, msg.offset
                state.last_event_id = ev.event_id
                applied[user_id] = (msg, applied.get(user_id, (msg, 0))[1] + 1)
                if carried is not None and self._same_run(state.events_seen):
                    to_step.append((user_id, carried, record))
                else:
                    to_rebuild.append(user_id)
            self._run_round(to_step, to_rebuild, states, result)
        return applied

    def _record(self, ev: BehaviorEvent, state: UserState) -> np.ndarray:
        prev = state.last_event_ts if state.events_seen else None
        return make_record(
            ts=ev.ts,
            event_id=ev.event_id,
            event_type=ev.event_type,
            item_id=ev.item_id,
            shop_id=ev.shop_id,
            brand_id=ev.brand_id,
            category_id=ev.category_id,
            tags=ev.tags,
            scenario=ev.scenario,
            prev_ts=prev,
        )

    def _carried_before(self, state: UserState) -> EncoderState | None:
        if state.events_seen == 0:
            return self.encoder.init_state()
        return self.cache.get(state.user_id, (self.encoder.model_version, state.events_seen))

    def _same_run(self, n: int) -> bool:
        return self.policy.run_start(n) == self.policy.run_start(n - 1)

    def _run_records(self, state: UserState) -> np.ndarray:
        start = self.policy.run_start(state.events_seen) - state.first_record_index()
        return state.records[max(0, start) :]

    def _run_round(
        self,
        to_step: list[tuple[str, EncoderState, np.ndarray]],
        to_rebuild: list[str],
        states: dict[str, UserState],
        result: BatchResult,
    ) -> None:
        t0 = time.perf_counter()
        version = self.encoder.model_version
        if to_step:
            stepped = self.encoder.step([c for _, c, _ in to_step], np.stack([rec for _, _, rec in to_step]))
            for (user_id, _, _), new in zip(to_step, stepped, strict=True):
                self.cache.put(user_id, (version, states[user_id].events_seen), new)
            result.steps += len(to_step)
        if to_rebuild:
            rebuilt = self.encoder.replay([self._run_records(states[u]) for u in to_rebuild])
            for user_id, new in zip(to_rebuild, rebuilt, strict=True):
                self.cache.put(user_id, (version, states[user_id].events_seen), new)
            result.rebuilds += len(to_rebuild)
        result.encoder_seconds += time.perf_counter() - t0

    def _publish(
        self, applied: dict[str, tuple[Incoming, int]], states: dict[str, UserState], result: BatchResult
    ) -> None:
        if not applied:
            return
        users = list(applied)
        enc_states = [self.encoder_state(states[u]) for u in users]
        t0 = time.perf_counter()
        vectors = self.encoder.represent(enc_states, [states[u].last_event_ts for u in users])
        result.encoder_seconds += time.perf_counter() - t0
        now = int(time.time() * 1000)
        version = self.encoder.model_version
        for user_id, vec in zip(users, vectors, strict=True):
            state = states[user_id]
            state.vector, state.model_version, state.updated_at = vec, version, now
            msg, count = applied[user_id]
            result.updates.append(
                UserUpdate(state=state, vector=vector_message(state), last_message=msg, applied=count)
            )


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
