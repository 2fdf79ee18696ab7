"""Operator tools never harm what they don't own and never report success for lost events."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from core.settings import load_settings
from ops import replay as replay_mod
from ops.broker import EmbeddedBroker, process_argv


def test_broker_stop_never_signals_a_process_that_is_not_its_broker(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        broker = EmbeddedBroker(tmp_path, port=1)
        broker.pid_file.write_text(str(other.pid))  # a stale pid file whose number was reused
        assert broker.stop() is False
        assert other.poll() is None, "an unrelated process was stopped"
        assert not broker.pid_file.exists()
    finally:
        other.kill()
        other.wait()


def test_process_argv_reads_a_command_line() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "marker-arg"])
    try:
        # right after fork the child still shows the parent's command line until it execs: wait for that
        deadline = time.monotonic() + 10
        while "marker-arg" not in process_argv(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "marker-arg" in process_argv(proc.pid)
    finally:
        proc.kill()
        proc.wait()


class _Future:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    def add_errback(self, fn: Any) -> None:
        if self.error is not None:
            fn(self.error)


class _FlakyProducer:
    """Fails every third send, as a broker without enough in-sync replicas would."""

    created_with: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options: Any) -> None:
        type(self).created_with = options
        self.sent = 0

    def send(self, topic: str, key: bytes, value: bytes) -> _Future:
        self.sent += 1
        return _Future(TimeoutError("NotEnoughReplicas") if self.sent % 3 == 0 else None)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_replay_waits_for_all_replicas_and_fails_loudly_on_unacknowledged_sends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kafka

    monkeypatch.setattr(kafka, "KafkaProducer", _FlakyProducer)
    monkeypatch.setattr(replay_mod, "require_reachable", lambda s: None)
    events = [{"event_id": f"e{i}", "user_id": f"u{i % 2}"} for i in range(7)]
    with pytest.raises(replay_mod.ReplayError, match="2 of 7 events were not acknowledged"):
        replay_mod.replay(load_settings(env={}), events, progress=False)
    assert _FlakyProducer.created_with["acks"] == "all"
