"""Training, checkpoints, incremental training, AUC and baselines on a tiny simulated world (< 60 s)."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from encoder.checkpoint import load_checkpoint, save_checkpoint
from encoder.model import DUPN
from encoder.streaming import StreamingEncoder
from tests.support.training import TINY_ENC, TINY_SIM
from training.baselines import BASELINES, make_baseline
from training.daily import train_and_save
from training.data import MultiTaskBatches, collate
from training.metrics import auc, evaluate_model
from training.simulator import Simulator, split_by_time
from training.train import Prepared, TrainConfig, TrainData, fit, prepare, train

FOUR = ("ctr", "l2r", "talent", "ppp")


@pytest.fixture(scope="module")
def world() -> tuple[TrainData, Prepared]:
    sim = Simulator(TINY_SIM).generate()
    train_ex, _ = split_by_time(sim, 0.8)
    data = TrainData(sim.histories, sim.users, train_ex)
    return data, prepare(data, TINY_ENC)


def test_batches_are_left_padded_windows_of_the_history(world: tuple[TrainData, Prepared]) -> None:
    _, prep = world
    table = prep.tables["ctr"]
    contexts = np.arange(min(20, table.n_contexts))
    batch = collate(prep.store, [(table, contexts)], TINY_ENC, TINY_ENC.window)
    for row, c in enumerate(contexts.tolist()):
        hist = prep.store.records[int(table.ctx_user[c])]
        n = int(table.ctx_len[c])
        want = hist[max(0, n - TINY_ENC.window) : n]
        assert int(batch.mask[row].sum()) == len(want)
        assert batch.behaviors.ts[row, -1].item() == int(want["ts"][-1])
        assert batch.behaviors.ts[row, batch.mask[row]].tolist() == want["ts"].tolist()
    part = batch.parts[0]
    assert part.items is not None and len(part.label) == int(table.ctx_start[len(contexts)])


def test_each_step_draws_a_minibatch_per_task(world: tuple[TrainData, Prepared]) -> None:
    _, prep = world
    batches = MultiTaskBatches(prep.store, {t: prep.tables[t] for t in FOUR}, TINY_ENC, 32, seed=0)
    batch = next(batches)
    assert [p.task for p in batch.parts] == list(FOUR)
    assert all(len(p.label) >= 32 for p in batch.parts)
    again = next(MultiTaskBatches(prep.store, {t: prep.tables[t] for t in FOUR}, TINY_ENC, 32, seed=0))
    assert torch.equal(again.parts[0].label, batch.parts[0].label)  # seeded


def test_multitask_loss_falls(world: tuple[TrainData, Prepared]) -> None:
    _, prep = world
    torch.manual_seed(0)
    model = DUPN(TINY_ENC)
    log = fit(model, prep, TrainConfig(tasks=FOUR, steps=40, batch_size=64, lr=0.02), progress=False)
    first = sum(log.mean_loss(t, first=5) for t in FOUR)
    last = sum(log.mean_loss(t, last=5) for t in FOUR)
    assert last < 0.8 * first, (first, last)


def test_the_log_records_each_steps_gradient_norm_and_how_often_the_clip_acted(
    world: tuple[TrainData, Prepared],
) -> None:
    _, prep = world
    for clip, share in ((1e-4, 1.0), (1e9, 0.0)):
        torch.manual_seed(0)
        log = fit(DUPN(TINY_ENC), prep, TrainConfig(tasks=FOUR, steps=3, batch_size=16, clip_norm=clip),
                  progress=False)
        assert len(log.grad_norms) == 3 and all(n > 1e-4 for n in log.grad_norms)
        assert log.clipped_share(clip, 20) == share


def test_train_accepts_a_data_tuple(world: tuple[TrainData, Prepared]) -> None:
    data, _ = world
    cfg = TrainConfig(tasks=("ppp",), steps=2, batch_size=16)
    model = train(None, cfg, TINY_ENC, (data.histories, data.users, data.examples), progress=False)
    assert isinstance(model, DUPN) and model.cfg.props_in_lstm and model.cfg.props_in_attention


def test_checkpoint_round_trip_gives_identical_outputs(
    tmp_path: Path, world: tuple[TrainData, Prepared]
) -> None:
    _, prep = world
    model = DUPN(TINY_ENC)
    fit(model, prep, TrainConfig(tasks=("ppp",), steps=3, batch_size=16), progress=False)
    version = save_checkpoint(model, tmp_path / "ckpt")
    ckpt = load_checkpoint(tmp_path / "ckpt")
    assert ckpt.model_version == version == save_checkpoint(ckpt.model, tmp_path / "again")
    batch = collate(prep.store, [(prep.tables["ctr"], np.arange(8))], TINY_ENC, TINY_ENC.window)
    model.eval()
    with torch.no_grad():
        a = model.encode(batch.behaviors, batch.mask, batch.now, batch.context)
        b = ckpt.model.encode(batch.behaviors, batch.mask, batch.now, batch.context)
    assert torch.equal(a, b)
    rec = prep.store.records[0][:10]
    now = int(rec["ts"][-1])
    v1 = StreamingEncoder(model, version).encode_window(rec, now)
    v2 = StreamingEncoder(ckpt.model, ckpt.model_version).encode_window(rec, now)
    np.testing.assert_array_equal(v1, v2)


def test_init_from_continues_from_the_loaded_weights(tmp_path: Path) -> None:
    sim = dataclasses.replace(TINY_SIM, n_users=40)
    cfg = TrainConfig(tasks=("ppp", "ctr"), steps=3, batch_size=16)
    parent = train_and_save(tmp_path / "day0", sim, cfg, TINY_ENC, progress=False)
    # zero steps on new data: the continued model *is* the loaded one
    same = train_and_save(
        tmp_path / "day1",
        dataclasses.replace(sim, seed=9),
        dataclasses.replace(cfg, steps=0),
        init_from=tmp_path / "day0",
        progress=False,
    )
    assert same == parent
    moved = train_and_save(
        tmp_path / "day1b", dataclasses.replace(sim, seed=9), cfg, init_from=tmp_path / "day0", progress=False
    )
    meta = load_checkpoint(tmp_path / "day1b").meta
    assert moved != parent and meta["parent_version"] == parent
    assert set(meta["test_metrics"]) >= {"ppp_acc", "ctr_auc"}


def _brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y > 0.5], s[y <= 0.5]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_count_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(200) < 0.3).astype(np.float32)
    s = rng.integers(0, 12, size=200).astype(np.float64)  # many ties
    assert auc(y, s) == pytest.approx(_brute_auc(y, s), abs=1e-12)
    assert auc(y, -s) == pytest.approx(1 - _brute_auc(y, s), abs=1e-12)
    assert np.isnan(auc(np.ones(5), np.arange(5.0)))


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_give_256d_reps_and_train(name: str, world: tuple[TrainData, Prepared]) -> None:
    _, prep = world
    enc = dataclasses.replace(TINY_ENC, rep_dim=256)
    model = make_baseline(name, enc)
    batch = collate(prep.store, [(prep.tables["ppp"], np.arange(16))], enc, enc.window)
    rep = model.encode(batch.behaviors, batch.mask, batch.now, batch.context)
    assert rep.shape == (16, 256) and torch.isfinite(rep).all()
    before = [p.detach().clone() for p in model.parameters()]
    log = fit(
        model, prep, TrainConfig(tasks=("ppp", "ctr"), steps=15, batch_size=32, lr=0.02), progress=False
    )
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert log.mean_loss("ppp", last=3) < log.mean_loss("ppp", first=3)
    metrics = evaluate_model(model, Prepared(prep.store, {"ctr": prep.tables["ctr"]}))
    assert 0.0 <= metrics["ctr_auc"] <= 1.0
