"""Checkpoints: safetensors weights + JSON config, named by a content hash.

No pickle anywhere: loading a checkpoint can only ever produce tensors and a
config, never run code (see docs/threat-model.md).

A checkpoint written by training may also carry the optimizer's state
(``optimizer.safetensors``: AdaGrad's per-parameter accumulators, as named
tensors) so that tomorrow's incremental run resumes the same optimisation
instead of restarting AdaGrad's step sizes at their largest.  Serving never
reads it and it does not enter the ``model_version`` (equal weights are the
same model whatever the optimizer state); its SHA-256 is recorded in
``config.json`` and checked when it is loaded.  Checkpoints without it (older
ones, or ones saved without an optimizer) load exactly as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from encoder.config import EncoderConfig
from encoder.model import DUPN

WEIGHTS = "model.safetensors"
META = "config.json"
OPTIMIZER = "optimizer.safetensors"


@dataclass
class Checkpoint:
    model: DUPN
    model_version: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> EncoderConfig:
        return self.model.cfg


def model_version_of(state: dict[str, torch.Tensor], cfg: EncoderConfig) -> str:
    """Content hash of weights + config: equal models get equal versions."""
    digest = hashlib.sha256(cfg.to_json().encode())
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:16]


def save_checkpoint(
    model: DUPN,
    path: str | os.PathLike[str],
    optimizer_state: Mapping[str, torch.Tensor] | None = None,
    **meta: Any,
) -> str:
    """Write ``path/model.safetensors`` and ``path/config.json``; return the model_version.

    ``optimizer_state`` (named tensors, e.g. ``training.daily.optimizer_tensors``)
    goes to ``path/optimizer.safetensors`` with its SHA-256 in config.json; without
    it a stale optimizer file left in ``path`` by an earlier save is removed, so
    the directory never pairs new weights with an old optimizer.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    version = model_version_of(state, model.cfg)
    tmp = out / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"model_version": version})
    os.replace(tmp, out / WEIGHTS)
    extra: dict[str, Any] = {}
    if optimizer_state is not None:
        opt_tmp = out / (OPTIMIZER + ".tmp")
        tensors = {k: v.detach().contiguous().cpu() for k, v in optimizer_state.items()}
        save_file(tensors, str(opt_tmp), metadata={"model_version": version})
        os.replace(opt_tmp, out / OPTIMIZER)
        extra["optimizer_sha256"] = _sha256(out / OPTIMIZER)
    else:
        (out / OPTIMIZER).unlink(missing_ok=True)
    doc = {
        "model_version": version,
        "config": json.loads(model.cfg.to_json()),
        "created_ms": int(time.time() * 1000),
        **meta,
        **extra,
    }
    (out / META).write_text(json.dumps(doc, indent=2, sort_keys=True))
    return version


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_optimizer_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor] | None:
    """The optimizer tensors saved with a checkpoint, or None if it has none (an older checkpoint).

    Raises ``ValueError`` if the file does not match the SHA-256 recorded in
    config.json (half-written, edited, or left from another save).
    """
    src = Path(path)
    file = src / OPTIMIZER
    if not file.is_file():
        return None
    doc = json.loads((src / META).read_text()) if (src / META).is_file() else {}
    expected = doc.get("optimizer_sha256")
    if expected is None or _sha256(file) != expected:
        raise ValueError(
            f"optimizer state {file} does not match config.json (sha256 {expected}); "
            "remove it to continue with a fresh optimizer"
        )
    return dict(load_file(str(file)))


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load a checkpoint directory; verifies the content hash against config.json."""
    src = Path(path)
    if not (src / META).is_file() or not (src / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"no checkpoint at {src} (expected {META} and {WEIGHTS}); train one with `dupn train`"
        )
    doc = json.loads((src / META).read_text())
    cfg = EncoderConfig.from_dict(doc["config"])
    state = load_file(str(src / WEIGHTS))
    version = model_version_of(state, cfg)
    if version != doc.get("model_version"):
        raise ValueError(
            f"checkpoint {src} is corrupt or edited: content hash {version} != recorded "
            f"{doc.get('model_version')}"
        )
    model = DUPN(cfg)
    model.load_state_dict(state, strict=True)
    model.eval()
    meta = {k: v for k, v in doc.items() if k not in ("config",)}
    return Checkpoint(model=model, model_version=version, meta=meta)
