"""What a worker process holds besides Faust: the loaded model and the updater."""

from __future__ import annotations

import logging
import threading

import torch

from encoder.checkpoint import load_checkpoint
from encoder.streaming import StreamingEncoder, UpdatePolicy
from ops import metrics
from ops.config import Settings
from streams.updater import VectorUpdater

log = logging.getLogger(__name__)


class Runtime:
    """Lazily loads the checkpoint once; shared by the agent and the web views."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._updater: VectorUpdater | None = None
        self._lock = threading.Lock()

    @property
    def updater(self) -> VectorUpdater:
        if self._updater is None:
            with self._lock:
                if self._updater is None:
                    self._updater = self._load()
        return self._updater

    @property
    def encoder(self) -> StreamingEncoder:
        return self.updater.encoder

    def _load(self) -> VectorUpdater:
        s = self.settings
        torch.set_num_threads(max(1, s.torch_threads))
        ckpt = load_checkpoint(s.model_dir)
        policy = UpdatePolicy(s.update_mode, s.reanchor_every, ckpt.config.window)  # type: ignore[arg-type]
        encoder = StreamingEncoder(ckpt.model, ckpt.model_version)
        updater = VectorUpdater(encoder, policy, cache_capacity=s.cache_users)
        updater.max_future_ms = s.max_future_ms
        metrics.MODEL_INFO.labels(model_version=ckpt.model_version).set(1)
        log.info(
            "loaded model %s from %s (mode=%s, reanchor_every=%d)",
            ckpt.model_version, s.model_dir, s.update_mode, s.reanchor_every,
        )
        return updater
