"""kill -9 a worker at random moments of a 50k-event replay: nothing lost, nothing applied twice.

The worker is SIGKILLed at seeded random moments while events stream in (mid
batch, mid flush, mid commit, idle: wherever it lands), restarted each time,
and on some restarts its RocksDB is wiped so it must restore from the changelog.
At the end every user's events_seen, stored run of behaviors and vector must
equal the offline definition over the event log, as answered over HTTP, as
stored in the changelog (what any new owner restores) and as last published on
``user-vectors``; then once more after a wipe, from the changelog alone.

Select with ``-m crash``; ``DUPN_CRASH_SEED`` replays another kill schedule.
"""

from __future__ import annotations

import os
import random
import re
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ops.harness import WorkerProcess, isolated_settings, setup_topics
from ops.probes import latest_states, latest_vectors
from ops.replay import replay, synthetic_events
from tests.support.reference import (
    Expected,
    Reference,
    answer_mismatch,
    state_mismatch,
    vector_mismatch,
    wait_caught_up,
)

pytestmark = [pytest.mark.integration, pytest.mark.crash]

USERS = 400  # ~125 events each on average: windows wrap past 100 and runs re-anchor (R = 25)
EVENTS = 50_000
KILLS = 10
WIPES = 3  # restarts that lose the local RocksDB (never the last kill: see the final check)
# A lone worker restarted after SIGKILL: expire the dead member fast and join in ~1 s (the
# defaults cost ~20 s per restart on the embedded broker); correctness does not depend on it.
FAST_GROUP = {"session_timeout_s": 3.0, "heartbeat_interval_s": 0.5, "rebalance_timeout_s": 1.0}


def test_kill9_during_replay_loses_nothing_and_applies_nothing_twice(
    tmp_path: Path, broker_url: str, model_dir: Path
) -> None:
    seed = int(os.environ.get("DUPN_CRASH_SEED", "1"))
    rng = random.Random(seed)
    s = isolated_settings(
        broker_url, tmp_path, model_dir, partitions=4, update_mode="incremental", reanchor_every=25, **FAST_GROUP
    )
    setup_topics(s)
    events = list(synthetic_events(USERS, EVENTS, seed=11, live_time=False))
    reference = Reference(s, events)
    want = reference.final()
    assert max(e.events_seen for e in want.values()) > 125, "the replay must wrap windows and re-anchor"

    wipes = set(rng.sample(range(KILLS - 1), WIPES))
    chunks = [events[i * len(events) // KILLS : (i + 1) * len(events) // KILLS] for i in range(KILLS)]
    worker = WorkerProcess(s, "crashy")
    worker.start()
    duplicates = 0.0
    log: list[str] = []
    try:
        for i, chunk in enumerate(chunks):
            producer = threading.Thread(target=replay, args=(s, chunk), kwargs={"progress": False})
            producer.start()
            delay = rng.uniform(0.2, 3.0)  # a random moment of producing / applying / committing this chunk
            producer.join(timeout=delay)
            duplicates += _metric(worker.url, "dupn_events_total", 'result="duplicate"')
            worker.kill()
            log.append(f"kill {i} at +{delay:.2f}s{' + wipe' if i in wipes else ''}")
            if i in wipes:
                worker.wipe()
            producer.join()
            worker.start()

        answers = wait_caught_up(worker.url, want, timeout_s=600)
        duplicates += _metric(worker.url, "dupn_events_total", 'result="duplicate"')
        _assert_all_match(want, answers, latest_states(s), latest_vectors(s), log)
        # redeliveries happened and were skipped: the idempotence above was exercised, not avoided
        assert duplicates > 0, f"no redelivered event was ever seen; the kills missed every batch ({log})"

        # last: lose the local state once more; the changelog alone must hold every applied event
        worker.kill()
        worker.wipe()
        worker.start()
        answers = wait_caught_up(worker.url, want, timeout_s=300)
        _assert_all_match(want, answers, None, None, [*log, "final wipe"])
    finally:
        worker.stop()


def test_kill_between_local_state_write_and_broker_ack_loses_nothing(
    tmp_path: Path, broker_url: str, model_dir: Path
) -> None:
    """The crash point a random kill rarely hits: states in the local RocksDB, not yet in the changelog.

    After the restart the redelivered events are skipped (their offsets are in the
    local states), so only writing those states again gets them to the changelog
    and their vectors to user-vectors before the offsets are committed.
    """
    s = isolated_settings(broker_url, tmp_path, model_dir, partitions=2, **FAST_GROUP)
    setup_topics(s)
    first = list(synthetic_events(60, 1_500, seed=5, live_time=False))
    users = sorted({str(e["user_id"]) for e in first})
    last = [{**first[-1], "user_id": u, "event_id": f"last-{u}"} for u in users]  # one more event per user
    worker = WorkerProcess(s, "crashpoint")
    worker.start()
    try:
        replay(s, first, progress=False)
        wait_caught_up(worker.url, Reference(s, first).final())
        worker.stop()  # graceful: everything so far is committed; nothing will be redelivered
        worker.extra_env = {"DUPN_FAULT_KILL_AFTER_STATES": "1"}
        worker.start()
        replay(s, last, progress=False)
        assert worker.wait_exit() == -9, "the crash point did not fire"
        worker.extra_env = {}
        worker.start()
        want = Reference(s, first + last).final()
        answers = wait_caught_up(worker.url, want)
        _assert_all_match(want, answers, latest_states(s), latest_vectors(s), ["crash point"])
        worker.kill()
        worker.wipe()
        worker.start()
        _assert_all_match(want, wait_caught_up(worker.url, want), None, None, ["crash point", "wipe"])
    finally:
        worker.stop()


def _assert_all_match(
    want: dict[str, Expected],
    answers: dict[str, dict[str, Any]],
    states: dict[str, Any] | None,
    vectors: dict[str, Any] | None,
    log: list[str],
) -> None:
    wrong: dict[str, str] = {}
    for user, expected in want.items():
        why = answer_mismatch(answers[user], expected)
        if why is None and states is not None:
            why = "changelog: " + m if (m := _state_why(states.get(user), expected)) else None
        if why is None and vectors is not None:
            got = vectors.get(user)
            why = _vector_why(got, expected)
        if why is not None:
            wrong[user] = why
    sample = dict(sorted(wrong.items())[:8])
    assert not wrong, f"{len(wrong)} of {len(want)} users differ from the offline reference: {sample} ({log})"


def _state_why(state: Any, expected: Expected) -> str | None:
    return "missing" if state is None else state_mismatch(state, expected)


def _vector_why(msg: Any, expected: Expected) -> str | None:
    if msg is None:
        return "user-vectors: no vector"
    if (msg.events_seen, msg.last_event_id) != (expected.events_seen, expected.last_event_id):
        return f"user-vectors: last vector is after {msg.events_seen} events ({msg.last_event_id})"
    why = vector_mismatch(msg.vector, expected)
    return None if why is None else "user-vectors: " + why


def _metric(url: str, name: str, label: str) -> float:
    """A counter's value from /metrics (0 when the worker is not up or has not counted it yet)."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    match = re.search(rf"^{name}{{{label}}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0
