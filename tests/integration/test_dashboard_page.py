"""End to end: the live page (GET /dashboard) in headless Chromium against two real workers fed with events.

The browser is driven over the Chrome DevTools protocol (aiohttp's websocket client): it opens the page
with the API token in the URL fragment (the page moves it to sessionStorage), events are streamed while
it polls, and the test reads the page's own point counts (``window.dupnDashboard``) until every live
chart draws data, looks a user up, checks that no request left the worker's origin, and saves a
screenshot (``results/dashboard.png`` when ``DUPN_DASHBOARD_SCREENSHOT`` names it).

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it); without it the test is skipped.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from core.series import CHARTS
from ops.harness import free_port, isolated_settings, running_workers, setup_topics
from ops.probes import collect_vectors, http_get, produce
from ops.replay import synthetic_events

pytestmark = pytest.mark.integration

TOKEN = "page-test-token"
BAD_EVENTS = [(b"u-bad", b"not json"), (b"u-bad", b'{"user_id": "u-bad"}')]
# the committed results/dashboard.png is refreshed with DUPN_DASHBOARD_SCREENSHOT=results/dashboard.png;
# by default the screenshot goes to the temp dir, so a test run leaves the working tree as it was
SCREENSHOT = Path(os.environ.get("DUPN_DASHBOARD_SCREENSHOT") or Path(tempfile.gettempdir()) / "dupn-dashboard.png")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1400,1000",
)


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("needs Chromium: install Debian's `chromium` package (.ci/run does)")


class Browser:
    """Headless Chromium with DevTools on a port it picks itself (read from DevToolsActivePort)."""

    def __init__(self, binary: str, profile: Path) -> None:
        profile.mkdir(parents=True)
        self.log = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Chromium did not start; see {profile.parent / 'chromium.log'}")
            time.sleep(0.2)
        self.port = int(port_file.read_text().split()[0])

    def page_ws(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as resp:
            targets = json.loads(resp.read())
        return str(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Page:
    """The minimum of CDP: send a command, wait for its answer (events are ignored)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), timeout=60)
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg
                return dict(msg["result"])

    async def js(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def wait(self, expression: str, timeout_s: float, message: str) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.5)
        state = await self.js("JSON.stringify(window.dupnDashboard)")
        raise AssertionError(f"{message}; page state: {state}")


@pytest.fixture
def browser(tmp_path: Path) -> Any:
    b = Browser(chromium_binary(), tmp_path / "chromium-profile")
    yield b
    b.stop()


