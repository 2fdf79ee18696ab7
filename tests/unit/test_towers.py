"""``EncoderConfig.towers`` and ``TrainConfig.tower_tasks``: independent towers inside one model, each
trained by its own tasks, served by the unchanged stream worker."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from encoder.checkpoint import load_checkpoint, save_checkpoint
from encoder.config import OMITTED_AT_DEFAULT
from encoder.features import records_from_events
from encoder.model import DUPN, BehaviorTensors, UserContext
from encoder.streaming import StreamingEncoder
from tests.support.factories import TINY, make_events, tiny_model
from tests.support.training import TINY_ENC, tiny_batch
from training.train import TrainConfig, batch_losses

HALF = TINY.rep_dim // 2


def _window(n: int = 10, seed: int = 3) -> tuple[BehaviorTensors, torch.Tensor, torch.Tensor, np.ndarray]:
    recs = records_from_events(make_events("u", n, seed=seed))
    b = BehaviorTensors.from_records(recs[None, :], TINY)
    return b, torch.ones(1, n, dtype=torch.bool), torch.tensor([int(recs[-1]["ts"])]), recs


def _tower_rows(model: DUPN, tower: int) -> dict[str, torch.Tensor]:
    """Gradients of the parameter rows that belong to ``tower`` (of two)."""
    h, a, v = model.cfg.hidden, model.cfg.attention_dim, model.cfg.value_dim
    units = torch.arange(h)[tower * h // 2 : (tower + 1) * h // 2]
    gate_rows = torch.cat([units + k * h for k in range(4)])
    grads = {
        "from_item": model.cell.from_item.weight.grad[gate_rows],  # type: ignore[index]
        "from_hidden": model.cell.from_hidden.parametrizations.weight.original.grad[gate_rows],  # type: ignore[union-attr,index]
        "key": model.attention.key.parametrizations.weight.original.grad[  # type: ignore[union-attr,index]
            tower * a // 2 : (tower + 1) * a // 2
        ],
        "value": model.attention.value.parametrizations.weight.original.grad[  # type: ignore[union-attr,index]
            tower * v // 2 : (tower + 1) * v // 2
        ],
    }
    return grads


def test_each_block_of_r_is_a_function_of_its_own_tower_alone() -> None:
    """∂r_1/∂(tower 2's LSTM, key and value rows) = 0, and tower 1's rows do get a gradient."""
    model = tiny_model(seed=1, towers=2).train()
    b, mask, now, _ = _window()
    model.encode(b, mask, now, UserContext())[:, :HALF].sum().backward()
    for name, g in _tower_rows(model, 1).items():
        assert g.abs().sum() == 0, name
    for name, g in _tower_rows(model, 0).items():
        assert g.abs().sum() > 0, name


def test_a_task_trains_only_the_towers_its_group_names() -> None:
    """tower_tasks "ctr;talent,ppp": the CTR loss reaches tower 1 only, PPP's tower 2 only; each head
    still reads all of r (the other block detached)."""
    torch.manual_seed(2)
    model = DUPN(dataclasses.replace(TINY_ENC, towers=2)).train()
    batch = tiny_batch(model.cfg)
    groups = TrainConfig(tower_tasks="ctr;talent,ppp").tower_task_groups()
    assert groups == (frozenset({"ctr"}), frozenset({"talent", "ppp"}))
    losses = batch_losses(model, batch, 0.0, tower_tasks=groups)
    losses["ctr"].backward(retain_graph=True)
    assert all(g.abs().sum() == 0 for g in _tower_rows(model, 1).values())
    assert all(g.abs().sum() > 0 for g in _tower_rows(model, 0).values())
    assert model.heads.ctr_user.weight.grad[:, HALF:].abs().sum() > 0  # type: ignore[index]
    model.zero_grad(set_to_none=True)
    losses["ppp"].backward()
    assert all(g.abs().sum() == 0 for g in _tower_rows(model, 0).values())
    assert all(g.abs().sum() > 0 for g in _tower_rows(model, 1).values())


def test_runs_of_fewer_tasks_train_every_tower_and_wrong_groups_fail_clearly() -> None:
    single = TrainConfig(tasks=("talent",), tower_tasks="ctr;talent,ppp").tower_task_groups()
    assert single == (frozenset({"talent"}), frozenset({"talent"}))  # a single-task run trains every tower
    with pytest.raises(ValueError, match="tower_tasks and embedding_tasks must name tasks"):
        TrainConfig(tower_tasks="ctr;clicks")
    model = DUPN(dataclasses.replace(TINY_ENC, towers=2))
    three = TrainConfig(tower_tasks="ctr;l2r;ppp").tower_task_groups()
    with pytest.raises(ValueError, match="3 groups for a model with 2"):
        batch_losses(model, tiny_batch(model.cfg), 0.0, tower_tasks=three)
    with pytest.raises(ValueError, match="towers=3 must divide"):
        tiny_model(towers=3)


def test_the_worker_serves_towers_unchanged_and_checkpoints_keep_the_masks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(seed=4, towers=2, attention_heads=2)
    enc = StreamingEncoder(model, "t")
    b, mask, now, recs = _window(14, seed=6)
    (state,) = enc.replay([recs[:8]])
    for rec in recs[8:]:
        enc.step([state], rec[None])
    assert state.scores.shape == (TINY.window, 4)
    with torch.no_grad():
        offline = model.encode(b, mask, now, UserContext()).numpy()[0]
    np.testing.assert_allclose(enc.represent([state], [int(now)])[0], offline, rtol=1e-4, atol=1e-5)
    save_checkpoint(model, tmp_path / "m")
    loaded = load_checkpoint(tmp_path / "m")
    assert loaded.config.towers == 2
    with torch.no_grad():
        np.testing.assert_allclose(loaded.model.encode(b, mask, now, UserContext()).numpy()[0], offline, rtol=1e-6)
    assert "towers" in OMITTED_AT_DEFAULT and "towers" not in json.loads(tiny_model(seed=4).cfg.to_json())
    assert not any("parametrizations" in k for k in tiny_model(seed=4).state_dict())


def test_embedding_tasks_keep_the_other_tasks_gradients_out_of_the_item_tables() -> None:
    """embedding_tasks "ctr": PPP's loss moves the LSTM but not the item embedding tables; CTR's moves both.
    Without the option, PPP's loss reaches the tables (so the check can fail)."""
    torch.manual_seed(5)
    model = DUPN(TINY_ENC).train()
    batch = tiny_batch(model.cfg)
    for tasks, reaches in ((("ctr",), False), (None, True)):
        model.zero_grad(set_to_none=True)
        losses = batch_losses(model, batch, 0.2, embedding_tasks=tasks)
        losses["ppp"].backward(retain_graph=True)
        table = model.items.item.weight.grad
        assert (table is not None and bool(table.abs().sum() > 0)) is reaches
        assert model.cell.from_item.weight.grad is not None and model.cell.from_item.weight.grad.abs().sum() > 0
        model.zero_grad(set_to_none=True)
        losses["ctr"].backward()
        assert model.items.item.weight.grad is not None and model.items.item.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="embedding_tasks"):
        TrainConfig(embedding_tasks="clicks")
