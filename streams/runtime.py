"""What a worker process holds besides Faust: the loaded model and the updater."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading

import torch

from core import metrics
from core.settings import Settings
from encoder.checkpoint import Checkpoint, load_checkpoint
from encoder.streaming import StreamingEncoder, UpdatePolicy
from encoder.validation import serving_problems
from streams.updater import VectorUpdater

log = logging.getLogger(__name__)

#: Container allocations between young-generation collections in a worker (CPython's default: 700).
WORKER_GC_GEN0 = 20_000


def tune_gc_for_worker() -> None:
    """Fewer and cheaper cyclic-GC passes in a worker process; call once, after the imports.

    A batch keeps thousands of small containers alive until it is done (parsed events, per-user
    batches, messages). With the default gen-0 threshold, collections run in the middle of every
    batch and promote them, and the full collections that follow walk the whole heap: ~216k objects
    of Faust, aiokafka, torch and our modules, ~0.1 s each. Freezing what exists once the modules
    are imported (called before the Faust worker starts and the model loads, so their objects are
    not frozen) takes it out of every later collection, and a gen-0 threshold of 20,000 lets a
    batch finish before most collections. Cycles are still collected, only less often; objects frozen here are never
    collected as cycles, which is fine for what lives as long as the process.
    (Measured in process on the bench stream: updater + hand-off 41 -> 32 us/event of CPU.)
    """
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, WORKER_GC_GEN0), gen1, gen2)


class Runtime:
    """The loaded model and the updater; shared by the agent and the web views.

    Model rollout: :meth:`check_for_new_model` (a timer, off the event loop)
    re-reads the recorded ``model_version`` of ``DUPN_MODEL_PATH`` (re-resolving
    a symlink each time) and, when it changed, loads and verifies the new
    checkpoint, then :meth:`install_pending` switches under :attr:`batch_lock`, so
    a batch runs on one model from start to end. Carried encoder states are
    cached per (model_version, events_seen): after a switch, each user's first
    batch rebuilds their run from the stored behaviors with the new model, so no
    vector ever mixes versions. Rolling back is the same switch in the other
    direction.
    """

    def __init__(self, settings: Settings, updater: VectorUpdater | None = None) -> None:
        """``updater``: a ready one (tests, tools); by default it is made from the checkpoint on first use."""
        self.settings = settings
        self._updater: VectorUpdater | None = updater
        self._pending: Checkpoint | None = None
        self._lock = threading.Lock()
        self._batch_lock: asyncio.Lock | None = None

    @property
    def batch_lock(self) -> asyncio.Lock:
        """Held while a batch is applied; a model switch waits for it."""
        if self._batch_lock is None:
            self._batch_lock = asyncio.Lock()
        return self._batch_lock

    @property
    def updater(self) -> VectorUpdater:
        if self._updater is None:
            with self._lock:
                if self._updater is None:
                    self._updater = self._make_updater(load_checkpoint(self.settings.model_dir))
        return self._updater

    @property
    def encoder(self) -> StreamingEncoder:
        return self.updater.encoder

    def check_for_new_model(self) -> str | None:
        """Load the checkpoint at the model path if its version differs; returns it (installed later)."""
        current = self.updater.encoder.model_version
        path = self.settings.model_dir
        try:
            recorded = json.loads((path / "config.json").read_text()).get("model_version")
        except (OSError, ValueError) as exc:
            log.warning("model path %s unreadable (%s); keeping model %s", path, exc, current)
            return None
        if recorded in (current, getattr(self._pending, "model_version", None)):
            return None
        try:
            ckpt = load_checkpoint(path)
        except Exception as exc:  # a half-written or corrupt checkpoint must not stop the worker
            log.error("new checkpoint at %s not loaded (%s); keeping model %s", path, exc, current)
            return None
        problems = serving_problems(
            ckpt.model, window=self.updater.policy.window, rep_dim=self.updater.encoder.cfg.rep_dim
        )
        if problems:
            log.error("checkpoint %s not installed: %s; keeping model %s",
                      ckpt.model_version, "; ".join(problems), current)
            return None
        self._pending = ckpt
        return ckpt.model_version

    def install_pending(self) -> str | None:
        """Switch to a loaded checkpoint (call between batches); returns the new version if it switched."""
        ckpt, self._pending = self._pending, None
        if ckpt is None:
            return None
        old = self.updater.encoder.model_version
        self.updater.encoder = StreamingEncoder(ckpt.model, ckpt.model_version)
        metrics.MODEL_INFO.labels(model_version=old).set(0)
        metrics.MODEL_INFO.labels(model_version=ckpt.model_version).set(1)
        log.info("model switched %s -> %s; users are re-encoded with it on their next event", old, ckpt.model_version)
        return ckpt.model_version

    def _make_updater(self, ckpt: Checkpoint) -> VectorUpdater:
        s = self.settings
        problems = serving_problems(ckpt.model, window=ckpt.config.window, rep_dim=ckpt.config.rep_dim)
        if problems:  # NaN weights would publish NaN vectors to every reader: refuse to start instead
            raise RuntimeError(f"model at {s.model_dir} cannot serve: {'; '.join(problems)}")
        torch.set_num_threads(max(1, s.model.torch_threads))
        policy = UpdatePolicy(s.model.update_mode, s.model.reanchor_every, ckpt.config.window)  # type: ignore[arg-type]
        encoder = StreamingEncoder(ckpt.model, ckpt.model_version)
        updater = VectorUpdater(encoder, policy, cache_capacity=s.worker.cache_users)
        updater.max_future_ms = s.worker.max_future_ms
        metrics.MODEL_INFO.labels(model_version=ckpt.model_version).set(1)
        log.info(
            "loaded model %s from %s (mode=%s, reanchor_every=%d)",
            ckpt.model_version, s.model_dir, s.model.update_mode, s.model.reanchor_every,
        )
        return updater
