"""``VectorClient``: read user vectors from the workers' HTTP API (one user or many), as numpy arrays.

- **Routing.** It asks any worker for ``GET /owners`` (partition -> owner URL, cached for ``owners_ttl_s``)
  and sends each request straight to the owner of ``murmur2(user_id) mod partitions``
  (``core.wire.partition_of``, as Kafka's producers place the user's events). Unknown owner, stale
  metadata or an owner it can't reach: it asks any configured worker instead, which forwards.
- **Retries.** A 503 (or a batch row ``unavailable``) is retried after its ``Retry-After``, at most
  ``max_attempts`` times and ``max_wait_s`` seconds of waiting in all; then the answer is ``unavailable``.
  A worker that can't be reached is skipped for the rest of the call; when none can, ``ConnectionError``.
- **Connections** are kept alive and reused (a small ``http.client`` pool per worker, thread-safe).
- **Binary.** Vectors travel in ``core.wire``'s float32 form, never as JSON text.

No worker code is imported: this runs in rankers outside the workers.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from core import wire

if TYPE_CHECKING:
    from core.settings import Settings

NO_WORKER_HINT = "start one with `dupn worker` or set DUPN_WORKER_URLS"


@dataclass(frozen=True)
class VectorResult:
    """One user's answer. ``vector`` is float32 (dim,) when ``status`` is ``found`` or ``stale``, else None."""

    user_id: str
    status: str
    vector: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # everything the worker said but the vector

    @property
    def ok(self) -> bool:
        return self.status in wire.WITH_VECTOR

    @property
    def model_version(self) -> str | None:
        return self.meta.get("model_version")

    @property
    def events_seen(self) -> int | None:
        return self.meta.get("events_seen")

    @property
    def last_event_ts(self) -> int | None:
        return self.meta.get("last_event_ts")

    @property
    def updated_at(self) -> int | None:
        return self.meta.get("updated_at")

    @property
    def reason(self) -> str | None:
        return self.meta.get("reason") or self.meta.get("error")


@dataclass(frozen=True)
class VectorBatch:
    """``get_many``'s answer: row i is ``user_ids[i]``; ``vectors`` is float32 (n, dim), zeros where no vector."""

    results: list[VectorResult]
    vectors: np.ndarray

    @property
    def user_ids(self) -> list[str]:
        return [r.user_id for r in self.results]

    @property
    def statuses(self) -> list[str]:
        return [r.status for r in self.results]

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> VectorResult:
        return self.results[i]

    def __iter__(self) -> Iterator[VectorResult]:
        return iter(self.results)


class _Pool:
    """Idle keep-alive connections per worker URL (``scheme://host:port``)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._idle: dict[str, list[http.client.HTTPConnection]] = defaultdict(list)
        self._lock = threading.Lock()

    def request(
        self, base: str, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body); raises OSError / http.client.HTTPException when the worker can't be reached."""
        for attempt in (0, 1):
            conn, reused = self._take(base)
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                if reused and attempt == 0:  # the worker closed an idle keep-alive connection: once more, fresh
                    continue
                raise
            if resp.will_close:
                conn.close()
            else:
                with self._lock:
                    self._idle[base].append(conn)
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        raise AssertionError("unreachable")

    def _take(self, base: str) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle[base]:
                return self._idle[base].pop(), True
        url = urllib.parse.urlsplit(base)
        cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        return cls(url.hostname or "127.0.0.1", url.port, timeout=self.timeout_s), False

    def close(self) -> None:
        with self._lock:
            for conns in self._idle.values():
                for conn in conns:
                    conn.close()
            self._idle.clear()


