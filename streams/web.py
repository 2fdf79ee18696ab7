"""HTTP API of every worker: a user's current vector and its attention explained, health, metrics.

``/users/{user_id}/...`` requests are routed to the worker that owns the user's
partition (:func:`_owner_routed`), so any worker can be asked. While nobody can
answer correctly (a rebalance, the owner restoring its table or shutting down,
the owner gone) the answer is 503 with ``Retry-After``: never another
partition's copy, a standby's, or a 404 for a user not yet restored.

Every request, Faust's own routes included, first passes :func:`request_guard`
(an aiohttp middleware installed through Faust's ``web_application_options``):
bounded URL, no request body (but a bounded one for the batch reads of
:mod:`streams.http_api`), the bearer token when ``DUPN_API_TOKEN`` is set
(all but the probes ``/livez``, ``/readyz``, ``/healthz``), a valid ``{user_id}``. Responses are bounded by
construction: a vector is 256 floats, an explanation at most one window of
behaviors, errors echo only validated input.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from aiohttp import web as aioweb
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core import metrics
from core.wire import BODY_PATHS, MAX_BATCH_BODY_BYTES, ROUTED_HEADER, USER_ID_RE, partition_of
from encoder.explain import explain_behaviors
from encoder.features import query_bucket
from encoder.model import UserContext
from state.store import StateDecodeError
from state.user_state import UserState
from streams.context import Worker
from streams.dashboard import OPEN_PATHS as DASHBOARD_PAGE_PATHS
from streams.dashboard import register_dashboard
from streams.http_metrics import observe_requests
from streams.updater import ReadSnapshot, vector_message

if TYPE_CHECKING:
    from core.settings import Settings
    from encoder.streaming import StreamingEncoder

log = logging.getLogger(__name__)

MAX_QUERY_CHARS = 256
MAX_URL_CHARS = 2048  # path + query; the longest valid request is far below (id 128, query 256 chars)
MAX_HEADER_LINE = 8190  # request line and each header line, enforced by aiohttp's parser (400 beyond)
MAX_HEADERS = 64
# no token: the probes and the data-less dashboard page shell
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", *DASHBOARD_PAGE_PATHS})
RETRY_AFTER_S = 1
FORWARD_TIMEOUT_S = 10.0
Handler = Callable[..., Awaitable[Any]]


def web_application_options(s: Settings) -> dict[str, Any]:
    """Keyword arguments for Faust's aiohttp ``Application``: request limits and the guard."""
    return {
        "client_max_size": MAX_BATCH_BODY_BYTES,  # only the batch reads take a body (request_guard)
        "handler_args": {
            "max_line_size": MAX_HEADER_LINE,
            "max_field_size": MAX_HEADER_LINE,
            "max_headers": MAX_HEADERS,
        },
        "middlewares": [observe_requests(), request_guard(s.http.api_token)],
    }


def request_guard(token: str) -> Any:
    """One gate for every route (ours and Faust's): size, body, token, user id, in that order."""
    expected = f"Bearer {token}".encode()

    @aioweb.middleware
    async def guard(request: aioweb.Request, handler: Handler) -> aioweb.StreamResponse:
        if len(request.raw_path) > MAX_URL_CHARS:
            return _error(414, f"URL longer than {MAX_URL_CHARS} characters")
        if request.content_length or "Transfer-Encoding" in request.headers:
            if request.method != "POST" or request.path not in BODY_PATHS:
                return _error(413, "request bodies are not accepted")
            if request.content_length is None or "Transfer-Encoding" in request.headers:
                return _error(411, "send the body with a Content-Length (no Transfer-Encoding)")
            if request.content_length > MAX_BATCH_BODY_BYTES:
                return _error(413, f"request body over {MAX_BATCH_BODY_BYTES} bytes")
        if token and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, expected):
                return _error(
                    401, "missing or wrong bearer token: send Authorization: Bearer <DUPN_API_TOKEN>",
                    {"WWW-Authenticate": "Bearer"},
                )
        user_id = request.match_info.get("user_id")
        if user_id is not None and not USER_ID_RE.match(user_id):
            return _error(400, "invalid user id (1-128 of A-Z a-z 0-9 _ . : @ ~ -, not only dots)")
        return await handler(request)

    return guard


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> aioweb.Response:
    return aioweb.json_response({"error": message}, status=status, headers=headers)


