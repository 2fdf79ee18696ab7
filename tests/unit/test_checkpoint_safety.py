"""Loading a checkpoint cannot run code: no pickle on the path, and a pickle posing as weights is refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from encoder.checkpoint import WEIGHTS, load_checkpoint, save_checkpoint
from tests.support.factories import tiny_model


def _forbidden(*_a: Any, **_k: Any) -> Any:
    raise AssertionError("checkpoint loading must not unpickle")


def test_loading_uses_no_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    version = save_checkpoint(tiny_model(seed=3), tmp_path)
    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, _forbidden)
    assert load_checkpoint(tmp_path).model_version == version


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_in_place_of_the_weights_is_refused_not_run(tmp_path: Path) -> None:
    save_checkpoint(tiny_model(seed=3), tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / WEIGHTS).write_bytes(pickle.dumps(_Payload(marker)))
    torch.save({"x": torch.zeros(1)}, tmp_path / "model.pt")  # a stray torch file is never looked at
    with pytest.raises(Exception):  # safetensors raises its own error type; what matters is that nothing ran
        load_checkpoint(tmp_path)
    assert not marker.exists()


def test_edited_weights_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    save_checkpoint(tiny_model(seed=3), tmp_path)
    state = load_file(str(tmp_path / WEIGHTS))
    name = sorted(state)[0]
    state[name] = state[name] + 1
    save_file(state, str(tmp_path / WEIGHTS))
    with pytest.raises(ValueError, match="corrupt or edited"):
        load_checkpoint(tmp_path)
