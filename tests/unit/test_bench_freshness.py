"""The bench's arithmetic: per-event freshness, spreads, the sweep schedule, targets and provenance (no broker)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ops.bench.common import BenchConfig
from ops.bench.paced import app_argv
from ops.bench.perevent import (
    ReceivedVectors,
    SentEvents,
    cover,
    cpu_times,
    freshness_summary,
    idle_percent,
    percentile_spread,
    spread,
)
from ops.bench.provenance import PACKAGES, provenance
from ops.bench.report import markdown
from ops.bench.sweep import by_load, pass_apps, schedule
from ops.bench.targets import verdicts
from ops.bench.throughput import median_run
from ops.bench_apps import parse_spin, spin_us_for


def sent(rows: list[tuple[int, int, int]]) -> SentEvents:
    user, index, ts = (np.asarray(c, dtype=np.int64) for c in zip(*rows, strict=True))
    return SentEvents(user, index, ts)


def received(rows: list[tuple[int, int, int, int]]) -> ReceivedVectors:
    user, seen, rec, upd = (np.asarray(c, dtype=np.int64) for c in zip(*rows, strict=True))
    return ReceivedVectors(user, seen, rec, upd)


def test_each_event_counts_at_the_first_vector_covering_it() -> None:
    # user 0 sends events 1..3 at 100, 110, 120; one vector covers 1-2 (received 150), one covers 3 (at 300)
    # user 1 sends events 1..2 at 105, 115; a single batched vector covers both (received 200)
    events = sent([(0, 1, 100), (1, 1, 105), (0, 2, 110), (1, 2, 115), (0, 3, 120)])
    vectors = received([(0, 2, 150, 140), (1, 2, 200, 190), (0, 3, 300, 290), (0, 3, 400, 390)])
    got = cover(events, vectors)
    assert got.receive_ms.tolist() == [150, 200, 150, 200, 300]
    assert got.updated_ms.tolist() == [140, 190, 140, 190, 290]  # the later duplicate (received 400) is not counted


def test_the_first_covering_vector_is_by_arrival_not_by_events_seen() -> None:
    # a later vector that covers more does not replace an earlier one that already covered the event
    events = sent([(0, 1, 0)])
    vectors = received([(0, 5, 80, 70), (0, 1, 50, 40)])  # rows out of arrival order: arrival decides
    assert cover(events, vectors).receive_ms.tolist() == [50]


def test_events_never_covered_are_counted_not_dropped() -> None:
    events = sent([(0, 1, 0), (0, 2, 10), (1, 1, 20), (2, 1, 30)])
    vectors = received([(0, 1, 25, 24), (1, 1, 60, 55)])  # user 0's 2nd event and user 2 never covered
    summary = freshness_summary(events, vectors)
    assert summary["events_measured"] == 2 and summary["events_uncovered"] == 2
    assert summary["receive_minus_ts_ms"]["p50"] == pytest.approx(32.5)  # of 25 and 40
    assert summary["publish_minus_ts_ms"]["p50"] == pytest.approx(29.5)  # of 24 and 35


def test_a_vector_of_another_user_never_covers_an_event() -> None:
    # user 1's vector with a high events_seen sits right after user 0's in sorted order
    events = sent([(0, 3, 0)])
    vectors = received([(0, 2, 10, 9), (1, 50, 20, 19)])
    got = freshness_summary(events, vectors)
    assert got["events_uncovered"] == 1 and "receive_minus_ts_ms" not in got


def test_nothing_received_leaves_every_event_uncovered() -> None:
    events = sent([(0, 1, 0), (0, 2, 1)])
    empty = ReceivedVectors(*(np.zeros(0, dtype=np.int64) for _ in range(4)))
    assert freshness_summary(events, empty) == {"events_measured": 0, "events_uncovered": 2}


def test_bad_rows_are_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="1-based"):
        sent([(0, 0, 0)])
    with pytest.raises(ValueError, match="different lengths"):
        SentEvents(np.zeros(2, np.int64), np.ones(1, np.int64), np.zeros(2, np.int64))


def test_spread_and_percentile_spread() -> None:
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    runs: list[dict[str, Any]] = [
        {"lat": {"p50": 10.0, "p99": 100.0}}, {"lat": {"p50": 30.0, "p99": 50.0}}, {"other": {}},
    ]
    got = percentile_spread(runs, "lat")
    assert got["p50"] == {"median": 20.0, "min": 10.0, "max": 30.0, "n": 2}
    assert got["p99"]["median"] == 75.0
    with pytest.raises(ValueError):
        spread([])


def test_median_run_keeps_every_rep_and_the_median_rate() -> None:
    runs = [{"events_per_s": 30, "tag": "a"}, {"events_per_s": 10, "tag": "b"}, {"events_per_s": 20, "tag": "c"}]
    got = median_run(runs)
    assert got["tag"] == "c" and got["events_per_s"] == 20 and got["reps_events_per_s"] == [30, 10, 20]
    assert got["spread"] == {"median": 20.0, "min": 10.0, "max": 30.0, "n": 3}


def test_idle_cpu_from_proc_stat() -> None:
    before = cpu_times("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n")
    after = cpu_times("cpu  200 0 200 1000 200 0 0 0 0 0\n")
    assert before == (800, 1000) and after == (1200, 1600)
    assert idle_percent(before, after) == pytest.approx(66.7)
    assert idle_percent(after, after) is None
    with pytest.raises(ValueError, match="cpu"):
        cpu_times("intr 1 2 3\n")


def test_sweep_schedule_repeats_the_target_loads_after_one_pass() -> None:
    assert schedule((75, 5, 25, 10, 50), 3) == [
        (5, 1), (10, 1), (25, 1), (50, 1), (75, 1), (10, 2), (25, 2), (10, 3), (25, 3),
    ]
    assert schedule((5, 25), 1) == [(5, 1), (25, 1)]
    for loads, reps in (((0.0,), 1), ((120.0,), 1), ((), 1), ((10.0,), 0)):
        with pytest.raises(ValueError):
            schedule(loads, reps)


def point(p50: float, p99: float, idle: float | None = 50.0, uncovered: int = 0) -> dict[str, Any]:
    lat = {"p50": p50, "p99": p99, "p999": p99 * 2}
    return {"target_events_per_s": 2000.0, "achieved_over_target": 1.0, "idle_cpu_percent": idle,
            "events_uncovered": uncovered, "receive_minus_ts_ms": lat, "publish_minus_ts_ms": lat}


def sweep_doc(worker: list[tuple[float, float]], floor: list[tuple[float, float]], load: float = 10.0) -> Any:
    points = [{"load_percent": load, "rep": i + 1, "worker": point(*w), "floor": point(*f)}
              for i, (w, f) in enumerate(zip(worker, floor, strict=True))]
    return {"loads": by_load(points)}


def test_by_load_takes_the_spread_over_reps() -> None:
    row = sweep_doc([(10, 100), (12, 300), (11, 200)], [(5, 80), (6, 90), (7, 100)])["loads"][0]
    assert row["reps"] == 3
    assert row["worker"]["receive_minus_ts_ms"]["p99"] == {"median": 200.0, "min": 100.0, "max": 300.0, "n": 3}
    assert row["floor"]["idle_cpu_percent"]["median"] == 50.0


def test_latency_targets_met_and_missed_with_margins() -> None:
    # p99: 200 vs 1.25 × 180 = 225 → met by 25 ms; p50: 11 − 6 = 5 → met exactly (≤)
    met = verdicts({"sweep": sweep_doc([(10, 100), (12, 300), (11, 200)], [(5, 170), (6, 180), (7, 190)])})
    assert [v.met for v in met] == [True, True]
    assert met[0].margin == "+25.0 ms" and met[1].margin == "+0.0 ms"
    # p99: 300 vs 1.25 × 200 = 250 → missed by 50 ms; p50: 20 − 6 = 14 → missed by 9 ms
    missed = verdicts({"sweep": sweep_doc([(20, 300)], [(6, 200)], load=25.0)})
    assert [v.met for v in missed] == [False, False]
    assert missed[0].margin == "-50.0 ms" and missed[1].margin == "-9.0 ms"
    assert verdicts({"sweep": sweep_doc([(20, 300)], [(6, 200)], load=50.0)}) == []  # no target at 50 %


def test_drain_target_uses_the_medians() -> None:
    parts = {"ceiling-a": {"events_per_s": 40_000},
             "worker": {"incremental": {"events_per_s": 19_000},
                        "over_a_pairs": {"median": 0.48, "min": 0.4, "max": 0.6}}}
    (v,) = verdicts(parts)
    assert not v.met and v.margin == "-0.025 × A" and "0.475 × A" in v.measured
    parts["worker"]["incremental"]["events_per_s"] = 21_000
    assert verdicts(parts)[0].met
    assert verdicts({"worker": parts["worker"]}) == []  # A did not run: no verdict


def test_provenance_names_the_commit_and_every_package(tmp_path: Path) -> None:
    got = provenance()
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).parent).stdout.strip()
    assert got["git_commit"] == head and isinstance(got["git_dirty"], bool)
    assert set(got["packages"]) == {*PACKAGES, "python"}
    assert all(got["packages"][name] for name in ("numpy", "aiokafka", "python"))
    outside = provenance(tmp_path)  # not a git checkout: unknown, not an error
    assert outside["git_commit"] is None and outside["git_dirty"] is None


def test_report_renders_sweep_targets_and_write_cost_only_when_present() -> None:
    base: dict[str, Any] = {
        "command": "dupn bench --part sweep", "started": "now", "model_version": "m",
        "machine": {"cpus": 2, "loadavg_start": [0.1], "loadavg_end": [0.2]},
        "stream": {"events": 10, "users": 2, "seed": 0}, "config": {"partitions": 8},
        "provenance": {"git_commit": "abc", "git_dirty": True, "packages": {"numpy": "2", "torch": None}},
    }
    sweep = {"drain_rate_source": "given", "drain_rate_events_per_s": 20_000, "warmup_s": 5, "steady_s": 30,
             "gap_s": 3, "floor_path": "hop", **sweep_doc([(10, 100)], [(5, 90)])}
    doc = {**base, "parts": {"sweep": sweep}, "targets": [v.to_json() for v in verdicts({"sweep": sweep})]}
    text = markdown(doc)
    assert "### Load sweep" in text and "| 10 % | 2,000 | 1 | 10.0 | 100.0 |" in text
    assert "### Targets" in text and "| met |" in text
    assert "`abc` (uncommitted changes)" in text and "torch" not in text
    assert "write-cost" not in text
    doc["parts"]["write-cost"] = {"live_bytes_per_event": 400, "drain_bytes_per_event": 300,
                                  "baseline_live_bytes_per_event": 800, "baseline_drain_bytes_per_event": 300}
    assert "| live (paced load) | 400 | 800 | 0.5 |" in markdown(doc)


def test_the_model_hop_gets_its_own_spread_and_splits_the_worker_gap_in_the_report() -> None:
    points = [{"load_percent": 10.0, "rep": i + 1, "worker": point(w, 300), "floor": point(f, 200),
               "model_hop": point(m, 250)} for i, (w, f, m) in enumerate([(80, 58, 66), (84, 57, 70), (78, 60, 64)])]
    loads = by_load(points)
    assert loads[0]["model_hop"]["receive_minus_ts_ms"]["p50"] == {"median": 66.0, "min": 64.0, "max": 70.0, "n": 3}
    assert "model_hop" not in sweep_doc([(10, 100)], [(5, 90)])["loads"][0]  # only when it ran
    sweep = {"drain_rate_source": "given", "drain_rate_events_per_s": 20_000, "warmup_s": 5, "steady_s": 30,
             "gap_s": 3, "floor_path": "hop", "model_hop_path": "model hop", "loads": loads}
    doc = {"command": "c", "started": "now", "model_version": "m",
           "machine": {"cpus": 2, "loadavg_start": [0.1], "loadavg_end": [0.2]},
           "stream": {"events": 10, "users": 2, "seed": 0}, "config": {"partitions": 8},
           "parts": {"sweep": sweep}, "targets": [v.to_json() for v in verdicts({"sweep": sweep})]}
    # floor 58, model hop 66, worker 80 (medians): 8 ms of model and state work, 14 ms around it
    assert "| 10 % | 58.0 [57.0–60.0] | 66.0 [64.0–70.0] | 80.0 [78.0–84.0] | 8.0 | 14.0 |" in markdown(doc)
    assert [t["target"].split(":")[1].strip().split(" ")[0] for t in doc["targets"]] == ["worker", "worker"]


def test_the_spin_hop_runs_after_the_floor_and_its_table_splits_the_model_hops_distance() -> None:
    base = BenchConfig(Path("m"))
    assert pass_apps(base) == ("floor", "worker")
    both = BenchConfig(Path("m"), sweep_model_hop=True, sweep_spin_hop="900,95")
    assert pass_apps(both) == ("floor", "spin-hop", "model-hop", "worker")
    assert app_argv(both, "spin-hop")[-2:] == ("--spin-us", "900,95")
    with pytest.raises(ValueError, match="busy wait"):
        app_argv(base, "spin-hop")
    points = [{"load_percent": 10.0, "rep": i + 1, "worker": point(w, 300), "floor": point(f, 200),
               "spin_hop": point(sp, 220, idle=20.0), "model_hop": point(m, 250)}
              for i, (w, f, sp, m) in enumerate([(80, 58, 61, 66), (84, 57, 62, 70), (78, 60, 63, 64)])]
    loads = by_load(points)
    sweep = {"drain_rate_source": "given", "drain_rate_events_per_s": 20_000, "warmup_s": 5, "steady_s": 30,
             "gap_s": 3, "floor_path": "hop", "model_hop_path": "model hop", "spin_hop_path": "spin",
             "spin_hop_us": "900,95", "loads": loads}
    doc = {"command": "c", "started": "now", "model_version": "m",
           "machine": {"cpus": 2, "loadavg_start": [0.1], "loadavg_end": [0.2]},
           "stream": {"events": 10, "users": 2, "seed": 0}, "config": {"partitions": 8},
           "parts": {"sweep": sweep}, "targets": [v.to_json() for v in verdicts({"sweep": sweep})]}
    # floor 58, spin hop 62, model hop 66 (medians): the spin explains 4 of the model hop's 8 ms
    row = "| 10 % | 58.0 [57.0–60.0] | 62.0 [61.0–63.0] | 66.0 [64.0–70.0] | 4.0 | 4.0 | 50 % / 20 % |"
    assert row in markdown(doc)


@pytest.mark.parametrize("text", ["900", "a,b", "1,2,3", "-1,5", "5,-1", "inf,5", "5,nan"])
def test_a_bad_spin_is_refused_with_what_it_should_be(text: str) -> None:
    with pytest.raises(ValueError, match="spin"):
        parse_spin(text)


def test_the_spin_is_fixed_plus_per_event_and_nothing_for_an_empty_fetch() -> None:
    assert parse_spin("900,95.5") == (900.0, 95.5)
    assert spin_us_for(32, 900.0, 95.0) == 900.0 + 32 * 95.0
    assert spin_us_for(0, 900.0, 95.0) == 0.0


def test_a_sweep_without_a_drain_rate_fails_before_any_part_runs() -> None:
    from ops.bench import BenchConfig, run_parts

    cfg = BenchConfig(Path("/nonexistent-model"), users=10, events=20)
    with pytest.raises(ValueError, match="--drain-rate"):
        run_parts(cfg, ["ceiling-a", "sweep"], "dupn bench")


def test_bench_refuses_bad_sweep_loads(capsys: pytest.CaptureFixture[str]) -> None:
    from ops.cli import main

    for bad in ("5,x", "0,10", "150"):
        with pytest.raises(SystemExit):
            main(["bench", "--part", "sweep", "--sweep-loads", bad])
        assert "percentages" in capsys.readouterr().err
