"""Serving routes beyond one user's vector: batch reads, owner metadata, probes, the OpenAPI document.

- ``POST /vectors``: many users' published vectors in one request (``core.wire`` limits), one result per
  id, in order, each with a status (``found``, ``not_found``, ``stale``, ``unavailable``, ``error``). Ids
  owned by other workers are grouped per owner and asked for in parallel, one sub-request each, marked with
  ``ROUTED_HEADER`` so the owner answers for itself; an owner that fails makes its ids ``unavailable``,
  never the whole request.
- ``POST /get-online-features``: the same read in Feast's request/response shape.
- ``Accept: application/octet-stream`` on the batch reads and on ``GET /users/{id}/vector`` gives the binary
  form of ``core.wire`` (:func:`binary_answers` converts the single read's JSON answer).
- ``GET /owners``: partition -> URL of the worker that owns it, for clients that route themselves.
- ``GET /livez`` (the process and its event loop answer), ``GET /readyz`` and its alias ``/healthz``
  (tables recovered, no rebalance running): open without a token, the model version only with it.
- ``GET /openapi.json``: :mod:`streams.openapi`'s document (committed as ``docs/openapi.json``).

State is read only through :func:`_read_local`.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from aiohttp import web as aioweb
from faust.web import View

from core import metrics, wire
from core.topics import USER_STATE_TABLE
from state.store import StateDecodeError
from state.user_state import UserState
from streams.openapi import openapi_document
from streams.web import (
    FORWARD_TIMEOUT_S,
    RETRY_AFTER_S,
    Handler,
    _active_owner,
    _model_version,
    _not_servable_here,
    may_forward_to,
    untrusted_owner,
    web_application_options,
)

if TYPE_CHECKING:
    from core.settings import Settings
    from streams.context import Worker

FEAST_VIEW, FEAST_FEATURES = wire.FEAST_VIEW, wire.FEAST_FEATURES
FEAST_STATUS = {
    wire.FOUND: "PRESENT",
    wire.NOT_FOUND: "NOT_FOUND",
    wire.STALE: "OUTSIDE_MAX_AGE",
    wire.UNAVAILABLE: "INVALID",
    wire.ERROR: "INVALID",
}
MAX_REASON_CHARS = 200


def application_options(s: Settings) -> dict[str, Any]:
    """:func:`streams.web.web_application_options` plus the binary form of the single vector read."""
    opts = web_application_options(s)
    opts["middlewares"] = [*opts["middlewares"], binary_answers]
    return opts


def register_http_api(w: Worker) -> None:
    app = w.app
    token = w.settings.http.api_token

    @app.page("/livez")
    async def livez(web: Any, request: Any) -> Any:
        if app.should_stop:
            return web.json({"status": "stopping"}, status=503)
        return web.json({"status": "alive"})  # this handler ran: the event loop is responsive

    async def ready(web: Any, request: Any) -> Any:
        reason = not_ready_reason(app)
        body: dict[str, Any] = {"status": "starting" if reason else "ok"}
        if reason:
            body["reason"] = reason
        if _authorized(request, token):
            body["model_version"] = _model_version(w)
        return web.json(body, status=503 if reason else 200)

    app.page("/readyz", name="readyz")(ready)
    app.page("/healthz", name="healthz")(ready)

    @app.page("/openapi.json")
    async def openapi(web: Any, request: Any) -> Any:
        return web.json(openapi_document())

    if w.table is None:
        return

    @app.page(wire.OWNERS_PATH)
    async def owners(web: Any, request: Any) -> Any:
        topic = w.table.changelog_topic.get_topic_name()
        parts = w.settings.kafka.partitions
        return web.json({
            "table": USER_STATE_TABLE,
            "partitions": parts,
            "partitioner": "murmur2",
            "self": str(app.conf.canonical_url),
            "ready": not_ready_reason(app) is None,
            "owners": [_active_owner(app, topic, p) for p in range(parts)],
        })

    class BatchVectors(View):
        async def post(self, request: Any) -> Any:
            parsed = await _batch_request(request)
            if isinstance(parsed, str):
                return self.json({"error": parsed}, status=400)
            ids, max_age_ms = parsed
            rows = await batch_read(w, ids, max_age_ms, request)
            return _batch_answer(self, request, rows)

    class FeastOnlineFeatures(View):
        async def post(self, request: Any) -> Any:
            parsed = await _feast_request(request)
            if isinstance(parsed, str):
                return self.json({"error": parsed}, status=400)
            ids, features, full_names, max_age_ms = parsed
            rows = await batch_read(w, ids, max_age_ms, request)
            return self.json(_feast_answer(ids, rows, features, full_names))

    app.page(wire.BATCH_PATH, name="batch_vectors")(BatchVectors)
    app.page(wire.FEAST_PATH, name="get_online_features")(FeastOnlineFeatures)


def not_ready_reason(app: Any) -> str | None:
    """Why this worker can't serve yet (None: ready): tables not recovered, a rebalance, shutting down."""
    if app.should_stop:
        return "shutting down"
    recovery = getattr(app.tables, "recovery", None)
    if recovery is None or not recovery.completed.is_set():
        return "recovering tables"
    if app.rebalancing or app.in_recovery:
        return "rebalancing"
    return None


