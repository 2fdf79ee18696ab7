"""The offline definition of what a user's state and vector must be, for asserting test outcomes.

``encoder.streaming.reference_vectors`` recomputes, from a known event log, each
user's stored run and vector after any prefix of their events; the checks below say
*why* a stored state, an HTTP answer or a published vector differs from it. This is
test support, not an operator tool: it lives beside the tests (not in ``ops/``) so the
shipped package carries no assertions.
"""

from __future__ import annotations

import time
import urllib.parse
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.contracts import UNKNOWN_PROFILE
from core.settings import Settings
from encoder.checkpoint import load_checkpoint
from encoder.features import records_from_events
from encoder.streaming import StreamingEncoder, UpdatePolicy, reference_vectors
from ops.probes import http_get
from state.user_state import UserState


@dataclass
class Expected:
    """What one user's state must be after a given prefix of their events, by the offline definition."""

    events_seen: int
    last_event_id: str
    records: np.ndarray  # the behaviors of the current LSTM run, as the worker stores them
    vector: np.ndarray


def applied_events(events: Iterable[dict[str, Any]], window: int) -> list[dict[str, Any]]:
    """One user's events (log order) without the repeats the worker skips (README, "Event order and
    duplicates"): an event whose ``event_id`` is among the ids of the last ``window`` *applied* events
    before it. A function of the log alone, so batching and redelivery cannot change it."""
    applied: list[dict[str, Any]] = []
    recent: deque[str] = deque(maxlen=window)
    for ev in events:
        event_id = str(ev["event_id"])
        if event_id in recent:
            continue
        recent.append(event_id)
        applied.append(ev)
    return applied


def profiles_after(events: Sequence[dict[str, Any]]) -> list[tuple[int, int]]:
    """The user's profile after each applied event (README, "User profile"): the newest event that
    carries ``profile`` sets both codes (absent or null = -1); an event without one keeps it."""
    current, out = UNKNOWN_PROFILE, []
    for ev in events:
        raw = ev.get("profile")
        if raw is not None:
            age, gender = raw.get("age_group"), raw.get("gender")
            current = (-1 if age is None else int(age), -1 if gender is None else int(gender))
        out.append(current)
    return out


class Reference:
    """The offline definition (``encoder.streaming.reference_vectors``) for a known event log.

    ``events`` is the log (per user in partition order); repeated event ids are dropped as the worker
    skips them (:func:`applied_events`), so ``events_seen`` counts applied events only."""

    def __init__(self, s: Settings, events: Iterable[dict[str, Any]]) -> None:
        ckpt = load_checkpoint(s.model_dir)
        self.encoder = StreamingEncoder(ckpt.model, ckpt.model_version)
        self.policy = UpdatePolicy(s.model.update_mode, s.model.reanchor_every, ckpt.config.window)  # type: ignore[arg-type]
        log: dict[str, list[dict[str, Any]]] = {}
        for ev in events:
            log.setdefault(str(ev["user_id"]), []).append(ev)
        self.events = {u: applied_events(evs, self.policy.window) for u, evs in log.items()}
        self.records = {u: records_from_events(evs) for u, evs in self.events.items()}
        self._cache: dict[tuple[str, int], Expected] = {}

    def final(self) -> dict[str, Expected]:
        """Every user's expected state after all of their events."""
        return {u: self.after(u, [len(evs)])[0] for u, evs in self.events.items()}

    def after(self, user: str, ns: Sequence[int]) -> list[Expected]:
        """Expected state of ``user`` after each of their first n events (each computed once)."""
        todo = sorted({n for n in ns if (user, n) not in self._cache})
        if todo:
            history = self.records[user]
            profiles = profiles_after(self.events[user])
            by_profile: dict[tuple[int, int], list[int]] = {}
            for n in todo:
                by_profile.setdefault(profiles[n - 1], []).append(n)
            vectors_at: dict[int, np.ndarray] = {}
            for profile, at in by_profile.items():
                got = reference_vectors(self.encoder, history, self.policy, at=at, profile=profile)
                vectors_at.update(zip(at, got, strict=True))
            for n, vec in ((n, vectors_at[n]) for n in todo):
                self._cache[(user, n)] = Expected(
                    n, str(self.events[user][n - 1]["event_id"]), history[self.policy.run_start(n) : n], vec
                )
        return [self._cache[(user, n)] for n in ns]


def state_mismatch(got: UserState, want: Expected, tol: float = 1e-5) -> str | None:
    """Why a stored user state differs from the offline definition (None when it does not)."""
    if got.events_seen != want.events_seen:
        return f"events_seen {got.events_seen} != {want.events_seen}"
    if got.last_event_id != want.last_event_id:
        return f"last_event_id {got.last_event_id!r} != {want.last_event_id!r}"
    if got.records.shape != want.records.shape or not np.array_equal(got.records, want.records):
        return f"stored run differs ({len(got.records)} vs {len(want.records)} behaviors)"
    return vector_mismatch(got.vector, want, tol)


def answer_mismatch(body: dict[str, Any], want: Expected, tol: float = 1e-5) -> str | None:
    """Why a ``GET /users/{id}/vector`` body differs from the offline definition (None when it does not)."""
    if body.get("events_seen") != want.events_seen:
        return f"events_seen {body.get('events_seen')} != {want.events_seen}"
    if body.get("last_event_id") != want.last_event_id:
        return f"last_event_id {body.get('last_event_id')!r} != {want.last_event_id!r}"
    return vector_mismatch(np.asarray(body.get("vector", []), np.float32), want, tol)


def vector_mismatch(vector: np.ndarray | None, want: Expected, tol: float = 1e-5) -> str | None:
    """Why a vector differs from the expected one by more than ``tol`` (None when it does not)."""
    if vector is None or vector.shape != want.vector.shape:
        return f"vector shape {None if vector is None else vector.shape} != {want.vector.shape}"
    err = float(np.abs(vector - want.vector).max())
    return f"vector differs by {err:.2e} > {tol:.0e}" if err > tol else None


def wait_caught_up(
    url: str, want: dict[str, Expected], timeout_s: float = 300.0, token: str | None = None
) -> dict[str, dict[str, Any]]:
    """Ask ``url`` for every user until each answer has (at least) the expected events_seen; the last answers."""
    answers: dict[str, dict[str, Any]] = {}
    pending = set(want)
    deadline = time.monotonic() + timeout_s
    while pending:
        for user in sorted(pending):
            status, body = http_get(f"{url}/users/{urllib.parse.quote(user)}/vector", token)
            if status == 200:
                answers[user] = body
                if body.get("events_seen", 0) >= want[user].events_seen:
                    pending.discard(user)
        if pending and time.monotonic() > deadline:
            sample = {u: answers.get(u, {}).get("events_seen") for u in sorted(pending)[:5]}
            raise TimeoutError(
                f"{len(pending)} users not caught up at {url} after {timeout_s:.0f}s (events_seen: {sample})"
            )
        if pending:
            time.sleep(0.5)
    return answers
