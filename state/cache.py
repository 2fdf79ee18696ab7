"""Bounded memory cache of derived per-user state, valid only for one exact version.

The encoder's carried state is a pure function of the durable user state
(behaviors + events_seen + model version), so it needs no changelog: an entry
is looked up together with the version tag it was computed for, and anything
else (a restart, a rebalance, a new model) is simply a miss that the caller
rebuilds from the durable state.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class VersionedLRU(Generic[V]):
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._data: OrderedDict[str, tuple[Hashable, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str, version: Hashable) -> V | None:
        entry = self._data.get(key)
        if entry is None or entry[0] != version:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return entry[1]

    def peek(self, key: str, version: Hashable) -> V | None:
        """Like :meth:`get`, but leaves the order and the hit counts alone (a reader's look)."""
        entry = self._data.get(key)
        return None if entry is None or entry[0] != version else entry[1]

    def put(self, key: str, version: Hashable, value: V) -> None:
        self._data[key] = (version, value)
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def discard(self, key: str) -> None:
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)
