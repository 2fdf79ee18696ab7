"""The OpenAPI 3.1 document of a worker's HTTP API, built from code (served at ``/openapi.json``).

``docs/openapi.json`` is this document, committed; ``tests/unit/test_openapi.py`` fails when they differ.
Regenerate with ``python -m streams.openapi > docs/openapi.json``.
"""

from __future__ import annotations

import json
from typing import Any

from core import wire
from core.contracts import MAX_ID_CHARS
from streams import dashboard

API_VERSION = "1.0.0"

_ERROR = {"$ref": "#/components/schemas/Error"}
_JSON = "application/json"


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {_JSON: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "invalid user id, parameter or body (the message says which; it echoes only validated input)",
        401: "missing or wrong bearer token (only when DUPN_API_TOKEN is set)",
        404: "unknown user",
        411: "a body sent without Content-Length",
        413: "a body on a route that takes none, or over the limit",
        414: "URL longer than 2,048 characters",
        500: "the user's stored state failed to decode",
    }
    out = {str(c): _json(_ERROR, text[c]) for c in codes}
    if 401 in codes:
        out["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}}
    return out


def _unavailable() -> dict[str, Any]:
    return {
        "503": _json(
            {"$ref": "#/components/schemas/Unavailable"},
            "nobody can answer correctly now (a rebalance, the owner restoring, shutting down or gone): retry later",
            {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}},
        )
    }


_USER_ID = {
    "name": "user_id", "in": "path", "required": True,
    "schema": {"type": "string", "pattern": wire.USER_ID_RE.pattern, "maxLength": 128},
}
_AT = {
    "name": "at", "in": "query", "required": False,
    "description": "re-pool attention as of 'now' or this epoch ms (no LSTM step); default: the last event time",
    "schema": {"type": "string", "pattern": r"^(now|[0-9]{1,15})$"},
}
_QUERY = {
    "name": "query", "in": "query", "required": False,
    "description": "re-pool with this category or query in the attention context (a ranker's query-aware part)",
    "schema": {"type": "string", "minLength": 1, "maxLength": 256},
}
_OPEN: list[dict[str, list[str]]] = []  # no token needed


def _schemas() -> dict[str, Any]:
    row_props: dict[str, Any] = {
        "user_id": {"type": "string"},
        "status": {"enum": list(wire.STATUSES)},
        "model_version": {"type": "string"},
        "events_seen": {"type": "integer"},
        "last_event_id": {"type": "string"},
        "last_event_ts": {"type": "integer", "description": "epoch ms of the user's last applied event"},
        "updated_at": {"type": "integer", "description": "epoch ms when the vector was computed"},
        "age_ms": {"type": "integer", "description": "now - updated_at"},
        "dim": {"type": "integer"},
        "vector": {"type": "array", "items": {"type": "number"}, "description": "only for found and stale"},
        "reason": {"type": "string", "description": "why unavailable or error"},
    }
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Unavailable": {
            "type": "object", "required": ["error", "retry_after_s"],
            "properties": {"error": {"type": "string"}, "retry_after_s": {"type": "integer"}},
        },
        "Vector": {
            "type": "object",
            "required": ["schema_version", "user_id", "model_version", "dim", "events_seen", "last_event_id",
                         "last_event_ts", "updated_at", "age_ms", "as_of", "vector"],
            "properties": {
                "schema_version": {"const": 1}, "user_id": {"type": "string"}, "model_version": {"type": "string"},
                "dim": {"type": "integer"}, "events_seen": {"type": "integer"}, "last_event_id": {"type": "string"},
                "last_event_ts": {"type": "integer"}, "updated_at": {"type": "integer"}, "age_ms": {"type": "integer"},
                "as_of": {"type": "integer", "description": "the time the attention was pooled as of (epoch ms)"},
                "query": {"type": "string"}, "query_bucket": {"type": "integer"},
                "vector": {"type": "array", "items": {"type": "number"}},
            },
        },
        "BatchRequest": {
            "type": "object", "required": ["user_ids"],
            "properties": {
                "user_ids": {
                    "type": "array", "maxItems": wire.MAX_BATCH_IDS,
                    "items": {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS},
                },
                "max_age_ms": {
                    "type": "integer", "minimum": 0, "maximum": wire.MAX_AGE_MS_LIMIT,
                    "description": "a vector older than this (now - updated_at) is 'stale' (still returned)",
                },
            },
        },
        "BatchRow": {"type": "object", "required": ["user_id", "status"], "properties": row_props},
        "BatchAnswer": {
            "type": "object", "required": ["count", "results"],
            "properties": {
                "count": {"type": "integer"},
                "retry_after_s": {"type": "integer", "description": "present when a row is unavailable"},
                "results": {"type": "array", "items": {"$ref": "#/components/schemas/BatchRow"}},
            },
        },
        "FeastRequest": {
            "type": "object", "required": ["entities"],
            "properties": {
                "features": {
                    "type": "array", "items": {"enum": [f"{wire.FEAST_VIEW}:{f}" for f in wire.FEAST_FEATURES]},
                },
                "entities": {
                    "type": "object", "required": ["user_id"], "additionalProperties": False,
                    "properties": {"user_id": {"$ref": "#/components/schemas/BatchRequest/properties/user_ids"}},
                },
                "full_feature_names": {"type": "boolean"},
                "max_age_ms": {"$ref": "#/components/schemas/BatchRequest/properties/max_age_ms"},
            },
        },
        "FeastAnswer": {
            "type": "object",
            "properties": {
                "metadata": {"type": "object", "properties": {"feature_names": {"type": "array"}}},
                "results": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "values": {"type": "array"},
                            "statuses": {
                                "type": "array",
                                "items": {"enum": ["PRESENT", "NOT_FOUND", "OUTSIDE_MAX_AGE", "INVALID"]},
                            },
                            "event_timestamps": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                },
            },
        },
        "Owners": {
            "type": "object",
            "properties": {
                "table": {"type": "string"}, "partitions": {"type": "integer"}, "partitioner": {"const": "murmur2"},
                "self": {"type": "string"}, "ready": {"type": "boolean"},
                "owners": {"type": "array", "items": {"type": ["string", "null"]},
                           "description": "per partition: URL of the worker owning it (null: none yet)"},
            },
        },
        "Probe": {
            "type": "object", "required": ["status"],
            "properties": {
                "status": {"enum": ["alive", "stopping", "ok", "starting"]},
                "reason": {"type": "string"},
                "model_version": {"type": ["string", "null"], "description": "only with a valid token (or none set)"},
            },
        },
    }