class VectorClient:
    def __init__(
        self,
        urls: str | Sequence[str],
        token: str = "",
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 4,
        max_wait_s: float = 5.0,
        owners_ttl_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        listed = urls.split(",") if isinstance(urls, str) else list(urls)
        self.urls = [u.strip().rstrip("/") for u in listed if u.strip()]
        if not self.urls:
            raise ValueError(f"no worker URL given: {NO_WORKER_HINT}")
        if max_attempts < 1 or max_wait_s < 0:
            raise ValueError("max_attempts must be >= 1 and max_wait_s >= 0")
        self.token = token
        self.max_attempts = max_attempts
        self.max_wait_s = max_wait_s
        self.owners_ttl_s = owners_ttl_s
        self._sleep, self._clock = sleep, clock
        self._pool = _Pool(timeout_s)
        self._owners: tuple[float, int, list[str | None]] | None = None  # (fetched at, partitions, owner per partition)
        self._owners_lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    @classmethod
    def from_settings(cls, s: Settings, **kwargs: Any) -> VectorClient:
        return cls(s.http.worker_urls, s.http.api_token, **kwargs)

    def __enter__(self) -> VectorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    # -- one user ------------------------------------------------------------------------------------
    def get(self, user_id: str, at: str | None = None, query: str | None = None) -> VectorResult:
        """The user's vector (``at`` / ``query``: re-pooled by the owner, see ``GET /users/{id}/vector``)."""
        if not wire.USER_ID_RE.match(user_id):
            if at or query:
                raise ValueError(f"user id {user_id!r} can't be asked for with at/query (not URL-safe)")
            return self.get_many([user_id]).results[0]
        params = {k: v for k, v in (("at", at), ("query", query)) if v}
        status, body = self._single(user_id, "vector", params, wire.OCTET_STREAM)
        if status == 200:
            meta, rows = wire.decode_vectors(body)
            row = meta["results"][0]
            return VectorResult(user_id, str(row.pop("status")), rows[0], row)
        doc = _json_or_empty(body)
        if status == 404:
            return VectorResult(user_id, wire.NOT_FOUND, None, doc)
        return VectorResult(user_id, wire.UNAVAILABLE, None, doc)

    def get_json(self, user_id: str, what: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        """``GET /users/{id}/{what}`` as JSON (``explain``, ``purchasing-power``, ``vector``), with the same
        routing and retries. ``LookupError`` for an unknown user, ``ConnectionError`` when still unavailable."""
        if not wire.USER_ID_RE.match(user_id):
            raise ValueError(f"invalid user id {user_id!r} (1-128 of A-Z a-z 0-9 _ . : @ ~ -, not only dots)")
        status, body = self._single(user_id, what, params or {}, "application/json")
        doc = _json_or_empty(body)
        if status == 200:
            return doc
        if status == 404:
            raise LookupError(f"unknown user {user_id!r}")
        raise ConnectionError(f"user {user_id!r} still unavailable after retrying: {doc.get('error', status)}")

    def _single(self, user_id: str, what: str, params: dict[str, str], accept: str) -> tuple[int, bytes]:
        path = f"/users/{urllib.parse.quote(user_id, safe='')}/{what}"
        if params:
            path += "?" + urllib.parse.urlencode(params)
        headers = self._headers(accept)
        dead: set[str] = set()
        errors: list[str] = []
        waited = 0.0
        last: tuple[int, bytes] | None = None
        for _ in range(self.max_attempts):
            base = self._targets(user_id, dead)
            if base is None:
                break
            try:
                status, resp_headers, body = self._pool.request(base, "GET", path, None, headers)
            except (OSError, http.client.HTTPException) as exc:
                errors.append(f"{base}: {exc}")
                dead.add(base)
                self._forget_owners()
                continue
            _raise_for_client_error(status, body)
            last = (status, body)
            if status != 503:
                return last
            delay = _retry_after(resp_headers, _json_or_empty(body))
            if waited + delay > self.max_wait_s:
                break
            self._sleep(delay)
            waited += delay
            self._forget_owners()
        if last is None:
            raise ConnectionError(f"no worker answered: {'; '.join(errors)} — {NO_WORKER_HINT}")
        return last

    # -- many users ----------------------------------------------------------------------------------
    def get_many(self, user_ids: Sequence[str], max_age_ms: int | None = None) -> VectorBatch:
        """One result per id, in order (``POST /vectors``, one request per owner, in parallel)."""
        ids = list(user_ids)
        results: list[VectorResult | None] = [None] * len(ids)
        pending = list(range(len(ids)))
        dead: set[str] = set()
        errors: list[str] = []
        answered = False
        waited = 0.0
        for _ in range(self.max_attempts):
            groups: dict[str, list[int]] = defaultdict(list)
            for i in pending:
                base = self._targets(ids[i], dead)
                if base is None:
                    break
                groups[base].append(i)
            else:
                answers = self._map(
                    lambda item: self._post_batch(item[0], [ids[i] for i in item[1]], max_age_ms),
                    [(base, chunk) for base, idx in groups.items() for chunk in _chunks(idx, ids)],
                )
                retry_after = 0.0
                still: list[int] = []
                for (base, idx), answer in answers:
                    if isinstance(answer, Exception):
                        errors.append(f"{base}: {answer}")
                        dead.add(base)
                        self._forget_owners()
                        still += idx
                        continue
                    answered = True
                    delay, rows = answer
                    for i, row in zip(idx, rows, strict=True):
                        results[i] = row
                        if row.status == wire.UNAVAILABLE:
                            still.append(i)
                            retry_after = max(retry_after, delay)
                pending = sorted(still)
                if not pending:
                    break
                if retry_after:
                    if waited + retry_after > self.max_wait_s:
                        break
                    self._sleep(retry_after)
                    waited += retry_after
                    self._forget_owners()
                continue
            break  # no worker left to ask
        if not answered and ids:
            raise ConnectionError(f"no worker answered: {'; '.join(errors)} — {NO_WORKER_HINT}")
        final = [r if r is not None else VectorResult(ids[i], wire.UNAVAILABLE, None, {"reason": "not reached"})
                 for i, r in enumerate(results)]
        return VectorBatch(final, _stack(final))

    def _post_batch(self, base: str, ids: list[str], max_age_ms: int | None) -> tuple[float, list[VectorResult]]:
        """(retry delay, rows) of one ``POST /vectors``; a whole-request 503 makes every row unavailable."""
        body: dict[str, Any] = {"user_ids": ids}
        if max_age_ms is not None:
            body["max_age_ms"] = max_age_ms
        headers = {**self._headers(wire.OCTET_STREAM), "Content-Type": "application/json"}
        status, resp_headers, raw = self._pool.request(base, "POST", wire.BATCH_PATH, orjson.dumps(body), headers)
        _raise_for_client_error(status, raw)
        if status != 200:
            doc = _json_or_empty(raw)
            reason = str(doc.get("error", f"HTTP {status}"))
            delay = _retry_after(resp_headers, doc)
            return delay, [VectorResult(u, wire.UNAVAILABLE, None, {"reason": reason}) for u in ids]
        meta, rows = wire.decode_vectors(raw)
        out = []
        for u, row, vec in zip(ids, meta["results"], rows, strict=True):
            status_name = str(row.pop("status"))
            out.append(VectorResult(u, status_name, vec if status_name in wire.WITH_VECTOR else None, row))
        return float(meta.get("retry_after_s", 1)), out

    def _map(self, fun: Callable[[Any], Any], items: list[Any]) -> list[tuple[Any, Any]]:
        """(item, fun(item) or the OSError it raised) for each item; in parallel threads when several."""

        def safe(item: Any) -> tuple[Any, Any]:
            try:
                return item, fun(item)
            except PermissionError:  # a wrong token: no other worker will take it either
                raise
            except (OSError, http.client.HTTPException, wire.WireError) as exc:
                return item, ConnectionError(str(exc) or type(exc).__name__)

        if len(items) <= 1:
            return [safe(item) for item in items]
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="vector-client")
        return list(self._executor.map(safe, items))

    # -- routing -------------------------------------------------------------------------------------
    def _targets(self, user_id: str, dead: set[str]) -> str | None:
        """The URL to ask for ``user_id``: its partition's owner if known and reachable, else a configured worker."""
        owner = self._owner_of(user_id, dead)
        if owner is not None and owner not in dead:
            return owner
        return next((u for u in self.urls if u not in dead), None)

    def _owner_of(self, user_id: str, dead: set[str]) -> str | None:
        owners = self._owner_table(dead)
        if owners is None:
            return None
        partitions, table = owners
        url = table[wire.partition_of(user_id.encode("utf-8"), partitions)]
        return url.rstrip("/") if url else None

    def _owner_table(self, dead: set[str]) -> tuple[int, list[str | None]] | None:
        with self._owners_lock:
            if self._owners is not None and self._clock() - self._owners[0] < self.owners_ttl_s:
                return self._owners[1], self._owners[2]
        for base in self.urls:
            if base in dead:
                continue
            try:
                headers = self._headers("application/json")
                status, _, raw = self._pool.request(base, "GET", wire.OWNERS_PATH, None, headers)
            except (OSError, http.client.HTTPException):
                continue
            if status != 200:
                continue  # an old worker without /owners, or not authorized: route through any worker
            doc = _json_or_empty(raw)
            parts, owners = doc.get("partitions"), doc.get("owners")
            if isinstance(parts, int) and parts > 0 and isinstance(owners, list) and len(owners) == parts:
                with self._owners_lock:
                    self._owners = (self._clock(), parts, [str(o) if o else None for o in owners])
                return parts, self._owners[2]
        return None

    def _forget_owners(self) -> None:
        with self._owners_lock:
            self._owners = None

    def _headers(self, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers


def _retry_after(headers: dict[str, str], doc: dict[str, Any]) -> float:
    """Seconds to wait before retrying a 503: ``Retry-After`` (seconds), else the body's, else 1."""
    for raw in (headers.get("retry-after"), doc.get("retry_after_s")):
        try:
            if raw is not None:
                return max(0.0, float(raw))
        except (TypeError, ValueError):
            continue
    return 1.0


def _raise_for_client_error(status: int, body: bytes) -> None:
    if status == 401:
        raise PermissionError("the worker refused the token: set DUPN_API_TOKEN to the workers' token")
    if status in (400, 411, 413, 414):
        raise ValueError(f"the worker refused the request (HTTP {status}): {_json_or_empty(body).get('error', '')}")


def _json_or_empty(raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _chunks(idx: list[int], ids: list[str]) -> Iterator[list[int]]:
    """``idx`` cut into requests the worker accepts: at most MAX_BATCH_IDS ids and a body under its byte limit."""
    budget = wire.MAX_BATCH_BODY_BYTES - 64  # room for the braces, key names and max_age_ms
    chunk: list[int] = []
    size = 0
    for i in idx:
        cost = len(orjson.dumps(ids[i])) + 1
        if chunk and (len(chunk) == wire.MAX_BATCH_IDS or size + cost > budget):
            yield chunk
            chunk, size = [], 0
        chunk.append(i)
        size += cost
    if chunk:
        yield chunk


def _stack(results: list[VectorResult]) -> np.ndarray:
    dims = {r.vector.shape[0] for r in results if r.vector is not None}
    dim = max(dims) if dims else 0
    out = np.zeros((len(results), dim), dtype=np.float32)
    for i, r in enumerate(results):
        if r.vector is not None and r.vector.shape[0] == dim:
            out[i] = r.vector
    return out
