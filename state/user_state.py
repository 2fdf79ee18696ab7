"""One user's durable state: the behaviors of the current LSTM run and the last vector.

Everything the encoder carries (h, c, per-behavior keys/values) is derived from
these behaviors and lives in a memory cache (:mod:`state.cache`); this object
is what goes to RocksDB and the changelog.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.contracts import UNKNOWN_PROFILE, Profile
from encoder.features import BEHAVIOR_DTYPE, concat_records


@dataclass
class UserState:
    """Durable per-user state.

    ``records`` holds the behaviors from the start of the current LSTM run to
    the newest (at most ``UpdatePolicy.max_retained``); ``window(W)`` is the
    last W of them, what attention pools over. ``source_partition`` /
    ``source_offset`` are the Kafka position of the last applied event: stored
    atomically with the state, they make redelivered events idempotent.
    ``profile`` is the (age_group, gender) codes of the newest applied event that carried one
    (-1 = unknown): the attention context and representation input of the user's vectors.
    """

    user_id: str
    records: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=BEHAVIOR_DTYPE))
    events_seen: int = 0
    last_event_id: str = ""
    source_partition: int = -1
    source_offset: int = -1
    model_version: str = ""
    vector: np.ndarray | None = None  # float32 (rep_dim,), as last published
    updated_at: int = 0  # ms, when the vector was computed
    profile: Profile = UNKNOWN_PROFILE

    @property
    def last_event_ts(self) -> int:
        return int(self.records[-1]["ts"]) if len(self.records) else 0

    def window(self, size: int) -> np.ndarray:
        return self.records[-size:]

    def extend(self, records: np.ndarray, keep_from: int) -> None:
        """Append several behaviors at once, then keep those from history index ``keep_from``."""
        if not len(records):
            return
        first_kept = self.events_seen - len(self.records)
        self.events_seen += len(records)
        drop = max(0, keep_from - first_kept)
        merged = concat_records([self.records, records])
        self.records = merged[drop:]

    def first_record_index(self) -> int:
        """History index (0-based) of ``records[0]``."""
        return self.events_seen - len(self.records)
