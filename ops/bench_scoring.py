"""Benchmark: scoring N candidates for one user, split heads vs recomputing the user part per candidate.

Both paths run in one process on the same model, rep and candidates, median of
several repetitions each, interleaved so that machine noise hits both alike.
Reported twice: end to end (hashing the candidates' ids included) and heads
only (items pre-encoded, what a ranker with an item-vector cache pays).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from encoder import scoring
from encoder.checkpoint import load_checkpoint
from encoder.config import EncoderConfig
from encoder.features import records_from_events
from encoder.model import DUPN
from encoder.streaming import StreamingEncoder


@dataclass(frozen=True)
class BenchResult:
    model: str
    candidates: int
    repeats: int
    split_ms: float
    unsplit_ms: float
    split_heads_ms: float
    unsplit_heads_ms: float
    max_abs_diff: float
    model_split_ms: float = 0.0
    model_unsplit_ms: float = 0.0
    model_max_abs_diff: float = 0.0

    @property
    def model_ratio(self) -> float:
        return self.model_unsplit_ms / self.model_split_ms

    @property
    def ratio(self) -> float:
        return self.unsplit_ms / self.split_ms

    @property
    def heads_ratio(self) -> float:
        return self.unsplit_heads_ms / self.split_heads_ms

    def render(self) -> str:
        return "\n".join([
            f"model {self.model}, {self.candidates} candidates, median of {self.repeats} runs, "
            f"torch threads {torch.get_num_threads()}",
            "| path | split ms | unsplit ms | unsplit / split |",
            "|---|---|---|---|",
            f"| end to end (encode items + heads) | {self.split_ms:.2f} | {self.unsplit_ms:.2f} | {self.ratio:.2f} |",
            f"| heads only (items pre-encoded) | {self.split_heads_ms:.2f} | {self.unsplit_heads_ms:.2f} "
            f"| {self.heads_ratio:.2f} |",
            f"| whole model (100-behavior window → rep, then heads) | {self.model_split_ms:.2f} | "
            f"{self.model_unsplit_ms:.2f} | {self.model_ratio:.1f} |",
            f"max |split - unsplit| = {self.max_abs_diff:.2e} (heads), {self.model_max_abs_diff:.2e} (whole model)",
        ])


def load_model(model_dir: Path) -> tuple[DUPN, str]:
    """The demo checkpoint when there is one, else a fresh default model (same shapes, same cost)."""
    if (model_dir / "config.json").is_file():
        ckpt = load_checkpoint(model_dir)
        return ckpt.model, ckpt.model_version
    torch.manual_seed(0)
    return DUPN(EncoderConfig()).eval(), "fresh-default"


def candidates(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [
        {"item_id": f"i{k}", "shop_id": f"s{rng.integers(500)}", "brand_id": f"b{rng.integers(300)}",
         "category_id": f"c{rng.integers(50)}", "tags": [f"t{rng.integers(100)}" for _ in range(3)]}
        for k in range(n)
    ]


def bench_scoring(model_dir: Path, n: int = 1000, repeats: int = 7, seed: int = 0) -> BenchResult:
    model, version = load_model(model_dir)
    rng = np.random.default_rng(seed)
    rep = np.tanh(rng.normal(size=model.cfg.rep_dim)).astype(np.float32)
    items = candidates(n, seed)
    feats = rng.normal(size=(n, model.cfg.n_ranking_features)).astype(np.float32)
    with torch.inference_mode():
        vecs = scoring.encode_candidates(model, items)
        feats_t = torch.from_numpy(feats)
        rep_t = torch.from_numpy(rep)
    runs: dict[str, Callable[[], Any]] = {
        "split": lambda: scoring.score_split(model, rep, items, feats),
        "unsplit": lambda: scoring.score_unsplit(model, rep, items, feats),
        "split_heads": lambda: scoring.score_split_vectors(model, scoring.UserPart.of(model, rep_t), vecs, feats_t),
        "unsplit_heads": lambda: scoring.score_unsplit_vectors(model, rep_t, vecs, feats_t),
    }
    window = user_window(model.cfg.window, seed)
    encoder = StreamingEncoder(model, version)
    now = int(window[-1]["ts"])
    runs["model_split"] = lambda: _model_split(encoder, window, now, vecs, feats_t)
    runs["model_unsplit"] = lambda: _model_unsplit(encoder, window, now, vecs, feats_t)
    times = _interleaved(runs, repeats)
    a, b = scoring.score_split(model, rep, items, feats), scoring.score_unsplit(model, rep, items, feats)
    diff = max(float(np.abs(a[0] - b[0]).max()), float(np.abs(a[1] - b[1]).max()))
    c, d = runs["model_split"](), runs["model_unsplit"]()
    model_diff = max(float(np.abs(c[0] - d[0]).max()), float(np.abs(c[1] - d[1]).max()))
    return BenchResult(version, n, repeats, times["split"], times["unsplit"], times["split_heads"],
                       times["unsplit_heads"], diff, times["model_split"], times["model_unsplit"], model_diff)


def user_window(size: int, seed: int) -> np.ndarray:
    """One simulated user's last ``size`` behaviors as records."""
    from training.simulator import SimConfig, Simulator

    events = list(Simulator(SimConfig(n_users=50, seed=seed)).stream(1, size))
    return records_from_events(events)


def _model_split(
    encoder: StreamingEncoder, window: np.ndarray, now: int, vecs: torch.Tensor, feats: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """The seed's split: the user representation (LSTM + attention) once, the item part per candidate."""
    rep = torch.from_numpy(encoder.encode_window(window, now))
    return scoring.score_split_vectors(encoder.model, scoring.UserPart.of(encoder.model, rep), vecs, feats)


def _model_unsplit(
    encoder: StreamingEncoder, window: np.ndarray, now: int, vecs: torch.Tensor, feats: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Unsplit: the whole model per candidate (the window re-encoded for each, batched)."""
    states = encoder.replay([window] * vecs.shape[0])
    reps = torch.from_numpy(encoder.represent(states, [now] * vecs.shape[0]))
    with torch.inference_mode():
        ctr = torch.sigmoid(encoder.model.heads.ctr_logit(reps, vecs))
        l2r = encoder.model.heads.l2r_logit(reps, feats)
    return ctr.numpy(), l2r.numpy()


def _interleaved(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median ms per run; one warm-up each, then the runs take turns."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(ms) for name, ms in samples.items()}
