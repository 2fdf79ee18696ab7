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
import collections
import logging
import time
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from core import metrics
from core.contracts import Rejection, dlq_record
from state.store import StateWrite, UserStateStore
from state.user_state import UserState
from streams import poison
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
            await consume_stream(w, stream)

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

    in_flight = InFlight(w.app, trace=w.settings.worker.trace_stages)
    # Set when a batch was fenced out (FencedOut): until the rebalance revokes the partitions, every
    # batch is dropped unapplied too. Applying a later batch on a state that lacks the dropped one
    # would store an offset past events it never applied (a gap), so they all wait for the new owner.
    fenced = asyncio.Event()

    @w.app.task
    async def update_vectors() -> None:
        try:
            while not w.app.should_stop:
                async with intake.next_batch() as messages:  # taken under intake.lock: see on_revoked
                    if not messages:
                        continue
                    if fenced.is_set():  # not acked: redelivered (seek to committed) after the rebalance
                        continue
                    try:
                        _, delivered = await run_batch(w, messages)
                    except FencedOut as exc:  # not acked: redelivered once the group has rebalanced
                        fenced.set()
                        log.warning("%s (%d events); dropping batches until the rebalance", exc, len(messages))
                        continue
                    await in_flight.add(delivered, messages)
        except Exception as exc:  # the app crashes (Faust stops the worker); a full disk ends it at once
            if poison.is_disk_full(exc):
                poison.exit_disk_full(exc, "a batch's delivery")
            raise

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

    Acks go in batch order, and none at all after a failed batch: Faust commits the first run of
    consecutive acked offsets, so acking a later batch of a partition whose earlier batch failed
    would commit past the failed one (issue 14 item 6).
    """

    def __init__(self, app: Any, limit: int = 4, trace: bool = False) -> None:
        self._app = app
        self._limit = limit
        self._trace = trace  # DUPN_TRACE_STAGES: the batch loop's waits here, stage "inflight"
        self._pending: list[asyncio.Future[None]] = []
        self._order: collections.deque[tuple[asyncio.Future[None], Sequence[Any]]] = collections.deque()
        self.failed: BaseException | None = None

    def _ack_in_order(self, _: Any = None) -> None:
        while self._order and self._order[0][0].done():
            fut, messages = self._order.popleft()
            if self.failed is None:
                self.failed = asyncio.CancelledError() if fut.cancelled() else fut.exception()
            if self.failed is None:
                ack_message = self._app.consumer.ack
                for m in messages:
                    ack_message(m)

    async def add(self, delivered: asyncio.Future[None], messages: Sequence[Any]) -> None:
        if self.failed is not None:
            raise RuntimeError("an earlier batch failed; nothing more is acknowledged") from self.failed
        self._order.append((delivered, messages))
        delivered.add_done_callback(self._ack_in_order)
        self._pending.append(delivered)
        for fut in [f for f in self._pending if f.done()]:
            self._pending.remove(fut)
            fut.result()  # raises a failed delivery
        waited_from = time.monotonic() if self._trace else 0.0
        while len(self._pending) > self._limit:
            await self._pending.pop(0)
        if self._trace:
            metrics.STAGE_SECONDS.observe(time.monotonic() - waited_from, "inflight")

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
    """Apply a batch: states written locally, records handed to the producer; the future is the broker's ack.

    Once the broker acknowledged the batch's changelog and vector records, every applied event's
    freshness is observed (:func:`observe_freshness`). With ``DUPN_TRACE_STAGES`` the batch's stages
    are timed too (:class:`BatchStages`)."""
    store = _store(w)
    started = time.monotonic()
    stages = BatchStages(started) if w.settings.worker.trace_stages else None
    result = await _apply(w, messages, stages)
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
    observe_freshness(ack.delivered, result.applied_ts)
    if stages is not None:
        stages.written(ack.delivered)
    return result, with_dlq_deliveries(ack.delivered, dlq_deliveries)


async def _apply(w: Worker, messages: Sequence[RawMessage], stages: BatchStages | None) -> BatchResult:
    """``VectorUpdater.apply`` on the encoder thread, under the batch lock."""
    store = _store(w)
    loop = asyncio.get_running_loop()

    def load(user_id: str, msg: RawMessage) -> UserState | None:
        return store.read(user_id, msg.partition)

    apply = w.runtime.updater.apply if stages is None else stages.timed(w.runtime.updater.apply)
    async with w.runtime.batch_lock:
        applying = loop.run_in_executor(_ENCODER_THREAD, apply, messages, load)
        try:
            result = await asyncio.shield(applying)
        except asyncio.CancelledError:
            # The thread runs on regardless: hold the lock until it is done, or an HTTP re-pool
            # could read (and keep scores in) encoder states it is still advancing.
            await asyncio.wait([applying])
            raise
    if stages is not None:
        stages.applied()
    return result


def observe_freshness(delivered: asyncio.Future[None], applied_ts: np.ndarray) -> None:
    """``dupn_event_to_vector_seconds`` for every applied event, when the broker acknowledged the batch.

    It starts at the event's own ``ts`` (what producers and the bench measure from, so it includes the
    producer's delay and clock skew), not the record's broker timestamp, and ends when the changelog and
    vector records are durable: the vector is then on ``user-vectors`` for every reader. A batch whose
    delivery failed observes nothing (its events come again). One array operation per batch
    (:class:`core.metrics.BatchHistogram`), not one ``observe`` per event."""
    if not len(applied_ts):
        return

    def acknowledged(fut: asyncio.Future[None]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            metrics.EVENT_TO_VECTOR.observe_many(np.maximum(time.time() - applied_ts / 1000.0, 0.0))

    delivered.add_done_callback(acknowledged)


class BatchStages:
    """One batch's stage times (``DUPN_TRACE_STAGES``), observed in ``dupn_stage_seconds`` per batch:

    ``hop`` (taking the batch lock and the hand-off to the encoder thread and back), ``apply`` (the
    updater on the encoder thread), ``write`` (local write, produce hand-off and DLQ sends) and ``ack``
    (hand-off to the broker's acknowledgement of the changelog and vector records). The intake's
    ``fetch`` and ``queue`` come from :class:`streams.intake.BatchIntake`."""

    def __init__(self, started: float) -> None:
        self.started = started
        self._ran: tuple[float, float] = (self.started, self.started)
        self._applied = self.started

    def timed(self, fn: Any) -> Any:
        def run(*args: Any) -> Any:
            t0 = time.monotonic()
            try:
                return fn(*args)
            finally:
                self._ran = (t0, time.monotonic())

        return run

    def applied(self) -> None:
        self._applied = now = time.monotonic()
        t0, t1 = self._ran
        metrics.STAGE_SECONDS.observe(t1 - t0, "apply")
        metrics.STAGE_SECONDS.observe((t0 - self.started) + (now - t1), "hop")

    def written(self, delivered: asyncio.Future[None]) -> None:
        handed = time.monotonic()
        metrics.STAGE_SECONDS.observe(handed - self._applied, "write")
        delivered.add_done_callback(lambda _: metrics.STAGE_SECONDS.observe(time.monotonic() - handed, "ack"))


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


async def consume_stream(w: Worker, stream: Any) -> None:
    """The ``DUPN_INTAKE=stream`` agent: batches from ``noack_take``, acked only once delivered.

    Faust's ``take_events`` acks a batch's events in a ``finally``, so a batch that raised was
    acknowledged (and committed) anyway. Here nothing of a failed batch is acked and the app
    crashes: Faust would restart the agent, whose next batch, once acked, would let the commit
    pass the failed one (Faust commits the first run of consecutive acked offsets). The batch
    comes back after the restart (or to the partition's next owner) and :func:`run_batch` counts it.
    """
    s = w.settings
    try:
        async for events in stream.noack_take(s.worker.batch_max, s.worker.batch_within_s):
            messages = [e.message for e in events]
            _, delivered = await run_batch(w, messages)
            await delivered
            for event in events:
                await stream.ack(event)
    except Exception as exc:
        if poison.is_disk_full(exc):
            poison.exit_disk_full(exc, "a batch's delivery")
        log.critical("batch failed (%r): its events are not acknowledged; stopping the worker", exc)
        await w.app.crash(exc)
        raise


async def run_batch(w: Worker, messages: Sequence[RawMessage]) -> tuple[BatchResult, asyncio.Future[None]]:
    """:func:`start_batch`, with the batch's attempts counted and a poison batch quarantined (streams.poison).

    A full disk ends the process (:func:`streams.poison.exit_disk_full`); any other failure is
    re-raised after its attempt was counted, and the worker stops without acknowledging the batch.
    """
    ledger = _ledger(w)
    keys = poison.batch_keys(messages)
    limit = w.settings.worker.poison_attempts
    attempts = ledger.attempts(keys)
    ledger.begin(keys)  # before trying: a process that dies in the attempt has it counted too
    try:
        if attempts >= 2 * limit:
            result, delivered = await _quarantine_all(w, messages, attempts)
        elif attempts >= limit:
            result, delivered = await _bisect(w, messages, attempts)
        else:
            result, delivered = await start_batch(w, messages)
    except FencedOut:
        ledger.undo(keys)  # not the batch's fault: its new owner applies it
        raise
    except Exception as exc:
        if poison.is_disk_full(exc):
            ledger.undo(keys)  # not the batch's fault: no step towards quarantining it
            poison.exit_disk_full(exc, "a batch's state write")
        log.error("batch %s failed (attempt %d of %d before quarantine): %r", keys, attempts + 1, limit, exc)
        raise
    ledger.done(keys)
    return result, delivered


_LEDGERS: weakref.WeakKeyDictionary[Any, poison.PoisonLedger] = weakref.WeakKeyDictionary()


def _ledger(w: Worker) -> poison.PoisonLedger:
    """One ledger per worker (keyed by its runtime), loaded from the data dir on first use."""
    ledger = _LEDGERS.get(w.runtime)
    if ledger is None:
        ledger = _LEDGERS[w.runtime] = poison.PoisonLedger(w.settings.data_path / poison.LEDGER_FILE)
    return ledger


async def _bisect(w: Worker, messages: Sequence[RawMessage], attempts: int) -> tuple[BatchResult, asyncio.Future[None]]:
    """Apply the batch in halves, recursively; an event that fails alone goes to the DLQ."""
    log.warning("batch of %d events failed %d times: applying it in halves to find the poison", len(messages), attempts)
    merged = BatchResult()
    delivered: list[asyncio.Future[None]] = []

    async def go(part: Sequence[RawMessage]) -> None:
        try:
            result, fut = await start_batch(w, part)
        except Exception as exc:
            if poison.is_disk_full(exc) or isinstance(exc, FencedOut):
                raise
            if len(part) == 1:
                delivered.append(
                    await send_to_dlq(w, part[0], Rejection(poison.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}"))
                )
                metrics.REJECTED.labels(reason=poison.PROCESSING_ERROR).inc()
                return
            mid = len(part) // 2
            await go(part[:mid])  # in order: a user's events are applied oldest first
            await go(part[mid:])
            return
        merged.updates.extend(result.updates)
        merged.rejections.extend(result.rejections)
        merged.duplicates += result.duplicates
        delivered.append(fut)

    await go(messages)
    return merged, asyncio.ensure_future(_all_of(delivered))


async def _quarantine_all(
    w: Worker, messages: Sequence[RawMessage], attempts: int
) -> tuple[BatchResult, asyncio.Future[None]]:
    """Even the bisection failed (the process died in it): the whole batch to the DLQ, unapplied."""
    log.error("batch of %d events failed %d times, bisecting too: all of it to the DLQ", len(messages), attempts)
    sent = [
        await send_to_dlq(w, msg, Rejection(poison.PROCESSING_ERROR, f"batch failed {attempts} times"))
        for msg in messages
    ]
    metrics.REJECTED.labels(reason=poison.PROCESSING_ERROR).inc(len(messages))
    return BatchResult(), asyncio.ensure_future(_all_of(sent))  # acked once every DLQ message is delivered


async def _all_of(futures: Sequence[asyncio.Future[None]]) -> None:
    for fut in futures:
        await fut


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
    applied = sum(up.applied for up in result.updates)
    metrics.EVENTS.labels(result="applied").inc(applied)
    metrics.EVENTS.labels(result="duplicate").inc(result.duplicates)
    metrics.EVENTS.labels(result="rejected").inc(len(result.rejections))
    for _, rejection in result.rejections:
        metrics.REJECTED.labels(reason=rejection.reason).inc()
    metrics.ENCODER_BATCH.observe(n_events)
    metrics.ENCODER_STEP.observe(result.encoder_seconds)
    metrics.REBUILDS.inc(result.rebuilds)
    metrics.CORRUPT_STATES.inc(result.corrupt_states)
    if result.updates:
        metrics.STATE_BYTES.set(state_bytes / len(result.updates))
