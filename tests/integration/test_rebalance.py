"""1 -> 2 -> 3 -> 2 workers under load: every HTTP answer right or 503, and nothing lost at the end.

While events stream in, workers join (separate data dirs and web ports, one
group) and one leaves; a client asks random workers for random users all along.
Each answer must be the asked user's vector exactly as the offline definition
gives it after the events_seen it reports (so a stale answer says how stale it
is), with events_seen no more than what was produced for that user so far, or
a 503 with Retry-After. At the end every user's state is the offline reference,
over HTTP from every worker, in the changelog and on ``user-vectors``.
"""

from __future__ import annotations

import random
import threading
import time
import urllib.error
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from ops.harness import WorkerProcess, isolated_settings, setup_topics
from ops.probes import http_request, latest_states, latest_vectors
from ops.replay import replay, synthetic_events
from tests.support.reference import Reference, answer_mismatch, state_mismatch, vector_mismatch, wait_caught_up

pytestmark = [pytest.mark.integration, pytest.mark.crash]

USERS = 300
EVENTS = 24_000
WARMUP = 3_000  # before the first query: every queried user has a state
RATE = 250.0  # events/s for the rest: the load lasts through every membership change
MIN_RIGHT_ANSWERS = 500  # 200 answers checked against the reference (2,303-2,877 seen in 4,200-4,700 answers)


@dataclass
class Answer:
    user: str
    worker: str
    status: int
    retry_after: str | None
    body: Any
    produced: int  # events of this user handed to the producer before the answer arrived
    at: float = field(default_factory=time.time)

    def events_seen_at(self) -> tuple[Any, str, float]:
        return self.body.get("events_seen"), self.worker, round(self.at, 3)


@dataclass
class Client:
    """Asks random live workers for random users until stopped."""

    users: list[str]
    produced: Counter[str]
    live: list[str] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    refused: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        rng = random.Random(7)
        while not self.stop.is_set():
            if not self.live:
                time.sleep(0.05)
                continue
            user, url = rng.choice(self.users), rng.choice(list(self.live))
            try:
                status, headers, body = http_request(f"{url}/users/{urllib.parse.quote(user)}/vector", timeout_s=30)
            except (urllib.error.URLError, OSError):
                self.refused += 1  # not listening (starting or stopped): no answer, nothing to judge
                continue
            self.answers.append(Answer(user, url, status, headers.get("Retry-After"), body, self.produced[user]))
            time.sleep(0.01)


def test_scale_1_2_3_2_under_load_answers_right_or_503_and_loses_nothing(
    tmp_path: Path, broker_url: str, model_dir: Path
) -> None:
    s = isolated_settings(broker_url, tmp_path, model_dir, partitions=8)
    setup_topics(s)
    events = list(synthetic_events(USERS, EVENTS, seed=21, live_time=False))
    reference = Reference(s, events)
    warm, rest = events[:WARMUP], events[WARMUP:]
    produced: Counter[str] = Counter(str(e["user_id"]) for e in warm)
    workers = [WorkerProcess.member(s, f"w{i}") for i in (1, 2, 3)]
    w1, w2, w3 = workers
    client = Client(sorted(produced), produced)
    threads: list[threading.Thread] = []
    try:
        w1.start()
        replay(s, warm, progress=False)
        wait_caught_up(w1.url, {u: reference.after(u, [n])[0] for u, n in produced.items()})
        client.live.append(w1.url)
        threads = [
            threading.Thread(target=client.run, daemon=True),
            threading.Thread(
                target=replay, args=(s, _counted(rest, produced)), daemon=True, kwargs={"rate": RATE, "progress": False}
            ),
        ]
        for t in threads:
            t.start()
        for joining in (w2, w3):  # 1 -> 2 -> 3
            time.sleep(6)
            joining.start(ready_timeout_s=None)
            client.live.append(joining.url)
            joining.wait_ready(180)
        time.sleep(6)
        client.live.remove(w1.url)  # 3 -> 2: the first worker leaves (SIGTERM)
        w1.stop()
        threads[1].join()
        time.sleep(3)
        client.stop.set()
        threads[0].join()

        want = reference.final()
        for worker in (w2, w3):  # any worker answers for any user (routed to the owner)
            answers = wait_caught_up(worker.url, want)
            wrong = {u: why for u in want if (why := answer_mismatch(answers[u], want[u]))}
            assert not wrong, f"{worker.name}: {len(wrong)} users differ: {dict(list(wrong.items())[:5])}"
        states, vectors = latest_states(s), latest_vectors(s)
        wrong = {u: why for u in want if (why := _stored_why(states.get(u), vectors.get(u), want[u]))}
        assert not wrong, f"{len(wrong)} users differ in the changelog / user-vectors: {dict(list(wrong.items())[:5])}"
    finally:
        client.stop.set()
        for w in workers:
            w.stop()

    _assert_answers_right_or_503(client, reference)