def register_views(w: Worker) -> None:
    app = w.app
    if not w.settings.http.api_token and not _is_loopback(w.settings.http.web_host):
        log.warning(
            "HTTP API on %s without DUPN_API_TOKEN: anyone who can reach port %d can read user vectors; "
            "set DUPN_API_TOKEN or DUPN_WEB_HOST=127.0.0.1",
            w.settings.http.web_host, w.settings.http.web_port,
        )

    @app.page("/metrics")
    async def prometheus(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    register_dashboard(w)
    if w.table is not None:
        _register_vector_view(w)
    if w.ppp_table is not None:
        _register_ppp_view(w)


def _register_vector_view(w: Worker) -> None:
    app = w.app

    @app.page("/users/{user_id}/vector")
    @_owner_routed(w, w.table)
    async def user_vector(web: Any, request: Any, user_id: str) -> Any:
        return await vector_view(w, web, request, user_id)

    @app.page("/users/{user_id}/explain")
    @_owner_routed(w, w.table)
    async def user_explain(web: Any, request: Any, user_id: str) -> Any:
        return await explain_view(w, web, request, user_id)


async def vector_view(w: Worker, web: Any, request: Any, user_id: str) -> Any:
    """``GET /users/{user_id}/vector`` on the user's owner, from the user-state store."""
    state, error = _local_state(w, user_id)
    if state is None:
        return error(web)
    at, query = request.query.get("at"), request.query.get("query")
    if at is None and query is None:
        body: dict[str, Any] | str = vector_body(w, state, at, query)
    else:  # a re-pool: torch, bounded in number, off the event loop and off the batch lock
        limited = await _repool_read(w, web, lambda snap: vector_body(w, state, at, query, snap), state)
        if not isinstance(limited, _Answer):
            return limited
        body = limited.body
    if isinstance(body, str):
        return web.json({"error": body}, status=400)
    metrics.VECTOR_AGE.labels(source="served").observe(max(0.0, time.time() - state.updated_at / 1000))
    return web.json(body)


async def explain_view(w: Worker, web: Any, request: Any, user_id: str) -> Any:
    """``GET /users/{user_id}/explain`` on the user's owner, from the user-state store."""
    state, error = _local_state(w, user_id)
    if state is None:
        return error(web)
    at, query = request.query.get("at"), request.query.get("query")
    limited = await _repool_read(w, web, lambda snap: explain_body(w, state, at, query, snap), state)
    if not isinstance(limited, _Answer):
        return limited
    if isinstance(limited.body, str):
        return web.json({"error": limited.body}, status=400)
    return web.json(limited.body)


# -- reads that run the encoder (issue 14 item 8) -----------------------------------------------------
# A re-pool or an explanation runs torch. They used to run on the event loop holding the batch lock
# (ingestion waited for every read) and to fill the updater's cache with rebuilt states (evicting the
# users the batches keep hot). Now: at most DUPN_HTTP_MAX_CONCURRENT_READS at once per worker (429 +
# Retry-After past it), the batch lock held only to copy what the read needs (the cached carried state,
# if any: never inserted), the computing done in a thread of its own.
_READ_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dupn-read")
_READS_ACTIVE: weakref.WeakKeyDictionary[Any, list[int]] = weakref.WeakKeyDictionary()
READ_RETRY_AFTER_S = 1


@dataclass(frozen=True)
class _Answer:
    body: dict[str, Any] | str


async def _repool_read(
    w: Worker, web: Any, compute: Callable[[ReadSnapshot], dict[str, Any] | str], state: UserState
) -> Any:
    """``compute`` on a snapshot, in the read threads; a 429 answer when too many run already."""
    active = _READS_ACTIVE.setdefault(w.runtime, [0])
    if active[0] >= w.settings.http.http_max_concurrent_reads:
        metrics.HTTP_READS_REFUSED.inc()
        return web.json(
            {"error": "too many re-pooling reads at once; retry", "retry_after_s": READ_RETRY_AFTER_S},
            status=429, headers={"Retry-After": str(READ_RETRY_AFTER_S)},
        )
    active[0] += 1
    try:
        async with w.runtime.batch_lock:  # only to copy: a batch must not advance the cached state meanwhile
            snap = w.runtime.updater.read_snapshot(state)
        body = await asyncio.get_running_loop().run_in_executor(_READ_THREADS, compute, snap)
        return _Answer(body)
    finally:
        active[0] -= 1


def _register_ppp_view(w: Worker) -> None:
    app = w.app

    @app.page("/users/{user_id}/purchasing-power")
    @_owner_routed(w, w.ppp_table)
    async def user_purchasing_power(web: Any, request: Any, user_id: str) -> Any:
        raw = w.ppp_table.get(user_id.encode("utf-8"))
        if raw is None:
            return web.json({"error": f"unknown user {user_id!r}"}, status=404)
        return web.json(json.loads(bytes(raw)))


def _owner_routed(w: Worker, table: Any) -> Callable[[Handler], Handler]:
    """Answer here if this worker is the recovered active owner of the user's partition, else forward once.

    Faust's ``table_route`` forwards by the last assignment it saw and answers
    locally whenever that names this worker: mid-rebalance that can be a revoked
    or still-recovering partition (a 404 or an old value), and a dead owner gives
    a 500. Here every such case is a 503 with ``Retry-After``.
    """
    app = w.app
    topic = table.changelog_topic.get_topic_name()

    def wrap(fun: Handler) -> Handler:
        async def routed(view: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            partition = partition_of(request.match_info["user_id"].encode("utf-8"), w.settings.kafka.partitions)
            owner = _active_owner(app, topic, partition)
            if owner is None:
                return unavailable(view.web, f"partition {partition} has no owner yet (rebalancing)")
            if owner == str(app.conf.canonical_url):
                reason = _not_servable_here(app, topic, partition)
                if reason:
                    return unavailable(view.web, reason)
                return await fun(view, request, *args, **kwargs)
            if request.headers.get(ROUTED_HEADER):
                return unavailable(view.web, f"ownership of partition {partition} is moving")
            if not may_forward_to(w.settings, owner):
                return unavailable(view.web, untrusted_owner(owner))
            return await _forward(app, owner, view.web, request)

        routed.__name__ = fun.__name__
        return routed

    return wrap


def _norm_url(url: str) -> str:
    return url.strip().rstrip("/").lower()


def may_forward_to(s: Settings, owner: str) -> bool:
    """Whether a request (and its bearer token) may be forwarded to ``owner``.

    Owner URLs come from consumer-group metadata, which anything that can join the group
    writes: with ``DUPN_API_TOKEN`` set, the token goes only to a worker listed in
    ``DUPN_WORKER_URLS`` (or to this worker itself). Without a token there is nothing to leak.
    """
    if not s.http.api_token:
        return True
    trusted = {_norm_url(u) for u in s.http.worker_urls.split(",") if u.strip()}
    return _norm_url(owner) in trusted


def untrusted_owner(owner: str) -> str:
    log.warning("not forwarding to owner %s: it is not in DUPN_WORKER_URLS (the token goes only there)", owner[:200])
    return f"owner {owner[:200]} is not a configured worker (DUPN_WORKER_URLS)"


def _active_owner(app: Any, topic: str, partition: int) -> str | None:
    """URL of the worker the latest assignment made active owner of the partition (None: unknown)."""
    for url, tps in app.router.tables_metadata().items():
        if partition in tps.get(topic, ()):
            return str(url)
    return None


def _not_servable_here(app: Any, topic: str, partition: int) -> str | None:
    """Why this worker must not answer from its table for the partition now (None: it may)."""
    if app.should_stop:  # the tables close before the web server does
        return "shutting down"
    if app.rebalancing or app.in_recovery:
        return "rebalancing: the table is being recovered"
    if not any(tp.topic == topic and tp.partition == partition for tp in app.assignor.assigned_actives()):
        return f"partition {partition} is not active on this worker"
    return None


async def _forward(app: Any, owner: str, web: Any, request: Any) -> Any:
    """Ask the owner once (marked, so a disagreeing owner answers 503 instead of bouncing it back)."""
    import aiohttp
    from yarl import URL

    dest = URL(owner)
    url = request.url.with_scheme(dest.scheme or "http").with_host(dest.host or "127.0.0.1").with_port(dest.port)
    headers = {ROUTED_HEADER: str(app.conf.canonical_url)}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    try:
        async with app.http_client.request(
            method=request.method, url=url, headers=headers, timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)
        ) as resp:
            body = await resp.read()
            passed = {"Retry-After": resp.headers["Retry-After"]} if "Retry-After" in resp.headers else None
            return web.bytes(body, content_type=resp.content_type, status=resp.status, headers=passed)
    except (TimeoutError, aiohttp.ClientError) as exc:
        return unavailable(web, f"owner {owner} did not answer ({type(exc).__name__})")


def unavailable(web: Any, reason: str) -> Any:
    return web.json({"error": reason, "retry_after_s": RETRY_AFTER_S}, status=503,
                    headers={"Retry-After": str(RETRY_AFTER_S)})


def vector_body(
    w: Worker, state: UserState, at: str | None, query: str | None = None, snap: ReadSnapshot | None = None
) -> dict[str, Any] | str:
    """The last published vector, or one re-pooled as of ``at`` and/or for a query (no LSTM step).

    With ``query`` the attention is re-pooled with that query's embedding as of ``at``
    (default: the last event time, like the published vector): a ranker's query-aware user part.
    """
    body = vector_message(state).to_json()
    body.pop("vector_b64")
    now_ms = int(time.time() * 1000)
    body["age_ms"] = max(0, now_ms - state.updated_at)
    if at is None and not query:
        body["as_of"] = state.last_event_ts
        body["vector"] = [float(x) for x in state.vector] if state.vector is not None else []
        return body
    snap = snap or w.runtime.updater.read_snapshot(state)
    enc = snap.encoder
    parsed = _repool_args(enc, state, at, query, now_ms)
    if isinstance(parsed, str):
        return parsed
    as_of, context, extra = parsed
    body.update(extra)
    vec = enc.represent([snap.encoder_state()], [as_of], context)[0]
    body.update(as_of=as_of, model_version=enc.model_version, vector=[float(x) for x in vec])
    return body


def explain_body(
    w: Worker, state: UserState, at: str | None, query: str | None = None, snap: ReadSnapshot | None = None
) -> dict[str, Any] | str:
    """The attention weights behind a user's vector, one row per window behavior (oldest first).

    α comes from the same encoder state, time and query context as ``vector_body``
    would use, so the rows explain exactly the vector ``/vector`` returns with the
    same ``at`` / ``query``. Item and category appear as hashes only: the store
    never keeps raw ids.
    """
    snap = snap or w.runtime.updater.read_snapshot(state)
    enc = snap.encoder
    parsed = _repool_args(enc, state, at, query, int(time.time() * 1000))
    if isinstance(parsed, str):
        return parsed
    as_of, context, extra = parsed
    enc_state = snap.encoder_state()
    alpha = enc.attention_weights(enc_state, as_of, context) if enc_state.length else np.zeros(0, np.float32)
    records = state.window(enc_state.length) if enc_state.length else state.records[:0]
    return {
        "user_id": state.user_id,
        "model_version": enc.model_version,
        "events_seen": state.events_seen,
        "as_of": as_of,
        **extra,
        "behaviors": explain_behaviors(records, alpha, as_of),
    }


def _repool_args(
    enc: StreamingEncoder, state: UserState, at: str | None, query: str | None, now_ms: int
) -> tuple[int, UserContext | None, dict[str, Any]] | str:
    """(as_of, attention context, fields to echo) for ``?at=`` / ``?query=``, or an error message.

    Shared by ``/vector`` and ``/explain`` so both re-pool with the same time and query bucket.
    """
    as_of = state.last_event_ts if at is None else now_ms if at == "now" else _parse_ms(at)
    if as_of is None:
        return "at must be 'now' or epoch milliseconds"
    if query is not None and not 0 < len(query) <= MAX_QUERY_CHARS:
        return f"query must be 1-{MAX_QUERY_CHARS} characters"
    if not query:
        return as_of, None, {}
    bucket = query_bucket(query, enc.cfg.query_buckets)
    context = UserContext(query=torch.tensor([bucket], dtype=torch.int64))
    return as_of, context, {"query": query, "query_bucket": bucket}


def _local_state(w: Worker, user_id: str) -> tuple[UserState | None, Callable[[Any], Any]]:
    """The user's state in this worker's copy of the user's partition (the owner routing checked it is active)."""
    if w.store is None:
        raise RuntimeError("this worker has no user-state store (no 'vectors' role)")
    try:
        state = w.store.read(user_id, partition_of(user_id.encode("utf-8"), w.settings.kafka.partitions))
    except StateDecodeError as exc:
        message = str(exc)
        return None, lambda web: web.json({"error": message}, status=500)
    if state is None:
        return None, lambda web: web.json({"error": f"unknown user {user_id!r}"}, status=404)
    return state, lambda web: None


def _parse_ms(raw: str) -> int | None:
    return int(raw) if raw.isascii() and raw.isdecimal() and len(raw) <= 15 else None


def _model_version(w: Worker) -> str | None:
    updater = w.runtime._updater
    return updater.encoder.model_version if updater is not None else None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
