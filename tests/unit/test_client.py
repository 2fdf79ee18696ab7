"""clients.client.VectorClient against fake workers (local http.server threads): routing, retries, fallback."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import orjson
import pytest

from clients.client import VectorClient
from core import wire
from ops.harness import free_port

PARTS = 4
DIM = 8


def vec_of(user_id: str) -> list[float]:
    rng = np.random.default_rng(wire.murmur2(user_id.encode()))
    return [float(x) for x in rng.normal(size=DIM).astype(np.float32)]


class FakeWorker:
    """A worker that owns some partitions; ``script`` can override the answer to a request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.peers: set[int] = set()  # client ports seen: one per TCP connection
        self.owners: list[str | None] = []
        self.known: set[str] = set()
        self.token = ""
        self.script: Callable[[str, str, Any], tuple[int, dict[str, str], bytes] | None] = lambda *a: None
        worker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._serve("GET", None)

            def do_POST(self) -> None:
                body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._serve("POST", body)

            def _serve(self, method: str, body: Any) -> None:
                worker.peers.add(self.client_address[1])
                worker.requests.append((method, self.path, body))
                status, headers, data = worker.answer(method, self.path, body, dict(self.headers))
                self.send_response(status)
                for k, v in {"Content-Length": str(len(data)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        scripted = self.script(method, path, body)
        if scripted is not None:
            return scripted
        if self.token and headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {}, b'{"error": "token"}'
        if path == "/owners":
            return 200, {}, orjson.dumps({"partitions": PARTS, "owners": self.owners})
        if method == "POST" and path == "/vectors":
            rows = [self.row(u) for u in body["user_ids"]]
            return 200, {}, wire.encode_vectors(rows, {"count": len(rows)})
        if path.startswith("/users/") and path.split("?")[0].endswith("/vector"):
            user = path.split("/")[2]
            row = self.row(user)
            if row["status"] == "not_found":
                return 404, {}, b'{"error": "unknown user"}'
            return 200, {}, wire.encode_vectors([row])
        return 404, {}, b"{}"

    def row(self, user: str) -> dict[str, Any]:
        if user not in self.known:
            return {"user_id": user, "status": "not_found"}
        return {"user_id": user, "status": "found", "model_version": "m1", "events_seen": 3, "vector": vec_of(user)}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def workers() -> Iterator[tuple[FakeWorker, FakeWorker]]:
    a, b = FakeWorker(), FakeWorker()
    owners: list[str | None] = [a.url if p % 2 == 0 else b.url for p in range(PARTS)]
    for w in (a, b):
        w.owners = owners
    yield a, b
    a.stop()
    b.stop()


def client(urls: list[str], sleeps: list[float] | None = None, **kw: Any) -> VectorClient:
    record = sleeps if sleeps is not None else []
    return VectorClient(urls, sleep=record.append, **kw)


def owner_index(user: str) -> int:
    return wire.partition_of(user.encode(), PARTS) % 2


def test_get_many_asks_each_owner_once_for_its_ids_and_keeps_the_order(workers) -> None:
    a, b = workers
    users = [f"user-{k}" for k in range(40)]
    for w in workers:
        w.known = set(users[:30])
    with client([a.url]) as c:
        batch = c.get_many(users)
        again = c.get_many(users[:10])
    assert batch.user_ids == users
    assert batch.statuses == ["found"] * 30 + ["not_found"] * 10
    assert batch.vectors.shape == (40, DIM) and batch.vectors.dtype == np.float32
    for k, r in enumerate(batch):
        if k < 30:
            assert r.vector is not None and r.vector.tolist() == vec_of(r.user_id)
            assert r.model_version == "m1" and r.events_seen == 3
        else:
            assert r.vector is None and not batch.vectors[k].any()
    posts = {w: [body["user_ids"] for m, p, body in w.requests if m == "POST"] for w in (a, b)}
    for idx, w in enumerate((a, b)):
        assert len(posts[w]) == 2  # one per get_many call
        assert all(owner_index(u) == idx for ids in posts[w] for u in ids)
    assert [r.status for r in again] == ["found"] * 10
    assert len(a.peers) == 1 and len(b.peers) == 1  # keep-alive: one connection each, reused


def test_get_routes_to_the_owner_and_reports_not_found(workers) -> None:
    a, b = workers
    users = [f"u{k}" for k in range(8)]
    for w in workers:
        w.known = set(users)
    with client([a.url]) as c:
        for u in users:
            r = c.get(u)
            assert r.status == "found" and r.vector is not None and r.vector.tolist() == vec_of(u)
        assert c.get("ghost").status == "not_found"
    for idx, w in enumerate((a, b)):
        gets = [p.split("/")[2] for m, p, _ in w.requests if m == "GET" and p.startswith("/users/")]
        assert all(owner_index(u) == idx for u in gets if u != "ghost")


def test_retry_after_is_honoured_within_the_attempt_budget(workers) -> None:
    a, _ = workers
    a.owners = [None] * PARTS  # nobody known: ask the configured worker
    a.known = {"u1"}
    busy = [2]

    def script(method: str, path: str, body: Any) -> Any:
        if path.startswith("/users/") and busy[0] > 0:
            busy[0] -= 1
            return 503, {"Retry-After": "2"}, b'{"error": "rebalancing", "retry_after_s": 2}'
        return None

    a.script = script
    sleeps: list[float] = []
    with client([a.url], sleeps, max_wait_s=10) as c:
        r = c.get("u1")
    assert r.status == "found" and sleeps == [2.0, 2.0]

    busy[0] = 100
    sleeps.clear()
    with client([a.url], sleeps, max_wait_s=3) as c:
        r = c.get("u1")
    assert r.status == "unavailable" and r.reason == "rebalancing" and sleeps == [2.0]  # a second wait would pass 3 s

    sleeps.clear()
    calls_before = sum(1 for m, p, _ in a.requests if p.startswith("/users/"))
    a.script = lambda m, p, b: (503, {"Retry-After": "0"}, b"{}") if p.startswith("/users/") else None
    with client([a.url], sleeps, max_attempts=3) as c:
        assert c.get("u1").status == "unavailable"
    assert sum(1 for m, p, _ in a.requests if p.startswith("/users/")) - calls_before == 3


def test_unavailable_rows_are_retried_alone(workers) -> None:
    a, _ = workers
    a.owners = [None] * PARTS
    users = ["u1", "u2", "u3"]
    a.known = set(users)
    first = [True]

    def script(method: str, path: str, body: Any) -> Any:
        if method == "POST" and first[0]:
            first[0] = False
            rows = [a.row("u1"), {"user_id": "u2", "status": "unavailable", "reason": "restoring"}, a.row("u3")]
            return 200, {}, wire.encode_vectors(rows, {"retry_after_s": 1})
        return None

    a.script = script
    sleeps: list[float] = []
    with client([a.url], sleeps) as c:
        batch = c.get_many(users)
    assert batch.statuses == ["found"] * 3 and sleeps == [1.0]
    posts = [body["user_ids"] for m, p, body in a.requests if m == "POST"]
    assert posts == [users, ["u2"]]


def test_an_unreachable_owner_falls_back_to_any_worker(workers) -> None:
    a, _ = workers
    dead = f"http://127.0.0.1:{free_port()}"
    a.owners = [dead] * PARTS
    a.known = {"u1", "u2"}
    with client([a.url]) as c:
        assert c.get_many(["u1", "u2"]).statuses == ["found", "found"]
        assert c.get("u1").status == "found"


def test_ids_that_cant_be_in_a_url_use_the_batch_read(workers) -> None:
    a, _ = workers
    a.owners = [None] * PARTS
    a.known = {"a user/with spaces"}
    with client([a.url]) as c:
        assert c.get("a user/with spaces").status == "found"
        with pytest.raises(ValueError):
            c.get("a user/with spaces", at="now")


def test_no_worker_and_a_wrong_token_are_errors(workers) -> None:
    a, _ = workers
    with client([f"http://127.0.0.1:{free_port()}"]) as c:
        with pytest.raises(ConnectionError, match="start one with `dupn worker`"):
            c.get("u1")
        with pytest.raises(ConnectionError, match="start one with `dupn worker`"):
            c.get_many(["u1"])
    a.token = "right"
    with client([a.url], token="wrong") as c, pytest.raises(PermissionError):
        c.get_many(["u1"])
    with client([a.url], token="right") as c:
        assert c.get_many(["u1"]).statuses == ["not_found"]


def test_large_batches_are_cut_into_requests_the_worker_accepts(workers) -> None:
    a, _ = workers
    a.owners = [None] * PARTS
    users = [f"{k:04d}" + "x" * 200 for k in range(1500)]  # 1,500 ids of 204 chars: over both limits
    a.known = set(users[::7])
    with client([a.url]) as c:
        batch = c.get_many(users)
    assert batch.statuses == ["found" if k % 7 == 0 else "not_found" for k in range(1500)]
    posts = [body["user_ids"] for m, p, body in a.requests if m == "POST"]
    assert sorted(u for ids in posts for u in ids) == users  # chunks go in parallel: any arrival order
    for ids in posts:
        assert len(ids) <= wire.MAX_BATCH_IDS and len(orjson.dumps({"user_ids": ids})) <= wire.MAX_BATCH_BODY_BYTES