def test_live_page_draws_every_chart_from_both_workers(
    broker_url: str, model_dir: Path, browser: Browser, tmp_path: Path
) -> None:
    s1 = isolated_settings(broker_url, tmp_path / "home", model_dir, api_token=TOKEN, partitions=4)
    s2 = s1.replace(web_port=free_port(), data_dir=str(tmp_path / "data2"))
    urls = f"{s1.http.web_url},{s2.http.web_url}"
    s1, s2 = s1.replace(worker_urls=urls), s2.replace(worker_urls=urls)
    setup_topics(s1)
    events = list(synthetic_events(24, 600, seed=5))
    with running_workers([s1, s2], ["w1", "w2"]):
        status, _ = http_get(f"{s1.http.web_url}/dashboard/metrics")
        assert status == 401, "the data behind the page needs the token"
        status, _ = http_get(f"{s1.http.web_url}/dashboard/metrics", token=TOKEN)
        assert status == 200
        asyncio.run(_drive(browser, s1, s2, events))
        # the page's own requests, counted by route template and status (never by raw path)
        with urllib.request.urlopen(urllib.request.Request(
            f"{s1.http.web_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}), timeout=10) as resp:
            exposition = resp.read().decode()
        assert 'dupn_http_requests_total{route="/dashboard/metrics",status="200"}' in exposition
        assert 'route="/users/{user_id}/explain"' in exposition or 'route="/users/{user_id}/vector"' in exposition
        assert f"/users/{events[-1]['user_id']}/" not in exposition
    assert SCREENSHOT.stat().st_size > 20_000


async def _drive(browser: Browser, s1: Any, s2: Any, events: list[dict[str, Any]]) -> None:
    import aiohttp

    live = [c.key for c in CHARTS if c.live]
    async with aiohttp.ClientSession() as session, session.ws_connect(browser.page_ws(), max_msg_size=0) as ws:
        page = Page(ws)
        await page.call("Page.enable")
        await page.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1,
                        mobile=False)
        await page.call("Page.navigate", url=f"{s1.http.web_url}/dashboard#token={TOKEN}")
        await page.wait("window.dupnDashboard && window.dupnDashboard.polls >= 2 && window.dupnDashboard.workers",
                        60, "the page never polled the workers")
        assert await page.js("location.hash") == "", "the token must leave the URL"
        # the page's histogram_quantile is Prometheus': linear inside the bucket holding the rank, the
        # second-highest bound when the rank falls in +Inf, nothing without observations
        cases = {"[[0.1, 5], [0.5, 10], [Infinity, 10]], 0.5": 0.1, "[[0.1, 5], [0.5, 10], [Infinity, 10]], 0.75": 0.3,
                 "[[0.1, 0], [1, 0], [Infinity, 4]], 0.99": 1.0, "[[0.1, 0], [Infinity, 0]], 0.5": None}
        for args, want in cases.items():
            buckets, q = args.rsplit(", ", 1)
            got = await page.js(f"(() => {{ const v = histogramQuantile({q}, new Map({buckets})); "
                                "return Number.isFinite(v) ? v : null; })()")
            assert got == pytest.approx(want) if want is not None else got is None, (args, got)
        assert await page.js("sessionStorage.getItem('dupn.token')") == TOKEN

        # stream while the page watches: three waves, so rates and quantiles move over several polls
        for k in range(3):
            now_ms = int(time.time() * 1000)  # event time = when produced, so freshness is the pipeline's own
            wave = [{**e, "ts": now_ms} for e in events[k * 200:(k + 1) * 200]]
            await asyncio.to_thread(produce, s1, wave, BAD_EVENTS)
            last = {str(e["user_id"]): str(e["event_id"]) for e in wave}
            await asyncio.to_thread(collect_vectors, s1, lambda ms, last=last: _current(ms, last), 120)
            await asyncio.sleep(2.5)

        want = " && ".join(f"(p['{key}'] || 0) >= 3" for key in live)
        await page.wait(f"(() => {{ const p = window.dupnDashboard.points; return {want}; }})()", 90,
                        "not every live chart drew data")
        assert await page.js("window.dupnDashboard.workers") == 2, "the page must see both workers"
        rows = await page.js("document.querySelectorAll('#workers tr').length")
        assert rows == 4, "header, one row per worker, total"
        dom_points = await page.js("Object.fromEntries([...document.querySelectorAll('.chart')]"
                                   ".map(c => [c.dataset.chart, +c.dataset.points]))")
        assert set(dom_points) == set(live) and all(v >= 3 for v in dom_points.values()), dom_points

        user = str(events[-1]["user_id"])
        await page.js(f"document.getElementById('user-id').value = {json.dumps(user)};"
                      "document.getElementById('user-form').requestSubmit(); true")
        looked = await page.wait("window.dupnDashboard.user", 30, "the user lookup never rendered")
        assert looked["id"] == user and looked["dim"] == 256 and looked["behaviors"] > 0

        requested = await page.js("performance.getEntriesByType('resource').map(e => e.name)")
        origin = s1.http.web_url
        assert requested and all(u.startswith(origin + "/") for u in requested), requested

        height = await page.js("Math.ceil(document.documentElement.scrollHeight)")
        await page.call("Emulation.setDeviceMetricsOverride", width=1400, height=int(height), deviceScaleFactor=1,
                        mobile=False)
        await asyncio.sleep(2.5)  # one more poll at the full height
        shot = await page.call("Page.captureScreenshot", format="png")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))


def _current(messages: list[Any], last: dict[str, str]) -> bool:
    seen = {m.user_id: m.last_event_id for m in messages}
    return all(seen.get(u) == e for u, e in last.items())
