"""The stream worker's numpy recurrence computes what the trained torch cell computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from encoder.config import EncoderConfig
from encoder.model import PropertyGatedLSTMCell


def _torch_loop(
    cell: PropertyGatedLSTMCell, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, sizes: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference: :meth:`recur` step by step over the packed layout."""
    hs, lo = [], 0
    for n in sizes:
        h_t, c_t = cell.recur(x[lo : lo + n], h[:n], c[:n])
        h, c = torch.cat([h_t, h[n:]]), torch.cat([c_t, c[n:]])
        hs.append(h_t)
        lo += n
    return torch.cat(hs), h, c


@pytest.mark.parametrize(
    "lengths",
    [[1], [1] * 7, [30, 1, 1, 1], [5, 4, 4, 2, 1], [124, 3]],
    ids=["one-event", "one-step-each", "a-re-anchor-tail", "mixed", "window-plus-R"],
)
def test_packed_numpy_recurrence_matches_the_torch_cell(lengths: list[int]) -> None:
    torch.manual_seed(0)
    cell = PropertyGatedLSTMCell(EncoderConfig())
    with torch.no_grad():  # gates away from 0 so a wrong gate order or σ would show
        cell.from_hidden.weight.mul_(4.0)
    hid = cell.hidden
    sizes = [sum(1 for n in lengths if n > t) for t in range(max(lengths))]
    x = torch.randn(sum(lengths), 4 * hid) * 2
    h0, c0 = torch.randn(len(lengths), hid), torch.randn(len(lengths), hid)
    with torch.no_grad():
        want_hs, want_h, want_c = _torch_loop(cell, x, h0, c0, sizes)
    h, c = h0.numpy().copy(), c0.numpy().copy()
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
    hs = cell.recur_packed(x.numpy(), h, c, offsets, sizes)
    np.testing.assert_allclose(hs, want_hs.numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(h, want_h.numpy(), rtol=0, atol=2e-6)  # each user's last h, in place
    np.testing.assert_allclose(c, want_c.numpy(), rtol=0, atol=2e-6)


def test_packed_recurrence_reads_the_current_weights() -> None:
    """A model trained further after the cell was first used must not be served with stale weights."""
    cell = PropertyGatedLSTMCell(EncoderConfig())
    x, h = np.ones((1, 4 * cell.hidden), np.float32), np.ones((1, cell.hidden), np.float32)
    before = cell.recur_packed(x, h.copy(), np.zeros_like(h), [0], [1])
    with torch.no_grad():
        cell.from_hidden.weight.add_(1.0)
    after = cell.recur_packed(x, h.copy(), np.zeros_like(h), [0], [1])
    assert not np.allclose(before, after)
