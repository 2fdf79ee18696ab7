"""A worker started on an empty data dir restores every user's exact state through the bulk restore.

``streams.restore`` reads the changelog into RocksDB in bulk before Faust's per-record
recovery; Faust then finds nothing left to read. After the restore every user must be
answered with exactly the offline reference (state, events_seen, vector), the bulk restore's
log line must account for every changelog record and user, and Faust's per-record restore
must not have run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.topics import changelog_topic
from ops.harness import WorkerProcess, isolated_settings, setup_topics
from ops.probes import read_topic
from ops.replay import replay, synthetic_events
from streams.restore import LOG_MARKER
from tests.support.reference import Reference, answer_mismatch, wait_caught_up

pytestmark = [pytest.mark.integration, pytest.mark.crash]

USERS = 200
EVENTS = 6_000
FAUST_PER_RECORD = "Restoring state from changelog topics"  # faust/tables/recovery.py


def test_wiped_worker_restores_every_user_exactly_through_the_bulk_restore(
    tmp_path: Path, broker_url: str, model_dir: Path
) -> None:
    s = isolated_settings(broker_url, tmp_path, model_dir, partitions=4)
    setup_topics(s)
    events = list(synthetic_events(USERS, EVENTS, seed=41, live_time=False))
    want = Reference(s, events).final()
    worker = WorkerProcess(s, "restored")
    worker.start()
    try:
        replay(s, events, progress=False)
        wait_caught_up(worker.url, want)
        worker.stop()
        records = len(read_topic(s, changelog_topic(s.kafka)))
        worker.wipe()
        mark = len(worker.log_text())
        worker.start()
        answers = wait_caught_up(worker.url, want)
        log = worker.log_text()[mark:]
    finally:
        worker.stop()

    wrong = {u: why for u, e in want.items() if (why := answer_mismatch(answers[u], e)) is not None}
    assert not wrong, f"{len(wrong)} of {len(want)} users differ after the restore: {dict(sorted(wrong.items())[:5])}"
    topic = changelog_topic(s.kafka)
    lines = [line for line in log.splitlines() if f"{LOG_MARKER} {topic}:" in line]
    assert len(lines) == 1, f"expected one bulk restore line in the restarted worker's log, got {lines}"
    m = re.search(r"(\d+) partitions, (\d+) records, (\d+) users", lines[0])
    assert m is not None, lines[0]
    assert (int(m.group(1)), int(m.group(2)), int(m.group(3))) == (4, records, len(want)), lines[0]
    assert FAUST_PER_RECORD not in log, "Faust's per-record restore ran: the bulk restore left records behind"
