"""Events in through a real broker, a real worker process (RocksDB, HTTP), vectors out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rocksdict import AccessType, Rdict

from encoder.checkpoint import load_checkpoint
from encoder.features import records_from_events
from encoder.streaming import StreamingEncoder, UpdatePolicy, reference_vectors
from ops.harness import isolated_settings, running_worker, setup_topics, worker_env
from ops.probes import collect_vectors, http_get, produce, read_dlq
from state.codec import decode_state
from tests.support.factories import interleave, make_events

pytestmark = pytest.mark.integration


def write_taobao_csv(path: Path) -> list[str]:
    rows = [
        "1001,501,77,pv,1511544070",
        "1001,502,77,cart,1511544100",
        "1001,501,77,buy,1511544200",
        "1002,503,78,fav,1511544300",
        "1002,504,78,pv,1511544400",
    ]
    path.write_text("\n".join(rows) + "\n")
    return ["u1001", "u1002"]  # the reader prefixes ids by kind


@pytest.mark.parametrize("intake", ["lean", "stream"])
def test_vectors_match_offline_encoder_and_http(tmp_path: Path, broker_url: str, model_dir: Path, intake: str) -> None:
    s = isolated_settings(broker_url, tmp_path, model_dir, update_mode="exact", partitions=4, intake=intake)
    setup_topics(s)
    users = {f"u{k}": make_events(f"u{k}", n, seed=k) for k, n in enumerate([250, 40, 7, 120, 1, 64])}
    stream = interleave(*users.values())
    taobao_users = write_taobao_csv(tmp_path / "UserBehavior.csv")
    bad = [(b"u1", b"{not json"), (b"u2", json.dumps({"user_id": "u2"}).encode())]
    with running_worker(s):
        produce(s, stream, raw=bad)
        replay = subprocess.run(
            [sys.executable, "-m", "ops", "replay", "--taobao", str(tmp_path / "UserBehavior.csv"), "--no-progress"],
            env=worker_env(s),
            capture_output=True, text=True, timeout=120,
        )
        assert replay.returncode == 0, replay.stderr
        want = {u: len(ev) for u, ev in users.items()} | {"u1001": 3, "u1002": 2}
        published = collect_vectors(
            s, until=lambda msgs: {m.user_id: m.events_seen for m in msgs if m.events_seen == want[m.user_id]}.keys()
            >= want.keys(),
        )
        last = {m.user_id: m for m in published}
        for user in users:
            status, body = http_get(f"{s.http.web_url}/users/{user}/vector")
            assert status == 200
            assert body["events_seen"] == want[user]
            assert body["last_event_id"] == last[user].last_event_id
            assert body["model_version"] == last[user].model_version
            assert np.array_equal(np.asarray(body["vector"], np.float32), last[user].vector)
        assert http_get(f"{s.http.web_url}/users/nobody/vector")[0] == 404
        assert http_get(f"{s.http.web_url}/users/bad%20id/vector")[0] == 400
        status, later = http_get(f"{s.http.web_url}/users/u0/vector?at=now")
        assert status == 200 and later["as_of"] > last["u0"].last_event_ts
        dlq = read_dlq(s, expected=2)
    # every published vector equals the encoder run offline over the same events
    ckpt = load_checkpoint(model_dir)
    encoder = StreamingEncoder(ckpt.model, ckpt.model_version)
    policy = UpdatePolicy("exact")
    refs = {u: reference_vectors(encoder, records_from_events(ev), policy) for u, ev in users.items()}
    checked = 0
    for msg in published:
        if msg.user_id in refs:
            assert np.abs(msg.vector - refs[msg.user_id][msg.events_seen - 1]).max() <= 1e-5
            checked += 1
    assert checked >= len(users)
    assert set(taobao_users) <= set(last)
    assert sorted(dict(r.headers)["dupn.reason"].decode() for r in dlq) == ["bad_json", "missing_field"]
    assert {r.value for r in dlq} == {v for _, v in bad}
    # the worker's RocksDB holds exactly the last 100 behaviors of the 250-event user
    state = _read_state_from_rocksdb(s.data_path, "u0")
    expected = records_from_events(users["u0"])[-100:]
    assert state.events_seen == 250 and len(state.records) == 100
    assert (state.records["event_hash"] == expected["event_hash"]).all()


def _read_state_from_rocksdb(data_path: Path, user: str):  # type: ignore[no-untyped-def]
    dbs = sorted(p for p in data_path.rglob("user-state-*.db") if p.is_dir())
    assert dbs, f"no RocksDB under {data_path}"
    for path in dbs:
        db = Rdict(str(path), access_type=AccessType.read_only())
        try:
            raw = db.get(user.encode())
        finally:
            db.close()
        if raw is not None:
            return decode_state(user, bytes(raw))
    raise AssertionError(f"user {user} not in any partition DB")


def test_worker_uses_fast_group_join_settings() -> None:
    from core.settings import load_settings
    from streams.worker import faust_options

    opts = faust_options(load_settings(env={}))
    assert opts["broker_session_timeout"] <= 10
    assert opts["broker_heartbeat_interval"] <= 1
    assert opts["broker_rebalance_timeout"] <= 5
    assert opts["web_bind"] == "127.0.0.1"
