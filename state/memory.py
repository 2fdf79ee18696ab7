"""An in-memory :class:`~state.store.UserStateStore`: the batch path and HTTP views without a broker.

Local copy, changelog and ``user-vectors`` are dicts and lists; values are stored encoded
(:mod:`state.codec`) exactly as RocksDB and the changelog hold them, so a test exercises the
codec and can plant a value that does not decode (:meth:`MemoryStateStore.put_raw`).

Acknowledgements: with ``auto_ack`` (the default) a batch is durable as soon as it is written.
With ``auto_ack=False`` its records wait in :attr:`MemoryStateStore.in_flight` until
:meth:`MemoryStateStore.ack` (or :meth:`MemoryStateStore.fail`), like records the broker has
not acknowledged yet: local reads already see them, the changelog and ``user-vectors`` do not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from core.contracts import VectorMessage, check_vector_encoding, decode_vector_message, encode_vector_message
from state.changelog import DurableMarks, Mark, assemble, changelog_records, mark_of, ring_for
from state.codec import decode_state, encode_state
from state.store import BatchAck, ChangelogRecord, StateWrite, VectorFill, count_bad, user_key
from state.user_state import UserState

DEFAULT_RETAINED = 128  # behaviors kept per user, at most (>= the policy's max_retained: 100 + 25 - 1)


@dataclass
class _Pending:
    delivered: asyncio.Future[None]
    changelog: list[tuple[int, bytes, bytes]]  # partition, key, value
    vectors: list[tuple[bytes, bytes]]
    marks: list[tuple[bytes, Mark]]  # what the changelog holds once acknowledged


@dataclass
class MemoryStateStore:
    auto_ack: bool = True
    local: dict[int, dict[bytes, bytes]] = field(default_factory=dict)  # partition -> key -> encoded state
    changelog: dict[int, list[tuple[bytes, bytes | None]]] = field(default_factory=dict)  # per partition, in order
    vectors: list[tuple[bytes, bytes]] = field(default_factory=list)  # user-vectors records, in order
    persisted: dict[int, int] = field(default_factory=dict)
    in_flight: list[_Pending] = field(default_factory=list)
    retained: int = DEFAULT_RETAINED
    marks: DurableMarks = field(default_factory=DurableMarks)
    fill: VectorFill = field(default_factory=VectorFill)
    vector_encoding: str = "json"  # of the user-vectors values, as the worker's DUPN_VECTOR_ENCODING

    def __post_init__(self) -> None:
        check_vector_encoding(self.vector_encoding)

    # -- UserStateStore ----------------------------------------------------------------
    def read(self, user_id: str, partition: int) -> UserState | None:
        raw = self.local.get(partition, {}).get(user_key(user_id))
        return None if raw is None else self.fill(decode_state(user_id, raw))

    async def write_batch(self, writes: Sequence[StateWrite]) -> BatchAck:
        changelog = []
        marks = []
        state_bytes = 0
        for w in writes:
            key, value = user_key(w.state.user_id), encode_state(w.state)
            self.local.setdefault(w.partition, {})[key] = value
            state_bytes += len(value)
            ring = ring_for(max(self.retained, len(w.state.records)))
            records = changelog_records(w.state, ring, self.marks.get(key))
            changelog += [(w.partition, k, v) for k, v in records]
            marks.append((key, mark_of(w.state, ring)))
        vectors = [(user_key(w.vector.user_id), encode_vector_message(w.vector, self.vector_encoding)) for w in writes]
        pending = _Pending(asyncio.get_running_loop().create_future(), changelog, vectors, marks)
        self.in_flight.append(pending)
        if self.auto_ack:
            self.ack()
        return BatchAck(pending.delivered, state_bytes)

    def restore_chunk(self, partition: int, records: Sequence[ChangelogRecord]) -> Collection[bytes]:
        table = self.local.setdefault(partition, {})
        # the newest complete state per user (state.changelog: highest events_seen, all its behaviors found)
        result = count_bad(assemble(table.get, [(r.key, r.value) for r in records]))
        for key, value in result.writes.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
        if records:
            self.persisted[partition] = records[-1].offset
        return result.users

    def persisted_offset(self, partition: int) -> int | None:
        return self.persisted.get(partition)

    def set_persisted_offset(self, partition: int, offset: int) -> None:
        self.persisted[partition] = offset

    # -- the broker's side, for tests --------------------------------------------------
    def ack(self) -> int:
        """The broker acknowledges every batch in flight: records appended, offsets persisted, futures done."""
        done, self.in_flight = self.in_flight, []
        for pending in done:
            for partition, key, value in pending.changelog:
                log = self.changelog.setdefault(partition, [])
                log.append((key, value))
                self.persisted[partition] = len(log) - 1
            self.vectors.extend(pending.vectors)
            for key, mark in pending.marks:
                self.marks.mark(key, mark)
            if not pending.delivered.done():
                pending.delivered.set_result(None)
        return len(done)

    def fail(self, exc: BaseException) -> None:
        """Delivery of every batch in flight fails; nothing reaches the changelog or ``user-vectors``."""
        done, self.in_flight = self.in_flight, []
        for pending in done:
            if not pending.delivered.done():
                pending.delivered.set_exception(exc)

    def put_raw(self, user_id: str, partition: int, value: bytes) -> None:
        """Plant a stored value as is (e.g. one that does not decode)."""
        self.local.setdefault(partition, {})[user_key(user_id)] = value

    def published(self) -> list[VectorMessage]:
        """The ``user-vectors`` records acknowledged so far, decoded, in order.

        Strict (a record that does not decode raises :class:`core.contracts.VectorDecodeError`): every record
        here was written by :meth:`write_batch`, so one that does not decode is a bug for the test to see."""
        return [decode_vector_message(value) for _, value in self.vectors]
