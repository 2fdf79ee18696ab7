"""Integration fixtures: a real embedded broker and a real checkpoint on disk."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from encoder.checkpoint import save_checkpoint
from ops.testing import embedded_broker
from tests.conftest import tiny_model


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with embedded_broker(tmp_path_factory.mktemp("broker")) as url:
        yield url


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model")
    save_checkpoint(tiny_model(seed=1), out)
    return out