_BINARY_NOTE = (
    "With Accept: application/octet-stream: the binary form (core/wire.py): magic 'DUPV', u16 version 1, "
    "u16 flags, u32 count, u32 dim, u32 meta_len, count status bytes (0 found, 1 not_found, 2 stale, "
    "3 unavailable, 4 error), meta_len bytes of JSON metadata ({'results': rows without 'vector', ...}), "
    "zero padding to a multiple of 4, then count*dim little-endian float32 (zeros for rows without a vector)."
)


def openapi_document() -> dict[str, Any]:
    vector_ok = {
        "description": "the user's vector. " + _BINARY_NOTE,
        "content": {
            _JSON: {"schema": {"$ref": "#/components/schemas/Vector"}},
            wire.OCTET_STREAM: {"schema": {"type": "string", "contentMediaType": wire.OCTET_STREAM}},
        },
    }
    batch_ok = {
        "description": "one row per requested id, in order. " + _BINARY_NOTE,
        "content": {
            _JSON: {"schema": {"$ref": "#/components/schemas/BatchAnswer"}},
            wire.OCTET_STREAM: {"schema": {"type": "string", "contentMediaType": wire.OCTET_STREAM}},
        },
    }
    body_errors = _errors(400, 401, 411, 413, 414)
    probe = {"$ref": "#/components/schemas/Probe"}
    paths: dict[str, Any] = {
        "/users/{user_id}/vector": {"get": {
            "summary": "a user's current vector (routed to the owner)", "operationId": "getVector",
            "parameters": [_USER_ID, _AT, _QUERY],
            "responses": {"200": vector_ok, **_errors(400, 401, 404, 414, 500), **_unavailable()},
        }},
        "/users/{user_id}/explain": {"get": {
            "summary": "the attention weights behind the vector, one row per window behavior (hashed ids)",
            "operationId": "explainVector", "parameters": [_USER_ID, _AT, _QUERY],
            "responses": {"200": _json({"type": "object"}, "the explanation"),
                          **_errors(400, 401, 404, 414, 500), **_unavailable()},
        }},
        "/users/{user_id}/purchasing-power": {"get": {
            "summary": "the user's purchasing-power level 1..7", "operationId": "getPurchasingPower",
            "parameters": [_USER_ID],
            "responses": {"200": _json({"type": "object"}, "level, probabilities, model_version, times"),
                          **_errors(400, 401, 404, 414), **_unavailable()},
        }},
        wire.BATCH_PATH: {"post": {
            "summary": f"many users' vectors: up to {wire.MAX_BATCH_IDS} ids, a body of at most "
                       f"{wire.MAX_BATCH_BODY_BYTES} bytes; ids owned elsewhere are fanned out per owner",
            "operationId": "getVectors",
            "requestBody": {"required": True,
                            "content": {_JSON: {"schema": {"$ref": "#/components/schemas/BatchRequest"}}}},
            "responses": {"200": batch_ok, **body_errors},
        }},
        wire.FEAST_PATH: {"post": {
            "summary": "the batch read in Feast's online-serving shape (feature view 'user_vectors'); "
                       "unavailable and error rows are INVALID",
            "operationId": "getOnlineFeatures",
            "requestBody": {"required": True,
                            "content": {_JSON: {"schema": {"$ref": "#/components/schemas/FeastRequest"}}}},
            "responses": {"200": _json({"$ref": "#/components/schemas/FeastAnswer"}, "one column per feature"),
                          **body_errors},
        }},
        wire.OWNERS_PATH: {"get": {
            "summary": "partition -> owning worker URL, for clients that route by murmur2(user_id)",
            "operationId": "getOwners",
            "responses": {"200": _json({"$ref": "#/components/schemas/Owners"}, "the latest assignment"),
                          **_errors(401, 414)},
        }},
        "/livez": {"get": {
            "summary": "liveness: the process and its event loop answer (503 only while shutting down)",
            "operationId": "livez", "security": _OPEN,
            "responses": {"200": _json(probe, "alive"), "503": _json(probe, "stopping")},
        }},
        "/readyz": {"get": {
            "summary": "readiness: tables recovered, no rebalance running", "operationId": "readyz",
            "security": _OPEN,
            "responses": {"200": _json(probe, "ready"), "503": _json(probe, "starting (reason says why)")},
        }},
        "/healthz": {"get": {
            "summary": "alias of /readyz", "operationId": "healthz", "security": _OPEN,
            "responses": {"200": _json(probe, "ready"), "503": _json(probe, "starting (reason says why)")},
        }},
        "/metrics": {"get": {
            "summary": "Prometheus exposition", "operationId": "metrics",
            "responses": {"200": {"description": "text format 0.0.4",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **_errors(401, 414)},
        }},
        "/openapi.json": {"get": {
            "summary": "this document", "operationId": "openapi",
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1"), **_errors(401, 414)},
        }},
        **_dashboard_paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dupn-stream worker API",
            "version": API_VERSION,
            "description": (
                "Every worker serves every route; user reads are answered by the owner of the user's partition "
                "(murmur2(user_id) mod partitions). With DUPN_API_TOKEN set every route but /livez, /readyz, "
                "/healthz and the dashboard page shell needs 'Authorization: Bearer <token>' (Faust's own routes and "
                "unknown paths included), "
                "else 401; without it no route needs one. Every request: URL <= 2,048 characters, header lines "
                "<= 8,190 bytes, <= 64 headers, no body except on the batch reads."
            ),
        },
        "servers": [{"url": "http://127.0.0.1:6066", "description": "DUPN_WEB_HOST:DUPN_WEB_PORT (default)"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "DUPN_API_TOKEN (a static shared secret)"}},
            "schemas": _schemas(),
        },
    }


