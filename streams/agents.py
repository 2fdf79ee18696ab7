"""The agent that turns behavior events into published user vectors.

Events are taken in batches (the lean intake, or ``take_events``) so the
encoder runs batched; each user's state is read from and written to the table
partition of that user's own events through the user-state store
(:class:`state.store.UserStateStore`; the worker's is :mod:`streams.table_store`,
which also sidesteps faust-streaming #497), and the batch's offsets are acknowledged
only after its states and vectors were acknowledged by the broker: at-least-once
delivery, made idempotent by the source offset stored in each user's state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from core import metrics
from core.contracts import Rejection, dlq_record
from state.store import StateWrite, UserStateStore
from state.user_state import UserState
from streams.context import Worker
from streams.intake import BatchIntake
from streams.updater import BatchResult, RawMessage, vector_message

log = logging.getLogger(__name__)

# The updater runs off the event loop, so the loop (Faust's fetcher hand-off, the producer's sender,
# heartbeats, HTTP) keeps going while torch computes with the GIL released. One thread: batches stay in order.
_ENCODER_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dupn-encoder")


def register_agents(w: Worker, intake: BatchIntake | None) -> None:
    """The batch agent: fed by ``intake`` (the lean intake, installed by streams.seams), else a Faust agent."""
    s = w.settings
    if intake is not None:
        _register_lean(w, intake)
    else:

        @w.app.agent(w.events_topic, name="update-vectors")
        async def update_vectors(stream: Any) -> None:
            async for events in stream.take_events(s.worker.batch_max, s.worker.batch_within_s):
                await process_batch(w, [e.message for e in events])

    @w.app.task
    async def warm_model() -> None:
        w.runtime.updater  # noqa: B018 - load the checkpoint before the first batch

    @w.app.timer(s.model.model_poll_s)
    async def watch_model() -> None:
        if await asyncio.get_running_loop().run_in_executor(None, w.runtime.check_for_new_model):
            async with w.runtime.batch_lock:  # between batches: a batch runs on one model
                w.runtime.install_pending()


def _register_lean(w: Worker, intake: BatchIntake) -> None:
    """Batches straight from the fetch loop (streams.intake); Faust keeps tables, commits and routing."""
    w.app.topics.add(w.events_topic)  # subscribe without an agent: the intake receives its messages

    in_flight = InFlight(w.app)
    # Set when a batch was fenced out (FencedOut): until the rebalance revokes the partitions, every
    # batch is dropped unapplied too. Applying a later batch on a state that lacks the dropped one
    # would store an offset past events it never applied (a gap), so they all wait for the new owner.
    fenced = asyncio.Event()

    @w.app.task
    async def update_vectors() -> None:
        while not w.app.should_stop:
            async with intake.next_batch() as messages:  # taken under intake.lock: see on_revoked
                if not messages:
                    continue
                if fenced.is_set():  # not acked: redelivered (seek to committed) after the rebalance
                    continue
                try:
                    _, delivered = await start_batch(w, messages)
                except FencedOut as exc:  # not acked: redelivered once the group has rebalanced
                    fenced.set()
                    log.warning("%s (%d events); dropping batches until the rebalance", exc, len(messages))
                    continue
                await in_flight.add(delivered, messages)

    @w.app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: Any, revoked: Any, **_: Any) -> None:
        async with intake.lock:  # let the batch in flight finish before the partitions go
            await in_flight.settle()  # ... and its records be acknowledged by the broker
            dropped = intake.discard(revoked)
            fenced.clear()  # the rebalance has come: what was dropped is redelivered from the committed offsets
            # Faust flushed its producer before this signal, i.e. before the batch in flight
            # finished: its DLQ messages must reach the broker before the partitions move.
            await app.producer.flush()
        if dropped:
            log.info("revoked partitions: dropped %d buffered events (redelivered to the new owner)", dropped)


class InFlight:
    """Batches whose records the broker has not acknowledged yet; their messages are acked when it has.

    The next batch is applied meanwhile (its reads see this one's local writes), so the broker's
    round trip is not part of every batch cycle. At most ``limit`` batches wait; a failed delivery
    surfaces in the batch loop (and stops the worker) instead of being acked.
    """

    def __init__(self, app: Any, limit: int = 4) -> None:
        self._app = app
        self._limit = limit
        self._pending: list[asyncio.Future[None]] = []

    async def add(self, delivered: asyncio.Future[None], messages: Sequence[Any]) -> None:
        def ack(fut: asyncio.Future[None]) -> None:
            if not fut.cancelled() and fut.exception() is None:
                ack_message = self._app.consumer.ack
                for m in messages:
                    ack_message(m)

        delivered.add_done_callback(ack)
        self._pending.append(delivered)
        for fut in [f for f in self._pending if f.done()]:
            self._pending.remove(fut)
            fut.result()  # raises a failed delivery
        while len(self._pending) > self._limit:
            await self._pending.pop(0)

    async def settle(self) -> None:
        """Wait until every batch handed over so far is acknowledged (and its messages acked)."""
        pending, self._pending = self._pending, []
        for fut in pending:
            await fut


async def process_batch(w: Worker, messages: Sequence[RawMessage]) -> BatchResult:
    """Apply a batch and wait until its records are acknowledged by the broker."""
    result, delivered = await start_batch(w, messages)
    await delivered
    return result


async def start_batch(w: Worker, messages: Sequence[RawMessage]) -> tuple[BatchResult, asyncio.Future[None]]:
    """Apply a batch: states written locally, records handed to the producer; the future is the broker's ack."""
    store = _store(w)
    loop = asyncio.get_running_loop()
    started = time.monotonic()

    def load(user_id: str, msg: RawMessage) -> UserState | None:
        return store.read(user_id, msg.partition)

    async with w.runtime.batch_lock:
        applying = loop.run_in_executor(_ENCODER_THREAD, w.runtime.updater.apply, messages, load)
        try:
            result = await asyncio.shield(applying)
        except asyncio.CancelledError:
            # The thread runs on regardless: hold the lock until it is done, or an HTTP re-pool
            # could read (and keep scores in) encoder states it is still advancing.
            await asyncio.wait([applying])
            raise
    writes = [StateWrite(up.last_message.partition, up.state, up.vector) for up in result.updates]
    for state, msg in result.redelivered:
        # Written again, unchanged: a worker killed after its local RocksDB write but before the
        # broker acknowledged the changelog and vector records keeps a state only it has, and the
        # redelivered events are skipped; without this the changelog (what a new owner or a wiped
        # worker restores) and user-vectors would stay behind it once the offsets are committed.
        writes.append(StateWrite(msg.partition, state, vector_message(state)))
    if not await still_owner(w, started):
        # Fenced out while this batch was applied: the new owners restore and redo it. Nothing is written,
        # nothing acked (the messages come again to their new owners, whose restored states skip or apply them).
        raise FencedOut("this worker lost its group membership while applying a batch; its writes are dropped")
    ack = await store.write_batch(writes)
    dlq_deliveries = [await send_to_dlq(w, msg, rejection) for msg, rejection in result.rejections]
    _record_metrics(result, len(messages), ack.state_bytes)
    return result, with_dlq_deliveries(ack.delivered, dlq_deliveries)


class FencedOut(Exception):
    """A batch applied by a worker that is no longer a member of the group (a zombie): not written."""


async def still_owner(w: Worker, started: float) -> bool:
    """Whether this worker may still write the batch it started at ``started`` (monotonic s).

    A batch that took longer than a third of the session timeout (the process was frozen: SIGSTOP, a
    long GC, a stalled disk, or a revoke waited on it) may belong to a worker the group has already
    fenced out: the coordinator is asked (one heartbeat, :func:`streams.seams.confirm_membership`)
    before anything is produced. A quick batch is not checked (heartbeats run on their own, and the
    revoke handler waits for the batch in flight). No app (tests without a broker): always True."""
    if w.app is None or time.monotonic() - started < w.settings.kafka.session_timeout_s / 3:
        return True
    from streams import seams

    try:
        return await seams.confirm_membership(w.app)
    except Exception as exc:  # cannot tell: do not write (the batch comes again)
        log.warning("could not confirm group membership before writing a batch: %r", exc)
        return False


def with_dlq_deliveries(delivered: asyncio.Future[None], dlq: Sequence[Any]) -> asyncio.Future[None]:
    """The batch's acknowledgement: its state and vector records *and* its DLQ messages delivered.

    A rejected event must not vanish: its source offset is acked only once its DLQ message is
    acknowledged by the broker, and a failed DLQ send fails the batch (its messages are not acked,
    the worker stops, the batch is redelivered)."""
    if not dlq:
        return delivered

    async def both() -> None:
        await delivered
        for fut in dlq:
            await fut

    return asyncio.ensure_future(both())


def _store(w: Worker) -> UserStateStore:
    if w.store is None:
        raise RuntimeError("this worker has no user-state store (no 'vectors' role)")
    return w.store


async def send_to_dlq(w: Worker, msg: RawMessage, rejection: Rejection) -> Any:
    """The original bytes, untouched, with why and where in headers (core.contracts.dlq_record).

    Returns the send's delivery future (Faust's ``FutureMessage``): awaited with the batch's
    acknowledgement (:func:`with_dlq_deliveries`), not here, so the batch does not wait a round trip."""
    key, value, headers = dlq_record(
        msg.key, msg.value, rejection, w.settings.kafka.events_topic, msg.partition, msg.offset
    )
    delivery = await w.dlq_topic.send(key=key, value=value, headers=headers)
    log.warning(
        "rejected event at %s/%d@%d: %s (%s)",
        w.settings.kafka.events_topic, msg.partition, msg.offset, rejection.reason, rejection.detail[:200],
    )
    return delivery


def _record_metrics(result: BatchResult, n_events: int, state_bytes: int) -> None:
    now = time.time()
    applied = sum(up.applied for up in result.updates)
    metrics.EVENTS.labels(result="applied").inc(applied)
    metrics.EVENTS.labels(result="duplicate").inc(result.duplicates)
    metrics.EVENTS.labels(result="rejected").inc(len(result.rejections))
    for _, rejection in result.rejections:
        metrics.REJECTED.labels(reason=rejection.reason).inc()
    for up in result.updates:
        metrics.EVENT_TO_VECTOR.observe(max(0.0, now - up.vector.last_event_ts / 1000))
    metrics.ENCODER_BATCH.observe(n_events)
    metrics.ENCODER_STEP.observe(result.encoder_seconds)
    metrics.REBUILDS.inc(result.rebuilds)
    metrics.CORRUPT_STATES.inc(result.corrupt_states)
    if result.updates:
        metrics.STATE_BYTES.set(state_bytes / len(result.updates))
