"""Produce behavior events to Kafka: synthetic, from a JSONL file, or from the Taobao CSV."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.settings import Settings
from core.topics import no_broker_message
from ops.topics import require_reachable

Event = dict[str, Any]


@dataclass
class ReplayStats:
    events: int = 0
    seconds: float = 0.0
    last_event_id: dict[str, str] | None = None  # user -> last event id (when tracked)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class ReplayError(RuntimeError):
    """Some events were not acknowledged by the broker (they may be missing from the topic)."""


@dataclass
class SendFailures:
    """Counts sends the broker did not acknowledge (the producer's error callbacks), keeping the first error."""

    count: int = 0
    first: BaseException | None = None

    def record(self, exc: BaseException) -> None:
        self.count += 1
        if self.first is None:
            self.first = exc

    def raise_if_any(self, sent: int) -> None:
        if self.count:
            raise ReplayError(f"{self.count} of {sent} events were not acknowledged by the broker: {self.first!r}")


def synthetic_events(
    users: int, events: int, seed: int = 0, live_time: bool = True, with_profile: bool = True
) -> Iterator[Event]:
    """Simulator events; with ``live_time`` each event's ts is the wall clock when it is produced.

    Live time makes freshness (event ts → vector published) meaningful for a
    replay; the simulator's own clock orders the events. ``with_profile``: each event carries its
    user's profile (the model is trained on the simulator's profile coding), as a producer that
    knows it would send it.
    """
    from training.simulator import SimConfig, Simulator

    sim = Simulator(SimConfig(n_users=users, seed=seed))
    for ev in sim.stream(users, events, with_profile=with_profile):
        if live_time:
            ev = {**ev, "ts": int(time.time() * 1000)}
        yield ev


def jsonl_events(path: Path) -> Iterator[Event]:
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{line_no}: not JSON: {exc}") from exc


def taobao_events(path: Path) -> Iterator[Event]:
    from training.taobao import read_taobao_csv

    yield from read_taobao_csv(path)


def producer(s: Settings) -> Any:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    require_reachable(s)  # seconds and the fix, instead of the client's own retries
    try:
        return KafkaProducer(
            bootstrap_servers=s.kafka.bootstrap,
            client_id=f"{s.kafka.app_id}-replay",
            linger_ms=5,
            batch_size=256 * 1024,
            acks="all",  # an event counts as sent once every in-sync replica has it
            **s.kafka.kafka_client_options(),
        )
    except (KafkaError, OSError) as exc:
        raise ConnectionError(no_broker_message(s.kafka)) from exc


def replay(
    s: Settings,
    events: Iterable[Event],
    *,
    rate: float | None = None,
    total: int | None = None,
    progress: bool = True,
    track_last: bool = False,
    on_sent: Callable[[Event], None] | None = None,
) -> ReplayStats:
    """Send events keyed by user_id; ``rate`` caps events/s (None = as fast as possible)."""
    from tqdm import tqdm

    prod = producer(s)
    stats = ReplayStats(last_event_id={} if track_last else None)
    failures = SendFailures()
    start = time.monotonic()
    bar = tqdm(total=total, unit="ev", disable=not progress, desc="replay", smoothing=0.1)
    try:
        for ev in events:
            if rate:
                _pace(start, stats.events, rate)
            user = str(ev.get("user_id", ""))
            future = prod.send(s.kafka.events_topic, key=user.encode("utf-8"), value=json.dumps(ev).encode("utf-8"))
            future.add_errback(failures.record)
            stats.events += 1
            if stats.last_event_id is not None:
                stats.last_event_id[user] = str(ev.get("event_id", ""))
            if on_sent is not None:
                on_sent(ev)
            if stats.events % 1000 == 0:
                bar.update(1000)
        prod.flush()
        bar.update(stats.events % 1000)
        failures.raise_if_any(stats.events)
    finally:
        bar.close()
        prod.close()
    stats.seconds = time.monotonic() - start
    return stats


def _pace(start: float, sent: int, rate: float) -> None:
    ahead = sent / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
