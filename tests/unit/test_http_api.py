"""streams.http_api.batch_read without Kafka: local rows, one sub-request per other owner, failing owners."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from core import wire
from encoder.features import records_from_events
from ops.harness import free_port
from state.codec import encode_state
from state.memory import MemoryStateStore
from state.user_state import UserState
from streams import http_api
from tests.support.factories import make_events

PARTS = 6
ME = "http://me:1"


def state_bytes(user: str, updated_at: int) -> bytes:
    vec = np.random.default_rng(len(user)).standard_normal(8).astype(np.float32)
    return encode_state(UserState(user, records_from_events(make_events(user, 3)), 3, f"{user}-e2", 0, 2, "m1", vec,
                                  updated_at))


class Owner:
    """A fake owner: answers POST /vectors in the binary form, or as ``mode`` says."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.calls: list[tuple[list[str], dict[str, str]]] = []
        self.app = web.Application()
        self.app.router.add_post(wire.BATCH_PATH, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.calls.append((body["user_ids"], dict(request.headers)))
        if self.mode == "500":
            return web.Response(status=500, text="boom")
        if self.mode == "garbage":
            return web.Response(body=b"DUPV not really", content_type=wire.OCTET_STREAM)
        ids = body["user_ids"] if self.mode == "ok" else list(reversed(body["user_ids"]))
        rows = [{"user_id": u, "status": "found", "vector": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]} for u in ids]
        return web.Response(body=wire.encode_vectors(rows), content_type=wire.OCTET_STREAM)


def run_batch(monkeypatch: pytest.MonkeyPatch, ids: list[str], owners: dict[int, str | None],
              table: dict[bytes, bytes], max_age_ms: int | None = None, routed: bool = False,
              servable: dict[int, str | None] | None = None, api_token: str = "",
              worker_urls: str = "") -> list[dict[str, Any]]:
    monkeypatch.setattr(http_api, "_active_owner", lambda app, topic, p: owners[p])
    monkeypatch.setattr(http_api, "_not_servable_here", lambda app, topic, p: (servable or {}).get(p))

    async def go() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as session:
            app = SimpleNamespace(conf=SimpleNamespace(canonical_url=ME), http_client=session)
            store = MemoryStateStore()
            for key, value in table.items():
                store.put_raw(key.decode(), wire.partition_of(key, PARTS), value)
            w: Any = SimpleNamespace(
                app=app, store=store,
                settings=SimpleNamespace(kafka=SimpleNamespace(partitions=PARTS),
                                         http=SimpleNamespace(api_token=api_token, worker_urls=worker_urls)),
                table=SimpleNamespace(changelog_topic=SimpleNamespace(get_topic_name=lambda: "t")),
            )
            headers = {"Authorization": "Bearer t", **({wire.ROUTED_HEADER: "x"} if routed else {})}
            return await http_api.batch_read(w, ids, max_age_ms, SimpleNamespace(headers=headers))

    return asyncio.run(go())


def users_in(partition: int, n: int) -> list[str]:
    out = [f"user{k}" for k in range(1000) if wire.partition_of(f"user{k}".encode(), PARTS) == partition]
    return out[:n]


async def _start(*owners: Owner) -> list[TestServer]:
    servers = [TestServer(o.app, host="127.0.0.1") for o in owners]
    for s in servers:
        await s.start_server()
    return servers


