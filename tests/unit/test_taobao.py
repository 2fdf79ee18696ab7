"""The Taobao UserBehavior reader: column mapping, error handling, and the CTR / L2R examples it allows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training.simulator import BEHAVIOR_WEIGHTS, N_RANKING_FEATURES
from training.taobao import TAOBAO_BEHAVIOR, TaobaoReadStats, group_by_user, read_taobao_csv, taobao_examples

T0 = 1_511_600_000  # epoch seconds, inside the dataset's 2017-11-25 .. 12-03 range

ROWS = [  # user, item, category, behavior, ts
    (1, 10, 100, "pv", T0),
    (1, 11, 100, "pv", T0 + 60),
    (1, 11, 100, "cart", T0 + 90),
    (1, 12, 200, "pv", T0 + 120),
    (1, 11, 100, "buy", T0 + 3600),
    (2, 10, 100, "pv", T0 + 30),
    (2, 13, 300, "fav", T0 + 45),
    (2, 14, 300, "pv", T0 + 50),
    (2, 10, 100, "pv", T0 + 50),  # same second as the row above
    (3, 15, 300, "pv", T0 + 10),
]


def write_csv(path: Path, rows: list[tuple[Any, ...]], header: bool = False) -> Path:
    lines = ["user_id,item_id,category_id,behavior_type,timestamp"] if header else []
    lines += [",".join(str(x) for x in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def csv_path(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "UserBehavior.csv", ROWS)


def test_rows_map_to_contract_events(csv_path: Path) -> None:
    events = list(read_taobao_csv(csv_path))
    assert len(events) == len(ROWS)
    assert events[0] == {
        "event_id": "tb-1",
        "user_id": "u1",
        "ts": T0 * 1000,
        "event_type": "click",
        "item_id": "i10",
        "shop_id": "",
        "brand_id": "",
        "category_id": "c100",
        "tags": [],
        "scenario": "other",
    }
    assert [ev["event_type"] for ev in events[:5]] == ["click", "click", "cart", "click", "buy"]
    assert events[6]["event_type"] == "fav"
    assert len({ev["event_id"] for ev in events}) == len(events)
    assert TAOBAO_BEHAVIOR == {"pv": "click", "buy": "buy", "cart": "cart", "fav": "fav"}


def test_optional_header_is_skipped_and_ids_keep_file_line_numbers(tmp_path: Path) -> None:
    events = list(read_taobao_csv(write_csv(tmp_path / "h.csv", ROWS[:2], header=True)))
    assert [ev["event_id"] for ev in events] == ["tb-2", "tb-3"]
    assert events[0]["item_id"] == "i10"


def test_limit_caps_the_number_of_events(csv_path: Path) -> None:
    assert [ev["event_id"] for ev in read_taobao_csv(csv_path, limit=3)] == ["tb-1", "tb-2", "tb-3"]
    assert list(read_taobao_csv(csv_path, limit=0)) == []


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        ("1,10,100,pv", "columns"),
        ("1,10,100,pv,5,6", "columns"),
        ("1,10,100,like,1511600000", "behavior"),
        ("1,10,100,pv,1511600000.5", "timestamp"),
        ("1,10,100,pv,soon", "timestamp"),
    ],
)
def test_bad_rows_raise_naming_the_line(tmp_path: Path, bad_row: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(f"1,10,100,pv,{T0}\n{bad_row}\n2,11,100,pv,{T0}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"line 2: .*{message}"):
        list(read_taobao_csv(path))


def test_skip_mode_drops_and_counts_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(f"1,10,100,pv,{T0}\n1,10,100,like,{T0}\n1,10,100\n2,11,100,buy,{T0 + 1}\n", encoding="utf-8")
    stats = TaobaoReadStats()
    events = list(read_taobao_csv(path, on_error="skip", stats=stats))
    assert [ev["event_id"] for ev in events] == ["tb-1", "tb-4"]
    assert (stats.rows, stats.events, stats.skipped) == (4, 2, 2)
    assert len(stats.first_errors) == 2 and "line 2" in stats.first_errors[0]
    with pytest.raises(ValueError):
        list(read_taobao_csv(path, on_error="ignore"))  # type: ignore[arg-type]


def test_group_by_user_sorts_each_history_by_time(tmp_path: Path) -> None:
    shuffled = [ROWS[4], ROWS[0], ROWS[2], ROWS[1], ROWS[3]]
    by_user = group_by_user(read_taobao_csv(write_csv(tmp_path / "s.csv", shuffled)))
    assert list(by_user) == ["u1"]
    assert [ev["ts"] for ev in by_user["u1"]] == sorted(ev["ts"] for ev in by_user["u1"])


def test_examples_are_next_clicks_against_sampled_negatives(csv_path: Path) -> None:
    by_user = group_by_user(read_taobao_csv(csv_path))
    ex = taobao_examples(by_user, seed=0, negatives=3)
    assert ex["talent"] == ex["ppp"] == ex["shop"] == []  # the file has no such labels
    # Clicks with earlier history: u1 at +60 and +120, u2 at +50 (twice, but both see only the +30, +45 rows).
    positives = [e for e in ex["ctr"] if e.label == 1.0]
    assert [(e.user_id, e.now_ms, e.history_len) for e in positives] == [
        ("u1", (T0 + 60) * 1000, 1),
        ("u1", (T0 + 120) * 1000, 3),
        ("u2", (T0 + 50) * 1000, 2),
        ("u2", (T0 + 50) * 1000, 2),
    ]
    assert len(ex["ctr"]) == len(ex["l2r"]) == 4 * len(positives)
    for group in range(len(positives)):
        cands = ex["ctr"][4 * group : 4 * group + 4]
        assert cands[0].label == 1.0 and all(e.label == 0.0 for e in cands[1:])
        assert cands[0].item is not None
        assert all(e.item is not None and e.item["item_id"] != cands[0].item["item_id"] for e in cands[1:])
        hist = by_user[cands[0].user_id]
        assert hist[cands[0].history_len - 1]["ts"] < cands[0].now_ms <= hist[cands[0].history_len]["ts"]


def test_l2r_labels_weights_and_features_use_no_future(csv_path: Path) -> None:
    ex = taobao_examples(group_by_user(read_taobao_csv(csv_path)), seed=0, negatives=3)
    item11 = next(e for e in ex["l2r"] if e.label == 1.0 and e.item is not None and e.item["item_id"] == "i11")
    assert item11.weight == BEHAVIOR_WEIGHTS["buy"]  # clicked, carted, then bought within a day
    for e in ex["l2r"]:
        assert e.ranking_features is not None and len(e.ranking_features) == N_RANKING_FEATURES
        assert all(0.0 <= f <= 1.0 for f in e.ranking_features)
        assert e.weight == BEHAVIOR_WEIGHTS["none"] if e.label == 0.0 else e.weight in {1.0, 2.0, 4.0}
    # u1's click on i11 at +60: only i10 was seen before, so i11's popularity so far is 0 and it is unseen.
    assert item11.ranking_features is not None
    assert item11.ranking_features[0] == 0.0 and item11.ranking_features[3] == 0.0
    assert item11.ranking_features[1] == 1.0  # the only earlier event is in the same category


def test_examples_are_deterministic_per_seed(csv_path: Path) -> None:
    by_user = group_by_user(read_taobao_csv(csv_path))
    assert taobao_examples(by_user, seed=1) == taobao_examples(by_user, seed=1)
    big = {f"u{u}": [{**ev, "item_id": f"i{u}{k}"} for k, ev in enumerate(by_user["u1"])] for u in range(20)}
    a, b = taobao_examples(big, seed=1), taobao_examples(big, seed=2)
    assert [e.item for e in a["ctr"]] != [e.item for e in b["ctr"]]
