"""GET /users/{id}/explain on a real worker: the α behind the vector, equal to the offline encoder's."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from encoder.checkpoint import load_checkpoint
from encoder.features import query_bucket, records_from_events
from encoder.model import UserContext
from encoder.streaming import StreamingEncoder
from ops.harness import isolated_settings, running_worker, setup_topics, worker_env
from ops.probes import collect_vectors, http_get, produce
from tests.support.factories import interleave, make_events

pytestmark = pytest.mark.integration

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_explain_matches_offline_attention(tmp_path: Path, broker_url: str, model_dir: Path) -> None:
    s = isolated_settings(
        broker_url, tmp_path, model_dir, update_mode="exact", partitions=4, ppp_topic=f"ppp-{uuid.uuid4().hex[:8]}"
    )
    setup_topics(s)
    users = {f"u{k}": make_events(f"u{k}", n, seed=k) for k, n in enumerate([130, 40, 3])}
    ckpt = load_checkpoint(model_dir)
    encoder = StreamingEncoder(ckpt.model, ckpt.model_version)
    with running_worker(s):
        produce(s, interleave(*users.values()))
        want = {u: len(ev) for u, ev in users.items()}
        collect_vectors(
            s, until=lambda msgs: {m.user_id for m in msgs if m.events_seen == want[m.user_id]} >= want.keys()
        )
        answers = {u: http_get(f"{s.http.web_url}/users/{u}/explain") for u in users}
        status, with_query = http_get(f"{s.http.web_url}/users/u0/explain?query=c3")
        assert status == 200
        assert http_get(f"{s.http.web_url}/users/nobody/explain")[0] == 404
        assert http_get(f"{s.http.web_url}/users/u0/explain?at=soon")[0] == 400
        png = tmp_path / "u0.png"
        cli = subprocess.run(
            [sys.executable, "-m", "ops", "explain", "u0", "--png", str(png), "--url", s.http.web_url],
            env=worker_env(s), capture_output=True, text=True, timeout=120,
        )
    assert cli.returncode == 0, cli.stderr
    assert "█" in cli.stdout and png.read_bytes().startswith(PNG_SIGNATURE)
    for user, events in users.items():
        status, body = answers[user]
        assert status == 200
        records = records_from_events(events)[-encoder.window :]
        assert body["user_id"] == user and body["model_version"] == ckpt.model_version
        assert body["as_of"] == int(records["ts"][-1])
        behaviors = body["behaviors"]
        assert len(behaviors) == min(len(events), 100)
        assert [b["ts"] for b in behaviors] == records["ts"].tolist()
        alpha = np.array([b["attention"] for b in behaviors])
        assert abs(alpha.sum() - 1.0) <= 1e-5
        (state,) = encoder.replay([records])
        offline = encoder.attention_weights(state, body["as_of"])
        assert np.abs(alpha - offline).max() <= 1e-5
    # the query-aware explanation uses the query bucket of /vector?query=
    records = records_from_events(users["u0"])[-encoder.window :]
    (state,) = encoder.replay([records])
    bucket = query_bucket("c3", encoder.cfg.query_buckets)
    assert with_query["query_bucket"] == bucket
    ctx = UserContext(query=torch.tensor([bucket], dtype=torch.int64))
    offline = encoder.attention_weights(state, with_query["as_of"], ctx)
    assert np.abs(np.array([b["attention"] for b in with_query["behaviors"]]) - offline).max() <= 1e-5
