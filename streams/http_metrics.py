"""Request metrics of the worker's HTTP API: one aiohttp middleware, installed before the guard.

Labels are bounded: the route *template* (``/users/{user_id}/vector``, never the raw path; unmatched
paths are ``other``) and the status code. Refused requests (401, 413, 414, 400) count too, since the
middleware runs before :func:`streams.web.request_guard`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web as aioweb

from core import metrics

OTHER_ROUTE = "other"


def route_template(request: aioweb.Request) -> str:
    """The matched route's template, or ``other`` when no route matched (404/405)."""
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    canonical = getattr(resource, "canonical", None)
    if not canonical or getattr(info, "http_exception", None) is not None:
        return OTHER_ROUTE
    return str(canonical)


def observe_requests() -> Any:
    @aioweb.middleware
    async def observe(
        request: aioweb.Request, handler: Callable[[aioweb.Request], Awaitable[aioweb.StreamResponse]]
    ) -> aioweb.StreamResponse:
        route = route_template(request)
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except aioweb.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:  # the client went away: no answer to count
            status = 0
            raise
        finally:
            if status:
                metrics.HTTP_REQUESTS.labels(route=route, status=str(status)).inc()
                metrics.HTTP_LATENCY.labels(route=route).observe(time.perf_counter() - started)

    return observe