def _counted(events: list[dict[str, Any]], produced: Counter[str]) -> Iterator[dict[str, Any]]:
    """Count each event before it is sent: an answer can then never reflect more than the count."""
    for ev in events:
        produced[str(ev["user_id"])] += 1
        yield ev


def _assert_answers_right_or_503(client: Client, reference: Reference) -> None:
    answers = client.answers
    statuses = Counter(a.status for a in answers)
    summary = f"{len(answers)} answers {dict(statuses)}, {client.refused} refused connections"
    # Not vacuous: many answers are checked below, and every worker that answered served some. (Not a share of
    # 200s: that is an availability figure of the machine under churn, 50-67 % of answers measured on 2 cores.)
    assert statuses[200] >= MIN_RIGHT_ANSWERS, summary
    assert {a.worker for a in answers if a.status == 200} == {a.worker for a in answers}, summary
    others = [(a.status, a.body, a.worker, a.at) for a in answers if a.status not in (200, 503)]
    assert not others, f"{summary}: {others[:3]}"
    assert all(a.retry_after and a.retry_after.isdigit() for a in answers if a.status == 503), summary
    by_user: dict[str, list[Answer]] = {}
    for a in answers:
        if a.status == 200:
            by_user.setdefault(a.user, []).append(a)
    wrong = []
    for user, got in by_user.items():
        ns = [min(max(1, int(a.body.get("events_seen", 0))), len(reference.events[user])) for a in got]
        for a, expected in zip(got, reference.after(user, ns), strict=True):
            body = a.body
            why = None
            if body.get("user_id") != user:
                why = f"answer for {body.get('user_id')!r}"
            elif not 1 <= body.get("events_seen", 0) <= a.produced:
                why = f"events_seen {body.get('events_seen')} with {a.produced} produced"
            elif not isinstance(body.get("age_ms"), int) or body["age_ms"] < 0:
                why = f"no staleness in the answer (age_ms {body.get('age_ms')!r})"
            else:
                why = answer_mismatch(body, expected)
            if why:
                wrong.append((user, a.worker, a.at, why))
    assert not wrong, f"{len(wrong)} wrong answers ({summary}): {wrong[:5]}"
    # clean membership changes never step back: a new owner restores everything the old one served
    back = [
        (user, prev.events_seen_at(), a.events_seen_at())
        for user, got in by_user.items()
        for prev, a in pairwise(got)
        if a.body["events_seen"] < prev.body["events_seen"]
    ]
    assert not back, f"{len(back)} answers stepped back ((user, (events_seen, worker, time)) ...): {back[:5]}"
    print(summary)


def _stored_why(state: Any, vector: Any, expected: Any) -> str | None:
    if state is None:
        return "changelog: missing"
    if why := state_mismatch(state, expected):
        return "changelog: " + why
    if vector is None or (vector.events_seen, vector.last_event_id) != (expected.events_seen, expected.last_event_id):
        return f"user-vectors: last vector after {getattr(vector, 'events_seen', None)} events"
    why = vector_mismatch(vector.vector, expected)
    return None if why is None else "user-vectors: " + why
