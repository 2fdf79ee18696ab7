"""Reading ``user-vectors``: follow the topic, or ask a worker's HTTP API."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Generator
from typing import Any

from core.contracts import VectorMessage, decode_vector_message
from core.settings import Settings
from core.topics import no_broker_message


def follow_vectors(
    s: Settings, from_beginning: bool = True, poll_ms: int = 200
) -> Generator[list[tuple[VectorMessage, int]], None, None]:
    """Yield batches of (decoded vector message, receive wall time ms); runs until closed."""
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
            batch = [(decode_vector_message(r.value), now) for recs in polled.values() for r in recs]
            yield batch
    finally:
        consumer.close()


def fetch_vector(
    s: Settings, user_id: str, at: str | None = None, timeout_s: float = 5.0, query: str | None = None
) -> dict[str, Any]:
    """GET /users/{id}/vector from the first worker that answers (``query``: re-pooled for it)."""
    params = {k: v for k, v in (("at", at), ("query", query)) if v}
    return _get_user(s, user_id, "vector", params, timeout_s)


def fetch_explain(
    s: Settings, user_id: str, at: str | None = None, timeout_s: float = 5.0, query: str | None = None
) -> dict[str, Any]:
    """GET /users/{id}/explain: the attention weights behind the vector ``fetch_vector`` would return."""
    params = {k: v for k, v in (("at", at), ("query", query)) if v}
    return _get_user(s, user_id, "explain", params, timeout_s)


def fetch_purchasing_power(s: Settings, user_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET /users/{id}/purchasing-power from the first worker that answers."""
    return _get_user(s, user_id, "purchasing-power", {}, timeout_s)


def _get_user(s: Settings, user_id: str, what: str, params: dict[str, str], timeout_s: float) -> dict[str, Any]:
    errors = []
    for base in [u.strip().rstrip("/") for u in s.http.worker_urls.split(",") if u.strip()]:
        url = f"{base}/users/{urllib.parse.quote(user_id, safe='')}/{what}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        req = urllib.request.Request(url)
        if s.http.api_token:
            req.add_header("Authorization", f"Bearer {s.http.api_token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            if exc.code == 404:
                raise LookupError(f"unknown user {user_id!r} ({base})") from exc
            errors.append(f"{base}: HTTP {exc.code} {detail}")
        except (urllib.error.URLError, OSError) as exc:
            errors.append(f"{base}: {exc}")
    raise ConnectionError(
        "no worker answered: " + "; ".join(errors) + " — start one with `dupn worker` or set DUPN_WORKER_URLS"
    )
