"""Issue 13: loss weighting, per-task gradients, profile dropout, anchored training = the served
function, the held-out-user split with no cutoff-crossing label, oracle scores (tiny world, < 60 s)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from encoder.model import DUPN
from encoder.streaming import UpdatePolicy
from tests.support.training import TINY_ENC, TINY_SIM
from training.data import build_table, collate, run_starts
from training.metrics import FOUR_TASKS as FOUR
from training.metrics import auc
from training.protocol import check_split, split_examples, split_users
from training.served import offline_scores, served_scores
from training.simulator import DAY_MS, SimData, Simulator
from training.train import (
    LossCombiner,
    Prepared,
    TrainConfig,
    TrainData,
    combine_gradients,
    fit,
    init_output_biases,
    make_optimizer,
    prepare,
)


@pytest.fixture(scope="module")
def sim() -> SimData:
    return Simulator(TINY_SIM).generate()


@pytest.fixture(scope="module")
def split(sim: SimData) -> tuple[dict[str, dict[str, list]], Prepared]:  # type: ignore[type-arg]
    users = split_users(sorted(sim.histories), 0, (0.6, 0.2, 0.2))
    splits = split_examples(sim, users)
    prep = prepare(TrainData(sim.histories, sim.users, splits["train"]), TINY_ENC)
    return splits, prep


# -- split -----------------------------------------------------------------------------------


def test_held_out_users_are_disjoint_and_cover_everyone(sim: SimData) -> None:
    users = split_users(sorted(sim.histories), 0, (0.6, 0.2, 0.2))
    assert not (users.train & users.val) and not (users.train & users.test) and not (users.val & users.test)
    assert users.train | users.val | users.test == set(sim.histories)
    splits = split_examples(sim, users)
    for name in ("train", "val", "test"):
        seen = {e.user_id for exs in splits[name].values() for e in exs}
        assert seen <= users.of(name), name
    assert {e.user_id for e in splits["test"]["ppp"]}.isdisjoint({e.user_id for e in splits["train"]["ppp"]})


def test_no_training_label_crosses_the_cutoff(sim: SimData) -> None:
    cfg = sim.config
    cutoff = cfg.start_ms + int(0.8 * cfg.days * DAY_MS)
    horizon = int(cfg.shop_horizon_days * DAY_MS)
    splits = split_examples(sim, split_users(sorted(sim.histories), 0, (0.6, 0.2, 0.2)))
    check_split(splits, cutoff, horizon)
    assert splits["train"]["shop"], "the tiny world should still have training shop examples"
    assert all(e.now_ms + horizon <= cutoff for e in splits["train"]["shop"])
    # a shop example labelled from the day after the cutoff is exactly what the old time split kept
    late = [e for e in sim.examples["shop"] if e.now_ms < cutoff < e.now_ms + horizon]
    assert late, "the world must contain shop snapshots whose label window crosses the cutoff"
    bad = {"train": {"shop": late[:1]}, "val": {}, "test": {}}
    with pytest.raises(AssertionError, match="crosses the cutoff"):
        check_split(bad, cutoff, horizon)
    u = late[0].user_id
    mine = [e for e in sim.examples["ppp"] if e.user_id == u]
    twice = {"train": {"ppp": [e for e in mine if e.now_ms < cutoff][:1]},
             "test": {"ppp": [e for e in mine if e.now_ms >= cutoff][:1]}}  # fmt: skip
    if twice["train"]["ppp"] and twice["test"]["ppp"]:
        with pytest.raises(AssertionError, match="in both"):
            check_split(twice, cutoff, horizon)


# -- oracle ------------------------------------------------------------------------------------


def test_oracle_scores_are_probabilities_that_predict_clicks(sim: SimData) -> None:
    ctr = sim.examples["ctr"]
    assert all(e.oracle is not None and e.oracle_static is not None for e in ctr)
    p = np.exp([e.oracle for e in ctr])
    assert (p > 0).all() and (p < 1).all()
    labels = np.array([e.label for e in ctr])
    assert auc(labels, np.array([e.oracle for e in ctr])) > 0.65
    talent = sim.examples["talent"]
    assert auc(np.array([e.label for e in talent]), np.array([e.oracle for e in talent])) > 0.7
    assert all(e.oracle == e.label for e in sim.examples["ppp"])


# -- multi-task handling -------------------------------------------------------------------------


def test_loss_combiners() -> None:
    losses = {"ctr": torch.tensor(0.4), "ppp": torch.tensor(2.0)}
    assert float(sum(LossCombiner(["ctr", "ppp"], "sum").weighted(losses).values())) == pytest.approx(2.4)
    norm = LossCombiner(["ctr", "ppp"], "norm").weighted(losses)
    assert {t: float(v) for t, v in norm.items()} == pytest.approx({"ctr": 1.0, "ppp": 1.0})
    unc = LossCombiner(["ctr", "ppp"], "uncertainty")
    assert unc.log_var is not None
    terms = unc.weighted(losses)
    total = torch.stack(list(terms.values())).sum()
    total.backward()  # type: ignore[no-untyped-call]
    assert unc.log_var.grad is not None
    # d/ds ½(e^{-s} L + s) at s = 0 is ½(1 - L): the larger loss pushes its log-variance up
    assert unc.log_var.grad.tolist() == pytest.approx([0.5 * (1 - 0.4), 0.5 * (1 - 2.0)])


def test_init_norm_freezes_each_tasks_scale_so_a_collapsing_loss_is_not_amplified() -> None:
    """``norm`` divides by a running mean, so a task whose training loss collapses gets an ever larger
    weight; ``init_norm`` keeps the scale of its first INIT_STEPS losses."""
    norm, init = LossCombiner(["ppp"], "norm"), LossCombiner(["ppp"], "init_norm")
    start = LossCombiner.INIT_STEPS
    for _ in range(start):
        norm.weighted({"ppp": torch.tensor(2.0)})
        assert float(init.weighted({"ppp": torch.tensor(2.0)})["ppp"]) == pytest.approx(1.0)
    for _ in range(200):  # the training loss collapses (memorised labels)
        norm.weighted({"ppp": torch.tensor(0.02)})
        last = init.weighted({"ppp": torch.tensor(0.02)})
    assert float(last["ppp"]) == pytest.approx(0.01)  # 0.02 / 2.0: its share shrinks with its loss
    assert init.weights()["ppp"] == pytest.approx(0.5)
    assert norm.weights()["ppp"] == pytest.approx(50.0, rel=1e-3)  # what norm does instead


def test_task_clip_and_pcgrad() -> None:
    w = nn.Parameter(torch.tensor([1.0, 1.0]))
    a = (w * torch.tensor([30.0, 40.0])).sum()  # gradient (30, 40), norm 50
    b = (w * torch.tensor([-1.0, 0.0])).sum()  # gradient (-1, 0), conflicts with a
    combine_gradients({"a": a, "b": b}, [w], "task_clip", 5.0, 0)
    assert w.grad is not None
    assert w.grad.tolist() == pytest.approx([3.0 - 1.0, 4.0])
    a = (w * torch.tensor([30.0, 40.0])).sum()
    b = (w * torch.tensor([-1.0, 0.0])).sum()
    combine_gradients({"a": a, "b": b}, [w], "pcgrad", 1e9, 0)
    # a projected off b: (0, 40); b projected off a: (-1, 0) - (-30/2500)(30, 40) = (-0.64, 0.48)
    assert w.grad.tolist() == pytest.approx([-0.64, 40.48])


def _tiny_fit(prep: Prepared, **kw: object) -> DUPN:
    model = DUPN(TINY_ENC)
    init_output_biases(model, prep, FOUR)
    fit(model, prep, TrainConfig(tasks=FOUR, steps=2, batch_size=8, **kw), progress=False)  # type: ignore[arg-type]
    return model


@pytest.mark.parametrize("kw", [{"weighting": "uncertainty", "grad_mode": "pcgrad"}, {"schedule": "round_robin"},
                                {"weighting": "norm", "grad_mode": "task_clip"},
                                {"weighting": "init_norm"}])  # fmt: skip
def test_every_training_choice_runs_and_moves_the_weights(split: tuple, kw: dict) -> None:  # type: ignore[type-arg]
    _, prep = split
    before = DUPN(TINY_ENC).state_dict()["cell.from_hidden.weight"].clone()
    torch.manual_seed(0)
    model = _tiny_fit(prep, **kw)
    assert not torch.equal(model.state_dict()["cell.from_hidden.weight"], before)


def test_a_task_weight_of_zero_leaves_that_tasks_head_untrained(split: tuple) -> None:  # type: ignore[type-arg]
    """``task_weight`` multiplies a task's term: at 0 the PPP head gets no gradient (l2 = 0, so
    AdaGrad has nothing to step on), at 1 it learns; other heads learn either way."""
    _, prep = split
    for weight, moves in (("0", False), ("1", True)):
        torch.manual_seed(0)
        model = _tiny_fit(prep, task_weight=f"ppp:{weight}", l2=0.0)
        torch.manual_seed(0)
        fresh = DUPN(TINY_ENC)
        init_output_biases(fresh, prep, FOUR)
        assert (not torch.equal(model.heads.ppp.weight, fresh.heads.ppp.weight)) == moves, weight
        assert not torch.equal(model.heads.talent[0].weight, fresh.heads.talent[0].weight)


def test_a_task_left_out_of_encoder_tasks_trains_its_head_but_not_the_encoder(split: tuple) -> None:  # type: ignore[type-arg]
    """With ``encoder_tasks="ppp"`` only PPP's gradient reaches the LSTM: the same run with PPP's weight at 0
    leaves the encoder where it started, while the CTR head still learns from r in both."""
    _, prep = split
    torch.manual_seed(0)
    fresh = DUPN(TINY_ENC)
    init_output_biases(fresh, prep, FOUR)
    runs = (({"encoder_tasks": "ppp"}, True), ({"encoder_tasks": "ppp", "task_weight": "ppp:0"}, False), ({}, True))
    for kw, encoder_moves in runs:
        torch.manual_seed(0)
        model = _tiny_fit(prep, l2=0.0, **kw)
        assert (not torch.equal(model.cell.from_hidden.weight, fresh.cell.from_hidden.weight)) == encoder_moves, kw
        assert not torch.equal(model.heads.ctr_user.weight, fresh.heads.ctr_user.weight), kw
    with pytest.raises(ValueError, match="encoder_tasks"):
        TrainConfig(encoder_tasks="shop")
    assert TrainConfig(encoder_tasks="").encoder_task_set() == TrainConfig().tasks


def test_the_optimizer_choice_keeps_the_two_rate_groups() -> None:
    model = DUPN(TINY_ENC)
    for name, kind in (("adagrad", torch.optim.Adagrad), ("adam", torch.optim.Adam)):
        opt = make_optimizer(model, list(model.parameters()), TrainConfig(optimizer=name, lr=0.001, embedding_lr=0.01))
        assert isinstance(opt, kind)
        assert [g["lr"] for g in opt.param_groups] == [0.001, 0.01]
        tables = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        assert {id(p) for p in opt.param_groups[1]["params"]} == tables
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="sgd")


def test_the_logged_task_weights_include_task_weight(split: tuple) -> None:  # type: ignore[type-arg]
    """The fit log's ``task_weights`` is each task's whole multiplier: the weighting's times ``task_weight``."""
    _, prep = split
    model = DUPN(TINY_ENC)
    init_output_biases(model, prep, FOUR)
    log = fit(model, prep, TrainConfig(tasks=FOUR, steps=2, batch_size=8, task_weight="ppp:0.25"), progress=False)
    assert log.task_weights == {"ctr": 1.0, "l2r": 1.0, "talent": 1.0, "ppp": 0.25}