def _dashboard_paths() -> dict[str, Any]:
    """The live dashboard: its page shell and static files are open (they hold no data), its data is not."""
    text = {"200": {"description": "the file", "content": {"text/plain": {"schema": {"type": "string"}}}}}
    paths: dict[str, Any] = {
        dashboard.PAGE: {"get": {
            "summary": "the live dashboard page (HTML; no data: it asks for the token and reads the routes below)",
            "operationId": "dashboardPage", "security": _OPEN,
            "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
        }},
        f"{dashboard.PAGE}/spec": {"get": {
            "summary": "the charts of core.series (the Grafana export's definitions) and the workers' URLs",
            "operationId": "dashboardSpec",
            "responses": {"200": _json({"type": "object"}, "charts and workers"), **_errors(401, 414)},
        }},
        f"{dashboard.PAGE}/metrics": {"get": {
            "summary": "current samples of the charted metric families from every worker of DUPN_WORKER_URLS",
            "operationId": "dashboardMetrics",
            "responses": {"200": _json({"type": "object"}, "per worker: up, error, samples"), **_errors(401, 414)},
        }},
    }
    for name in sorted(dashboard.STATIC):
        if name != "dashboard.html":
            paths[dashboard.STATIC_PREFIX + name] = {"get": {
                "summary": f"static file of the dashboard page ({name})",
                "operationId": "dashboardStatic_" + "".join(c if c.isalnum() else "_" for c in name),
                "security": _OPEN, "responses": text,
            }}
    return paths


def render() -> str:
    """The committed form: sorted keys, two-space indent, a final newline."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")
