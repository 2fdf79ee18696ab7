"""Reading ``user-vectors``: follow the topic, or ask a worker's HTTP API."""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable
from typing import Any

from clients.client import VectorClient
from core.contracts import VectorDecodeError, VectorMessage, decode_vector_message
from core.settings import Settings
from core.topics import no_broker_message
from core.wire import NOT_FOUND

log = logging.getLogger(__name__)


def follow_vectors(
    s: Settings, from_beginning: bool = True, poll_ms: int = 200
) -> Generator[list[tuple[VectorMessage, int]], None, None]:
    """Yield batches of (decoded vector message, receive wall time ms); runs until closed.

    v1 (JSON) and v2 (binary) messages alike; one that does not decode is logged and skipped
    (:func:`decodable`), so a bad record on the topic does not end the follower."""
    import time

    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(
            bootstrap_servers=s.kafka.bootstrap,
            client_id=f"{s.kafka.app_id}-vector-reader",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if from_beginning else "latest",
            **s.kafka.kafka_client_options(),
        )
    except (KafkaError, OSError) as exc:
        raise ConnectionError(no_broker_message(s.kafka)) from exc
    try:
        parts = consumer.partitions_for_topic(s.kafka.vectors_topic) or set()
        consumer.assign([TopicPartition(s.kafka.vectors_topic, p) for p in sorted(parts)])
        while True:
            polled = consumer.poll(timeout_ms=poll_ms)
            now = int(time.time() * 1000)
            batch = [(msg, now) for recs in polled.values() for msg in decodable(recs)]
            yield batch
    finally:
        consumer.close()


def decodable(records: Iterable[Any]) -> Generator[VectorMessage, None, None]:
    """The ``user-vectors`` records (anything with ``value``, ``offset``) that decode, in order; each one
    that does not is logged with its offset and skipped: one bad writer must not stop a reader."""
    for r in records:
        try:
            yield decode_vector_message(r.value)
        except VectorDecodeError as exc:
            log.warning("skipping undecodable user-vectors message at offset %s: %s", getattr(r, "offset", "?"), exc)


def fetch_vector(
    s: Settings, user_id: str, at: str | None = None, timeout_s: float = 5.0, query: str | None = None
) -> dict[str, Any]:
    """GET /users/{id}/vector through :class:`VectorClient` (routed to the owner, ``Retry-After`` honoured).

    The worker's JSON answer (``vector`` as a list); ``LookupError`` for an unknown user,
    ``ConnectionError`` when no worker answers or the user stays unavailable.
    """
    with VectorClient.from_settings(s, timeout_s=timeout_s) as client:
        result = client.get(user_id, at=at, query=query)
    if result.status == NOT_FOUND:
        raise LookupError(f"unknown user {user_id!r}")
    if result.vector is None:
        raise ConnectionError(f"user {user_id!r} still unavailable after retrying: {result.reason}")
    return {**result.meta, "vector": result.vector.tolist()}


def fetch_explain(
    s: Settings, user_id: str, at: str | None = None, timeout_s: float = 5.0, query: str | None = None
) -> dict[str, Any]:
    """GET /users/{id}/explain: the attention weights behind the vector ``fetch_vector`` would return."""
    params = {k: v for k, v in (("at", at), ("query", query)) if v}
    with VectorClient.from_settings(s, timeout_s=timeout_s) as client:
        return client.get_json(user_id, "explain", params)


def fetch_purchasing_power(s: Settings, user_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET /users/{id}/purchasing-power from the owner (any worker forwards)."""
    with VectorClient.from_settings(s, timeout_s=timeout_s) as client:
        return client.get_json(user_id, "purchasing-power")
