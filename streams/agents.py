"""The agent that turns behavior events into published user vectors.

Events are taken in batches (``take_events``) so the encoder runs batched;
each user's state is read and written while acting on that user's own event
(see :mod:`streams.partitioning`), and the batch's offsets are acknowledged
only after its states, vectors and DLQ messages were handed to the producer:
at-least-once delivery, made idempotent by the source offset stored in each
user's state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ops import metrics
from state.codec import encode_state
from streams.contracts import Rejection, dlq_record
from streams.intake import BatchIntake, EventShim, install
from streams.partitioning import acting_on
from streams.updater import BatchResult, Incoming

if TYPE_CHECKING:
    from streams.worker import Worker

log = logging.getLogger(__name__)


def register_agents(w: Worker) -> None:
    s = w.settings
    if s.intake == "lean":
        _register_lean(w)
    else:

        @w.app.agent(w.events_topic, name="update-vectors")
        async def update_vectors(stream: Any) -> None:
            async for events in stream.take_events(s.batch_max, s.batch_within_s):
                await process_batch(w, events)

    @w.app.task
    async def warm_model() -> None:
        w.runtime.updater  # noqa: B018 - load the checkpoint before the first batch


def _register_lean(w: Worker) -> None:
    """Batches straight from the fetch loop (streams.intake); Faust keeps tables, commits and routing."""
    s = w.settings
    intake = BatchIntake(s.events_topic, s.batch_max, s.batch_within_s)
    install(w.app, intake)
    w.app.topics.add(w.events_topic)  # subscribe without an agent: the intake receives its messages

    @w.app.task
    async def update_vectors() -> None:
        while not w.app.should_stop:
            messages = await intake.take()
            async with intake.lock:
                await process_batch(w, [EventShim(m) for m in messages])
                ack = w.app.consumer.ack
                for m in messages:
                    ack(m)

    @w.app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app: Any, revoked: Any, **_: Any) -> None:
        async with intake.lock:  # let the batch in flight finish before the partitions go
            dropped = intake.discard(revoked)
        if dropped:
            log.info("revoked partitions: dropped %d buffered events (redelivered to the new owner)", dropped)


async def process_batch(w: Worker, events: Sequence[Any]) -> BatchResult:
    messages = [
        Incoming(e.message.partition, e.message.offset, e.message.key, e.message.value, handle=e) for e in events
    ]

    def load(user_id: str, msg: Incoming) -> bytes | None:
        with acting_on(msg.handle):
            value = w.table.get(user_id.encode("utf-8"))
        return value if value is None else bytes(value)

    result = w.runtime.updater.apply(messages, load)
    state_bytes = 0
    for up in result.updates:
        blob = encode_state(up.state)
        state_bytes += len(blob)
        with acting_on(up.last_message.handle):
            w.table[up.state.user_id.encode("utf-8")] = blob
        await w.vectors_topic.send(key=up.state.user_id.encode("utf-8"), value=up.vector.to_bytes())
    for msg, rejection in result.rejections:
        await send_to_dlq(w, msg, rejection)
    _record_metrics(result, len(events), state_bytes)
    return result


async def send_to_dlq(w: Worker, msg: Incoming, rejection: Rejection) -> None:
    """The original bytes, untouched, with why and where in headers (streams.contracts.dlq_record)."""
    key, value, headers = dlq_record(
        msg.key, msg.value, rejection, w.settings.events_topic, msg.partition, msg.offset
    )
    await w.dlq_topic.send(key=key, value=value, headers=headers)
    log.warning(
        "rejected event at %s/%d@%d: %s (%s)",
        w.settings.events_topic, msg.partition, msg.offset, rejection.reason, rejection.detail[:200],
    )


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