def _authorized(request: Any, token: str) -> bool:
    if not token:
        return True
    given = request.headers.get("Authorization", "").encode("utf-8", "replace")
    return hmac.compare_digest(given, f"Bearer {token}".encode())


# -- reading -------------------------------------------------------------------------------------------
def _read_local(w: Worker, user_id: str) -> UserState | None:
    """The user's state in this worker's copy of its partition (None: unknown), through the user-state store.

    The one place this module reads state; raises :class:`StateDecodeError` for an undecodable record."""
    if w.store is None:
        raise RuntimeError("this worker has no user-state store (no 'vectors' role)")
    return w.store.read(user_id, wire.partition_of(user_id.encode("utf-8"), w.settings.kafka.partitions))


def _local_row(w: Worker, user_id: str, max_age_ms: int | None, now_ms: int) -> dict[str, Any]:
    try:
        state = _read_local(w, user_id)
    except StateDecodeError as exc:
        return {"user_id": user_id, "status": wire.ERROR, "reason": str(exc)[:MAX_REASON_CHARS]}
    if state is None or state.vector is None:
        return {"user_id": user_id, "status": wire.NOT_FOUND}
    age_ms = max(0, now_ms - state.updated_at)
    metrics.VECTOR_AGE.labels(source="served").observe(age_ms / 1000)
    stale = max_age_ms is not None and age_ms > max_age_ms
    vector = np.asarray(state.vector, dtype=np.float32)
    return {
        "user_id": user_id,
        "status": wire.STALE if stale else wire.FOUND,
        "model_version": state.model_version,
        "events_seen": state.events_seen,
        "last_event_id": state.last_event_id,
        "last_event_ts": state.last_event_ts,
        "updated_at": state.updated_at,
        "age_ms": age_ms,
        "dim": int(vector.shape[0]),
        "vector": vector,
    }


def _unavailable(user_id: str, reason: str) -> dict[str, Any]:
    return {"user_id": user_id, "status": wire.UNAVAILABLE, "reason": reason[:MAX_REASON_CHARS]}


