"""`dupn train/eval --taobao`: documented-day filter, bounded reads, user sampling, quick plan, the eval run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from ops import cli
from tests.support.training import TINY_ENC
from training.taobao import TAOBAO_FIRST_S, TAOBAO_LAST_S, TaobaoReadStats, read_taobao_csv, user_in_sample
from training.taobao_eval import run_taobao_eval, split_by_time_quantile, taobao_plan
from training.taobao_synth import write_synthetic_taobao


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tb") / "synthetic.csv"
    write_synthetic_taobao(path, n_users=40, seed=5, events_per_user=25, out_of_range_rate=0.02)
    return path


def test_rows_outside_the_documented_days_are_dropped_and_counted(tmp_path: Path) -> None:
    rows = [
        (1, 1, 9, "pv", TAOBAO_FIRST_S - 1),  # 2017-11-24 23:59:59 China time
        (1, 2, 9, "pv", TAOBAO_FIRST_S),
        (1, 3, 9, "buy", TAOBAO_LAST_S),
        (1, 4, 9, "pv", TAOBAO_LAST_S + 1),  # 2017-12-04 00:00:00 China time
        (2, 5, 9, "pv", 12),  # an epoch-zero-ish clock
    ]
    path = tmp_path / "r.csv"
    path.write_text("".join(",".join(map(str, r)) + "\n" for r in rows))
    stats = TaobaoReadStats()
    kept = list(read_taobao_csv(path, stats=stats))
    assert [ev["item_id"] for ev in kept] == ["i2", "i3"]
    assert (stats.rows, stats.events, stats.out_of_range, stats.users) == (5, 2, 3, 1)
    assert len(list(read_taobao_csv(path, time_range=None))) == 5


def test_max_rows_bounds_the_lines_read(synth: Path) -> None:
    stats = TaobaoReadStats()
    events = list(read_taobao_csv(synth, stats=stats, max_rows=100))
    assert stats.rows == 100 and len(events) == 100 - stats.out_of_range
    assert list(read_taobao_csv(synth, max_rows=0)) == []


def test_reader_is_lazy(synth: Path) -> None:
    stats = TaobaoReadStats()
    it = read_taobao_csv(synth, stats=stats)
    next(it)
    assert stats.rows <= 2  # one row at a time, whatever the file size


def test_user_sample_is_deterministic_and_keeps_whole_users(synth: Path) -> None:
    all_users: dict[str, int] = {}
    for ev in read_taobao_csv(synth):
        all_users[ev["user_id"]] = all_users.get(ev["user_id"], 0) + 1
    stats = TaobaoReadStats()
    a = list(read_taobao_csv(synth, user_sample=0.5, stats=stats))
    b = list(read_taobao_csv(synth, user_sample=0.5))
    assert a == b and 0 < stats.users < len(all_users)
    kept: dict[str, int] = {}
    for ev in a:
        kept[ev["user_id"]] = kept.get(ev["user_id"], 0) + 1
    assert all(kept[u] == all_users[u] for u in kept)  # whole histories
    assert all(user_in_sample(u[1:], 0.5) for u in kept)
    other_salt = {ev["user_id"] for ev in read_taobao_csv(synth, user_sample=0.5, sample_salt=1)}
    assert other_salt != set(kept)
    with pytest.raises(ValueError, match="user_sample"):
        list(read_taobao_csv(synth, user_sample=0.0))


def test_time_quantile_split_is_ordered_and_disjoint(synth: Path) -> None:
    from training.taobao import group_by_user, taobao_examples

    ex = taobao_examples(group_by_user(read_taobao_csv(synth)))
    train, val, test = split_by_time_quantile(ex, 0.15, 0.15)
    n = len(ex["ctr"])
    assert len(train["ctr"]) + len(val["ctr"]) + len(test["ctr"]) == n
    assert max(e.now_ms for e in train["ctr"]) < min(e.now_ms for e in val["ctr"])
    assert max(e.now_ms for e in val["ctr"]) < min(e.now_ms for e in test["ctr"])
    assert 0.5 * n < len(train["ctr"]) < 0.85 * n


def test_quick_means_a_small_run() -> None:
    quick, full = taobao_plan(True), taobao_plan(False)
    q = quick.train
    assert q.steps * q.batch_size * quick.window < full.train.steps * full.train.batch_size * full.window / 20
    assert quick.max_rows is not None and quick.max_rows <= 200_000
    assert taobao_plan(True, steps=5, batch_size=3, user_sample=0.1).train.steps == 5


def test_cli_train_taobao_quick_passes_the_quick_plan(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def fake(path: Path, out: Path, cfg: Any, **kw: Any) -> str:
        seen.update(cfg=cfg, **kw)
        return "v"

    import training.daily

    monkeypatch.setattr(training.daily, "train_taobao", fake)
    assert cli.main(["--home", str(tmp_path), "train", "--taobao", "x.csv", "--quick", "--user-sample", "0.2",
                     "--out", str(tmp_path / "m")]) == 0
    assert seen["quick"] is True and seen["user_sample"] == 0.2
    assert seen["cfg"] == taobao_plan(True).train


def test_eval_taobao_end_to_end_writes_the_report(synth: Path, tmp_path: Path) -> None:
    plan = dataclasses.replace(
        taobao_plan(True, steps=2, batch_size=4), window=10, val_contexts=20, test_contexts=40, n_boot=5
    )
    res = run_taobao_eval(synth, plan, tmp_path, command="dupn eval --taobao x", progress=False,
                          synthetic_note="SYNTHETIC", enc_cfg=dataclasses.replace(TINY_ENC, window=10))
    assert set(res["scores"]) == {"DUPN", "Wide", "Wide&Deep", "CNN-max"}
    assert res["tasks"] == ["ctr", "l2r"]
    assert res["data"]["out_of_range"] > 0
    assert all("ctr_auc_se" in s for s in res["scores"].values())
    md = (tmp_path / "taobao_eval.md").read_text()
    assert "SYNTHETIC" in md and "dupn eval --taobao x" in md
    assert json.loads((tmp_path / "taobao_eval.json").read_text())["runs"]["DUPN"]["steps"] == 2
