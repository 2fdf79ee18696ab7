"""A crash point for tests: SIGKILL the worker between its local state write and the broker's ack.

``DUPN_FAULT_KILL_AFTER_STATES=N`` (test only; unset in production) makes the
worker kill itself right after the local RocksDB write that brings the states
it has written to N, before that batch's changelog and vector records are
produced. It is the one window a random ``kill -9`` rarely hits but that decides
whether a crash can lose an applied event (see docs/guarantees.md), so the
crash tests hit it on purpose.

A freeze point for the zombie test: ``DUPN_FAULT_FREEZE_AFTER_READS=N`` makes the worker stop
itself (SIGSTOP, the whole process, heartbeats included) at the N-th state read of its batches,
i.e. while applying a batch, before anything of it is written. The test lets it sleep past the
session timeout, then sends SIGCONT: the worker wakes as a zombie holding an applied batch.
``DUPN_FAULT_FAIL_USER=<user_id>`` (test only) makes every state write that includes that user
raise: a poison batch that fails on every attempt, for the quarantine test (docs/guarantees.md,
"Batches that fail").
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import Any

from state.store import BatchAck, StateWrite
from streams.context import Worker
from streams.table_store import TableStateStore

ENV = "DUPN_FAULT_KILL_AFTER_STATES"
FREEZE_ENV = "DUPN_FAULT_FREEZE_AFTER_READS"
FAIL_USER_ENV = "DUPN_FAULT_FAIL_USER"


def install(w: Worker) -> None:
    encoding = w.settings.worker.vector_encoding  # a faulty store publishes like the worker's own
    limit = int(os.environ.get(ENV, "0") or 0)
    if limit > 0 and w.table is not None:
        w.store = _KillingStore(w.app, w.table, w.settings.kafka.vectors_topic, limit, vector_encoding=encoding)
    freeze = int(os.environ.get(FREEZE_ENV, "0") or 0)
    if freeze > 0 and w.table is not None:
        w.store = _FreezingStore(w.app, w.table, w.settings.kafka.vectors_topic, freeze, vector_encoding=encoding)
    fail_user = os.environ.get(FAIL_USER_ENV, "")
    if fail_user and w.table is not None:
        w.store = _FailingStore(w.app, w.table, w.settings.kafka.vectors_topic, fail_user, vector_encoding=encoding)


class _FailingStore(TableStateStore):
    def __init__(self, app: Any, table: Any, vectors_topic: str, user: str, vector_encoding: str = "json") -> None:
        super().__init__(app, table, vectors_topic, vector_encoding=vector_encoding)
        self._user = user

    async def write_batch(self, writes: Sequence[StateWrite]) -> BatchAck:
        if any(w.state.user_id == self._user for w in writes):
            raise RuntimeError(f"{FAIL_USER_ENV}: refusing to write {self._user}")
        return await super().write_batch(writes)


class _KillingStore(TableStateStore):
    def __init__(self, app: Any, table: Any, vectors_topic: str, limit: int, vector_encoding: str = "json") -> None:
        super().__init__(app, table, vectors_topic, vector_encoding=vector_encoding)
        self._left = limit

    def _put_local(self, partition: int, items: Sequence[tuple[bytes, bytes]]) -> None:
        super()._put_local(partition, items)
        self._left -= len(items)
        if self._left <= 0:
            os.kill(os.getpid(), signal.SIGKILL)


class _FreezingStore(TableStateStore):
    def __init__(self, app: Any, table: Any, vectors_topic: str, reads: int, vector_encoding: str = "json") -> None:
        super().__init__(app, table, vectors_topic, vector_encoding=vector_encoding)
        self._left = reads

    def read(self, user_id: str, partition: int) -> Any:
        self._left -= 1
        if self._left == 0:
            os.kill(os.getpid(), signal.SIGSTOP)  # returns after SIGCONT
        return super().read(user_id, partition)
