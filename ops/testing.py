"""Helpers for testing against a real broker and real worker processes.

Used by this project's integration tests, and usable by anyone checking their
own deployment: start an embedded broker on a free port, run workers as
subprocesses, produce events and collect what lands on ``user-vectors``.
"""

from __future__ import annotations

import contextlib
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
    own = {
        "app_id": f"dupn-{tag}",
        "events_topic": f"events-{tag}",
        "vectors_topic": f"vectors-{tag}",
        "dlq_topic": f"dlq-{tag}",
        "ppp_topic": f"ppp-{tag}",
        "web_port": free_port(),
    }
    return load_settings(env={}, broker=broker_url, home=str(home), model_path=str(model_path), **{**own, **overrides})


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


def produce_raw(s: Settings, messages: Iterable[tuple[bytes | None, bytes | None]]) -> list[tuple[int, int]]:
    """Send raw (key, value) messages in order; returns where each landed as (partition, offset)."""
    from kafka import KafkaProducer

    prod = KafkaProducer(
        bootstrap_servers=s.bootstrap, linger_ms=2, max_request_size=4 * 1024 * 1024, **s.kafka_client_options()
    )
    try:
        futures = [prod.send(s.events_topic, key=key, value=value) for key, value in messages]
        prod.flush()
        return [(meta.partition, meta.offset) for meta in (f.get(timeout=30) for f in futures)]
    finally:
        prod.close()


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

    consumer = KafkaConsumer(
        bootstrap_servers=s.bootstrap, group_id=None, auto_offset_reset="earliest", **s.kafka_client_options()
    )
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


def http_raw(url: str, token: str | None = None, method: str = "GET", body: bytes | None = None,
             headers: dict[str, str] | None = None, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """(status, body bytes) of one request, for endpoints that don't answer JSON (``/metrics``)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_wire(host: str, port: int, request: bytes, timeout_s: float = 10.0) -> int:
    """Send bytes as they are (malformed or oversized requests) and return the response status (0: none)."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        with contextlib.suppress(OSError):  # the server may answer and close before reading it all
            sock.sendall(request)
        head = b""
        with contextlib.suppress(OSError):
            while b"\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() else 0


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (Linux ``/proc/net/tcp{,6}``)."""
    import ipaddress

    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            host_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A = LISTEN
                continue
            raw = bytes.fromhex(host_hex)
            # the kernel prints each 32-bit word in host (little-endian) order
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))
            found.add(str(ipaddress.ip_address(packed)))
    return found


def non_loopback_address() -> str | None:
    """An IPv4 address of this host that is not loopback, if it has one (no packet is sent)."""
    import ipaddress

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET-1: routing only, nothing is sent
            addr = str(sock.getsockname()[0])
        except OSError:
            return None
    ip = ipaddress.ip_address(addr)
    return None if ip.is_loopback or ip.is_unspecified else addr


def metric_samples(text: bytes | str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Values of one metric in a Prometheus exposition, by sorted label pairs."""
    from prometheus_client.parser import text_string_to_metric_families

    body = text.decode() if isinstance(text, bytes) else text
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == name
    }


def decode(raw: bytes) -> VectorMessage:
    return decode_vector_message(raw)
