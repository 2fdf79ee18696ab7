"""Per-event freshness, spreads across repetitions and idle CPU: the pure arithmetic of the latency parts.

Kept free of Kafka and processes so that unit tests pin it down exactly. A vector
covers an event when it belongs to the event's user and its ``events_seen`` is at
least the event's index (its 1-based position in that user's stream): the vector
then reflects that event. One sample per vector (the old measure, for the user's
last event only) hid the events that shared a batch with later events of the same
user; here every event is measured once, at the first vector that covers it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ops.bench.common import percentiles_ms


@dataclass(frozen=True)
class SentEvents:
    """One row per event sent: the user (an integer code), its index in that user's stream, its ts (ms)."""

    user: np.ndarray
    index: np.ndarray
    ts_ms: np.ndarray

    def __post_init__(self) -> None:
        _same_lengths("sent events", self.user, self.index, self.ts_ms)
        if self.index.size and int(self.index.min()) < 1:
            raise ValueError("an event's index is its 1-based position in its user's stream; got one below 1")

    def select(self, mask: np.ndarray) -> SentEvents:
        return SentEvents(self.user[mask], self.index[mask], self.ts_ms[mask])


@dataclass(frozen=True)
class ReceivedVectors:
    """One row per vector the reader received, in arrival order: user code, events_seen, receive and publish ms."""

    user: np.ndarray
    events_seen: np.ndarray
    receive_ms: np.ndarray
    updated_ms: np.ndarray

    def __post_init__(self) -> None:
        _same_lengths("received vectors", self.user, self.events_seen, self.receive_ms, self.updated_ms)
        if self.events_seen.size and int(self.events_seen.min()) < 0:
            raise ValueError("events_seen cannot be negative")


@dataclass(frozen=True)
class Coverage:
    """For each sent event: the receive and publish time of the first vector covering it (-1: never covered)."""

    receive_ms: np.ndarray
    updated_ms: np.ndarray

    @property
    def covered(self) -> np.ndarray:
        return np.asarray(self.receive_ms >= 0)


def _same_lengths(what: str, *columns: np.ndarray) -> None:
    if len({len(c) for c in columns}) > 1:
        raise ValueError(f"{what}: columns of different lengths {[len(c) for c in columns]}")


def cover(sent: SentEvents, received: ReceivedVectors) -> Coverage:
    """Match every event to the first vector (in arrival order) of its user with events_seen ≥ its index.

    Vectors are sorted by (user, arrival); the running maximum of
    ``user * span + events_seen`` restarts at each user (a later user's keys are all
    larger), so a binary search for ``user * span + index`` lands on the first
    vector that reached the event, or past the user's vectors when none did.
    """
    receive = np.full(len(sent.user), -1, dtype=np.int64)
    updated = np.full(len(sent.user), -1, dtype=np.int64)
    if not len(sent.user) or not len(received.user):
        return Coverage(receive, updated)
    span = int(max(received.events_seen.max(), sent.index.max())) + 1
    order = np.lexsort((np.arange(len(received.user)), received.receive_ms, received.user))
    keys = received.user[order].astype(np.int64) * span + received.events_seen[order].astype(np.int64)
    reach = np.maximum.accumulate(keys)
    wanted = sent.user.astype(np.int64) * span + sent.index.astype(np.int64)
    pos = np.searchsorted(reach, wanted, side="left")
    hit = pos < len(reach)
    hit[hit] = reach[pos[hit]] < (sent.user[hit].astype(np.int64) + 1) * span  # still this user's vectors
    chosen = order[pos[hit]]
    receive[hit] = received.receive_ms[chosen]
    updated[hit] = received.updated_ms[chosen]
    return Coverage(receive, updated)


def freshness_summary(sent: SentEvents, received: ReceivedVectors) -> dict[str, Any]:
    """Per-event receive − ts (the headline) and publish − ts percentiles; uncovered events counted, not dropped."""
    got = cover(sent, received)
    ok = got.covered
    out: dict[str, Any] = {"events_measured": int(ok.sum()), "events_uncovered": int((~ok).sum())}
    if ok.any():
        out["receive_minus_ts_ms"] = percentiles_ms(got.receive_ms[ok] - sent.ts_ms[ok])
        out["publish_minus_ts_ms"] = percentiles_ms(got.updated_ms[ok] - sent.ts_ms[ok])
    return out


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements (the run-to-run spread on this machine)."""
    if not values:
        raise ValueError("no repetitions to summarize")
    arr = np.asarray(values, dtype=np.float64)
    return {"median": round(float(np.median(arr)), 3), "min": round(float(arr.min()), 3),
            "max": round(float(arr.max()), 3), "n": int(arr.size)}


def percentile_spread(runs: Sequence[Mapping[str, Mapping[str, float]]], key: str) -> dict[str, dict[str, float]]:
    """For each percentile of ``run[key]`` (p50, p99, p999): its spread across the runs that measured it."""
    measured = [r[key] for r in runs if key in r]
    if not measured:
        return {}
    return {q: spread([m[q] for m in measured]) for q in measured[0]}


def cpu_times(proc_stat: str) -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs from the text of /proc/stat; idle counts iowait too."""
    for line in proc_stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(v) for v in fields[1:]]
            if len(values) < 4:
                break
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            total = sum(values[:8])  # guest time is already inside user and nice
            return idle, total
    raise ValueError("no aggregate 'cpu' line in /proc/stat text")


def idle_percent(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """Share of CPU time idle between two ``cpu_times`` samples, in % of all CPUs (None if no time passed)."""
    total = after[1] - before[1]
    if total <= 0:
        return None
    return round(100.0 * (after[0] - before[0]) / total, 1)
