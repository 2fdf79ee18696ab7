"""Learning curves on the validation users (``dupn validate --curve``): fit's evaluation hook fires at the
checkpoints and leaves training bit-identical; the curve JSON has one row per model and checkpoint and
merges a second invocation; results/budget.md renders from a hand-made JSON (tiny world, seconds)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from encoder.model import DUPN
from ops.cli import main
from tests.support.training import TINY_ENC, TINY_SIM
from training.experiments import EVAL_CHOICE, EvalPlan, run_curve
from training.metrics import FOUR_TASKS, METRIC_OF, predict
from training.protocol import split_examples, split_users
from training.report import render_budget
from training.simulator import Simulator
from training.train import Prepared, TrainConfig, TrainData, fit, init_output_biases, prepare

TINY_PLAN = EvalPlan(TINY_SIM, 30, TrainConfig(steps=4, batch_size=8), test_contexts=40)


@pytest.fixture(scope="module")
def split() -> tuple[Prepared, Prepared]:
    sim = Simulator(TINY_SIM).generate()
    splits = split_examples(sim, split_users(sorted(sim.histories), 0, (0.6, 0.2, 0.2)))
    prep = prepare(TrainData(sim.histories, sim.users, splits["train"]), TINY_ENC)
    val = prepare(TrainData(sim.histories, sim.users, splits["val"]), TINY_ENC)
    return prep, val


# the settings results/eval.md carries (torch's RNG drives dropout, a generator the profile dropout)
CFG = TrainConfig(tasks=FOUR_TASKS, steps=5, batch_size=8, dropout=0.3, weighting="norm", profile_dropout=0.2,
                  anchor_every=25, seed=4)  # fmt: skip


def _fit(prep: Prepared, every: int = 0, hook: Any = None) -> tuple[DUPN, list[float]]:
    torch.manual_seed(0)
    model = DUPN(TINY_ENC)
    init_output_biases(model, prep, FOUR_TASKS)
    log = fit(model, prep, CFG, progress=False, eval_every=every, on_eval=hook)
    return model, [c["step"] for c in log.curve]


def test_the_hook_runs_at_every_k_steps_and_after_the_last(split: tuple[Prepared, Prepared]) -> None:
    prep, _ = split
    seen: list[tuple[int, bool]] = []

    def hook(step: int) -> dict[str, float]:
        seen.append((step, torch.is_grad_enabled()))
        return {"x": float(step)}

    torch.manual_seed(0)
    model = DUPN(TINY_ENC)
    log = fit(model, prep, CFG, progress=False, eval_every=2, on_eval=hook)
    assert [s for s, _ in seen] == [2, 4, 5]
    assert not any(grad for _, grad in seen)  # scored without an autograd graph
    assert [c["step"] for c in log.curve] == [2.0, 4.0, 5.0] and [c["x"] for c in log.curve] == [2.0, 4.0, 5.0]


def test_scoring_in_the_hook_leaves_training_bit_identical(split: tuple[Prepared, Prepared]) -> None:
    prep, val = split

    def noisy_hook(step: int) -> dict[str, float]:
        # scores the validation table in eval mode and draws from every global RNG training might use
        s = predict(model, val.store, val.tables["ctr"], anchor_every=25)
        torch.rand(1000), np.random.rand(10)
        return {"mean": float(s.mean())}

    plain, _ = _fit(prep)
    torch.manual_seed(0)
    model = DUPN(TINY_ENC)
    init_output_biases(model, prep, FOUR_TASKS)
    fit(model, prep, CFG, progress=False, eval_every=2, on_eval=noisy_hook)
    noop, steps = _fit(prep, every=2, hook=lambda step: {})
    assert steps == [2.0, 4.0, 5.0]
    for name, w in plain.state_dict().items():
        assert torch.equal(w, model.state_dict()[name]), name
        assert torch.equal(w, noop.state_dict()[name]), name
    # and the weights did move (the comparison is not between two untrained models)
    torch.manual_seed(0)
    assert not torch.equal(DUPN(TINY_ENC).state_dict()["cell.from_hidden.weight"],
                           plain.state_dict()["cell.from_hidden.weight"])  # fmt: skip


def test_curve_json_has_one_row_per_model_and_checkpoint_and_merges(tmp_path: Path) -> None:
    out = tmp_path / "curve.json"
    res = run_curve(["DUPN-all", "Wide"], 5, 2, out=out, progress=False, plan=TINY_PLAN, enc_base=TINY_ENC)
    assert res["checkpoints"] == [2, 4, 5] and res["choice"] == EVAL_CHOICE
    assert res["train"]["weighting"] == "norm" and res["train"]["profile_dropout"] == 0.2
    assert res["train"]["anchor_every"] == 25 and res["train"]["steps"] == 5
    on_disk = json.loads(out.read_text())
    assert sorted((r["model"], r["step"]) for r in on_disk["rows"]) == [
        (m, s) for m in ("DUPN-all", "Wide") for s in (2, 4, 5)
    ]
    for r in on_disk["rows"]:
        assert all(METRIC_OF[t] in r and METRIC_OF[t] + "_se" in r for t in FOUR_TASKS)
        assert set(r["train_loss_last20"]) == set(FOUR_TASKS)
    vs = [c for c in on_disk["comparisons"] if c["kind"] == "vs baseline"]
    assert sorted({(c["b"], c["a_step"]) for c in vs}) == [("Wide", s) for s in (2, 4, 5)]
    assert len(vs) == 3 * len(FOUR_TASKS)
    assert {m for m, e in on_disk["models"].items() if e["checkpoints_done"] == [2, 4, 5]} == {"DUPN-all", "Wide"}
    # a second invocation with another model lands in the same file, paired with the earlier DUPN-all
    res2 = run_curve(["CNN-max"], 5, 2, out=out, progress=False, plan=TINY_PLAN, enc_base=TINY_ENC)
    assert len(res2["rows"]) == 9 and len(res2["invocations"]) == 2
    assert {(c["b"], c["a_step"]) for c in res2["comparisons"] if c["kind"] == "vs baseline"} >= {
        ("CNN-max", s) for s in (2, 4, 5)
    }
    # a checkpoint at step k of a longer run is a k-step run, whatever model ran before it
    short = run_curve(["Wide", "DUPN-all"], 2, 2, progress=False, plan=TINY_PLAN, enc_base=TINY_ENC)
    for name in ("DUPN-all", "Wide"):
        at2 = next(r for r in res["rows"] if r["model"] == name and r["step"] == 2)
        alone = next(r for r in short["rows"] if r["model"] == name)
        assert {k: v for k, v in at2.items() if k != "train_seconds"} == {
            k: v for k, v in alone.items() if k != "train_seconds"
        }, name
    with pytest.raises(ValueError, match="other settings"):
        run_curve(["Wide"], 6, 2, out=out, progress=False, plan=TINY_PLAN, enc_base=TINY_ENC)


def _row(model: str, step: int, base: float) -> dict[str, Any]:
    row: dict[str, Any] = {"model": model, "step": step, "train_seconds": 10.0 * step}
    for i, t in enumerate(FOUR_TASKS):
        row[METRIC_OF[t]], row[METRIC_OF[t] + "_se"] = base + i / 10, 0.01
    row["train_loss_last20"] = dict.fromkeys(FOUR_TASKS, 0.5)
    return row


def _comp(kind: str, a: str, b: str, step: int, task: str, delta: float, se: float) -> dict[str, Any]:
    return {"kind": kind, "a": a, "b": b, "a_step": step, "b_step": step, "task": task,
            "a_value": 0.6 + delta, "b_value": 0.6, "delta": delta, "se": se}  # fmt: skip


def _hand_made() -> dict[str, Any]:
    rows = [_row("DUPN-all", 250, 0.60), _row("DUPN-all", 500, 0.62), _row("Wide", 250, 0.61),
            _row("Wide", 500, 0.60)]  # fmt: skip
    comps = [
        _comp("vs baseline", "DUPN-all", "Wide", 250, "ctr", -0.01, 0.008),
        _comp("vs baseline", "DUPN-all", "Wide", 500, "ctr", 0.02, 0.005),
        _comp("last vs first", "DUPN-all", "DUPN-all", 500, "ctr", 0.02, 0.006),
    ]
    res = {
        "seed": 0, "steps": 500, "every": 250, "checkpoints": [250, 500], "choice": EVAL_CHOICE,
        "train": {"batch_size": 64, "weighting": "norm", "profile_dropout": 0.2, "anchor_every": 25},
        "plan": {"sim": {"n_users": 3000}, "window": 100}, "sizes": {"users": {"val": 600}}, "threads": 1,
        "oracle": {"oracle": {**_row("o", 0, 0.85), "ctr_auc": 0.85},
                   "oracle (static effects only)": {**_row("o", 0, 0.80), "ctr_auc": 0.80}},
        "models": {"DUPN-all": {"checkpoints_done": [250, 500], "train_seconds": 400.0, "score_seconds": 20.0},
                   "Wide": {"checkpoints_done": [250], "wall_seconds": 90.0}},
        "rows": rows, "comparisons": comps,
        "invocations": [{"command": "dupn validate --curve --steps 500 --every 250", "wall_seconds": 600.0}],
    }  # fmt: skip
    return res


def test_budget_report_renders_the_table_and_the_facts_from_a_hand_made_json() -> None:
    md = render_budget(_hand_made())
    assert "`dupn validate --curve --steps 500 --every 250` (600 s)" in md
    assert "| DUPN-all | 250 | 0.6000 ± 0.0100 | 0.7000 ± 0.0100 | 0.8000 ± 0.0100 | 0.9000 ± 0.0100 |" in md
    assert "| Wide | 500 | 0.6000 ± 0.0100 |" in md
    assert "| oracle | – | 0.8500 ± 0.0100 |" in md
    assert "| ctr_auc | 250 | -0.0100 ± 0.0080 | – | – | Wide |" in md
    assert "| ctr_auc | 500 | **+0.0200 ± 0.0050** | – | – | DUPN-all |" not in md  # best is a baseline
    assert "| ctr_auc | 500 | **+0.0200 ± 0.0050** | – | – | Wide |" in md
    assert "at step 250: -0.0100 ± 0.0080 vs Wide (-1.2 SE, beyond 2 SE: no); 500: +0.0200 ± 0.0050 vs Wide " \
           "(+4.0 SE, beyond 2 SE: yes)" in md  # fmt: skip
    assert "step 500 − step 250** (beyond 2 SE?): DUPN-all +0.0200 ± 0.0060 (yes)" in md
    assert "CTR AUC 0.8500 (static effects only 0.8000)" in md and "DUPN-all 0.6200 (34% of the chance-to-oracle" in md
    assert "**Not finished** (rows so far only): Wide." in md


def test_cli_renders_the_report_and_the_figure_from_the_json(tmp_path: Path) -> None:
    out = tmp_path / "budget.json"
    out.write_text(json.dumps(_hand_made()))
    assert main(["validate", "--curve", "--render-only", "--out", str(out)]) == 0
    assert "| DUPN-all | 500 |" in (tmp_path / "budget.md").read_text()
    assert (tmp_path / "budget.png").stat().st_size > 0
    for flag in (["--render-only"], ["--steps", "10"], ["--full"]):
        with pytest.raises(SystemExit, match="go with --curve"):
            main(["validate", *flag, "--out", str(out)])
    with pytest.raises(SystemExit, match="--choices/--singles"):
        main(["validate", "--curve", "--choices", "norm", "--out", str(out)])
    with pytest.raises(SystemExit, match="query_in_rep from its --choice"):  # it would be silently overridden
        main(["validate", "--curve", "--set", "query_in_rep=false", "--out", str(out)])


def test_set_routes_each_field_to_the_plan_training_or_encoder() -> None:
    """``--set`` on eval and validate --curve: a plan field, a TrainConfig field and an EncoderConfig
    field each land where they act; an unknown name or a bad value is refused before any training."""
    from ops.cli import _plan_overrides
    from training.experiments import plan_for

    plan = plan_for(True, 0)
    got = _plan_overrides(["reanchor=5", "weighting=init_norm", "interaction_dim=64", "value_skip=true"], plan)
    assert got["reanchor"] == 5 and got["train"].weighting == "init_norm"
    assert got["encoder"] == {"interaction_dim": 64, "value_skip": True}
    with pytest.raises(SystemExit, match="nope"):
        _plan_overrides(["nope=1"], plan)
    with pytest.raises(SystemExit, match="encoder"):
        _plan_overrides(["encoder=1"], plan)


def test_screen_report_lists_every_checkpoint_of_every_curve(tmp_path: Path) -> None:
    from training.screen_report import write_screen

    def curve(name: str, steps: list[int]) -> Path:
        metrics = ("ctr_auc", "l2r_auc", "talent_auc", "ppp_acc")
        rows = [{"model": "DUPN-all", "step": s, "train_loss_last20": {"ctr": 0.36},
                 **{m: 0.5 + s / 1e4 for m in metrics}, **{m + "_se": 0.01 for m in metrics}} for s in steps]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"commands": [f"dupn validate --curve --out {name}.json"], "rows": rows}))
        return path

    out = write_screen(tmp_path / "s.md", [curve("a", [125, 250]), curve("b", [125])], "intro")
    table = [line for line in out.read_text().splitlines() if line.startswith("| a |") or line.startswith("| b |")]
    assert len(table) == 3 and "0.5250 ± 0.0100" in table[1] and "--out b.json" in table[2]


def test_within_slate_auc_ignores_which_slates_get_clicks() -> None:
    """A score that only tells slates apart has within-slate AUC 0.5; one that ranks inside them, 1."""
    from training.ctr_split import within_slate_auc

    label = np.array([1, 0, 0, 0, 1, 0], np.float32)
    table = SimpleNamespace(n_contexts=2, ctx_start=np.array([0, 3, 6]), label=label)
    between = np.array([0.9, 0.9, 0.9, 0.1, 0.1, 0.1])
    inside = np.array([0.2, 0.1, 0.1, 0.5, 0.9, 0.5])
    assert within_slate_auc(table, between) == 0.5  # type: ignore[arg-type]
    assert within_slate_auc(table, inside) == 1.0  # type: ignore[arg-type]


def test_the_wide_plus_dupn_probe_is_dupns_representation_plus_wides_rows() -> None:
    from training.baselines import WideAndDUPN
    from training.experiments import CURVE_MODELS, _new_model

    assert "Wide+DUPN" in CURVE_MODELS
    torch.manual_seed(0)
    probe = _new_model("Wide+DUPN", TINY_ENC)
    assert isinstance(probe, WideAndDUPN) and isinstance(probe, DUPN)
    probe.eval()
    from encoder.features import records_from_events
    from encoder.model import BehaviorTensors, UserContext
    from tests.support.factories import make_events

    recs = np.stack([records_from_events(make_events(u, 5, seed=i)) for i, u in enumerate(("a", "b"))])
    b = BehaviorTensors.from_records(recs, TINY_ENC)
    mask = torch.ones(2, 5, dtype=torch.bool)
    now = b.ts[:, -1] + 1
    with torch.no_grad():
        got = probe.encode(b, mask, now, UserContext())
        want = DUPN.encode(probe, b, mask, now, UserContext()) + probe.wide(b, mask, UserContext())
    torch.testing.assert_close(got, want)
