"""`dupn demo --exit`: the whole process tree, judged by its final JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops.harness import free_port

pytestmark = pytest.mark.integration


def test_demo_exits_zero_when_every_user_is_up_to_date(tmp_path: Path, model_dir: Path) -> None:
    port, web = free_port(), free_port()
    env = {
        **os.environ,
        "DUPN_HOME": str(tmp_path),
        "DUPN_BROKER": f"kafka://127.0.0.1:{port}",
        "DUPN_MODEL_PATH": str(model_dir),
        "DUPN_WEB_PORT": str(web),
        "DUPN_WORKER_URLS": f"http://127.0.0.1:{web}",
        "DUPN_PARTITIONS": "4",
    }
    out = subprocess.run(
        [sys.executable, "-m", "ops", "demo", "--users", "60", "--events", "3000", "--exit", "--timeout", "240"],
        env=env, capture_output=True, text=True, timeout=400,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["events"] == 3000
    assert summary["users"] == summary["users_with_vector"] == summary["users_up_to_date"] > 0
    assert summary["freshness_p50_ms"] <= summary["freshness_p99_ms"]
    assert "worker ready" in out.stdout
    assert f"live dashboard: http://127.0.0.1:{web}/dashboard" in out.stdout
    # the demo stopped the broker it started
    assert not (tmp_path / "broker" / "broker.pid").exists()
