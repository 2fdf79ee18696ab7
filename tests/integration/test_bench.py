"""`dupn bench` at smoke-test sizes: every part runs and reports a well-formed, sane result (no timings asserted)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ops.bench import BenchConfig, markdown, run_parts
from ops.cli import main

pytestmark = pytest.mark.integration

NEW_PARTS = ["ceiling-a", "ceiling-b", "freshness", "sweep", "recovery", "query", "scaling"]


@pytest.fixture(scope="module")
def doc(broker_url: str, model_dir: Path) -> dict[str, Any]:
    cfg = BenchConfig.quick(
        model_dir, broker_url=broker_url, users=200, events=2000, freshness_rate=200.0, warmup_s=1.0, steady_s=3.0,
        query_rate=100.0, query_s=2.0, ready_timeout_s=240.0, drain_rate=800.0, sweep_loads=(25.0,),
        sweep_model_hop=True, sweep_spin_hop="200,20",
    )
    return run_parts(cfg, NEW_PARTS, "dupn bench --quick")


def ordered(p: dict[str, float]) -> bool:
    return 0 <= p["p50"] <= p["p99"] <= p["p999"]


def test_new_parts_report_sane_figures(doc: dict[str, Any]) -> None:
    parts = doc["parts"]
    assert list(parts) == NEW_PARTS  # the fixed order
    users, events = doc["stream"]["users"], doc["stream"]["events"]
    assert events == 2000 and 0 < users <= 200
    assert parts["ceiling-a"]["events_per_s"] > 0 and parts["ceiling-b"]["events_per_s"] > 0
    assert doc["ratios"]["b_over_a"] > 0

    fresh = parts["freshness"]
    assert fresh["achieved_events_per_s"] > 0 and fresh["events_measured"] > 0
    assert fresh["events_measured"] + fresh["events_uncovered"] <= fresh["events_sent"]
    assert ordered(fresh["receive_minus_ts_ms"]) and ordered(fresh["publish_minus_ts_ms"])
    floor = fresh["floor"]  # the same load through one bare aiokafka hop, side by side, measured per event too
    assert floor["events_measured"] > 0 and ordered(floor["receive_minus_ts_ms"])

    sweep = parts["sweep"]  # one point (25 % of the given drain rate) through the floor and the worker
    assert sweep["drain_rate_source"] == "given (--drain-rate)"
    (point,) = sweep["points"]
    assert point["load_percent"] == 25.0 and point["worker"]["target_events_per_s"] == 200.0
    # the model hop: the worker's updater without Faust or RocksDB; the spin hop: the floor holding its loop
    for side in ("worker", "floor", "spin_hop", "model_hop"):
        assert point[side]["events_measured"] > 0 and ordered(point[side]["receive_minus_ts_ms"])
        assert point[side]["events_uncovered"] == 0
    (row,) = sweep["loads"]
    assert row["reps"] == 1 and row["worker"]["receive_minus_ts_ms"]["p99"]["n"] == 1
    assert "Spin hop at every point" in markdown(doc) and sweep["spin_hop_us"] == "200,20"
    assert [t["target"].startswith("at 25 % load") for t in doc["targets"]] == [True, True]

    rec = parts["recovery"]
    assert rec["users"] == users and rec["start_to_ready_s"] > 0
    assert rec["restore_s"] > 0 and rec["users_per_s_restore"] > 0  # the restore phase was found in the log
    assert rec["state"]["changelog_users"] == users and rec["state"]["rocksdb_dir_bytes_per_user"] > 0
    assert 0 < rec["recovered_users"] <= users
    floor = rec["read_floor"]  # the same changelog through bare aiokafka, beside the restore
    assert floor["records"] == rec["state"]["changelog_records"] and floor["users"] == users

    query = parts["query"]
    assert query["on"] == "the restored worker" and query["requests"] == 200
    assert query["ok"] > 0 and 0 <= query["latency_ms"]["p50"] <= query["latency_ms"]["p99"]

    scale = parts["scaling"]
    for n in (1, 2):
        run = scale[f"workers_{n}"]
        assert run["workers"] == n and run["events_per_s"] > 0 and len(run["per_worker"]) == n
    assert all(w["events_applied"] > 0 for w in scale["workers_2"]["per_worker"])  # both members did work
    assert sum(w["events_applied"] for w in scale["workers_2"]["per_worker"]) >= events

    table = markdown(doc)
    for figure in ("| 1 |", "| 2 |", "| 4 |", "| 6 |", "| 7 |", "| 8 |", "| 9 |", "### Load sweep", "### Targets",
                   "| model hop − floor |"):
        assert figure in table
    assert "dupn bench --quick" in table


def test_recovery_restores_every_user(doc: dict[str, Any]) -> None:
    rec = doc["parts"]["recovery"]
    assert rec["recovered_users"] == rec["users"]


def test_cli_writes_json_and_markdown(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DUPN_MODEL_PATH", str(model_dir))
    out = tmp_path / "bench.json"
    assert main(["bench", "--part", "ceiling-a,encoder,state", "--quick", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == doc
    assert doc["command"] == "dupn bench --part ceiling-a,encoder,state --users 200 --events 2000 --quick"
    rows = doc["parts"]["encoder"]["rows"]
    assert [r["batch"] for r in rows] == [1, 64, 256, 1024]
    assert all(r["exact_recompute_us_per_event"] > 0 and r["bare_torch_cell_us_per_event"] > 0 for r in rows)
    assert doc["parts"]["state"]["state_bytes_per_user_mean"] > 0
    assert out.with_suffix(".md").read_text() == markdown(doc)
    assert doc["provenance"]["git_commit"] and set(doc["provenance"]["packages"]) >= {"torch", "aiokafka", "python"}
