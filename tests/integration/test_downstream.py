"""Downstream readers of user-vectors: purchasing power (agent + HTTP), vector cache, query-aware vectors, ranker."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from clients.ranker import ModelVersionMismatch, Ranker
from clients.vector_cache import VectorCache
from core.contracts import VECTOR_MAGIC, VectorMessage
from core.settings import Settings
from encoder.checkpoint import load_checkpoint, save_checkpoint
from encoder.features import query_bucket, records_from_events
from encoder.model import UserContext
from encoder.scoring import score_split
from encoder.streaming import StreamingEncoder
from ops.harness import isolated_settings, running_worker, setup_topics
from ops.probes import collect_vectors, http_get, produce, read_topic
from tests.support.factories import interleave, make_events

pytestmark = pytest.mark.integration


def read_ppp(s: Settings, until: Any, timeout_s: float = 90.0) -> dict[str, dict[str, Any]]:
    """Latest user-purchasing-power message per user, polling until ``until(latest)``."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=s.kafka.bootstrap, group_id=None, auto_offset_reset="earliest")
    latest: dict[str, dict[str, Any]] = {}
    try:
        deadline = time.monotonic() + timeout_s
        parts: set[int] = set()
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(s.kafka.ppp_topic) or set()
        consumer.assign([TopicPartition(s.kafka.ppp_topic, p) for p in parts])
        while time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=200).values():
                for r in recs:
                    body = json.loads(r.value)
                    assert r.key == body["user_id"].encode()
                    latest[body["user_id"]] = body
            if until(latest):
                return latest
        raise TimeoutError(f"purchasing power for {sorted(latest)} only")
    finally:
        consumer.close()


