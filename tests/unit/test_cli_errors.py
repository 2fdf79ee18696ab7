"""A missing broker, model or worker is one line on stderr that names the fix, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka.errors import KafkaTimeoutError

from ops.cli import error_message, main
from ops.harness import free_port


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("dupn: error: ")
    return lines[0]


@pytest.mark.parametrize(
    "command",
    [["topics", "create"], ["replay", "--synthetic", "--users", "2", "--events", "3", "--no-progress"]],
)
def test_no_broker_names_the_fix(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code, err = run(["--broker", f"kafka://127.0.0.1:{port}", *command], capsys)
    assert code == 1
    line = one_line(err)
    assert f"no broker at 127.0.0.1:{port}" in line
    assert "run `dupn broker start` or set DUPN_BROKER" in line


def test_no_model_names_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["--home", str(tmp_path), "worker"], capsys)
    assert code == 1
    line = one_line(err)
    assert f"no checkpoint at {tmp_path / 'models' / 'demo'}" in line and "`dupn train`" in line


def test_no_worker_names_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["vector", "u1", "--url", f"http://127.0.0.1:{free_port()}"], capsys)
    assert code == 1
    assert "start one with `dupn worker` or set DUPN_WORKER_URLS" in one_line(err)


def test_bad_setting_names_the_variable(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUPN_PARTITIONS", "eight")
    code, err = run(["topics", "create"], capsys)
    assert code == 1 and "DUPN_PARTITIONS='eight'" in one_line(err)


def test_kafka_errors_point_at_the_kafka_settings() -> None:
    message = error_message(KafkaTimeoutError("metadata"))
    assert message is not None and "DUPN_BROKER" in message and "DUPN_KAFKA_" in message


def test_a_bug_still_raises_with_its_traceback() -> None:
    assert error_message(AttributeError("x")) is None
    assert error_message(TypeError("x")) is None


@pytest.mark.parametrize(("env", "value"), [("DUPN_LOG_FORMAT", "xml"), ("DUPN_LOG_LEVEL", "verbose")])
def test_bad_log_setting_names_the_variable(
    env: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(env, value)
    code, err = run(["dashboards", "export", "--out", str(tmp_path), "--targets", "x:1"], capsys)
    assert code == 1 and f"{env} must be" in one_line(err)


def test_with_json_logs_the_error_is_a_json_line(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.setenv("DUPN_LOG_FORMAT", "json")
    code, err = run(["vector", "u1", "--url", f"http://127.0.0.1:{free_port()}"], capsys)
    assert code == 1
    doc = json.loads(err.strip())
    assert doc["level"] == "error" and "start one with `dupn worker`" in doc["message"]
