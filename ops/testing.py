"""Helpers for testing against a real broker and real worker processes.

Used by this project's integration tests, and usable by anyone checking their
own deployment: start an embedded broker on a free port, run workers as
subprocesses, produce events and collect what lands on ``user-vectors``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ops.broker import EmbeddedBroker
from ops.config import Settings, load_settings
from ops.demo import WORKER_ARGV, start_worker, wait_healthy
from ops.topics import create_topics
from streams.contracts import VectorMessage, decode_vector_message


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def embedded_broker(state_dir: Path) -> Iterator[str]:
    """A Tansu broker on a free loopback port; yields its ``kafka://`` URL."""
    broker = EmbeddedBroker(state_dir, "127.0.0.1", free_port())
    broker.start()
    try:
        yield f"kafka://127.0.0.1:{broker.port}"
    finally:
        broker.stop()


def isolated_settings(broker_url: str, home: Path, model_path: Path, **overrides: Any) -> Settings:
    """Settings with their own topic names and app id, so tests sharing a broker don't meet."""
    tag = uuid.uuid4().hex[:8]
    return load_settings(
        env={},
        broker=broker_url,
        home=str(home),
        model_path=str(model_path),
        app_id=f"dupn-{tag}",
        events_topic=f"events-{tag}",
        vectors_topic=f"vectors-{tag}",
        dlq_topic=f"dlq-{tag}",
        web_port=free_port(),
        **overrides,
    )


@contextmanager
def running_worker(
    s: Settings, name: str = "worker", ready_timeout_s: float = 60, argv: Sequence[str] = WORKER_ARGV
) -> Iterator[subprocess.Popen[bytes]]:
    """A ``dupn worker`` subprocess, healthy on entry, stopped (SIGTERM) on exit."""
    with running_workers([s], [name], ready_timeout_s, argv) as procs:
        yield procs[0]


@contextmanager
def running_workers(
    settings: Sequence[Settings],
    names: Sequence[str] | None = None,
    ready_timeout_s: float = 60,
    argv: Sequence[str] = WORKER_ARGV,
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Several worker subprocesses started together (e.g. one group, own ports and data dirs).

    On entry every one answers ``/healthz`` at the same time, so a group of them has
    finished its rebalance; each logs to ``<home>/<name>.log``. ``argv`` runs another
    Faust app with the same settings (the benchmark's passthrough app).
    """
    names = list(names or [f"worker-{i}" for i in range(len(settings))])
    if len(names) != len(settings):
        raise ValueError("one name per worker")
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for s, name in zip(settings, names, strict=True):
            log_path = s.home_path / f"{name}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            logs.append(open(log_path, "ab"))  # noqa: SIM115 - closed in finally
            procs.append(start_worker(s, logs[-1], argv))
        _wait_all_healthy(settings, names, procs, ready_timeout_s)
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


def _wait_all_healthy(
    settings: Sequence[Settings], names: Sequence[str], procs: Sequence[subprocess.Popen[bytes]], timeout_s: float
) -> None:
    """Until all answer 200 in one sweep: a member that was healthy alone goes 503 while a rebalance runs."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = max(1.0, deadline - time.monotonic())
        for s, name, proc in zip(settings, names, procs, strict=True):
            wait_healthy(s.web_url, proc, left, s.home_path / f"{name}.log")
        if len(procs) == 1 or all(_healthy(s.web_url) for s in settings):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(procs)} workers not healthy together after {timeout_s:.0f}s")


def _healthy(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def setup_topics(s: Settings) -> None:
    create_topics(s)


def produce(s: Settings, events: Iterable[dict[str, Any]], raw: Iterable[tuple[bytes | None, bytes]] = ()) -> int:
    """Send contract events (keyed by user_id) and raw (key, value) messages; returns the count."""
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=s.bootstrap, linger_ms=2, **s.kafka_client_options())
    n = 0
    for ev in events:
        prod.send(s.events_topic, key=str(ev["user_id"]).encode(), value=json.dumps(ev).encode())
        n += 1
    for key, value in raw:
        prod.send(s.events_topic, key=key, value=value)
        n += 1
    prod.flush()
    prod.close()
    return n


def collect_vectors(
    s: Settings, until: Any, timeout_s: float = 120.0
) -> list[VectorMessage]:
    """Read ``user-vectors`` from the beginning until ``until(messages)`` is true (or time out)."""
    from ops.vectors import follow_vectors

    out: list[VectorMessage] = []
    deadline = time.monotonic() + timeout_s
    gen = follow_vectors(s)
    try:
        for batch in gen:
            out.extend(msg for msg, _ in batch)
            if until(out):
                return out
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(out)} vector messages after {timeout_s}s")
    finally:
        gen.close()
    return out


def read_dlq(s: Settings, expected: int, timeout_s: float = 60.0) -> list[Any]:
    """The raw DLQ records (value, headers), waiting for ``expected`` of them."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=s.bootstrap, group_id=None, auto_offset_reset="earliest")
    try:
        parts = consumer.partitions_for_topic(s.dlq_topic) or set()
        consumer.assign([TopicPartition(s.dlq_topic, p) for p in parts])
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=200).values():
                out.extend(recs)
        return out
    finally:
        consumer.close()


def http_get(url: str, token: str | None = None, timeout_s: float = 10.0) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, body.decode("utf-8", "replace")


def decode(raw: bytes) -> VectorMessage:
    return decode_vector_message(raw)
