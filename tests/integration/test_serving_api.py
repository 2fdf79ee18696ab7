"""The serving API over real HTTP against two real workers: batch reads fanned out per owner, the binary form,
VectorClient, /owners, probes, /openapi.json, request limits of the body routes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clients.client import VectorClient
from core import wire
from core.settings import Settings
from ops.harness import free_port, isolated_settings, running_workers, setup_topics
from ops.probes import http_raw, produce
from streams.openapi import openapi_document
from tests.support.factories import make_events

pytestmark = pytest.mark.integration

TOKEN = "serving-token"
USERS = [f"s{k}" for k in range(12)]


@dataclass
class Group:
    s1: Settings
    s2: Settings

    @property
    def urls(self) -> list[str]:
        return [self.s1.http.web_url, self.s2.http.web_url]


def call(url: str, method: str = "GET", body: Any = None, token: str | None = TOKEN,
         accept: str | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    hdrs = dict(headers or {})
    if accept:
        hdrs["Accept"] = accept
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    return http_raw(url, token=token, method=method, body=data, headers=hdrs)


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory, broker_url: str, model_dir: Path) -> Iterator[Group]:
    home = tmp_path_factory.mktemp("serving")
    s1 = isolated_settings(broker_url, home, model_dir, api_token=TOKEN, partitions=4)
    s2 = s1.replace(web_port=free_port(), data_dir=str(home / "data2"))
    urls = f"{s1.http.web_url},{s2.http.web_url}"  # the token is forwarded only to these (issue 14 item 10)
    s1, s2 = s1.replace(worker_urls=urls), s2.replace(worker_urls=urls)
    setup_topics(s1)
    with running_workers([s1, s2], ["worker1", "worker2"]):
        for user in USERS:
            produce(s1, make_events(user, 3))
        deadline = time.monotonic() + 180
        while True:  # both workers answer for every user: the group has settled and every vector exists
            codes = {call(f"{u}/users/{user}/vector")[0] for u in (s1.http.web_url, s2.http.web_url) for user in USERS}
            if codes == {200} or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert codes == {200}, codes
        yield Group(s1, s2)


def single(url: str, user: str) -> dict[str, Any]:
    status, body = call(f"{url}/users/{user}/vector")
    assert status == 200, body
    return json.loads(body)


def test_owners_cover_both_workers(group: Group) -> None:
    status, body = call(group.urls[0] + wire.OWNERS_PATH)
    assert status == 200
    doc = json.loads(body)
    assert doc["partitions"] == 4 and len(doc["owners"]) == 4
    assert {o.rstrip("/") for o in doc["owners"]} == set(group.urls)
    assert doc == json.loads(call(group.urls[1] + wire.OWNERS_PATH)[1]) | {"self": doc["self"]}
    assert call(group.urls[0] + wire.OWNERS_PATH, token=None)[0] == 401


def test_batch_read_fans_out_and_reports_statuses(group: Group) -> None:
    ids = [*USERS, "nobody", USERS[0]]
    want = {u: single(group.urls[0], u) for u in USERS}
    for url in group.urls:  # each worker owns some ids and asks the other for the rest
        status, body = call(url + wire.BATCH_PATH, "POST", {"user_ids": ids})
        assert status == 200, body
        doc = json.loads(body)
        assert doc["count"] == len(ids) and "retry_after_s" not in doc
        rows = doc["results"]
        assert [r["user_id"] for r in rows] == ids
        assert [r["status"] for r in rows] == ["found"] * len(USERS) + ["not_found", "found"]
        for r in rows:
            if r["status"] == "found":
                w = want[r["user_id"]]
                assert r["vector"] == w["vector"]
                for key in ("model_version", "events_seen", "last_event_id", "last_event_ts", "updated_at"):
                    assert r[key] == w[key], key
    status, body = call(group.urls[0] + wire.BATCH_PATH, "POST", {"user_ids": USERS[:4], "max_age_ms": 0})
    assert [r["status"] for r in json.loads(body)["results"]] == ["stale"] * 4  # written before this request
    status, body = call(group.urls[0] + wire.BATCH_PATH, "POST", {"user_ids": USERS[:4], "max_age_ms": 10**12})
    assert [r["status"] for r in json.loads(body)["results"]] == ["found"] * 4


def test_a_routed_batch_is_never_forwarded_again(group: Group) -> None:
    owners = json.loads(call(group.urls[0] + wire.OWNERS_PATH)[1])["owners"]
    own = {u: owners[wire.partition_of(u.encode(), 4)].rstrip("/") for u in USERS}
    url = group.urls[0]
    status, body = call(url + wire.BATCH_PATH, "POST", {"user_ids": USERS}, headers={wire.ROUTED_HEADER: "test"})
    assert status == 200
    for r in json.loads(body)["results"]:
        assert r["status"] == ("found" if own[r["user_id"]] == url else "unavailable"), r
        if r["status"] == "unavailable":
            assert "vector" not in r and r["reason"]


def test_binary_form_equals_the_json_floats(group: Group) -> None:
    ids = [*USERS, "nobody"]
    status, body = call(group.urls[1] + wire.BATCH_PATH, "POST", {"user_ids": ids}, accept=wire.OCTET_STREAM)
    assert status == 200 and body[:4] == wire.MAGIC
    meta, rows = wire.decode_vectors(body)
    json_rows = json.loads(call(group.urls[1] + wire.BATCH_PATH, "POST", {"user_ids": ids})[1])["results"]
    assert rows.dtype == np.float32 and rows.shape[0] == len(ids)
    for m, vec, j in zip(meta["results"], rows, json_rows, strict=True):
        assert {k: v for k, v in m.items() if k != "age_ms"} == {
            k: v for k, v in j.items() if k not in ("vector", "age_ms")}
        if j["status"] == "found":
            assert vec.tobytes() == np.asarray(j["vector"], np.float32).tobytes()
        else:
            assert not vec.any()
    for url in group.urls:  # the single read, answered here or forwarded from the other worker
        for user in USERS[:6]:
            status, raw = call(f"{url}/users/{user}/vector", accept=wire.OCTET_STREAM)
            assert status == 200
            meta, rows = wire.decode_vectors(raw)
            j = single(url, user)
            assert rows.shape == (1, j["dim"]) and rows[0].tobytes() == np.asarray(j["vector"], np.float32).tobytes()
            assert meta["results"][0]["events_seen"] == j["events_seen"] == 3
    status, raw = call(f"{group.urls[0]}/users/nobody/vector", accept=wire.OCTET_STREAM)
    assert status == 404 and json.loads(raw)["error"]  # errors stay JSON


def test_vector_client_get_and_get_many(group: Group) -> None:
    with VectorClient([group.urls[0]], TOKEN) as client:
        batch = client.get_many([*USERS, "nobody"])
        assert batch.statuses == ["found"] * len(USERS) + ["not_found"]
        assert batch.vectors.shape == (len(USERS) + 1, single(group.urls[0], USERS[0])["dim"])
        for user, row in zip(USERS, batch.vectors, strict=False):
            got = client.get(user)
            want = single(group.urls[1], user)
            assert got.status == "found" and got.events_seen == 3 and got.model_version == want["model_version"]
            assert got.vector is not None and got.vector.tobytes() == np.asarray(want["vector"], np.float32).tobytes()
            assert row.tobytes() == got.vector.tobytes()
        assert client.get("nobody").status == "not_found"
        repooled = client.get(USERS[0], at="now")
        assert repooled.status == "found" and repooled.meta["as_of"] >= repooled.last_event_ts
    with VectorClient([group.urls[0]], "wrong") as client, pytest.raises(PermissionError):
        client.get_many(USERS[:1])


def test_cli_vector_uses_the_client(group: Group, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from ops.cli import main

    monkeypatch.setenv("DUPN_API_TOKEN", TOKEN)
    assert main(["vector", USERS[1], "--url", group.urls[1], "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["vector"] == single(group.urls[0], USERS[1])["vector"]
    assert main(["vector", "nobody", "--url", group.urls[1]]) == 1
    assert "unknown user" in capsys.readouterr().err


def test_feast_shaped_read(group: Group) -> None:
    req = {"features": ["user_vectors:vector", "user_vectors:events_seen"], "entities": {"user_id": [USERS[2], "x"]}}
    status, body = call(group.urls[0] + wire.FEAST_PATH, "POST", req)
    assert status == 200, body
    doc = json.loads(body)
    assert doc["metadata"]["feature_names"] == ["user_id", "vector", "events_seen"]
    ids, vectors, seen = doc["results"]
    assert ids["values"] == [USERS[2], "x"]
    assert vectors["values"][0] == single(group.urls[0], USERS[2])["vector"] and vectors["values"][1] is None
    assert seen["values"] == [3, None] and seen["statuses"] == ["PRESENT", "NOT_FOUND"]


def test_probes_openapi_and_body_limits(group: Group) -> None:
    url = group.urls[0]
    for path in ("/livez", "/readyz", "/healthz"):
        status, body = call(url + path, token=None)
        assert status == 200, path
        assert "model_version" not in json.loads(body), path  # not for unauthenticated callers
    assert "model_version" in json.loads(call(url + "/readyz")[1])
    assert json.loads(call(url + "/livez", token=None)[1]) == {"status": "alive"}
    status, body = call(url + "/openapi.json")
    assert status == 200 and json.loads(body) == json.loads(json.dumps(openapi_document()))
    assert call(url + "/openapi.json", token=None)[0] == 401
    batch = url + wire.BATCH_PATH
    assert call(batch, "POST", {"user_ids": USERS}, token=None)[0] == 401
    assert call(batch, "POST", b"x" * (wire.MAX_BATCH_BODY_BYTES + 1))[0] == 413
    assert call(batch, "POST", b"{not json")[0] == 400
    assert call(batch, "POST", {"user_ids": ["u"] * (wire.MAX_BATCH_IDS + 1)})[0] == 400
    assert call(batch, "POST", {"user_ids": ["x" * 257]})[0] == 400
    assert call(batch, "POST", {"user_ids": [1]})[0] == 400
    assert call(batch, "POST", {"user_ids": ["u"], "max_age_ms": -1})[0] == 400
    assert call(batch, "GET")[0] == 405
    assert call(url + "/readyz", "POST", b"{}")[0] == 413  # only the batch routes take a body
    assert call(url + "/readyz")[0] == 200  # still serving after all that


def test_ranker_without_a_cache_reads_through_the_client(group: Group, model_dir: Path) -> None:
    from clients.ranker import Ranker

    ranker = Ranker(model_dir, None, group.s1.replace(worker_urls=",".join(group.urls)))
    vector, version = ranker.user_vector(USERS[3])
    want = single(group.urls[1], USERS[3])
    assert vector.tobytes() == np.asarray(want["vector"], np.float32).tobytes() and version == want["model_version"]
    with pytest.raises(LookupError):
        ranker.user_vector("nobody")


def test_livez_answers_while_readyz_says_not_yet(tmp_path: Path, broker_url: str, model_dir: Path) -> None:
    from ops.harness import WorkerProcess

    s = isolated_settings(broker_url, tmp_path, model_dir, partitions=2)  # no token: the version is not secret
    setup_topics(s)
    worker = WorkerProcess(s, "probe-worker")
    worker.start(ready_timeout_s=None)
    seen: dict[tuple[int, int], dict[str, Any]] = {}
    try:
        deadline = time.monotonic() + 120
        ready = 0
        while ready != 200 and time.monotonic() < deadline and worker.running:
            live, ready, body = _probe(worker.url + "/livez"), *_probe_body(worker.url + "/readyz")
            seen.setdefault((live, ready), body)
            time.sleep(0.05)
        assert ready == 200, worker.log_text()[-3000:]
        assert (200, 503) in seen, sorted(seen)  # up (live) before it has joined and recovered (ready)
        assert seen[(200, 503)]["status"] == "starting" and seen[(200, 503)]["reason"]
        assert "model_version" in seen[(200, 200)]
    finally:
        worker.stop()


def _probe(url: str) -> int:
    return _probe_body(url)[0]


def _probe_body(url: str) -> tuple[int, dict[str, Any]]:
    try:
        status, body = http_raw(url, timeout_s=5)
    except OSError:
        return 0, {}  # not listening yet
    return status, json.loads(body)
