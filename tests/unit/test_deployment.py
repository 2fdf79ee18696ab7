"""What an operator deploying on a real cluster relies on: versions, replication, secrets, process metrics."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest

from core.metrics import REGISTRY
from core.settings import load_settings
from ops import topics
from ops.cli import main


def test_version_flag_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("dupn ") and out != "dupn "


def test_secrets_stay_out_of_repr_but_reach_child_processes() -> None:
    s = load_settings(
        env={
            "DUPN_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "DUPN_KAFKA_SASL_MECHANISM": "PLAIN",
            "DUPN_KAFKA_SASL_USERNAME": "svc",
            "DUPN_KAFKA_SASL_PASSWORD": "hunter2-secret",
            "DUPN_API_TOKEN": "tok-secret",
        }
    )
    assert "hunter2-secret" not in repr(s) and "tok-secret" not in repr(s)
    assert "hunter2-secret" not in str(s.kafka) and "tok-secret" not in str(s.http)
    env = s.env()
    assert env["DUPN_KAFKA_SASL_PASSWORD"] == "hunter2-secret" and env["DUPN_API_TOKEN"] == "tok-secret"
    assert load_settings(env=env) == s


def test_process_metrics_are_exported() -> None:
    text = generate_latest(REGISTRY).decode()
    assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text
    assert "python_info" in text


class _RecordingAdmin:
    def __init__(self) -> None:
        self.created: dict[str, Any] = {}

    def describe_topics(self) -> list[dict[str, Any]]:
        return []

    def create_topics(self, todo: dict[str, Any], raise_errors: bool) -> None:
        self.created.update(todo)

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("env", "expected"), [({}, -1), ({"DUPN_REPLICATION_FACTOR": "3"}, 3)])
def test_topics_are_created_with_the_configured_replication(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: int
) -> None:
    admin = _RecordingAdmin()
    monkeypatch.setattr(topics, "admin_client", lambda s: admin)
    topics.create_topics(load_settings(env=env))
    assert admin.created and {spec["replication_factor"] for spec in admin.created.values()} == {expected}


@pytest.mark.parametrize("bad", ["0", "-2"])
def test_replication_factor_is_validated_at_load(bad: str) -> None:
    with pytest.raises(ValueError, match="DUPN_REPLICATION_FACTOR"):
        load_settings(env={"DUPN_REPLICATION_FACTOR": bad})
