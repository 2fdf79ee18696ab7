"""The column-wise behavior encoding the worker uses equals the one-behavior-at-a-time definition."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from encoder import features
from encoder.features import (
    EVENT_TYPES,
    SCENARIOS,
    behavior_records,
    behavior_row,
    hash_event_id,
    hash_id,
    hash_ids,
    rows_to_records,
)

T0 = 1_700_000_000_000
ids = st.sampled_from(["", "a", "shop-1", "é", "x" * 256]) | st.text(max_size=6)
behavior = st.fixed_dictionaries(
    {
        "ts": st.integers(T0 - 40 * 86_400_000, T0 + 40 * 86_400_000),
        "event_id": st.text(min_size=1, max_size=8),
        "event_type": st.sampled_from(EVENT_TYPES),
        "item_id": ids.filter(bool),
        "shop_id": ids,
        "brand_id": ids,
        "category_id": ids,
        "tags": st.lists(ids, max_size=9).map(tuple),
        "scenario": st.sampled_from(SCENARIOS),
    }
)
runs = st.lists(
    st.tuples(st.none() | st.integers(0, 2 * T0), st.lists(behavior, min_size=1, max_size=5)), max_size=6
)


def one_by_one(batch: list[tuple[int | None, list[dict[str, Any]]]]) -> np.ndarray:
    rows = []
    for prev, run in batch:
        for ev in run:
            rows.append(behavior_row(**ev, prev_ts=prev))
            prev = ev["ts"]
    return rows_to_records(rows)


def columns(batch: list[tuple[int | None, list[dict[str, Any]]]]) -> np.ndarray:
    evs = [ev for _, run in batch for ev in run]
    return behavior_records(
        ts=[e["ts"] for e in evs],
        event_hashes=[hash_event_id(e["event_id"]) for e in evs],
        **{f"{k}s": [e[k] for e in evs] for k in ("event_type", "item_id", "shop_id", "brand_id", "category_id")},
        tags=[e["tags"] for e in evs],
        scenarios=[e["scenario"] for e in evs],
        runs=[len(run) for _, run in batch],
        prev_ts=[prev for prev, _ in batch],
    )


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(runs)
def test_behavior_records_equal_behavior_rows(batch: list[tuple[int | None, list[dict[str, Any]]]]) -> None:
    got, want = columns(batch), one_by_one(batch)
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


def test_runs_must_cover_the_behaviors() -> None:
    ev = {"ts": T0, "event_id": "e", "event_type": "click", "item_id": "i", "shop_id": "", "brand_id": "",
          "category_id": "", "tags": (), "scenario": "other"}
    with pytest.raises(ValueError, match="runs"):
        columns([(None, [ev, ev]), (None, [])])


def test_hash_memo_gives_the_same_hashes_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features, "_ID_HASHES_MAX", 8)
    values = [f"id{i % 13}" for i in range(60)] + [""]
    assert hash_ids(values) == [hash_id(v) for v in values]
    assert len(features._ID_HASHES) <= 8