def test_local_remote_and_failing_owners(monkeypatch: pytest.MonkeyPatch) -> None:
    good, bad, garbage, liar = Owner("ok"), Owner("500"), Owner("garbage"), Owner("wrong_ids")
    loop = asyncio.new_event_loop()
    servers = loop.run_until_complete(_start(good, bad, garbage, liar))
    threading.Thread(target=loop.run_forever, daemon=True).start()  # the fake owners answer from this thread
    try:
        urls = [str(s.make_url("")).rstrip("/") for s in servers]
        dead = f"http://127.0.0.1:{free_port()}"
        owners = {0: ME, 1: urls[0], 2: urls[1], 3: dead, 4: None, 5: urls[2]}
        now = int(time.time() * 1000)
        local = users_in(0, 3)
        table = {local[0].encode(): state_bytes(local[0], now), local[1].encode(): state_bytes(local[1], now - 10**7)}
        remote = users_in(1, 3)
        ids = [local[0], remote[0], users_in(2, 1)[0], local[1], users_in(3, 1)[0], remote[1], local[2],
               users_in(4, 1)[0], users_in(5, 1)[0], remote[2]]
        rows = run_batch(monkeypatch, ids, owners, table, max_age_ms=10**6)
        assert [r["user_id"] for r in rows] == ids
        assert [r["status"] for r in rows] == [
            "found", "found", "unavailable", "stale", "unavailable", "found", "not_found", "unavailable",
            "unavailable", "found"]
        assert rows[0]["events_seen"] == 3 and rows[0]["model_version"] == "m1" and rows[0]["last_event_id"]
        assert np.asarray(rows[1]["vector"]).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
        assert "HTTP 500" in rows[2]["reason"] and "did not answer" in rows[4]["reason"]
        assert "no owner" in rows[7]["reason"] and "WireError" in rows[8]["reason"]
        assert len(good.calls) == 1 and good.calls[0][0] == remote  # one sub-request per owner, its ids in order
        sent = good.calls[0][1]
        assert sent[wire.ROUTED_HEADER] == ME and sent["Authorization"] == "Bearer t"
        assert sent["Accept"] == wire.OCTET_STREAM

        owners[1] = urls[3]  # an owner that answers for other ids than asked
        rows = run_batch(monkeypatch, remote[:2], owners, table)
        assert [r["status"] for r in rows] == ["unavailable", "unavailable"] and "other ids" in rows[0]["reason"]

        rows = run_batch(monkeypatch, [local[0], remote[0]], owners, table, routed=True)
        assert [r["status"] for r in rows] == ["found", "unavailable"]  # routed: never forwarded again
        rows = run_batch(monkeypatch, [local[0]], owners, table, servable={0: "rebalancing"})
        assert rows == [{"user_id": local[0], "status": "unavailable", "reason": "rebalancing"}]
    finally:
        for s in servers:
            asyncio.run_coroutine_threadsafe(s.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)


def test_readiness_reasons() -> None:
    def app(**kw: Any) -> Any:
        done = SimpleNamespace(is_set=lambda: kw.get("recovered", True))
        return SimpleNamespace(should_stop=kw.get("stopping", False), rebalancing=kw.get("rebalancing", False),
                               in_recovery=False, tables=SimpleNamespace(recovery=SimpleNamespace(completed=done)))

    assert http_api.not_ready_reason(app()) is None
    assert http_api.not_ready_reason(app(recovered=False)) == "recovering tables"
    assert http_api.not_ready_reason(app(rebalancing=True)) == "rebalancing"
    assert http_api.not_ready_reason(app(stopping=True)) == "shutting down"


def test_model_version_needs_the_token() -> None:
    def req(auth: str | None) -> Any:
        return SimpleNamespace(headers={"Authorization": auth} if auth else {})

    assert http_api._authorized(req(None), "")  # no token configured: everyone may know
    assert not http_api._authorized(req(None), "tok")
    assert not http_api._authorized(req("Bearer nope"), "tok")
    assert http_api._authorized(req("Bearer tok"), "tok")


def test_the_token_is_forwarded_only_to_configured_worker_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Owner URLs come from group metadata (anyone who joins the group writes them): issue 14 item 10."""
    trusted, rogue = Owner("ok"), Owner("ok")
    loop = asyncio.new_event_loop()
    servers = loop.run_until_complete(_start(trusted, rogue))
    threading.Thread(target=loop.run_forever, daemon=True).start()
    try:
        urls = [str(s.make_url("")).rstrip("/") for s in servers]
        owners = {0: ME, 1: urls[0], 2: urls[1], 3: None, 4: None, 5: None}
        ids = [users_in(1, 1)[0], users_in(2, 1)[0]]
        rows = run_batch(monkeypatch, ids, owners, {}, api_token="t", worker_urls=f"{ME},{urls[0].upper()}/")
        assert [r["status"] for r in rows] == ["found", "unavailable"]
        assert "DUPN_WORKER_URLS" in rows[1]["reason"]
        assert rogue.calls == []  # never asked: the token did not go there
        assert trusted.calls[0][1]["Authorization"] == "Bearer t"
        rows = run_batch(monkeypatch, ids, owners, {}, api_token="", worker_urls=ME)  # no token: nothing to leak
        assert [r["status"] for r in rows] == ["found", "found"]
    finally:
        for s in servers:
            asyncio.run_coroutine_threadsafe(s.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
