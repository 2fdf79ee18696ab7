"""Daily incremental training: the same world continuing, the optimizer state in checkpoints, resuming it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from encoder.checkpoint import OPTIMIZER, load_checkpoint, load_optimizer_state, save_checkpoint
from encoder.model import DUPN
from tests.support.training import TINY_ENC, TINY_SIM
from training.daily import (
    day_examples,
    optimizer_tensors,
    restore_optimizer,
    resumed_optimizer,
    train_and_save,
)
from training.simulator import DAY_MS, Simulator
from training.train import TrainConfig, TrainData, fit, make_optimizer, prepare

SIM = dataclasses.replace(TINY_SIM, n_users=40, days=4.0, events_per_user=30)
CFG = TrainConfig(tasks=("ppp", "ctr"), steps=3, batch_size=8)


def _trained() -> tuple[DUPN, torch.optim.Optimizer]:
    sim = Simulator(SIM).generate_until(2)
    prep = prepare(TrainData(sim.histories, sim.users, day_examples(sim, 0, 2)), TINY_ENC, CFG.tasks)
    model = DUPN(TINY_ENC)
    opt = make_optimizer(model, list(model.parameters()), CFG)
    fit(model, prep, CFG, progress=False, optimizer=opt)
    return model, opt


def test_generate_until_continues_the_same_world() -> None:
    short, long = Simulator(SIM).generate_until(2), Simulator(SIM).generate_until(3)
    assert [u.power_level for u in short.users] == [u.power_level for u in long.users]
    cut = SIM.start_ms + 2 * DAY_MS - 60_000  # the last step before the horizon may straddle it
    for uid, evs in short.histories.items():
        before = [ev for ev in evs if ev["ts"] < cut]
        assert before == [ev for ev in long.histories[uid] if ev["ts"] < cut]
    assert sum(map(len, long.histories.values())) > sum(map(len, short.histories.values()))
    assert max(ev["ts"] for evs in long.histories.values() for ev in evs) > SIM.start_ms + 2 * DAY_MS
    # past the event budget: users keep acting at their planted rate
    assert Simulator(dataclasses.replace(SIM, days=1.0)).generate_until(3).histories != {}


def test_day_examples_slices_by_moment() -> None:
    sim = Simulator(SIM).generate_until(3)
    day1 = day_examples(sim, 1, 2)
    lo, hi = SIM.start_ms + DAY_MS, SIM.start_ms + 2 * DAY_MS
    assert day1["ctr"] and all(lo <= ex.now_ms < hi for exs in day1.values() for ex in exs)


def test_optimizer_state_round_trips_through_the_checkpoint(tmp_path: Path) -> None:
    model, opt = _trained()
    version = save_checkpoint(model, tmp_path / "c", optimizer_state=optimizer_tensors(model, opt))
    ckpt = load_checkpoint(tmp_path / "c")
    assert ckpt.model_version == version == save_checkpoint(model, tmp_path / "no-opt")  # weights only
    tensors = load_optimizer_state(tmp_path / "c")
    assert tensors is not None
    fresh = make_optimizer(ckpt.model, list(ckpt.model.parameters()), CFG)
    n = restore_optimizer(ckpt.model, fresh, tensors)
    assert n == sum(1 for _ in model.parameters())
    names = dict(model.named_parameters())
    loaded = dict(ckpt.model.named_parameters())
    for name, p in names.items():
        for key, value in opt.state[p].items():
            assert torch.equal(fresh.state[loaded[name]][key], value), (name, key)
    assert any(float(opt.state[p]["sum"].abs().sum()) > 0 for p in model.parameters())


def test_checkpoint_without_optimizer_state_still_loads_and_starts_fresh(tmp_path: Path) -> None:
    model, opt = _trained()
    save_checkpoint(model, tmp_path / "c", optimizer_state=optimizer_tensors(model, opt))
    save_checkpoint(model, tmp_path / "c")  # an old-style save into the same dir drops the stale file
    assert not (tmp_path / "c" / OPTIMIZER).exists()
    assert "optimizer_sha256" not in json.loads((tmp_path / "c" / "config.json").read_text())
    assert load_optimizer_state(tmp_path / "c") is None
    ckpt = load_checkpoint(tmp_path / "c")
    with pytest.warns(UserWarning, match="no optimizer state"):
        _, info = resumed_optimizer(ckpt.model, CFG, tmp_path / "c")
    assert info["optimizer_resumed"] is False


def test_a_tampered_optimizer_file_is_refused(tmp_path: Path) -> None:
    model, opt = _trained()
    save_checkpoint(model, tmp_path / "c", optimizer_state=optimizer_tensors(model, opt))
    data = bytearray((tmp_path / "c" / OPTIMIZER).read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "c" / OPTIMIZER).write_bytes(bytes(data))
    load_checkpoint(tmp_path / "c")  # serving does not read it
    with pytest.raises(ValueError, match="does not match"):
        load_optimizer_state(tmp_path / "c")


def test_daily_run_continues_the_world_and_resumes_the_optimizer(tmp_path: Path) -> None:
    parent = train_and_save(tmp_path / "d0", SIM, CFG, TINY_ENC, progress=False, days=(0, 2))
    meta0 = load_checkpoint(tmp_path / "d0").meta
    assert meta0["sim_days"] == [0, 2] and meta0["optimizer_resumed"] is False
    child = train_and_save(tmp_path / "d2", SIM, CFG, init_from=tmp_path / "d0", progress=False, days=(2, 3))
    meta = load_checkpoint(tmp_path / "d2").meta
    assert child != parent and meta["parent_version"] == parent
    assert meta["optimizer_resumed"] is True
    assert meta["optimizer_params_restored"] == meta["optimizer_params_total"]
    assert meta["sim_config"]["seed"] == SIM.seed and meta["sim_days"] == [2, 3]
    # the accumulators kept growing from yesterday's: today's are at least yesterday's, somewhere larger
    before, after = load_optimizer_state(tmp_path / "d0"), load_optimizer_state(tmp_path / "d2")
    assert before is not None and after is not None
    sums = [k for k in before if k.endswith("::sum")]
    assert all(bool((after[k] >= before[k] - 1e-6).all()) for k in sums)
    assert any(bool((after[k] > before[k]).any()) for k in sums)


def test_days_must_be_ordered(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="days"):
        train_and_save(tmp_path / "x", SIM, CFG, TINY_ENC, progress=False, days=(2, 2))


def test_cli_day_argument() -> None:
    import argparse

    from ops.cli import _days, build_parser

    assert _days("6") == (6, 7) and _days("0:6") == (0, 6)
    with pytest.raises(argparse.ArgumentTypeError):
        _days("six")
    args = build_parser().parse_args(["train", "--quick", "--day", "6", "--init-from", "yesterday"])
    assert args.days == (6, 7) and args.init_from == Path("yesterday")
