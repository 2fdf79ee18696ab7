"""Fixtures shared by unit and integration tests, loaded from ``tests/support/fixtures``."""

from __future__ import annotations

import torch

pytest_plugins = ("tests.support.fixtures.encoder", "tests.support.fixtures.broker", "tests.support.fixtures.stores")

# One intra-op thread: tiny tensors gain nothing from two, and a second busy
# process (a worker under test) turns torch's thread spinning into stalls.
torch.set_num_threads(1)
