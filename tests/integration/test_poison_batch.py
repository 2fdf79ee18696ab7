"""A batch that fails on every attempt (issue 14 items 6 and 7), on a real worker and broker.

``DUPN_FAULT_FAIL_USER`` makes every state write that includes one user raise. The worker must
stop without acknowledging the batch (so it comes back after a restart), count the attempts across
restarts, and after ``DUPN_POISON_ATTEMPTS`` bisect it: the poison user's events go to the DLQ
with reason ``processing_error``, and its batch-mates are applied.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ops.harness import WorkerProcess, isolated_settings, setup_topics
from ops.probes import http_raw, produce, read_topic
from tests.support.factories import make_events

pytestmark = [pytest.mark.integration, pytest.mark.crash]

ATTEMPTS = 2


def test_a_poison_batch_stops_the_worker_until_it_is_quarantined(
    tmp_path: Path, broker_url: str, model_dir: Path
) -> None:
    s = isolated_settings(broker_url, tmp_path, model_dir, partitions=1, roles="vectors", poison_attempts=ATTEMPTS)
    setup_topics(s)
    worker = WorkerProcess(s, "worker")
    worker.extra_env = {"DUPN_FAULT_FAIL_USER": "poison"}
    events = make_events("ok1", 3) + make_events("poison", 2) + make_events("ok2", 3)
    try:
        produce(s, events)  # before the worker starts: one batch holds all of them
        codes = []
        for _ in range(ATTEMPTS):
            worker.start(ready_timeout_s=None)
            codes.append(worker.wait_exit(timeout_s=180))
        assert all(code != 0 for code in codes), codes  # each attempt stops the worker ...
        assert read_topic(s, s.kafka.dlq_topic) == []  # ... and nothing is quarantined yet
        worker.start(ready_timeout_s=180)  # attempt N+1: bisected
        deadline = time.monotonic() + 180
        while True:
            answers = {u: http_raw(f"{worker.url}/users/{u}/vector")[0] for u in ("ok1", "ok2")}
            dlq = read_topic(s, s.kafka.dlq_topic, timeout_s=10)
            if (set(answers.values()) == {200} and len(dlq) >= 2) or time.monotonic() > deadline:
                break
            assert worker.running, worker.log_text()[-3000:]
            time.sleep(1)
        assert set(answers.values()) == {200}, answers
        assert sorted(json.loads(r.value)["event_id"] for r in dlq) == ["poison-e0", "poison-e1"]
        assert all(dict(r.headers)["dupn.reason"] == b"processing_error" for r in dlq)
        _, body = http_raw(f"{worker.url}/users/ok2/vector")
        assert json.loads(body)["events_seen"] == 3
        assert "failed (attempt 1 of 2" in worker.log_text()
    finally:
        worker.kill()
