"""The purchasing-power classifier: ``user-vectors`` in, ``user-purchasing-power`` out.

Each published vector is scored with the PPP head (softmax over 7 levels) of
the checkpoint that *produced* it: a head trained with one model only makes
sense on that model's vectors. Vectors of another version are scored with
the matching checkpoint from the model registry, or skipped (counted, logged)
when there is none, so a model rollout never publishes levels from the wrong
head. The latest answer per user is kept in a table for ``GET
/users/{id}/purchasing-power``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from core import metrics
from core.contracts import VectorDecodeError, VectorMessage, decode_vector_message
from core.settings import Settings
from core.topics import PPP_TABLE
from encoder.checkpoint import META, Checkpoint, load_checkpoint
from streams.context import Worker, raw_topic, rocksdb_table_options

log = logging.getLogger(__name__)


class ModelRegistry:
    """Checkpoints by model_version: the default one, else found under a registry dir, loaded once."""

    def __init__(self, default_dir: Path, registry_dir: Path) -> None:
        self.default_dir = default_dir
        self.registry_dir = registry_dir
        self._loaded: dict[str, Checkpoint] = {}
        self._default: Checkpoint | None = None
        self._lock = threading.Lock()

    @property
    def default(self) -> Checkpoint:
        with self._lock:
            if self._default is None:
                self._default = load_checkpoint(self.default_dir)
                self._loaded[self._default.model_version] = self._default
            return self._default

    def get(self, version: str) -> Checkpoint | None:
        """The checkpoint with this version, or None when no directory holds it."""
        if self.default.model_version == version:
            return self.default
        with self._lock:
            if version not in self._loaded:
                found = self._find(version)
                if found is None:
                    return None
                self._loaded[version] = load_checkpoint(found)
            return self._loaded[version]

    def _find(self, version: str) -> Path | None:
        """Rescanned on every miss: a checkpoint copied in later is picked up without a restart."""
        if not self.registry_dir.is_dir():
            return None
        for meta in sorted(self.registry_dir.glob(f"*/{META}")):
            try:
                if json.loads(meta.read_text()).get("model_version") == version:
                    return meta.parent
            except (OSError, ValueError):
                continue
        return None


class PurchasingPowerScorer:
    """Kafka-free: a decoded vector in, the ``user-purchasing-power`` JSON out (or None = skip)."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    @classmethod
    def from_settings(cls, s: Settings) -> PurchasingPowerScorer:
        return cls(ModelRegistry(s.model_dir, s.model_registry_path))

    def score(self, msg: VectorMessage, now_ms: int | None = None) -> dict[str, Any] | None:
        ckpt = self.registry.get(msg.model_version)
        if ckpt is None:
            metrics.PPP_SKIPPED.labels(reason="unknown_model_version").inc()
            log.warning(
                "not scoring %s: no checkpoint with model_version %s (loaded %s; registry %s)",
                msg.user_id, msg.model_version, self.registry.default.model_version, self.registry.registry_dir,
            )
            return None
        want = ckpt.config.rep_dim
        got = np.shape(msg.vector)
        if got != (want,):
            # Anything that can write user-vectors decides this shape: a wrong one is skipped, not a crash.
            metrics.PPP_SKIPPED.labels(reason="wrong_vector_size").inc()
            log.warning(
                "not scoring %s: vector of shape %s, model %s takes (%d,)", msg.user_id, got, msg.model_version, want
            )
            return None
        probs = ppp_probabilities(ckpt, msg.vector)
        return {
            "user_id": msg.user_id,
            "level": int(np.argmax(probs)) + 1,
            "probabilities": [float(p) for p in probs],
            "model_version": msg.model_version,
            "vector_updated_at": msg.updated_at,
            "updated_at": now_ms if now_ms is not None else int(time.time() * 1000),
        }


def ppp_probabilities(ckpt: Checkpoint, vector: np.ndarray) -> np.ndarray:
    """softmax(W r): the probability of each purchasing-power level 1..7."""
    with torch.inference_mode():
        rep = torch.from_numpy(np.asarray(vector, np.float32)).unsqueeze(0)
        return torch.softmax(ckpt.model.heads.ppp_logits(rep), dim=-1)[0].numpy()


class Sink(Protocol):
    async def send(self, *, key: bytes, value: bytes) -> Any: ...


async def process_vector(
    scorer: PurchasingPowerScorer, table: Any, sink: Sink, key: bytes | None, value: bytes | None
) -> dict[str, Any] | None:
    """Score one ``user-vectors`` message; store and publish the answer unless skipped."""
    try:
        msg = decode_vector_message(value or b"")  # v1 (JSON) or v2 (binary), told apart by their first bytes
    except VectorDecodeError as exc:
        metrics.PPP_SKIPPED.labels(reason="bad_message").inc()
        log.warning("undecodable user-vectors message (key %r): %s", key, exc)
        return None
    metrics.VECTOR_AGE.labels(source="published").observe(max(0.0, time.time() - msg.updated_at / 1000))
    user_key = msg.user_id.encode("utf-8")
    if older_than_stored(table, user_key, msg):
        metrics.PPP_SKIPPED.labels(reason="older_vector").inc()
        return None
    body = scorer.score(msg)
    if body is None:
        return None
    body["events_seen"] = msg.events_seen  # the version of the vector it scored (older_than_stored)
    blob = json.dumps(body, separators=(",", ":")).encode("utf-8")
    table[user_key] = blob
    await sink.send(key=user_key, value=blob)
    metrics.PPP_SCORED.inc()
    return body


def older_than_stored(table: Any, user_key: bytes, msg: VectorMessage) -> bool:
    """Whether the level stored for the user came from a newer vector (more ``events_seen``) than ``msg``:
    a zombie owner's late vector must not replace the level of a newer one. A level stored before
    levels carried ``events_seen`` counts as version -1 (any vector replaces it)."""
    stored = table.get(user_key)
    if stored is None:
        return False
    try:
        seen = json.loads(stored).get("events_seen", -1)
    except (ValueError, AttributeError):
        return False
    return isinstance(seen, int) and msg.events_seen < seen


def register_ppp(w: Worker) -> None:
    """The agent, its output topic and table. One event at a time: no #497 partition mix-up."""
    s = w.settings
    w.ppp_topic = raw_topic(w.app, s.kafka.ppp_topic, s.kafka.partitions)
    w.ppp_table = w.app.Table(
        PPP_TABLE,
        default=None,
        partitions=s.kafka.partitions,
        key_type=bytes,
        value_type=bytes,
        extra_topic_configs={"cleanup.policy": "compact"},
        options=rocksdb_table_options(s),
    )
    scorer = PurchasingPowerScorer.from_settings(s)

    @w.app.agent(w.vectors_topic, name="purchasing-power")
    async def purchasing_power(stream: Any) -> None:
        async for event in stream.events():
            await process_vector(scorer, w.ppp_table, w.ppp_topic, event.message.key, event.message.value)

    @w.app.task
    async def warm_ppp_model() -> None:
        scorer.registry.default  # noqa: B018 - load the checkpoint before the first vector
