"""The live page's server side: shared series definitions, the metrics fan-out's parsing, HTTP request metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web as aioweb
from aiohttp.test_utils import TestClient, TestServer

from core import metrics, series
from core.series import CHARTS, live_spec
from ops import dashboards
from streams import dashboard
from streams.http_metrics import observe_requests
from streams.web import OPEN_PATHS, request_guard


def test_series_render_as_promql() -> None:
    assert series.THROUGHPUT.promql() == "sum by (result) (rate(dupn_events_total[1m]))"
    assert series.FRESHNESS_P99.promql('instance=~"$instance"') == (
        'histogram_quantile(0.99, sum by (le) (rate(dupn_event_to_vector_seconds_bucket{instance=~"$instance"}[5m])))'
    )
    assert series.HTTP_503_SHARE.promql() == (
        'sum(rate(dupn_http_requests_total{status="503"}[5m])) / clamp_min(sum(rate(dupn_http_requests_total[5m])), '
        "1e-09)"
    )
    assert series.LAG_SECONDS.promql() == (
        "sum(dupn_consumer_lag_events) / clamp_min(sum(rate(dupn_events_total[1m])), 1)"
    )
    assert series.WORKER_UP.promql() == 'up{job="dupn"}'


def test_the_page_and_grafana_read_the_same_definitions() -> None:
    spec = live_spec()
    by_key = {c.key: c for c in CHARTS}
    for chart in spec["charts"]:
        panel = next(p for p in dashboards.PANELS if p.key == chart["key"])
        assert panel is by_key[chart["key"]]
        assert [line["series"]["promql"] for line in chart["lines"]] == [
            line.series.promql() for line in panel.lines
        ]
    live = {c["key"] for c in spec["charts"]}
    assert {"freshness", "throughput", "lag", "lag_seconds", "rejects", "users"} <= live
    quantile = next(c for c in spec["charts"] if c["key"] == "freshness")["lines"][1]["series"]
    assert quantile == {**quantile, "kind": "quantile", "metric": "dupn_event_to_vector_seconds_bucket",
                        "q": 0.99, "window_s": 300.0, "by": []}


def test_the_page_fetches_only_metrics_a_worker_exports() -> None:
    exported = {s.name for m in metrics.REGISTRY.collect() for s in m.samples} | {
        f"{m.name}{suffix}" for m in metrics.REGISTRY.collect() for suffix in ("", "_total", "_bucket")
    }
    assert set(live_spec()["metrics"]) <= exported


def test_parse_samples_keeps_wanted_families_with_labels() -> None:
    text = "\n".join([
        "# HELP dupn_events_total Behavior events",
        "# TYPE dupn_events_total counter",
        'dupn_events_total{result="applied"} 12.0',
        'dupn_events_created{result="applied"} 1.7e9',
        'dupn_event_to_vector_seconds_bucket{le="+Inf"} 3.0',
        'dupn_events_rejected_total{reason="bad \\"json\\""} 2.0',
        "dupn_users 5.0",
        "dupn_state_bytes NaN",
    ])
    wanted = frozenset({"dupn_events_total", "dupn_event_to_vector_seconds_bucket", "dupn_events_rejected_total",
                        "dupn_state_bytes"})
    assert dashboard.parse_samples(text, wanted) == [
        ["dupn_events_total", {"result": "applied"}, 12.0],
        ["dupn_event_to_vector_seconds_bucket", {"le": "+Inf"}, 3.0],
        ["dupn_events_rejected_total", {"reason": 'bad "json"'}, 2.0],
        ["dupn_state_bytes", {}, None],
    ]


def test_peer_urls_exclude_this_worker_and_duplicates() -> None:
    assert dashboard.peer_urls("http://a:1/, http://b:2,http://a:1,,http://b:2", "http://a:1") == ["http://b:2"]


def test_page_shell_is_open_and_the_data_is_not() -> None:
    assert {"/dashboard", "/dashboard/static/dashboard.js", "/dashboard/static/uPlot.iife.min.js"} <= OPEN_PATHS
    assert "/dashboard/metrics" not in OPEN_PATHS and "/dashboard/spec" not in OPEN_PATHS
    for name in dashboard.STATIC:
        assert dashboard._static(name), name  # packaged beside the module


def _value(route: str, status: str) -> float:
    return metrics.REGISTRY.get_sample_value("dupn_http_requests_total", {"route": route, "status": status}) or 0.0


def test_request_metrics_count_route_templates_and_statuses() -> None:
    async def ok(request: aioweb.Request) -> aioweb.Response:
        return aioweb.json_response({"user": request.match_info["user_id"]})

    async def boom(request: aioweb.Request) -> aioweb.Response:
        raise aioweb.HTTPServiceUnavailable()

    async def run() -> dict[str, Any]:
        app = aioweb.Application(middlewares=[observe_requests(), request_guard("tok")])
        app.router.add_get("/t/{user_id}/vector", ok)
        app.router.add_get("/t/busy", boom)
        before = {k: _value(*k) for k in [("/t/{user_id}/vector", "200"), ("/t/{user_id}/vector", "401"),
                                          ("other", "404"), ("/t/busy", "503")]}
        async with TestClient(TestServer(app)) as client:
            auth = {"Authorization": "Bearer tok"}
            for uid in ("u1", "u2", "u3"):
                assert (await client.get(f"/t/{uid}/vector", headers=auth)).status == 200
            assert (await client.get("/t/u1/vector")).status == 401
            assert (await client.get("/nope/at/all", headers=auth)).status == 404
            assert (await client.get("/t/busy", headers=auth)).status == 503
        return {k: _value(*k) - v for k, v in before.items()}

    delta = asyncio.run(run())
    assert delta == {("/t/{user_id}/vector", "200"): 3, ("/t/{user_id}/vector", "401"): 1, ("other", "404"): 1,
                     ("/t/busy", "503"): 1}
    assert not any(
        "u1" in s.labels.get("route", "") for m in metrics.REGISTRY.collect() for s in m.samples
    ), "raw paths must never become label values"


@pytest.mark.parametrize("name", ["dashboard.html", "dashboard.js"])
def test_the_page_loads_nothing_from_elsewhere(name: str) -> None:
    text = dashboard._static(name).decode()
    assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_fan_out_reads_a_peer_with_the_token_and_reports_one_that_is_down() -> None:
    import aiohttp

    from ops.harness import free_port

    seen: list[str | None] = []

    async def peer_metrics(request: aioweb.Request) -> aioweb.Response:
        seen.append(request.headers.get("Authorization"))
        return aioweb.Response(text='dupn_users 7.0\ndupn_events_total{result="applied"} 3.0\nother_total 1.0\n')

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        app = aioweb.Application()
        app.router.add_get("/metrics", peer_metrics)
        wanted = frozenset({"dupn_users", "dupn_events_total"})
        async with TestServer(app) as server, aiohttp.ClientSession() as session:
            up = await dashboard._scrape(session, str(server.make_url("")).rstrip("/"), "tok", wanted)
            down = await dashboard._scrape(session, f"http://127.0.0.1:{free_port()}", "tok", wanted)
        return up, down

    up, down = asyncio.run(run())
    assert up["up"] and up["error"] is None
    assert up["samples"] == [["dupn_users", {}, 7.0], ["dupn_events_total", {"result": "applied"}, 3.0]]
    assert seen == ["Bearer tok"]
    assert down == {**down, "up": False, "samples": []} and down["error"]
