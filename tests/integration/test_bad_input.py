"""The bad-event corpus through a real broker and worker: DLQ, metrics, unaffected vectors, still healthy."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.contracts import DLQ_MAX_KEY_BYTES, DLQ_MAX_VALUE_BYTES
from encoder.checkpoint import load_checkpoint
from encoder.features import records_from_events
from encoder.streaming import StreamingEncoder, UpdatePolicy, reference_vectors
from ops.harness import isolated_settings, running_worker, setup_topics
from ops.probes import collect_vectors, http_get, http_raw, metric_samples, produce_raw, read_dlq
from tests.corpus.bad_events import BAD_EVENTS, USER, reason_counts
from tests.support.factories import make_events

pytestmark = pytest.mark.integration


def test_corpus_goes_to_the_dlq_and_valid_events_are_unaffected(
    tmp_path: Path, broker_url: str, model_dir: Path
) -> None:
    s = isolated_settings(broker_url, tmp_path, model_dir, update_mode="exact", partitions=4)
    setup_topics(s)
    users = {USER: make_events(USER, 40, seed=1), "v2": make_events("v2", 25, seed=2)}
    valid = [(str(e["user_id"]).encode(), json.dumps(e).encode()) for e in _interleave(users)]
    bad = [(c.key, c.value) for c in BAD_EVENTS]
    messages = _spread(valid, bad)  # bad messages between valid ones; the last valid events come after all bad
    tail = make_events("v3", 3, seed=3)  # sent once the DLQ is read: the worker must still be consuming
    with running_worker(s):
        positions = produce_raw(s, messages)
        dlq = read_dlq(s, expected=len(BAD_EVENTS), timeout_s=180)
        produce_raw(s, [(b"v3", json.dumps(e).encode()) for e in tail])
        want = {USER: 40, "v2": 25, "v3": 3}
        published = collect_vectors(
            s, until=lambda msgs: {m.user_id for m in msgs if m.events_seen == want.get(m.user_id)} >= want.keys(),
            timeout_s=180,
        )
        rejected = _rejected_counts(s.http.web_url)
        assert http_get(f"{s.http.web_url}/healthz")[0] == 200

    where = {id(msg): pos for msg, pos in zip(messages, positions, strict=True)}
    sent = {where[id(m)]: (case, m) for case, m in zip(BAD_EVENTS, bad, strict=True)}
    assert len(dlq) == len(BAD_EVENTS)
    seen = set()
    for rec in dlq:
        headers = {k: v.decode() for k, v in rec.headers}
        pos = (int(headers["dupn.source.partition"]), int(headers["dupn.source.offset"]))
        case, (key, value) = sent[pos]
        assert headers["dupn.reason"] == case.reason, case.name
        assert headers["dupn.source.topic"] == s.kafka.events_topic
        assert headers["dupn.detail"]
        _assert_original(rec, headers, key, value, case.name)
        seen.add(pos)
    assert seen == set(sent), "every corpus message once in the DLQ"
    assert rejected == reason_counts()

    ckpt = load_checkpoint(model_dir)
    encoder = StreamingEncoder(ckpt.model, ckpt.model_version)
    last = {m.user_id: m for m in published}
    for user, events in {**users, "v3": tail}.items():
        ref = reference_vectors(encoder, records_from_events(events), UpdatePolicy("exact"))
        assert last[user].events_seen == len(events) and last[user].last_event_id == events[-1]["event_id"]
        assert np.abs(last[user].vector - ref[-1]).max() <= 1e-5


def _assert_original(rec: Any, headers: dict[str, str], key: bytes | None, value: bytes, name: str) -> None:
    """The DLQ holds the original bytes; beyond the DLQ copy limits a prefix, the length and the hash."""
    cut = []
    if len(value) > DLQ_MAX_VALUE_BYTES:
        assert rec.value == value[:DLQ_MAX_VALUE_BYTES] and headers["dupn.sha256"] == hashlib.sha256(value).hexdigest()
        cut.append(f"value:{len(value)}")
    else:
        assert rec.value == value, f"{name}: DLQ value is not the original bytes"
    if key is not None and len(key) > DLQ_MAX_KEY_BYTES:
        assert rec.key == key[:DLQ_MAX_KEY_BYTES]
        cut.append(f"key:{len(key)}")
    else:
        assert rec.key == key, name
    assert headers.get("dupn.truncated", "") == ",".join(cut), name


def _interleave(users: dict[str, list[dict[str, object]]]) -> list[dict[str, object]]:
    streams = [list(v) for v in users.values()]
    out = []
    while any(streams):
        for st in streams:
            if st:
                out.append(st.pop(0))
    return out


def _spread(
    valid: list[tuple[bytes | None, bytes]], bad: list[tuple[bytes | None, bytes]]
) -> list[tuple[bytes | None, bytes]]:
    out: list[tuple[bytes | None, bytes]] = []
    step = max(1, (len(valid) - 5) // len(bad))
    rest = list(bad)
    for i, msg in enumerate(valid):
        out.append(msg)
        if i % step == 0 and rest and i < len(valid) - 5:
            out.append(rest.pop(0))
    return out[:-5] + rest + out[-5:]


def _rejected_counts(url: str, timeout_s: float = 60.0) -> dict[str, int]:
    """dupn_events_rejected_total by reason, once it stops changing (metrics follow the DLQ sends)."""
    deadline = time.monotonic() + timeout_s
    want = sum(reason_counts().values())
    while True:
        status, body = http_raw(f"{url}/metrics")
        assert status == 200
        counts = {dict(k)["reason"]: int(v) for k, v in metric_samples(body, "dupn_events_rejected_total").items()}
        if sum(counts.values()) >= want or time.monotonic() > deadline:
            return {r: n for r, n in counts.items() if n}
        time.sleep(0.5)
