"""A crash point for tests: SIGKILL the worker between its local state write and the broker's ack.

``DUPN_FAULT_KILL_AFTER_STATES=N`` (test only; unset in production) makes the
worker kill itself right after the local RocksDB write that brings the states
it has written to N, before that batch's changelog and vector records are
produced. It is the one window a random ``kill -9`` rarely hits but that decides
whether a crash can lose an applied event (see docs/guarantees.md), so the
crash tests hit it on purpose.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from streams.batch_io import BatchWriter, StateWrite

if TYPE_CHECKING:
    from streams.worker import Worker

ENV = "DUPN_FAULT_KILL_AFTER_STATES"


def install(w: Worker) -> None:
    limit = int(os.environ.get(ENV, "0") or 0)
    if limit > 0 and w.table is not None:
        w.batch_writer = _KillingWriter(w.app, w.table, w.settings.kafka.vectors_topic, limit)


class _KillingWriter(BatchWriter):
    def __init__(self, app: Any, table: Any, vectors_topic: str, limit: int) -> None:
        super().__init__(app, table, vectors_topic)
        self._left = limit

    def _put_local(self, partition: int, writes: Sequence[StateWrite]) -> None:
        super()._put_local(partition, writes)
        self._left -= len(writes)
        if self._left <= 0:
            os.kill(os.getpid(), signal.SIGKILL)