def test_task_weight_is_checked() -> None:
    assert TrainConfig(task_weight="ppp:0.1, ctr:2").task_multipliers() == {"ppp": 0.1, "ctr": 2.0}
    for bad in ("ppp", "ppp:x", "nope:1", "ppp:-1"):
        with pytest.raises(ValueError, match="task_weight"):
            TrainConfig(task_weight=bad)


def test_profile_dropout_trains_the_unknown_profile_row(split: tuple) -> None:  # type: ignore[type-arg]
    _, prep = split
    unknown_age, unknown_gender = TINY_ENC.n_age_groups, TINY_ENC.n_genders
    for rate, moves in ((0.0, False), (1.0, True)):
        torch.manual_seed(0)
        init = DUPN(TINY_ENC).context
        age0, gen0 = init.age_group.weight[unknown_age].clone(), init.gender.weight[unknown_gender].clone()
        torch.manual_seed(0)
        # l2 = 0: AdaGrad normalises even the tiny L2 gradient λθ of a row nothing uses into a
        # step of ≈ lr (its accumulator is (λθ)² too), so with L2 every unused row moves
        model = _tiny_fit(prep, profile_dropout=rate, l2=0.0)
        age1, gen1 = model.context.age_group.weight[unknown_age], model.context.gender.weight[unknown_gender]
        assert (not torch.equal(age0, age1)) == moves, rate
        assert (not torch.equal(gen0, gen1)) == moves, rate


