"""A ranker-side, in-memory copy of the latest vector per user, fed by ``user-vectors``.

Bootstraps by reading every partition from the beginning up to the high
watermark seen at start, keeping the last message per key (the topic is
compacted on a real cluster, but the embedded broker never compacts), then
keeps following the topic live in a daemon thread.

Per user it keeps the vector with the highest ``events_seen`` (the vector's
version; ties: the later message), not the last one read: a worker that lost
its partitions while frozen (a zombie) can publish an older vector after the
new owner published a newer one (docs/guarantees.md, "Zombie writers").
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from core.contracts import VectorDecodeError, VectorMessage, decode_vector_message, newer_vector
from core.settings import Settings
from core.topics import no_broker_message

log = logging.getLogger(__name__)


class VectorCache:
    def __init__(self, settings: Settings, poll_ms: int = 200, start: bool = True) -> None:
        self.settings = settings
        self.poll_ms = poll_ms
        self._vectors: dict[str, VectorMessage] = {}
        self._lock = threading.Lock()
        self._bootstrapped = threading.Event()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.undecodable = 0  # messages skipped because they do not decode (neither v1 nor v2)
        self._consumer = self._connect()
        self._thread = threading.Thread(target=self._run, name="vector-cache", daemon=True)
        if start:
            self._thread.start()

    # -- public ------------------------------------------------------------------------
    def get(self, user_id: str) -> tuple[VectorMessage, float] | None:
        """The latest vector of a user and its age in seconds (now - updated_at), or None."""
        with self._lock:
            msg = self._vectors.get(user_id)
        return None if msg is None else (msg, max(0.0, time.time() - msg.updated_at / 1000))

    def __len__(self) -> int:
        with self._lock:
            return len(self._vectors)

    def wait_bootstrapped(self, timeout: float | None = None) -> bool:
        """True once every partition was read up to its high watermark at start."""
        done = self._bootstrapped.wait(timeout)
        if self.error is not None:
            raise RuntimeError(f"vector cache failed: {self.error}") from self.error
        return done

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._consumer.close()

    def __enter__(self) -> VectorCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------
    def _connect(self) -> Any:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        s = self.settings
        try:
            return KafkaConsumer(
                bootstrap_servers=s.kafka.bootstrap,
                client_id=f"{s.kafka.app_id}-vector-cache",
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                **s.kafka.kafka_client_options(),
            )
        except (KafkaError, OSError) as exc:
            raise ConnectionError(no_broker_message(s.kafka)) from exc

    def _assign(self) -> dict[Any, int]:
        """Assign every partition from offset 0; return the high watermarks to bootstrap to."""
        from kafka import TopicPartition

        topic = self.settings.kafka.vectors_topic
        parts: set[int] = set()
        while not parts and not self._stop.is_set():
            parts = self._consumer.partitions_for_topic(topic) or set()
            if not parts:
                time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)
        return dict(self._consumer.end_offsets(tps))

    def _run(self) -> None:
        try:
            targets = self._assign()
            while not self._stop.is_set():
                self._apply(self._consumer.poll(timeout_ms=self.poll_ms))
                if not self._bootstrapped.is_set() and self._caught_up(targets):
                    log.info("vector cache bootstrapped: %d users", len(self))
                    self._bootstrapped.set()
        except Exception as exc:  # surfaced by wait_bootstrapped; a cache that silently stops is worse
            self.error = exc
            self._bootstrapped.set()
            log.exception("vector cache stopped")

    def _apply(self, polled: dict[Any, list[Any]]) -> None:
        latest: dict[str, VectorMessage] = {}
        for records in polled.values():
            for rec in records:
                try:
                    msg = decode_vector_message(rec.value)  # v1 or v2, told apart by their first bytes
                except VectorDecodeError as exc:
                    self.undecodable += 1
                    log.warning("skipping undecodable user-vectors message at offset %s: %s", rec.offset, exc)
                    continue
                if newer_vector(latest.get(msg.user_id), msg):
                    latest[msg.user_id] = msg
        if latest:
            with self._lock:
                for user_id, msg in latest.items():
                    if newer_vector(self._vectors.get(user_id), msg):
                        self._vectors[user_id] = msg

    def _caught_up(self, targets: dict[Any, int]) -> bool:
        return all(self._consumer.position(tp) >= end for tp, end in targets.items())