async def batch_read(w: Worker, ids: list[str], max_age_ms: int | None, request: Any) -> list[dict[str, Any]]:
    """One row per id, in order: local ids read here, the others asked of their owners in parallel.

    A request marked with ``ROUTED_HEADER`` was forwarded by another worker: ids this worker
    can't answer itself are ``unavailable`` (never forwarded again).
    """
    app = w.app
    topic = w.table.changelog_topic.get_topic_name()
    me = str(app.conf.canonical_url)
    routed = bool(request.headers.get(wire.ROUTED_HEADER))
    now_ms = int(time.time() * 1000)
    rows: list[dict[str, Any] | None] = [None] * len(ids)
    remote: dict[str, list[int]] = defaultdict(list)
    owner_of: dict[int, str | None] = {}
    local_reason: dict[int, str | None] = {}
    for i, user_id in enumerate(ids):
        p = wire.partition_of(user_id.encode("utf-8"), w.settings.kafka.partitions)
        if p not in owner_of:
            owner_of[p] = _active_owner(app, topic, p)
        owner = owner_of[p]
        if owner is None:
            rows[i] = _unavailable(user_id, f"partition {p} has no owner yet (rebalancing)")
        elif owner == me:
            if p not in local_reason:
                local_reason[p] = _not_servable_here(app, topic, p)
            reason = local_reason[p]
            rows[i] = _unavailable(user_id, reason) if reason else _local_row(w, user_id, max_age_ms, now_ms)
        elif routed:
            rows[i] = _unavailable(user_id, f"ownership of partition {p} is moving")
        elif not may_forward_to(w.settings, owner):
            rows[i] = _unavailable(user_id, untrusted_owner(owner))
        else:
            remote[owner].append(i)
    if remote:
        auth = request.headers.get("Authorization")
        answers = await asyncio.gather(
            *(_ask_owner(app, owner, [ids[i] for i in idx], max_age_ms, auth) for owner, idx in remote.items())
        )
        for idx, answer in zip(remote.values(), answers, strict=True):
            for i, row in zip(idx, answer, strict=True):
                rows[i] = row
    return [row for row in rows if row is not None]


