"""The user-state store: the one way user states are read, written and restored.

One interface, two implementations (modelled on quix-streams' ``state/base/partition.py``
with its ``rocksdb/`` and ``memory/`` stores):

- ``streams.table_store.TableStateStore``: the worker's, on Faust's RocksDB table and its
  changelog (one ``WriteBatch`` and one produce batch per partition, persisted offsets);
- :class:`state.memory.MemoryStateStore`: dicts and a hand-released acknowledgement, so the
  batch path and the HTTP views are tested without a broker.

The store owns the codec (:mod:`state.codec`) in both directions: callers see
:class:`UserState` and :class:`VectorMessage` only, and a stored value that does not
decode raises :class:`StateDecodeError` from :meth:`UserStateStore.read`. Changelog records
are the store's own encoding already, so :meth:`UserStateStore.restore_chunk` takes raw
bytes and does not decode them.

The contract behind docs/guarantees.md (3, 5 and 6): after :meth:`write_batch` returns, its
states are readable locally (the next batch is applied on top of them); its acknowledgement
is done only once the changelog and vector records are durable and the persisted changelog
offset is recorded; a caller acknowledges its source messages only after that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from core import metrics
from core.contracts import VectorMessage
from state.cache import VersionedLRU
from state.changelog import Assembled
from state.codec import StateDecodeError, newest_state
from state.user_state import UserState

__all__ = [
    "BatchAck", "ChangelogRecord", "StateDecodeError", "StateWrite", "UserStateStore", "VectorFill",
    "count_bad", "pick_newest_state", "user_key",
]


@dataclass(frozen=True)
class StateWrite:
    """One user's new state and the vector to publish with it."""

    partition: int  # the table partition = the source partition of the user's events
    state: UserState
    vector: VectorMessage


@dataclass(frozen=True)
class BatchAck:
    """What :meth:`UserStateStore.write_batch` hands back once the local writes are done."""

    delivered: asyncio.Future[None]  # done when every changelog and vector record is durable
    state_bytes: int  # encoded size of the states written (the state-size gauge)


class ChangelogRecord(Protocol):
    """A changelog record as a consumer returns it (an aiokafka ``ConsumerRecord`` has it)."""

    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class ChangelogPartitions(Protocol):
    """What a bulk restore needs of a store: write a chunk of changelog records, record offsets."""

    def restore_chunk(self, partition: int, records: Sequence[ChangelogRecord]) -> Collection[bytes]:
        """Apply ``records`` (offset order) as the changelog would: the last value per key (no value =
        delete) in one local write, then the persisted offset = the offset of the last record.
        Returns the keys written."""
        ...

    def persisted_offset(self, partition: int) -> int | None:
        """The changelog offset up to which the local copy of ``partition`` is complete (None: none)."""
        ...

    def set_persisted_offset(self, partition: int, offset: int) -> None: ...


class UserStateStore(ChangelogPartitions, Protocol):
    def read(self, user_id: str, partition: int) -> UserState | None:
        """The user's state in the local copy of ``partition`` (None: unknown user).

        Raises :class:`StateDecodeError` for a stored value this version cannot decode."""
        ...

    async def write_batch(self, writes: Sequence[StateWrite]) -> BatchAck:
        """Write the states locally and hand their changelog records and the vectors to the producer.

        Returns once the local writes are done; ``delivered`` is the broker's acknowledgement."""
        ...


def pick_newest_state(values: Sequence[bytes | None]) -> bytes | None:
    """Restore's rule for one key (:func:`state.codec.newest_state`: the highest ``events_seen`` wins, a
    value that does not decode never wins over one that does), counting the values that did not decode
    in ``dupn_state_decode_errors_total``: they are quarantined, never restored over a decodable state."""
    value, bad = newest_state(values)
    if bad:
        metrics.CORRUPT_STATES.inc(bad)
    return value


def user_key(user_id: str) -> bytes:
    """The table, changelog and ``user-vectors`` key of a user."""
    return user_id.encode("utf-8")


def count_bad(result: Assembled) -> Assembled:
    """Count a restored chunk's values that lost as undecodable or incomplete (quarantined, never restored
    over a good state) in ``dupn_state_decode_errors_total``."""
    if result.bad:
        metrics.CORRUPT_STATES.inc(result.bad)
    return result


Vectorize = Callable[[UserState], tuple[np.ndarray, str]]
"""The vector of a state, recomputed from its behaviors, and the model version that computed it."""


class VectorFill:
    """Gives a restored state (the changelog carries no vector: :mod:`state.changelog`) its vector on read.

    The vector is recomputed from the restored behaviors (``vectorize``: the worker's encoder) and kept
    in a small cache for that exact state (events_seen, last_event_id, model version), so repeated
    reads of an idle user do not recompute it; the next event writes a state with its vector anyway."""

    def __init__(self, vectorize: Vectorize | None = None, capacity: int = 10_000) -> None:
        self.vectorize = vectorize
        self._cache: VersionedLRU[tuple[np.ndarray, str]] = VersionedLRU(capacity)

    def __call__(self, state: UserState) -> UserState:
        if state.vector is not None or not len(state.records) or self.vectorize is None:
            return state
        version = (state.events_seen, state.last_event_id, state.model_version)
        got = self._cache.get(state.user_id, version)
        if got is None:
            got = self.vectorize(state)
            self._cache.put(state.user_id, version, got)
        state.vector, state.model_version = got[0].copy(), got[1]
        return state
