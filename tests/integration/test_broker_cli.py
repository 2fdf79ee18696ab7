"""`dupn broker` and `dupn topics` as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import load_settings
from core.topics import changelog_topic
from ops.harness import free_port
from ops.topics import admin_client

pytestmark = pytest.mark.integration


def dupn(home: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ops", "--home", str(home), "--broker", f"kafka://127.0.0.1:{port}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_broker_lifecycle_and_topics(tmp_path: Path) -> None:
    port = free_port()
    assert dupn(tmp_path, port, "broker", "status").returncode == 3
    first = dupn(tmp_path, port, "broker", "start")
    try:
        assert first.returncode == 0 and "running" in first.stdout
        pid = (tmp_path / "broker" / "broker.pid").read_text()
        again = dupn(tmp_path, port, "broker", "start")
        assert again.returncode == 0 and (tmp_path / "broker" / "broker.pid").read_text() == pid
        created = dupn(tmp_path, port, "topics", "create", "--partitions", "3")
        assert created.returncode == 0, created.stderr
        s = load_settings(env={}, broker=f"kafka://127.0.0.1:{port}", partitions=3)
        admin = admin_client(s)
        try:
            parts = {t["name"]: len(t["partitions"]) for t in admin.describe_topics()}
        finally:
            admin.close()
        for name in (s.kafka.events_topic, s.kafka.vectors_topic, s.kafka.dlq_topic, changelog_topic(s.kafka)):
            assert parts[name] == 3
        assert "exists" in dupn(tmp_path, port, "topics", "create", "--partitions", "3").stdout
        clash = dupn(tmp_path, port, "topics", "create", "--partitions", "5")
        assert clash.returncode == 1 and "DUPN_PARTITIONS" in clash.stderr
    finally:
        stop = dupn(tmp_path, port, "broker", "stop")
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert dupn(tmp_path, port, "broker", "status").returncode == 3


def test_no_broker_error_names_the_fix(tmp_path: Path) -> None:
    out = dupn(tmp_path, free_port(), "topics", "create")
    assert out.returncode == 1
    assert "dupn broker start" in out.stderr and "DUPN_BROKER" in out.stderr
