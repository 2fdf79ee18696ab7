"""Probes: talk to a running deployment the way its clients do, and report what came back.

Produce events (contract events or raw bytes), read a topic to its end, follow
``user-vectors``, read the DLQ and the table changelog, ask the HTTP API (JSON, raw,
or bytes on the wire) and parse ``/metrics``. Used by ``dupn bench`` and the
integration tests, and usable by anyone checking their own deployment; starting what
they talk to is :mod:`ops.harness`. Every Kafka client takes the settings'
security options, so a probe works against a secured cluster too.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clients.vectors import decodable
from core.contracts import VectorMessage, newer_vector
from core.settings import Settings
from core.topics import changelog_topic
from state.user_state import UserState


def produce(s: Settings, events: Iterable[dict[str, Any]], raw: Iterable[tuple[bytes | None, bytes]] = ()) -> int:
    """Send contract events (keyed by user_id) and raw (key, value) messages; returns the count."""
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=s.kafka.bootstrap, linger_ms=2, **s.kafka.kafka_client_options())
    n = 0
    for ev in events:
        prod.send(s.kafka.events_topic, key=str(ev["user_id"]).encode(), value=json.dumps(ev).encode())
        n += 1
    for key, value in raw:
        prod.send(s.kafka.events_topic, key=key, value=value)
        n += 1
    prod.flush()
    prod.close()
    return n


def produce_raw(s: Settings, messages: Iterable[tuple[bytes | None, bytes | None]]) -> list[tuple[int, int]]:
    """Send raw (key, value) messages in order; returns where each landed as (partition, offset)."""
    from kafka import KafkaProducer

    prod = KafkaProducer(
        bootstrap_servers=s.kafka.bootstrap,
        linger_ms=2,
        max_request_size=4 * 1024 * 1024,
        **s.kafka.kafka_client_options(),
    )
    try:
        futures = [prod.send(s.kafka.events_topic, key=key, value=value) for key, value in messages]
        prod.flush()
        return [(meta.partition, meta.offset) for meta in (f.get(timeout=30) for f in futures)]
    finally:
        prod.close()


def collect_vectors(s: Settings, until: Any, timeout_s: float = 120.0) -> list[VectorMessage]:
    """Read ``user-vectors`` from the beginning until ``until(messages)`` is true (or time out)."""
    from clients.vectors import follow_vectors

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
        bootstrap_servers=s.kafka.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        **s.kafka.kafka_client_options(),
    )
    try:
        parts = consumer.partitions_for_topic(s.kafka.dlq_topic) or set()
        consumer.assign([TopicPartition(s.kafka.dlq_topic, p) for p in parts])
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=200).values():
                out.extend(recs)
        return out
    finally:
        consumer.close()


def http_get(url: str, token: str | None = None, timeout_s: float = 10.0) -> tuple[int, Any]:
    """GET: (status, body as JSON or text), for callers that don't look at headers."""
    status, _, body = http_request(url, token, timeout_s)
    return status, body


def http_request(url: str, token: str | None = None, timeout_s: float = 10.0) -> tuple[int, dict[str, str], Any]:
    """GET: (status, headers, body as JSON or text); HTTP errors are answers too, not exceptions."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, dict(resp.headers.items()), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        headers = dict(exc.headers.items()) if exc.headers else {}
        try:
            return exc.code, headers, json.loads(body)
        except ValueError:
            return exc.code, headers, body.decode("utf-8", "replace")


def http_raw(
    url: str,
    token: str | None = None,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> tuple[int, bytes]:
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


def read_topic(s: Settings, topic: str, timeout_s: float = 120.0) -> list[Any]:
    """Every record of ``topic`` up to its high watermark, each partition in offset order.

    The end is the high watermark of the Fetch responses, not ListOffsets: the
    embedded broker under-reports the latter (see :mod:`streams.highwater`).
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=s.kafka.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **s.kafka.kafka_client_options(),
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while True:
            for recs in consumer.poll(timeout_ms=500).values():
                out.extend(recs)
            ends = {tp: consumer.highwater(tp) for tp in tps}
            if all(end is not None and consumer.position(tp) >= end for tp, end in ends.items()):
                return out
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: read {len(out)} records, not at the end after {timeout_s}s")
    finally:
        consumer.close()


def latest_vectors(s: Settings) -> dict[str, VectorMessage]:
    """The last vector per user on ``user-vectors`` (what a compacted topic keeps); v1 and v2 messages alike,
    one that does not decode logged and skipped (``clients.vectors.decodable``)."""
    return {m.user_id: m for m in decodable(read_topic(s, s.kafka.vectors_topic))}


def latest_states(s: Settings) -> dict[str, UserState]:
    """Every user's state as a new owner restores it from the state table's changelog.

    The changelog holds headers and behavior blocks (state.changelog), no vector: like a worker's read of
    a restored state, the vector is the one the worker's own path recomputes from the restored behaviors
    (``streams.worker.restored_vector``, with the model the settings name)."""
    from state.changelog import states_from_changelog
    from streams.runtime import Runtime
    from streams.worker import restored_vector

    records = [(None if r.key is None else bytes(r.key), None if r.value is None else bytes(r.value))
               for r in read_topic(s, changelog_topic(s.kafka))]
    out = states_from_changelog(records)
    runtime = Runtime(s)
    for state in out.values():
        if state.vector is None and len(state.records):
            state.vector, state.model_version = restored_vector(runtime, state)
    return out


def newest_vectors(s: Settings) -> dict[str, VectorMessage]:
    """Per user, the vector with the highest ``events_seen`` on ``user-vectors`` (ties: the later one):
    what a reader must keep, since a fenced-out (zombie) owner's late write can follow a newer vector.
    A message that does not decode is logged and skipped, as in :func:`latest_vectors`."""
    out: dict[str, VectorMessage] = {}
    for m in decodable(read_topic(s, s.kafka.vectors_topic)):
        if newer_vector(out.get(m.user_id), m):
            out[m.user_id] = m
    return out