async def _ask_owner(
    app: Any, owner: str, ids: list[str], max_age_ms: int | None, auth: str | None
) -> list[dict[str, Any]]:
    """The owner's rows for ``ids`` (binary sub-request, marked as routed); all ``unavailable`` if it fails."""
    import aiohttp

    headers = {wire.ROUTED_HEADER: str(app.conf.canonical_url), "Accept": wire.OCTET_STREAM}
    if auth:
        headers["Authorization"] = auth
    body: dict[str, Any] = {"user_ids": ids}
    if max_age_ms is not None:
        body["max_age_ms"] = max_age_ms
    try:
        async with app.http_client.post(
            owner.rstrip("/") + wire.BATCH_PATH, data=orjson.dumps(body),
            headers={**headers, "Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S),
        ) as resp:
            raw = await resp.read()
            if resp.status != 200:
                return [_unavailable(u, f"owner {owner} answered HTTP {resp.status}") for u in ids]
        meta, vectors = wire.decode_vectors(raw)
    except (TimeoutError, aiohttp.ClientError, wire.WireError) as exc:
        return [_unavailable(u, f"owner {owner} did not answer ({type(exc).__name__})") for u in ids]
    results = meta["results"]
    if [r.get("user_id") for r in results] != ids:
        return [_unavailable(u, f"owner {owner} answered for other ids") for u in ids]
    for row, vec in zip(results, vectors, strict=True):
        if row["status"] in wire.WITH_VECTOR:
            row["vector"] = vec
    return list(results)


# -- requests and answers ------------------------------------------------------------------------------
async def _json_body(request: Any) -> Any:
    raw = await request.read()  # bounded: request_guard and client_max_size (core.wire.MAX_BATCH_BODY_BYTES)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _BAD_JSON


_BAD_JSON = object()


def _check_ids(ids: Any, what: str) -> list[str] | str:
    if not isinstance(ids, list):
        return f"{what} must be a list of user ids"
    if len(ids) > wire.MAX_BATCH_IDS:
        return f"{what}: {len(ids)} ids > {wire.MAX_BATCH_IDS} per request"
    for i, user_id in enumerate(ids):
        if not isinstance(user_id, str) or not 0 < len(user_id) <= wire.MAX_BATCH_ID_CHARS:
            return f"{what}[{i}] must be a string of 1-{wire.MAX_BATCH_ID_CHARS} characters"
    return ids


def _check_max_age(value: Any) -> int | str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= wire.MAX_AGE_MS_LIMIT:
        return f"max_age_ms must be an integer 0-{wire.MAX_AGE_MS_LIMIT}"
    return value


async def _batch_request(request: Any) -> tuple[list[str], int | None] | str:
    doc = await _json_body(request)
    if not isinstance(doc, dict):
        return 'body must be a JSON object {"user_ids": [...], "max_age_ms": optional}'
    ids = _check_ids(doc.get("user_ids"), "user_ids")
    if isinstance(ids, str):
        return ids
    max_age = _check_max_age(doc.get("max_age_ms"))
    return max_age if isinstance(max_age, str) else (ids, max_age)


def _batch_answer(view: Any, request: Any, rows: list[dict[str, Any]]) -> Any:
    extra: dict[str, Any] = {"count": len(rows)}
    if any(r["status"] == wire.UNAVAILABLE for r in rows):
        extra["retry_after_s"] = RETRY_AFTER_S
    if wire.prefers_binary(request.headers.get("Accept", "")):
        return view.bytes(wire.encode_vectors(rows, extra), content_type=wire.OCTET_STREAM)
    return view.json({**extra, "results": [_json_row(r) for r in rows]})


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    if "vector" not in row:
        return row
    return {**row, "vector": np.asarray(row["vector"], np.float32).tolist()}


async def _feast_request(request: Any) -> tuple[list[str], list[str], bool, int | None] | str:
    doc = await _json_body(request)
    if not isinstance(doc, dict):
        return 'body must be a JSON object {"features": [...], "entities": {"user_id": [...]}}'
    entities = doc.get("entities")
    if not isinstance(entities, dict) or set(entities) != {"user_id"}:
        return 'entities must be {"user_id": [...]}'
    ids = _check_ids(entities["user_id"], "entities.user_id")
    if isinstance(ids, str):
        return ids
    names = doc.get("features", [f"{FEAST_VIEW}:{f}" for f in FEAST_FEATURES])
    if not isinstance(names, list) or not names:
        return "features must be a non-empty list"
    features = []
    for name in names:
        view, _, feature = name.partition(":") if isinstance(name, str) else ("", "", "")
        if view != FEAST_VIEW or feature not in FEAST_FEATURES:
            return f"features are {FEAST_VIEW}:<one of {', '.join(FEAST_FEATURES)}>"
        features.append(feature)
    max_age = _check_max_age(doc.get("max_age_ms"))
    if isinstance(max_age, str):
        return max_age
    return ids, features, bool(doc.get("full_feature_names", False)), max_age


def _feast_answer(ids: list[str], rows: list[dict[str, Any]], features: list[str], full: bool) -> dict[str, Any]:
    """Feast's ``get-online-features`` answer: one column per feature (the entity first), values per id."""
    statuses = [FEAST_STATUS[r["status"]] for r in rows]
    stamps = [_iso(r.get("last_event_ts", 0)) for r in rows]
    entity = {"values": list(ids), "statuses": ["PRESENT"] * len(ids), "event_timestamps": [_iso(0)] * len(ids)}
    columns: list[dict[str, list[Any]]] = [entity]
    for feature in features:
        values = [
            (_json_row(r)["vector"] if feature == "vector" else r.get(feature)) if r["status"] in wire.WITH_VECTOR
            else None
            for r in rows
        ]
        columns.append({"values": values, "statuses": statuses, "event_timestamps": stamps})
    names = ["user_id", *(f"{FEAST_VIEW}__{f}" if full else f for f in features)]
    return {"metadata": {"feature_names": names}, "results": columns}


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


# -- the binary form of the single read ----------------------------------------------------------------
@aioweb.middleware
async def binary_answers(request: aioweb.Request, handler: Handler) -> aioweb.StreamResponse:
    """``GET /users/{id}/vector`` with ``Accept: application/octet-stream``: its 200 answer in ``core.wire`` form.

    Converting here (after routing) covers answers forwarded from the owner too; errors stay JSON.
    JSON floats print float32 values exactly, so the binary rows equal the JSON answer bit for bit.
    """
    response = await handler(request)
    if (
        request.method != "GET"
        or not request.path.endswith("/vector")
        or request.match_info.get("user_id") is None
        or not wire.prefers_binary(request.headers.get("Accept", ""))
        or response.status != 200
        or not isinstance(response, aioweb.Response)
        or response.content_type != "application/json"
        or not isinstance(response.body, bytes)
    ):
        return response
    doc = orjson.loads(response.body)
    row = {**doc, "status": wire.FOUND, "vector": doc.get("vector") or []}
    return aioweb.Response(body=wire.encode_vectors([row]), content_type=wire.OCTET_STREAM)
