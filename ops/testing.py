"""Helpers for testing against a real broker and real worker processes.

Used by this project's integration tests, and usable by anyone checking their
own deployment: start an embedded broker on a free port, run workers as
subprocesses, produce events and collect what lands on ``user-vectors``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.contracts import VectorMessage, decode_vector_message
from core.settings import Settings, load_settings
from core.topics import changelog_topic
from ops.broker import EmbeddedBroker
from ops.demo import WORKER_ARGV, start_worker, wait_healthy, worker_env
from ops.topics import create_topics
from state.user_state import UserState


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
            wait_healthy(s.http.web_url, proc, left, s.home_path / f"{name}.log")
        if len(procs) == 1 or all(_healthy(s.http.web_url) for s in settings):
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


def decode(raw: bytes) -> VectorMessage:
    return decode_vector_message(raw)


# -- crashes, rebalances, and what the state must be afterwards ---------------------------


class WorkerProcess:
    """One ``dupn worker`` that a test can SIGKILL, wipe and restart (own data dir and web port)."""

    def __init__(self, s: Settings, name: str) -> None:
        self.settings = s
        self.name = name
        self.log_path = s.home_path / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.extra_env: dict[str, str] = {}  # e.g. streams.faults' crash point, for the next start

    @classmethod
    def member(cls, s: Settings, name: str) -> WorkerProcess:
        """Another member of ``s``'s group: same topics and app id, its own data dir and port."""
        return cls(s.replace(data_dir=str(s.home_path / name / "data"), web_port=free_port()), name)

    @property
    def url(self) -> str:
        return self.settings.http.web_url

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, ready_timeout_s: float | None = 120) -> None:
        """Start (and, unless ``ready_timeout_s`` is None, wait until /healthz says ready)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.settings.data_path.parent.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {self.starts} at {time.time():.3f} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, *WORKER_ARGV],
                env={**worker_env(self.settings), **self.extra_env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.starts += 1
        if ready_timeout_s is not None:
            self.wait_ready(ready_timeout_s)

    def wait_ready(self, timeout_s: float = 120) -> float:
        return wait_healthy(self.url, self.proc, timeout_s, self.log_path)

    def wait_exit(self, timeout_s: float = 120) -> int:
        """Wait for the process to end by itself (a crash point); its return code (-9: SIGKILL)."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, no leaving the group."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM: Faust commits, flushes and leaves the group."""
        if self.running:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def wipe(self) -> None:
        """Delete the local RocksDB state: the next start restores everything from the changelog."""
        if self.running:
            raise RuntimeError(f"{self.name} is running; kill or stop it before wiping its data dir")
        shutil.rmtree(self.settings.data_path, ignore_errors=True)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


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
    """The last vector per user on ``user-vectors`` (what a compacted topic keeps)."""
    return {m.user_id: m for m in (decode_vector_message(r.value) for r in read_topic(s, s.kafka.vectors_topic))}


def latest_states(s: Settings) -> dict[str, UserState]:
    """The last user state per key in the state table's changelog: what a new owner restores."""
    from state.codec import decode_state

    out: dict[str, UserState] = {}
    for r in read_topic(s, changelog_topic(s.kafka)):
        user = bytes(r.key).decode("utf-8")
        if r.value is None:
            out.pop(user, None)
        else:
            out[user] = decode_state(user, bytes(r.value))
    return out


@dataclass
class Expected:
    """What one user's state must be after a given prefix of their events, by the offline definition."""

    events_seen: int
    last_event_id: str
    records: np.ndarray  # the behaviors of the current LSTM run, as the worker stores them
    vector: np.ndarray


class Reference:
    """The offline definition (``encoder.streaming.reference_vectors``) for a known event log."""

    def __init__(self, s: Settings, events: Iterable[dict[str, Any]]) -> None:
        from encoder.checkpoint import load_checkpoint
        from encoder.features import records_from_events
        from encoder.streaming import StreamingEncoder, UpdatePolicy

        ckpt = load_checkpoint(s.model_dir)
        self.encoder = StreamingEncoder(ckpt.model, ckpt.model_version)
        self.policy = UpdatePolicy(s.model.update_mode, s.model.reanchor_every, ckpt.config.window)  # type: ignore[arg-type]
        self.events: dict[str, list[dict[str, Any]]] = {}
        for ev in events:
            self.events.setdefault(str(ev["user_id"]), []).append(ev)
        self.records = {u: records_from_events(evs) for u, evs in self.events.items()}
        self._cache: dict[tuple[str, int], Expected] = {}

    def final(self) -> dict[str, Expected]:
        return {u: self.after(u, [len(evs)])[0] for u, evs in self.events.items()}

    def after(self, user: str, ns: Sequence[int]) -> list[Expected]:
        """Expected state of ``user`` after each of their first n events."""
        from encoder.streaming import reference_vectors

        todo = sorted({n for n in ns if (user, n) not in self._cache})
        if todo:
            history = self.records[user]
            vectors = reference_vectors(self.encoder, history, self.policy, at=todo)
            for n, vec in zip(todo, vectors, strict=True):
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
    if vector is None or vector.shape != want.vector.shape:
        return f"vector shape {None if vector is None else vector.shape} != {want.vector.shape}"
    err = float(np.abs(vector - want.vector).max())
    return f"vector differs by {err:.2e} > {tol:.0e}" if err > tol else None


def wait_caught_up(
    url: str, want: dict[str, Expected], timeout_s: float = 300.0, token: str | None = None
) -> dict[str, dict[str, Any]]:
    """Ask ``url`` for every user until each answer has (at least) the expected events_seen; the last answers."""
    import urllib.parse

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
