"""A broker that restarts without its data (issue 14 item 7): the worker recovers without a manual wipe.

The embedded broker keeps everything in memory, so its restart leaves every changelog empty while
the worker's RocksDB still has a persisted changelog offset past the new end. Faust stops then with
``ConsistencyError`` until someone wipes the data dir. Now the stale local copy is discarded (and
logged) and the worker starts; on Kafka it is the "changelog truncated or recreated" case, and
nothing in the fix asks which broker it is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ops.broker import EmbeddedBroker
from ops.harness import WorkerProcess, free_port, isolated_settings, setup_topics
from ops.probes import http_raw, produce
from tests.support.factories import make_events

pytestmark = [pytest.mark.integration, pytest.mark.crash]


def _events_seen(url: str, user: str, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = http_raw(f"{url}/users/{user}/vector")
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status == 200, body
    return int(json.loads(body)["events_seen"])


def test_worker_starts_after_the_broker_lost_every_changelog(tmp_path: Path, model_dir: Path) -> None:
    port = free_port()
    broker = EmbeddedBroker(tmp_path / "broker", "127.0.0.1", port)
    broker.start()
    s = isolated_settings(f"kafka://127.0.0.1:{port}", tmp_path, model_dir, partitions=2, roles="vectors")
    worker = WorkerProcess(s, "worker")
    try:
        setup_topics(s)
        worker.start()
        users = [f"before{k}" for k in range(8)]
        for round_ in range(1, 5):  # one batch per round: every partition's changelog gets past offset 0
            for user in users:
                produce(s, make_events(user, 3 * round_)[3 * (round_ - 1):])
            deadline = time.monotonic() + 120
            while any(_events_seen(worker.url, u) < 3 * round_ for u in users) and time.monotonic() < deadline:
                time.sleep(0.2)
        worker.stop()
        broker.stop()
        broker = EmbeddedBroker(tmp_path / "broker", "127.0.0.1", port)
        broker.start()  # empty: the changelogs now end before the worker's persisted offsets
        setup_topics(s)
        worker.start(ready_timeout_s=180)  # before the fix: ConsistencyError, never ready
        produce(s, make_events("after", 3))
        assert _events_seen(worker.url, "after") == 3
        assert "truncated or recreated" in worker.log_text()
        status, _ = http_raw(f"{worker.url}/users/{users[0]}/vector")
        assert status == 404  # its state went with the broker's data: not served from the discarded copy
    finally:
        worker.kill()
        broker.stop()
