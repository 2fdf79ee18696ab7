"""Model rollout and rollback while a worker runs: vectors switch version, none mixes versions."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from core.contracts import VectorMessage
from encoder.checkpoint import load_checkpoint, save_checkpoint
from encoder.features import records_from_events
from encoder.streaming import StreamingEncoder, UpdatePolicy, reference_vectors
from ops.harness import isolated_settings, running_worker, setup_topics
from ops.probes import collect_vectors, http_get, produce
from tests.support.factories import make_events, tiny_model

pytestmark = pytest.mark.integration

USERS = [f"u{k}" for k in range(12)]
PER_PHASE = 40  # > R, and 3 phases > W + R: re-anchors and window eviction happen in every phase


def point(link: Path, target: Path) -> None:
    """Atomically repoint a symlink (how an operator rolls out: ln -sfn NEW current)."""
    tmp = link.with_name(link.name + ".tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def wait_for_model(url: str, version: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    want = f'dupn_model_info{{model_version="{version}"}} 1.0'
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
            if want in resp.read().decode():
                return
        time.sleep(0.3)
    raise TimeoutError(f"worker did not switch to model {version}")


def run_phase(s, history, phase: int) -> list[VectorMessage]:  # type: ignore[no-untyped-def]
    events = {u: make_events(u, PER_PHASE * 3, seed=k)[PER_PHASE * phase : PER_PHASE * (phase + 1)]
              for k, u in enumerate(USERS)}
    for u in USERS:
        history[u].extend(events[u])
    stream = [e for i in range(PER_PHASE) for u in USERS for e in [events[u][i]]]
    produce(s, stream)
    want = {u: len(history[u]) for u in USERS}
    return collect_vectors(
        s, until=lambda ms: {m.user_id for m in ms if m.events_seen == want[m.user_id]} >= set(USERS)
    )


def test_rollout_and_rollback_switch_versions_without_mixing(tmp_path: Path, broker_url: str) -> None:
    a_dir, b_dir, current = tmp_path / "model-a", tmp_path / "model-b", tmp_path / "current"
    a = save_checkpoint(tiny_model(seed=11), a_dir)
    b = save_checkpoint(tiny_model(seed=12), b_dir)
    point(current, a_dir)
    policy = UpdatePolicy("incremental", 7)
    s = isolated_settings(
        broker_url, tmp_path, current, roles="vectors", update_mode="incremental", reanchor_every=7,
        partitions=2, model_poll_s=0.5,
    )
    setup_topics(s)
    history: dict[str, list[dict[str, object]]] = {u: [] for u in USERS}
    with running_worker(s):
        wait_for_model(s.http.web_url, a)
        run_phase(s, history, 0)
        point(current, b_dir)  # roll out
        wait_for_model(s.http.web_url, b)
        run_phase(s, history, 1)
        status, body = http_get(f"{s.http.web_url}/users/{USERS[0]}/vector")
        assert status == 200 and body["model_version"] == b
        point(current, a_dir)  # roll back
        wait_for_model(s.http.web_url, a)
        published = run_phase(s, history, 2)

    encoders = {v: StreamingEncoder(load_checkpoint(d).model, v) for v, d in ((a, a_dir), (b, b_dir))}
    refs = {
        (v, u): reference_vectors(enc, records_from_events(history[u]), policy)
        for v, enc in encoders.items() for u in USERS
    }
    expected_version = [a, b, a]
    assert len(published) >= len(USERS) * 3
    for m in published:
        # each vector equals its own version's offline reference (nothing mixed), and the version is
        # the one deployed when its events were applied
        assert m.model_version == expected_version[(m.events_seen - 1) // PER_PHASE], (m.user_id, m.events_seen)
        ref = refs[(m.model_version, m.user_id)][m.events_seen - 1]
        assert np.abs(m.vector - ref).max() <= 1e-5, (m.user_id, m.events_seen, m.model_version)
