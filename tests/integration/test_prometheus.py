"""End to end: a real Prometheus scrapes a real worker with the generated config and rules, and every
dashboard panel's PromQL and every alert's watched series returns data.

Prometheus is Debian's package: installed here when missing and we are root with apt-get (CI runs as
root; `.ci/run` installs it up front), else the test is skipped saying so.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ops import dashboards
from ops.cli import main
from ops.harness import free_port, isolated_settings, running_worker, setup_topics
from ops.probes import collect_vectors, http_get, produce
from ops.replay import synthetic_events

pytestmark = pytest.mark.integration

BAD_EVENTS = [(b"u-bad", b"not json"), (b"u-bad", b'{"user_id": "u-bad"}')]


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("needs Prometheus: install Debian's `prometheus` package (apt-get as root is unavailable here)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "prometheus"], check=True, env=env, capture_output=True)
    found = shutil.which("prometheus")
    assert found, "apt-get installed prometheus but the binary is not on PATH"
    return found


class Prometheus:
    """A Prometheus process on a free loopback port, with its own storage, reading ``config_dir``."""

    def __init__(self, binary: str, config_dir: Path) -> None:
        self.binary = binary
        self.config_dir = config_dir
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log_path = self.config_dir / "prometheus.log"
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config_dir / dashboards.PROMETHEUS_FILE}",
                    f"--storage.tsdb.path={self.config_dir / 'data'}",
                    f"--web.listen-address={self.url.removeprefix('http://')}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for(lambda: _ready(self.url), 60, f"Prometheus not ready; see {log_path}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    """Not started: the test writes the config first (it needs the worker's port)."""
    config_dir = tmp_path / "prometheus"
    config_dir.mkdir()
    prom = Prometheus(prometheus_binary(), config_dir)
    yield prom
    prom.stop()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def wait_for(check: Any, timeout_s: float, message: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(message)


def api(url: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}/api/v1/{path}{query}", timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]


def finite_result(url: str, expr: str) -> bool:
    """The instant query returns at least one series with a finite value."""
    result = api(url, "query", query=expr)["result"]
    return any(math.isfinite(float(r["value"][1])) for r in result)


def test_every_panel_and_alert_expression_returns_data(
    broker_url: str, model_dir: Path, prometheus: Prometheus, tmp_path: Path
) -> None:
    s = isolated_settings(broker_url, tmp_path / "home", model_dir)
    setup_topics(s)
    events = list(synthetic_events(30, 400, seed=3))
    waves = [events[:200], events[200:]]
    with running_worker(s):
        target = f"127.0.0.1:{s.http.web_port}"
        out = str(prometheus.config_dir)
        assert main(["dashboards", "export", "--out", out, "--targets", target, "--scrape-interval", "1s"]) == 0
        prometheus.start()
        url = prometheus.url
        wait_for(lambda: any(t["health"] == "up" for t in api(url, "targets")["activeTargets"]), 60,
                 "Prometheus never scraped the worker")
        # two waves, each after a scrape, so rates and quantiles see every series increase
        for i, wave in enumerate(waves):
            produce(s, wave, raw=BAD_EVENTS)
            last = {str(e["user_id"]): str(e["event_id"]) for e in wave}
            collect_vectors(s, lambda ms, last=last: _current(ms, last), timeout_s=120)
            status, _ = http_get(f"{s.http.web_url}/users/{next(iter(last))}/vector")
            assert status == 200
            if i == 0:
                wait_for(lambda: finite_result(url, "sum(dupn_events_total)"), 30, "first wave never scraped")

        exprs = dashboards.all_expressions()
        missing: list[str] = []

        def all_have_data() -> bool:
            missing[:] = [e for e in exprs if not finite_result(url, e)]
            return not missing

        try:
            wait_for(all_have_data, 60, "")
        except AssertionError:
            pytest.fail(f"no finite data from Prometheus for: {missing}")

        assert finite_result(url, "sum(faust_table_operations_total)"), "Faust's sensor is not on /metrics"
        # caught up: the committed offsets reach the log end (a lag counted from offset 0 would not)
        events_lag = f'sum(dupn_consumer_lag_events{{topic="{s.kafka.events_topic}"}})'
        wait_for(lambda: _value(url, events_lag) == 0, 30, "events lag never back to 0 after the worker caught up")
        n_users = len({str(e["user_id"]) for e in events})
        wait_for(lambda: _value(url, dashboards.USERS) == n_users, 30, "dupn_users never counted the stream's users")

        def rules_evaluated() -> list[dict[str, Any]] | None:
            rules = [r for g in api(url, "rules")["groups"] for r in g["rules"]]
            return rules if rules and all(r["health"] == "ok" for r in rules) else None

        rules = wait_for(rules_evaluated, 30, "alert rules not evaluated healthy")
        assert sorted(r["name"] for r in rules) == sorted(a.name for a in dashboards.ALERTS)
        for alert in dashboards.ALERTS:  # the full rule runs (healthy: rightly empty, except a real alert)
            api(url, "query", query=alert.rule_expr)


def _current(messages: list[Any], last: dict[str, str]) -> bool:
    seen = {m.user_id: m.last_event_id for m in messages}
    return all(seen.get(u) == e for u, e in last.items())


def _value(url: str, expr: str) -> float | None:
    result = api(url, "query", query=expr)["result"]
    return float(result[0]["value"][1]) if result else None


def test_rejects_spiking_and_worker_down_fire(
    broker_url: str, model_dir: Path, prometheus: Prometheus, tmp_path: Path
) -> None:
    """The generated rules fire on a real Prometheus: bad events, then a killed worker (``for:`` shortened)."""
    s = isolated_settings(broker_url, tmp_path / "home", model_dir)
    setup_topics(s)
    with running_worker(s) as proc:
        target = f"127.0.0.1:{s.http.web_port}"
        dashboards.export(prometheus.config_dir, [target], scrape_interval="1s", alert_for="2s")
        prometheus.start()
        url = prometheus.url
        wait_for(lambda: any(t["health"] == "up" for t in api(url, "targets")["activeTargets"]), 60,
                 "Prometheus never scraped the worker")
        wait_for(lambda: _rules_evaluated(url), 30, "alert rules never evaluated")
        assert not _alerts(url), "a healthy worker fires nothing"

        # two waves of events breaking the contract, the second after the first was scraped: a rate needs
        # the counter to rise between two scrapes
        produce(s, [], raw=BAD_EVENTS * 5)
        wait_for(lambda: finite_result(url, "sum(dupn_events_rejected_total)"), 60, "rejects never scraped")
        time.sleep(1.5)
        produce(s, [], raw=BAD_EVENTS * 5)
        rejects = wait_for(lambda: _firing(url, "DupnRejectsSpiking"), 90, "DupnRejectsSpiking never fired")
        assert rejects["labels"]["severity"] == "warning"
        assert "1. " in rejects["annotations"]["runbook"] and "DLQ" in rejects["annotations"]["runbook"]
        assert not _firing(url, "DupnWorkerDown")

        proc.kill()  # a crash: no goodbye, the next scrape fails
        proc.wait(timeout=20)
        down = wait_for(lambda: _firing(url, "DupnWorkerDown"), 60, "DupnWorkerDown never fired")
        assert down["labels"]["severity"] == "critical" and down["labels"]["instance"] == target
        assert target in down["annotations"]["summary"]
        assert f"curl http://{target}/healthz" in down["annotations"]["runbook"]


def _rules_evaluated(url: str) -> bool:
    rules = [r for g in api(url, "rules")["groups"] for r in g["rules"]]
    return bool(rules) and all(r["health"] == "ok" and r.get("lastEvaluation", "").startswith("2") for r in rules)


def _alerts(url: str) -> list[dict[str, Any]]:
    return list(api(url, "alerts")["alerts"])


def _firing(url: str, name: str) -> dict[str, Any] | None:
    return next((a for a in _alerts(url) if a["labels"]["alertname"] == name and a["state"] == "firing"), None)