# -- the served function -------------------------------------------------------------------------


def test_anchored_runs_are_the_policy_runs(split: tuple) -> None:  # type: ignore[type-arg]
    _, prep = split
    lengths = np.arange(1, 200)
    for r in (1, 7, 25):
        policy = UpdatePolicy("incremental", r, 30)
        assert run_starts(lengths, 30, r).tolist() == [policy.run_start(int(n)) for n in lengths]
    exact = UpdatePolicy("exact", window=30)
    assert run_starts(lengths, 30, None).tolist() == [exact.run_start(int(n)) for n in lengths]
    table = prep.tables["ppp"]
    long = np.flatnonzero(table.ctx_len > 40)[:8]
    batch = collate(prep.store, [(table, long)], TINY_ENC, 30, anchor_every=25)
    assert batch.pool_mask is not None
    assert (batch.pool_mask.sum(1) == 30).all()
    assert (batch.mask.sum(1) >= 30).all() and (batch.mask | batch.pool_mask).eq(batch.mask).all()


@pytest.mark.parametrize(
    "options",
    [{}, {"value_skip": True, "interaction_dim": 8}, {"attention_norm": "sigmoid"}, {"attention_heads": 3},
     {"towers": 2, "attention_heads": 2}],
    ids=["talk", "skip+dot", "sigmoid", "3-heads", "2-towers"],
)
def test_served_path_scores_equal_the_offline_reference(
    sim: SimData, split: tuple, options: dict[str, object]  # type: ignore[type-arg]
) -> None:
    """With each user's profile on their events the worker serves the training function itself;
    without (the same states re-pooled with the profile unknown) the unknown-profile twin. The same
    holds with the attention values' skip connection, the heads' interaction term, H attention heads and
    G towers."""
    splits, prep = split
    torch.manual_seed(1)
    model = DUPN(dataclasses.replace(TINY_ENC, query_in_rep=True, **options))  # type: ignore[arg-type]
    tables = {t: build_table(t, splits["test"][t][:60], prep.store, model.cfg) for t in FOUR}
    policy = UpdatePolicy("incremental", 7, TINY_ENC.window)
    profiles = {u.user_id: u.profile for u in sim.users}
    served = served_scores(model, prep.store, sim.histories, tables, policy, profiles=profiles)
    offline = offline_scores(model, prep.store, tables, 7, unknown_profile=True)
    with_profile = offline_scores(model, prep.store, tables, 7, unknown_profile=False)
    for t in FOUR:
        np.testing.assert_allclose(served.with_profile[t], with_profile[t], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(served.unknown_profile[t], offline[t], rtol=1e-4, atol=1e-5)
    assert any(not np.allclose(served.with_profile[t], offline[t], atol=1e-5) for t in FOUR)


def test_served_path_without_a_profile_source_is_the_unknown_profile_function(
    sim: SimData, split: tuple  # type: ignore[type-arg]
) -> None:
    splits, prep = split
    torch.manual_seed(2)
    model = DUPN(dataclasses.replace(TINY_ENC, query_in_rep=True))
    tables = {t: build_table(t, splits["test"][t][:30], prep.store, model.cfg) for t in ("ctr", "ppp")}
    policy = UpdatePolicy("incremental", 7, TINY_ENC.window)
    served = served_scores(model, prep.store, sim.histories, tables, policy)
    offline = offline_scores(model, prep.store, tables, 7, unknown_profile=True)
    for t in tables:
        np.testing.assert_allclose(served.with_profile[t], offline[t], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(served.unknown_profile[t], offline[t], rtol=1e-4, atol=1e-5)
