"""The HTTP API over real HTTP against a running worker: token, user ids, request limits, bind address."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.settings import Settings
from core.topics import USER_STATE_TABLE
from ops.harness import free_port, isolated_settings, running_worker, setup_topics
from ops.probes import collect_vectors, http_raw, http_wire, listening_addresses, non_loopback_address, produce
from tests.support.factories import make_events

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token"
GUARDED = [
    "/metrics",
    "/users/u1/vector",
    "/users/u1/vector?at=now&query=shoes",
    "/users/u1/explain",
    "/users/u1/purchasing-power",
    "/users/nobody/vector",
    "/router/",  # Faust's own routes are behind the token too
    "/dashboard/metrics",  # the live page's data (the page itself is open: it holds none)
    "/dashboard/spec",
    "/dashboard/static/unknown.js",
    "/",
    "/no/such/path",
]


@dataclass
class Api:
    s: Settings

    @property
    def url(self) -> str:
        return self.s.http.web_url

    def get(self, path: str, token: str | None = TOKEN, **kw: object) -> int:
        return http_raw(self.url + path, token=token, **kw)[0]  # type: ignore[arg-type]

    def wire(self, request: bytes) -> int:
        return http_wire(self.s.http.web_host, self.s.http.web_port, request)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, broker_url: str, model_dir: Path) -> Iterator[Api]:
    s = isolated_settings(broker_url, tmp_path_factory.mktemp("http"), model_dir, api_token=TOKEN, partitions=2)
    setup_topics(s)
    with running_worker(s):
        produce(s, make_events("u1", 5))
        collect_vectors(s, until=lambda msgs: any(m.user_id == "u1" and m.events_seen == 5 for m in msgs))
        yield Api(s)


@pytest.mark.parametrize("path", GUARDED)
def test_every_route_but_healthz_needs_the_token(api: Api, path: str) -> None:
    assert api.get(path, token=None) == 401
    assert api.get(path, token="wrong") == 401
    assert api.get(path, token=None, headers={"Authorization": TOKEN}) == 401  # no "Bearer "
    assert api.get(path, token=None, headers={"Authorization": f"Basic {TOKEN}"}) == 401
    assert api.get(path) != 401


def test_the_dashboard_page_is_open_but_holds_no_data(api: Api) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{api.url}/dashboard", timeout=10) as resp:  # no token
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/html")
        csp = resp.headers["Content-Security-Policy"]
        assert "<title>dupn-stream" in resp.read().decode()
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    for asset in ("dashboard.js", "uPlot.iife.min.js", "uPlot.min.css", "dashboard.css"):
        assert api.get(f"/dashboard/static/{asset}", token=None) == 200, asset


def test_healthz_is_open_and_the_token_opens_the_api(api: Api) -> None:
    assert api.get("/healthz", token=None) == 200
    assert api.get("/users/u1/vector") == 200
    assert api.get("/users/u1/explain") == 200
    assert api.get("/metrics") == 200
    assert api.get("/users/nobody/vector") == 404


@pytest.mark.parametrize(
    "user_id",
    ["..", "%2e%2e", ".", "x" * 129, "a%00b", "a%0Ab", "a%0D%0Ab", "a%20b", "a%7Fb", "%C3%A9", "a%22b", "a;b", "%25"],
)
def test_bad_user_ids_are_400(api: Api, user_id: str) -> None:
    for route in ("vector", "explain", "purchasing-power"):
        assert api.get(f"/users/{user_id}/{route}") == 400, (user_id, route)


def test_path_traversal_never_reaches_a_user_lookup(api: Api) -> None:
    # a literal ".." is resolved by the HTTP stack before routing: no route matches
    raw = f"GET /users/../metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    assert api.wire(raw) in (400, 404)
    assert api.get("/users/u1/../../metrics") in (400, 404)


def test_bad_query_parameters_are_400(api: Api) -> None:
    assert api.get("/users/u1/vector?query=" + "q" * 257) == 400
    assert api.get("/users/u1/vector?at=yesterday") == 400
    assert api.get("/users/u1/vector?at=%C2%B2") == 400  # "²" is a digit to str.isdigit, not to int()
    assert api.get("/users/u1/vector?at=" + "9" * 16) == 400


def test_oversized_requests_are_refused(api: Api) -> None:
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    assert api.get("/users/u1/vector?query=" + "q" * 3_000) == 414
    huge_url = f"GET /users/u1/vector?q={'x' * 10_000} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode()
    assert api.wire(huge_url) in (400, 414)
    huge_header = f"GET /users/u1/vector HTTP/1.1\r\nHost: x\r\n{auth}X-Junk: {'j' * 10_000}\r\n\r\n".encode()
    assert api.wire(huge_header) in (400, 431)
    many_headers = "".join(f"X-H{i}: v\r\n" for i in range(200))
    assert api.wire(f"GET /users/u1/vector HTTP/1.1\r\nHost: x\r\n{auth}{many_headers}\r\n".encode()) in (400, 431)


def test_request_bodies_are_refused(api: Api) -> None:
    assert api.get("/users/u1/vector", body=b"x" * 10) == 413
    assert api.get("/users/u1/vector", method="POST", body=b"{}") == 413
    chunked = f"GET /users/u1/vector HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n" \
              "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert api.wire(chunked.encode()) == 413
    big = f"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {50 * 1024 * 1024}\r\n\r\n".encode() + b"x" * 65536
    assert api.wire(big) == 413


def test_worker_still_healthy_after_the_abuse(api: Api) -> None:
    assert api.get("/healthz", token=None) == 200
    assert api.get("/users/u1/vector") == 200


def test_default_bind_is_loopback_only(api: Api) -> None:
    assert api.s.http.web_host == "127.0.0.1"  # isolated_settings keeps the default host
    assert listening_addresses(api.s.http.web_port) == {"127.0.0.1"}
    other = non_loopback_address()
    if other is None:
        pytest.skip("this host has no non-loopback IPv4 address to try")
    with pytest.raises(ConnectionRefusedError), socket.create_connection((other, api.s.http.web_port), timeout=5):
        pass


def test_token_is_forwarded_when_a_request_is_routed_to_the_owning_worker(
    tmp_path: Path, broker_url: str, model_dir: Path
) -> None:
    # both workers join before any state exists (adding a worker to a group with state is another test's topic)
    s1 = isolated_settings(broker_url, tmp_path, model_dir, api_token=TOKEN, partitions=2)
    s2 = s1.replace(web_port=free_port(), data_dir=str(tmp_path / "data2"))
    urls = f"{s1.http.web_url},{s2.http.web_url}"  # the token is forwarded only to these (issue 14 item 10)
    s1, s2 = s1.replace(worker_urls=urls), s2.replace(worker_urls=urls)
    setup_topics(s1)
    users = [f"r{k}" for k in range(8)]
    with running_worker(s1), running_worker(s2, name="worker2"):
        first, second = Api(s1), Api(s2)
        for user in users:
            produce(s1, make_events(user, 2))
        deadline = time.monotonic() + 180
        while True:  # until the group has settled and both workers answer for every user
            codes = {(w.url, u): w.get(f"/users/{u}/vector") for w in (first, second) for u in users}
            if set(codes.values()) == {200} or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert set(codes.values()) == {200}, codes
        owners = {_owner(first, u) for u in users}
        assert owners == {s1.http.web_port, s2.http.web_port}, "each worker answered for users the other one owns"
        for w in (first, second):
            assert w.get(f"/users/{users[0]}/vector", token=None) == 401


def _owner(api: Api, user: str) -> int:
    """The web port of the worker that owns the user's state (Faust's /router)."""
    status, body = http_raw(f"{api.url}/router/{USER_STATE_TABLE}/{user}/", token=TOKEN)
    assert status == 200, body
    return int(json.loads(body).rsplit(":", 1)[1].strip("/"))
