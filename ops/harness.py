"""Process harness: an embedded broker and ``dupn worker`` processes, started and stopped for you.

One place owns how a worker process is spawned (argv, environment, log, readiness,
shutdown), so ``dupn demo``, ``dupn bench`` and the integration tests run workers the
same way. Talking to what runs (producing events, reading topics, asking the HTTP
API) is :mod:`ops.probes`; what the answers must be is the tests' business
(``tests/support/reference.py``), not shipped here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from core.settings import Settings, load_settings
from ops.broker import EmbeddedBroker
from ops.topics import create_topics

WORKER_ARGV = ("-m", "ops", "worker")
"""The worker command after ``sys.executable``: ``python -m ops worker`` resolves the
packages from the current directory, so a worker runs the same tree as its parent."""


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (the OS picks it)."""
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


def setup_topics(s: Settings) -> None:
    """Create every topic ``s`` names (idempotent), as ``dupn topics create`` does."""
    create_topics(s)


def worker_env(s: Settings) -> dict[str, str]:
    """This process's environment plus ``s`` as DUPN_* variables: how a child worker gets its settings."""
    return {**os.environ, **s.env()}


def start_worker(
    s: Settings,
    log: IO[bytes],
    argv: Sequence[str] = WORKER_ARGV,
    extra_env: Mapping[str, str] | None = None,
    own_session: bool = False,
) -> subprocess.Popen[bytes]:
    """A Python subprocess (``dupn worker`` by default) configured by ``s`` through DUPN_* env vars.

    ``extra_env`` is laid over that environment (e.g. a crash point of ``streams.faults``).
    ``own_session`` keeps a terminal's Ctrl-C from reaching the worker, so the caller stops it
    in its own order (``dupn demo``: readers first, then the worker, then the broker).
    """
    return subprocess.Popen(
        [sys.executable, *argv],
        env={**worker_env(s), **(extra_env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=own_session,
    )


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None, timeout_s: float, log_path: Path) -> float:
    """Seconds until ``url/healthz`` answers 200; fails early (naming the log) if ``proc`` exits."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"worker exited with code {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"worker not healthy at {url} after {timeout_s:.0f}s; see {log_path}")


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM (Faust commits, flushes and leaves the group), SIGKILL if that takes over ``timeout_s``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    _wait_or_kill(proc, timeout_s)


def _wait_or_kill(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait for a process already sent SIGTERM (never a second one); SIGKILL after ``timeout_s``."""
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
        for proc in procs:  # all were sent SIGTERM above, so they shut down side by side
            _wait_or_kill(proc, timeout_s=20)
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
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


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
            self.proc = start_worker(self.settings, log, extra_env=self.extra_env)
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
            stop_process(self.proc, timeout_s)

    def wipe(self) -> None:
        """Delete the local RocksDB state: the next start restores everything from the changelog."""
        if self.running:
            raise RuntimeError(f"{self.name} is running; kill or stop it before wiping its data dir")
        shutil.rmtree(self.settings.data_path, ignore_errors=True)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
