"""A zombie writer: one of two workers frozen (SIGSTOP) past its session timeout during a replay, then thawed.

The worker freezes itself mid-batch (``DUPN_FAULT_FREEZE_AFTER_READS``: SIGSTOP while applying a batch,
before writing it); the group hands its partitions to the other worker while it sleeps; the test wakes it
(SIGCONT) holding that applied batch, whose states are older than what the new owner has written since.
Afterwards every reader must see each user's latest state, exactly
the offline reference: HTTP (any worker, routed to the owner), ``VectorCache``, a read of ``user-vectors``
keeping the highest ``events_seen`` per user (what a compacted topic's reader keeps), and a worker restored
from the changelog into an empty data dir. The log carries repeated event ids (some of the user's last
100, some older), redelivered across the freeze: the result is the one the event log defines
(``tests.support.reference.applied_events``), as without the freeze.

Bounded: 3,000 events over ~10 s, a 15 s freeze with a 10 s session timeout.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from clients.vector_cache import VectorCache
from ops.harness import WorkerProcess, isolated_settings, setup_topics
from ops.probes import newest_vectors
from ops.replay import replay, synthetic_events
from streams.faults import FREEZE_ENV
from tests.support.reference import Reference, answer_mismatch, vector_mismatch, wait_caught_up

pytestmark = [pytest.mark.integration, pytest.mark.crash]

USERS = 60
EVENTS = 3_000
FREEZE_S = 15.0
FREEZE_AT_READ = 300  # state reads (one per user per batch) before the zombie stops itself: early in the replay,
# which ends while it sleeps, so its late writes would be the last records of their users


def _wait_stopped(pid: int, timeout_s: float) -> None:
    """Until the process is in state T (stopped by a signal)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
            return
        time.sleep(0.1)
    raise TimeoutError(f"worker {pid} did not freeze itself within {timeout_s}s")


def _with_repeats(events: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The log with ~2 % repeats of a user's earlier event ids (same id, later ts), near and far back."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    by_user: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        mine = by_user.setdefault(str(ev["user_id"]), [])
        if len(mine) > 5 and rng.random() < 0.02:
            out.append({**mine[-rng.randint(1, len(mine))], "ts": ev["ts"]})
        out.append(ev)
        mine.append(ev)
    return out


def test_a_frozen_worker_never_makes_a_reader_see_an_older_state(
    tmp_path: Path, broker_url: str, model_dir: Path
) -> None:
    s = isolated_settings(broker_url, tmp_path, model_dir, partitions=4, session_timeout_s=10.0)
    setup_topics(s)
    events = _with_repeats(list(synthetic_events(USERS, EVENTS, seed=14, live_time=False)), seed=14)
    reference = Reference(s, events)
    want = reference.final()
    assert any(len(reference.events[u]) < sum(e["user_id"] == u for e in events) for u in want), "no repeats"

    steady, zombie = WorkerProcess.member(s, "steady"), WorkerProcess.member(s, "zombie")
    zombie.extra_env = {FREEZE_ENV: str(FREEZE_AT_READ)}
    fresh = WorkerProcess.member(s, "fresh")
    try:
        for w in (steady, zombie):
            w.start(ready_timeout_s=None)
        for w in (steady, zombie):
            w.wait_ready(180)
        producing = threading.Thread(target=replay, args=(s, events), kwargs={"rate": 300.0, "progress": False})
        producing.start()
        assert zombie.proc is not None
        _wait_stopped(zombie.proc.pid, timeout_s=60)  # it froze itself mid-batch
        time.sleep(FREEZE_S)  # past the session timeout: the group gives its partitions to `steady`
        os.kill(zombie.proc.pid, signal.SIGCONT)
        producing.join(timeout=120)
        assert not producing.is_alive()

        # HTTP: any worker answers every user exactly as the reference (routed to the owner)
        answers = wait_caught_up(steady.url, want, timeout_s=180)
        bad = {u: answer_mismatch(answers[u], want[u]) for u in want}
        assert not {u: why for u, why in bad.items() if why}, "HTTP"
        time.sleep(2)  # let the last vectors and the zombie's late writes, if any, reach the broker

        with VectorCache(s) as cache:
            assert cache.wait_bootstrapped(60)
            cached = {u: cache.get(u) for u in want}
        bad = {u: None if got is None else (got[0].events_seen, want[u].events_seen) for u, got in cached.items()
               if got is None or got[0].events_seen != want[u].events_seen}
        assert not bad, f"VectorCache (got, want): {bad}"

        newest = newest_vectors(s)
        bad_vec = {u: f"{newest[u].events_seen} != {want[u].events_seen}" if u in newest and
                   newest[u].events_seen != want[u].events_seen else (None if u in newest else "missing")
                   for u in want}
        bad_vec = {u: why or vector_mismatch(newest[u].vector, want[u]) for u, why in bad_vec.items()}
        assert not {u: why for u, why in bad_vec.items() if why}, "user-vectors, newest per user"

        for w in (steady, zombie):
            w.stop()
        fresh.start(ready_timeout_s=180)  # an empty data dir: everything restored from the changelog
        answers = wait_caught_up(fresh.url, want, timeout_s=120)
        bad = {u: answer_mismatch(answers[u], want[u]) for u in want}
        assert not {u: why for u, why in bad.items() if why}, "restored into an empty data dir"
    finally:
        if zombie.proc is not None and zombie.running:
            os.kill(zombie.proc.pid, signal.SIGCONT)
        for w in (steady, zombie, fresh):
            w.stop()
    fenced = zombie.log_text().count("lost its group membership while applying a batch")
    print(f"\nzombie: {fenced} batch(es) dropped by the membership check after the freeze")
