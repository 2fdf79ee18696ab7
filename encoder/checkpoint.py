"""Checkpoints: safetensors weights + JSON config, named by a content hash.

No pickle anywhere: loading a checkpoint can only ever produce tensors and a
config, never run code (see docs/threat-model.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from encoder.config import EncoderConfig
from encoder.model import DUPN

WEIGHTS = "model.safetensors"
META = "config.json"


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


def save_checkpoint(model: DUPN, path: str | os.PathLike[str], **meta: Any) -> str:
    """Write ``path/model.safetensors`` and ``path/config.json``; return the model_version."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    version = model_version_of(state, model.cfg)
    tmp = out / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"model_version": version})
    os.replace(tmp, out / WEIGHTS)
    doc = {
        "model_version": version,
        "config": json.loads(model.cfg.to_json()),
        "created_ms": int(time.time() * 1000),
        **meta,
    }
    (out / META).write_text(json.dumps(doc, indent=2, sort_keys=True))
    return version


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
