"""Explaining a vector: per-behavior rows, the type × age aggregate and its PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.contracts import EVENT_TYPES
from encoder.explain import (
    AGE_BUCKET_LABELS,
    AttentionTable,
    age_bucket_index,
    attention_report,
    explain_behaviors,
    table_from_behaviors,
)
from encoder.features import TIME_BUCKET_EDGES_MS, records_from_events
from encoder.streaming import StreamingEncoder
from tests.support.factories import make_events

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_age_bucket_labels_follow_the_model_time_buckets() -> None:
    assert AGE_BUCKET_LABELS == ("<10s", "<1m", "<5m", "<30m", "<2h", "<6h", "<1d", "<3d", "<7d", "<30d", "≥30d")
    assert len(AGE_BUCKET_LABELS) == len(TIME_BUCKET_EDGES_MS) + 1
    ages = np.array([0, 9_999, 10_000, 59_999, 299_999, 86_400_000, 2_592_000_000, 10**12])
    labels = [AGE_BUCKET_LABELS[i] for i in age_bucket_index(ages)]
    assert labels == ["<10s", "<10s", "<1m", "<1m", "<5m", "<3d", "≥30d", "≥30d"]


def test_explain_rows_are_the_window_oldest_first(tiny_encoder: StreamingEncoder) -> None:
    records = records_from_events(make_events("u", 30, seed=3))
    (state,) = tiny_encoder.replay([records])
    as_of = int(records["ts"][-1])
    alpha = tiny_encoder.attention_weights(state, as_of)
    rows = explain_behaviors(records, alpha, as_of)
    assert [r["position"] for r in rows] == list(range(30))
    assert [r["ts"] for r in rows] == records["ts"].tolist()
    assert rows[-1]["age_ms"] == 0 and rows[-1]["age_bucket"] == "<10s"
    assert all(r["event_type"] in EVENT_TYPES and r["scenario"] == "search" for r in rows)
    assert abs(sum(r["attention"] for r in rows) - 1.0) <= 1e-5


def test_report_normalises_each_user_to_one_per_behavior(tiny_encoder: StreamingEncoder) -> None:
    histories = [records_from_events(make_events(f"u{k}", n, seed=k)) for k, n in enumerate([25, 60, 140, 5])]
    table = attention_report(tiny_encoder, histories, min_events=20)
    assert table.users == 3  # the 5-event user is skipped
    windows = [25, 60, 100]  # the 140-event user pools over the last W = 100
    assert int(table.counts.sum()) == sum(windows)
    # α sums to 1 per user, so α × window length sums to the window length
    assert abs(table.sums.sum() - sum(windows)) <= 1e-4
    assert table.mean.shape == (len(EVENT_TYPES), len(AGE_BUCKET_LABELS))
    assert np.isnan(table.mean[table.counts == 0]).all()
    lines = table.render().splitlines()
    assert lines[0].split() == ["type", *AGE_BUCKET_LABELS]
    assert [line.split()[0] for line in lines[1:5]] == list(EVENT_TYPES)


def test_table_by_hand() -> None:
    table = AttentionTable()
    # ages 0 s (<10s) and 2 min (<5m); α 0.75 / 0.25 over a window of 2 → normalised 1.5 / 0.5
    table.add(np.array([3, 0]), np.array([0, 120_000]), np.array([0.75, 0.25]))
    assert table.mean[3, 0] == 1.5 and table.mean[0, 2] == 0.5
    assert np.isnan(table.mean[1]).all()
    same = table_from_behaviors(
        [
            {"event_type": "buy", "age_ms": 0, "attention": 0.75},
            {"event_type": "click", "age_ms": 120_000, "attention": 0.25},
        ]
    )
    assert np.array_equal(same.counts, table.counts) and np.allclose(same.sums, table.sums)


def test_png_writers_produce_png_files(tmp_path: Path, tiny_encoder: StreamingEncoder) -> None:
    from ops.plots import write_explain_png, write_heatmap_png

    records = records_from_events(make_events("u", 40, seed=1))
    (state,) = tiny_encoder.replay([records])
    as_of = int(records["ts"][-1])
    rows = explain_behaviors(records, tiny_encoder.attention_weights(state, as_of), as_of)
    table = table_from_behaviors(rows)
    for path in (
        write_heatmap_png(tmp_path / "report.png", table, "report"),
        write_explain_png(tmp_path / "explain.png", table, rows, "user u"),
    ):
        data = path.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_SIGNATURE)
