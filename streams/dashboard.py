"""The live dashboard every worker serves: ``GET /dashboard``, no Grafana or Prometheus needed.

* ``/dashboard`` and its static files (``streams/static/``: the page script and the vendored uPlot)
  hold no data, so they are open like ``/healthz``; a browser cannot send a bearer header on
  navigation. Everything with data needs the token when ``DUPN_API_TOKEN`` is set: the page asks for
  it and keeps it in ``sessionStorage`` (or takes it once from ``#token=...`` in the URL).
* ``/dashboard/spec`` (token) gives the page the charts of :mod:`core.series`, the same definitions
  the Grafana export renders as PromQL.
* ``/dashboard/metrics`` (token) fans out to every worker of ``DUPN_WORKER_URLS`` (this worker
  always included, read in-process) and answers their current samples of the metric families the
  spec reads. The page polls it every 2 s, keeps a rolling window and evaluates the series on it.
* The page reads a user's vector and attention from the existing ``/users/{id}/vector`` and
  ``/users/{id}/explain`` routes.

The page's Content-Security-Policy allows only this origin: no external request can leave it.
"""

from __future__ import annotations

import asyncio
import re
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from prometheus_client import generate_latest

from core import metrics
from core.series import live_spec

if TYPE_CHECKING:
    from streams.context import Worker

PAGE = "/dashboard"
STATIC = {  # file in streams/static -> content type
    "dashboard.html": "text/html",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
}
STATIC_PREFIX = "/dashboard/static/"
OPEN_PATHS = frozenset({PAGE, *(STATIC_PREFIX + name for name in STATIC if name != "dashboard.html")})
FANOUT_TIMEOUT_S = 1.5
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def register_dashboard(w: Worker) -> None:
    """The page, its files, its spec and the fanned-out metrics, on the worker's web server."""
    app = w.app
    spec = live_spec()
    wanted = frozenset(spec["metrics"])
    self_url = normalize_url(w.settings.http.web_url)
    peers = peer_urls(w.settings.http.worker_urls, self_url)
    token = w.settings.http.api_token
    files = {name: _static(name) for name in STATIC}

    @app.page(PAGE)
    async def dashboard_page(web: Any, request: Any) -> Any:
        return web.bytes(files["dashboard.html"], content_type="text/html", headers=_page_headers())

    for name, content_type in STATIC.items():
        if name != "dashboard.html":
            _register_static(app, name, files[name], content_type)

    @app.page(f"{PAGE}/spec")
    async def dashboard_spec(web: Any, request: Any) -> Any:
        return web.json({**spec, "self": self_url, "workers": [self_url, *peers]})

    @app.page(f"{PAGE}/metrics")
    async def dashboard_metrics(web: Any, request: Any) -> Any:
        local = {"url": self_url, "up": True, "error": None,
                 "samples": parse_samples(generate_latest(metrics.REGISTRY).decode("utf-8"), wanted)}
        remote = await asyncio.gather(*(_scrape(app.http_client, url, token, wanted) for url in peers))
        return web.json({"now_ms": int(time.time() * 1000), "workers": [local, *remote]})


def _register_static(app: Any, name: str, body: bytes, content_type: str) -> None:
    @app.page(STATIC_PREFIX + name, name=f"dashboard_static_{re.sub(r'[^a-z0-9]', '_', name.lower())}")
    async def static_file(web: Any, request: Any) -> Any:
        return web.bytes(body, content_type=content_type, headers={"Cache-Control": "max-age=300"})


def _page_headers() -> dict[str, str]:
    return {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer"}


def _static(name: str) -> bytes:
    return resources.files("streams").joinpath("static", name).read_bytes()


def normalize_url(url: str) -> str:
    return url.strip().rstrip("/")


def peer_urls(worker_urls: str, self_url: str) -> list[str]:
    """The other workers of DUPN_WORKER_URLS (deduplicated, in order, without this one)."""
    out: list[str] = []
    for raw in worker_urls.split(","):
        url = normalize_url(raw)
        if url and url != self_url and url not in out:
            out.append(url)
    return out


async def _scrape(session: Any, url: str, token: str, wanted: frozenset[str]) -> dict[str, Any]:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with session.get(f"{url}/metrics", headers=headers,
                               timeout=aiohttp.ClientTimeout(total=FANOUT_TIMEOUT_S)) as resp:
            if resp.status != 200:
                return {"url": url, "up": False, "error": f"HTTP {resp.status}", "samples": []}
            text = await resp.text()
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return {"url": url, "up": False, "error": type(exc).__name__, "samples": []}
    return {"url": url, "up": True, "error": None, "samples": parse_samples(text, wanted)}


def parse_samples(text: str, wanted: frozenset[str]) -> list[list[Any]]:
    """``[name, {labels}, value]`` for each sample of the Prometheus text format whose name is wanted."""
    out: list[list[Any]] = []
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        end = len(line)
        for sep in ("{", " "):
            i = line.find(sep)
            if 0 <= i < end:
                end = i
        if line[:end] not in wanted:
            continue
        m = _SAMPLE_RE.match(line)
        if m is None:
            continue
        labels = {k: _unescape(v) for k, v in _LABEL_RE.findall(m.group(2) or "")}
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.append([m.group(1), labels, value if value == value and abs(value) != float("inf") else None])
    return out


def _unescape(value: str) -> str:
    return value.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
