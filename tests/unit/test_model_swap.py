"""A running worker only swaps in a checkpoint it can serve: same window and vector size, finite weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.settings import load_settings
from encoder.checkpoint import save_checkpoint
from streams.runtime import Runtime
from tests.support.factories import tiny_model


def _runtime(model_dir: Path) -> Runtime:
    save_checkpoint(tiny_model(seed=1), model_dir)
    runtime = Runtime(load_settings(env={}, model_path=str(model_dir)))
    assert runtime.updater.encoder.model_version  # the first model loads
    return runtime


def _poisoned(seed: int) -> torch.nn.Module:
    model = tiny_model(seed=seed)
    with torch.no_grad():
        next(p for p in model.parameters() if p.dim() == 2)[0, 0] = float("nan")
    return model


def test_a_servable_checkpoint_is_swapped_in(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path)
    version = save_checkpoint(tiny_model(seed=2), tmp_path)
    assert runtime.check_for_new_model() == version
    assert runtime.install_pending() == version


@pytest.mark.parametrize(
    "make",
    [
        lambda: _poisoned(2),
        lambda: tiny_model(seed=2, rep_dim=128),
        lambda: tiny_model(seed=2, window=50),
    ],
    ids=["nan-weight", "other-vector-size", "other-window"],
)
def test_an_unservable_checkpoint_is_refused_and_the_old_model_kept(tmp_path: Path, make: object) -> None:
    runtime = _runtime(tmp_path)
    before = runtime.updater.encoder.model_version
    save_checkpoint(make(), tmp_path)  # type: ignore[operator]
    assert runtime.check_for_new_model() is None
    assert runtime.install_pending() is None
    assert runtime.updater.encoder.model_version == before


def test_a_worker_refuses_to_start_on_a_non_finite_model(tmp_path: Path) -> None:
    save_checkpoint(_poisoned(1), tmp_path)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="non-finite weights"):
        _ = Runtime(load_settings(env={}, model_path=str(tmp_path))).updater