def wait_for(cond: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def attentive_model(model_dir: Path, out: Path) -> Path:
    """The tiny model with sharper attention: at random init its α is near-uniform, so a query barely moves it."""
    ckpt = load_checkpoint(model_dir)
    with torch.no_grad():
        ckpt.model.context.query.weight.mul_(40.0)
        ckpt.model.attention.score.weight.mul_(20.0)
    save_checkpoint(ckpt.model, out)
    return out


def test_downstream_readers(tmp_path: Path, broker_url: str, model_dir: Path) -> None:
    """Every reader, end to end, on a worker publishing binary float16 vectors (contract v2): the other
    integration tests run the default JSON (v1), so this one covers the other path at no extra worker start."""
    tag = tmp_path.name[-8:].replace("_", "x")
    model = attentive_model(model_dir, tmp_path / "models" / "attentive")
    s = isolated_settings(broker_url, tmp_path, model, update_mode="exact", partitions=4, ppp_topic=f"ppp-{tag}",
                          vector_encoding="f16")
    setup_topics(s)
    users = {f"u{k}": make_events(f"u{k}", n, seed=10 + k) for k, n in enumerate([60, 12, 3, 30, 1])}
    ckpt = load_checkpoint(model)
    with running_worker(s):
        produce(s, interleave(*users.values()))
        published = collect_vectors(
            s, until=lambda ms: {m.user_id for m in ms if m.events_seen == len(users[m.user_id])} >= users.keys()
        )
        raw = [r.value for r in read_topic(s, s.kafka.vectors_topic)]
        assert raw and all(v[:6] == VECTOR_MAGIC + b"\x02\x02" for v in raw)  # v2, float16: what was set
        last = {m.user_id: m for m in published}
        _check_purchasing_power(s, ckpt, last)
        _check_query_aware(s, ckpt, users)
        _check_cache_and_ranker(s, ckpt, users, last)


def _check_purchasing_power(s: Settings, ckpt: Any, last: dict[str, VectorMessage]) -> None:
    levels = read_ppp(s, until=lambda got: all(
        u in got and got[u]["vector_updated_at"] == m.updated_at for u, m in last.items()
    ))
    for user, msg in last.items():
        body = levels[user]
        with torch.no_grad():
            want = torch.softmax(ckpt.model.heads.ppp_logits(torch.from_numpy(msg.vector)[None]), -1)[0].numpy()
        assert len(body["probabilities"]) == 7
        assert np.abs(np.asarray(body["probabilities"]) - want).max() <= 1e-5
        assert body["level"] == int(np.argmax(want)) + 1
        assert body["model_version"] == ckpt.model_version
        wait_for(lambda u=user, m=msg: http_get(f"{s.http.web_url}/users/{u}/purchasing-power")[1].get(
            "vector_updated_at") == m.updated_at)
        status, served = http_get(f"{s.http.web_url}/users/{user}/purchasing-power")
        assert status == 200 and served["level"] == body["level"] and served["user_id"] == user
    assert http_get(f"{s.http.web_url}/users/nobody/purchasing-power")[0] == 404
    assert http_get(f"{s.http.web_url}/users/bad%20id/purchasing-power")[0] == 400


def _check_query_aware(s: Settings, ckpt: Any, users: dict[str, list[dict[str, Any]]]) -> None:
    encoder = StreamingEncoder(ckpt.model, ckpt.model_version)
    for user in ("u0", "u3"):
        _, plain = http_get(f"{s.http.web_url}/users/{user}/vector")
        status, aware = http_get(f"{s.http.web_url}/users/{user}/vector?query=c3")
        assert status == 200 and aware["query_bucket"] == query_bucket("c3", encoder.cfg.query_buckets) != 0
        assert aware["as_of"] == plain["as_of"] == plain["last_event_ts"]
        got = np.asarray(aware["vector"], np.float32)
        assert np.abs(got - np.asarray(plain["vector"], np.float32)).max() > 1e-4
        (state,) = encoder.replay([records_from_events(users[user])[-encoder.window:]])
        ctx = UserContext(query=torch.tensor([query_bucket("c3", encoder.cfg.query_buckets)]))
        want = encoder.represent([state], [plain["last_event_ts"]], ctx)[0]
        assert np.abs(got - want).max() <= 1e-5


def _check_cache_and_ranker(
    s: Settings, ckpt: Any, users: dict[str, list[dict[str, Any]]], last: dict[str, VectorMessage]
) -> None:
    with VectorCache(s) as cache:
        assert cache.wait_bootstrapped(60)
        for user, msg in last.items():
            hit = cache.get(user)
            assert hit is not None and hit[0].events_seen == len(users[user])
            assert np.array_equal(hit[0].vector, msg.vector) and hit[1] >= 0
        extra = {**users["u2"][-1], "event_id": "u2-extra", "ts": int(users["u2"][-1]["ts"]) + 5_000}
        produce(s, [extra])
        wait_for(lambda: (cache.get("u2") or (None, 0))[0] is not None
                 and cache.get("u2")[0].events_seen == len(users["u2"]) + 1)  # type: ignore[index]
        ranker = Ranker(s.model_dir, cache, s.replace(worker_urls=s.http.web_url))
        items = [{"item_id": f"i{k}", "category_id": f"c{k % 8}"} for k in range(20)]
        ranked = ranker.score("u0", items)
        assert [r[1] for r in ranked] == sorted((r[1] for r in ranked), reverse=True)
        ctr, _ = score_split(ckpt.model, last["u0"].vector, items)
        assert {r[0]: r[1] for r in ranked} == pytest.approx({str(i["item_id"]): float(p) for i, p in zip(items, ctr)})
        assert len(ranker.score("u0", items, query="c3")) == 20  # via the worker's query-aware vector
        ranker.model_version = "not-the-same"
        with pytest.raises(ModelVersionMismatch):
            ranker.score("u0", items)


def test_ppp_worker_alone_scores_known_versions_only(tmp_path: Path, broker_url: str, model_dir: Path) -> None:
    """`dupn ppp-worker`: only the PPP agent (own consumer group); vectors of an unknown model are skipped."""
    import subprocess
    import sys
    import urllib.request

    from kafka import KafkaProducer

    from ops.harness import wait_healthy, worker_env

    tag = tmp_path.name[-8:].replace("_", "x")
    s = isolated_settings(broker_url, tmp_path, model_dir, partitions=2, ppp_topic=f"ppp-{tag}")
    setup_topics(s)
    version = load_checkpoint(model_dir).model_version
    vec = np.linspace(-0.5, 0.5, 256, dtype=np.float32)
    msgs = [VectorMessage(u, v, vec, 1, "e1", 1_700_000_000_000, 1_700_000_000_000 + k)
            for k, (u, v) in enumerate([("a", version), ("b", "0000unknown00000"), ("c", version)])]
    prod = KafkaProducer(bootstrap_servers=s.kafka.bootstrap)
    # a reader meets both contracts and garbage: the garbage is a's key, so it is read before a's vector
    prod.send(s.kafka.vectors_topic, key=b"a", value=VECTOR_MAGIC + b"\x02\x02 truncated")
    for m, encoding in zip(msgs, ["f16", "f32", "json"], strict=True):
        prod.send(s.kafka.vectors_topic, key=m.user_id.encode(), value=m.to_bytes(encoding))
    prod.flush()
    prod.close()
    log_path = tmp_path / "ppp-worker.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ops", "ppp-worker"], env=worker_env(s), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_healthy(s.http.web_url, proc, 60, log_path)
            got = read_ppp(s, until=lambda latest: {"a", "c"} <= latest.keys())
            assert "b" not in got and got["a"]["model_version"] == version
            assert http_get(f"{s.http.web_url}/users/a/purchasing-power")[0] == 200
            assert http_get(f"{s.http.web_url}/users/b/purchasing-power")[0] == 404
            assert http_get(f"{s.http.web_url}/users/a/vector")[0] == 404  # no vectors role, no vector route
            with urllib.request.urlopen(f"{s.http.web_url}/metrics", timeout=10) as resp:
                text = resp.read().decode()
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    assert 'dupn_ppp_skipped_total{reason="unknown_model_version"} 1.0' in text
    assert 'dupn_ppp_skipped_total{reason="bad_message"} 1.0' in text
    assert "0000unknown00000" in log_path.read_text()
