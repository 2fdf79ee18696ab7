"""Bench part ``write-cost``: changelog and vector bytes per applied event, at live rate and at drain.

What is measured: the exact records :meth:`streams.table_store.TableStateStore.encode` hands to the
producer (the same method ``write_batch`` calls; no broker involved: bytes do not depend on it), for
the bench stream's users replayed batch by batch with the update policy's retention (incremental,
window 100, reanchor_every 25, as the worker keeps it), against today's format before this change
(one record per user per batch: key = user, value = the full state with its vector, codec format 1).

- **live**: one event per user per batch (the users of the stream, round after round), every batch
  acknowledged before the next (the writer knows what the changelog holds);
- **drain**: the stream in arrival order cut into ``batch_max`` batches (the worker's drain batches:
  a user's events of one batch make one write);
- ``first_write_bytes_per_user``: a user's first write after a restart (every retained slot again).

Bytes are key + value. ``*_with_kafka_overhead`` adds an estimate of the Kafka record format v2:
~8 bytes per record (length, attributes, timestamp and offset deltas, key/value lengths, header count
varints) plus the 61-byte batch header per partition per write, spread over the batch's records.
Vectors: the ``user-vectors`` value per write, per event, in each encoding side by side
(``DUPN_VECTOR_ENCODING``: ``json`` = contract v1, ``f32`` and ``f16`` = binary contract v2; the same
:func:`core.contracts.encode_vector_message` the worker's store calls). The key is not counted (it is the
changelog's too, and the same in every encoding).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from core.contracts import VECTOR_ENCODINGS, VectorMessage, encode_vector_message
from core.settings import WorkerSettings
from encoder.features import records_from_events
from encoder.streaming import UpdatePolicy
from ops.bench.common import BenchConfig, Stream, note
from state.codec import encode_state
from state.store import StateWrite
from state.user_state import UserState
from streams.table_store import TableStateStore

RECORD_OVERHEAD = 8  # bytes per record in a v2 record batch (varints; estimate)
BATCH_OVERHEAD = 61  # bytes of a record batch header
POLICY = UpdatePolicy("incremental", 25, 100)
LIVE_ROUNDS = 20


def write_cost(cfg: BenchConfig, stream: Stream) -> dict[str, Any]:
    histories = _histories(stream.events)
    live = _live(histories)
    drain = _drain(stream.events, histories, cfg_batch(cfg))
    vectors = live["new"]["vector_bytes_per_event"]
    note(f"write-cost: live {live['new']['bytes_per_event']:.0f} B/event (was {live['old']['bytes_per_event']:.0f}), "
         f"drain {drain['new']['bytes_per_event']:.0f} (was {drain['old']['bytes_per_event']:.0f}); vectors live "
         + ", ".join(f"{enc} {n:.0f}" for enc, n in vectors.items()) + " B/event")
    return {
        "measured": "the records TableStateStore.encode hands to the producer (what write_batch sends)",
        "live_bytes_per_event": live["new"]["bytes_per_event"],
        "drain_bytes_per_event": drain["new"]["bytes_per_event"],
        "baseline_live_bytes_per_event": live["old"]["bytes_per_event"],
        "baseline_drain_bytes_per_event": drain["old"]["bytes_per_event"],
        "live_vector_bytes_per_event": vectors,  # per encoding: json (v1), f32, f16 (v2)
        "drain_vector_bytes_per_event": drain["new"]["vector_bytes_per_event"],
        "live": live,
        "drain": drain,
        "first_write_bytes_per_user": live["first_write_bytes_per_user"],
    }


def cfg_batch(cfg: BenchConfig) -> int:
    """The worker's drain batch size (``DUPN_BATCH_MAX``'s default: the bench config has none)."""
    return WorkerSettings().batch_max


def _histories(events: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        by_user[str(e["user_id"])].append(e)
    return {u: records_from_events(evs) for u, evs in by_user.items()}


def _state(user: str, history: np.ndarray, n: int) -> UserState:
    first = min(POLICY.run_start(n), max(0, n - POLICY.window))
    vector = np.linspace(-1, 1, 256, dtype=np.float32)
    return UserState(user, history[first:n].copy(), n, f"{user}-e{n - 1}", 0, n, "model-v1", vector,
                     1_700_000_000_000 + n)


def _live(histories: dict[str, np.ndarray]) -> dict[str, Any]:
    """Users past their first window, one event each per batch, ``LIVE_ROUNDS`` rounds."""
    store = TableStateStore(None, None, "user-vectors", retained=lambda: POLICY.max_retained)
    users = [u for u, h in histories.items() if len(h) > LIVE_ROUNDS + 1]
    first = _Tally()
    start = {u: len(histories[u]) - LIVE_ROUNDS for u in users}
    first.add(store, [_write(u, histories[u], start[u] - 1) for u in users], count=len(users))
    old, new = _Tally(), _Tally()
    for r in range(LIVE_ROUNDS):
        writes = [_write(u, histories[u], start[u] + r) for u in users]
        new.add(store, writes, count=len(writes))
        old.add_old(writes, count=len(writes))
    return {"users": len(users), "rounds": LIVE_ROUNDS, "old": old.summary(), "new": new.summary(),
            "first_write_bytes_per_user": first.summary()["bytes_per_event"]}


def _drain(events: Sequence[dict[str, Any]], histories: dict[str, np.ndarray], batch: int) -> dict[str, Any]:
    store = TableStateStore(None, None, "user-vectors", retained=lambda: POLICY.max_retained)
    seen: dict[str, int] = defaultdict(int)
    old, new = _Tally(), _Tally()
    for lo in range(0, len(events), batch):
        chunk = events[lo : lo + batch]
        for e in chunk:
            seen[str(e["user_id"])] += 1
        users = dict.fromkeys(str(e["user_id"]) for e in chunk)
        writes = [_write(u, histories[u], seen[u]) for u in users]
        new.add(store, writes, count=len(chunk))
        old.add_old(writes, count=len(chunk))
    return {"batch_max": batch, "events": len(events), "old": old.summary(), "new": new.summary()}


def _write(user: str, history: np.ndarray, n: int) -> StateWrite:
    state = _state(user, history, n)
    vector = VectorMessage(user, state.model_version, state.vector, n, state.last_event_id,  # type: ignore[arg-type]
                           state.last_event_ts, state.updated_at)
    return StateWrite(0, state, vector)


class _Tally:
    def __init__(self) -> None:
        self.events = self.records = self.batches = self.bytes = 0
        self.vector_bytes = dict.fromkeys(VECTOR_ENCODINGS, 0)

    def add(self, store: TableStateStore, writes: Sequence[StateWrite], count: int) -> None:
        _, records, marks, _ = store.encode(writes)
        for key, mark in marks:  # acknowledged before the next batch
            store.marks.mark(key, mark)
        self._count(((k, v) for items in records.values() for k, v in items), len(records), writes, count)

    def add_old(self, writes: Sequence[StateWrite], count: int) -> None:
        self._count(((w.state.user_id.encode(), encode_state(w.state)) for w in writes), 1, writes, count)

    def _count(self, records: Iterable[tuple[bytes, bytes]], batches: int, writes: Sequence[StateWrite],
               count: int) -> None:
        for key, value in records:
            self.records += 1
            self.bytes += len(key) + len(value)
        self.batches += batches
        self.events += count
        for encoding in VECTOR_ENCODINGS:
            self.vector_bytes[encoding] += sum(len(encode_vector_message(w.vector, encoding)) for w in writes)

    def summary(self) -> dict[str, Any]:
        per = max(1, self.events)
        overhead = self.records * RECORD_OVERHEAD + self.batches * BATCH_OVERHEAD
        return {
            "bytes_per_event": self.bytes / per,
            "bytes_per_event_with_kafka_overhead": (self.bytes + overhead) / per,
            "records_per_event": self.records / per,
            "json_vector_bytes_per_event": self.vector_bytes["json"] / per,  # the key earlier runs have
            "vector_bytes_per_event": {enc: n / per for enc, n in self.vector_bytes.items()},
        }
