"""DUPN_LOG_FORMAT=json: one parseable object per record, extra fields and tracebacks included."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import sys

from core.settings import load_settings
from ops.logs import JsonFormatter, logging_config


def record(msg: str, *args: object, level: int = logging.WARNING, **extra: object) -> logging.LogRecord:
    rec = logging.getLogger("streams.agents").makeRecord("streams.agents", level, "f.py", 1, msg, args, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_one_json_object_per_line_with_the_fixed_keys() -> None:
    line = JsonFormatter().format(record("rejected %s at %d", "bad_json", 7))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "warning" and doc["logger"] == "streams.agents"
    assert doc["message"] == "rejected bad_json at 7"
    assert doc["ts"].endswith("Z") and doc["ts"][10] == "T"


def test_extra_fields_become_keys_and_unserializable_values_strings() -> None:
    doc = json.loads(JsonFormatter().format(record("x", reason="bad_json", partition=3, where=object)))
    assert doc["reason"] == "bad_json" and doc["partition"] == 3
    assert doc["where"] == str(object)
    assert "args" not in doc and "levelno" not in doc


def test_exception_traceback_stays_on_one_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        rec = logging.getLogger("t").makeRecord("t", logging.ERROR, "f.py", 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exc"]


def test_setting_selects_the_formatter() -> None:
    stream = io.StringIO()
    for fmt, parse in (("json", json.loads), ("text", str)):
        config = logging_config(load_settings(env={"DUPN_LOG_FORMAT": fmt}))
        config["handlers"]["dupn"]["stream"] = stream
        logging.config.dictConfig(config)
        logging.getLogger("ops.test").info("hello %s", fmt)
        parse(stream.getvalue().splitlines()[-1])
    lines = stream.getvalue().splitlines()
    assert json.loads(lines[0])["message"] == "hello json"
    assert lines[1].endswith("INFO ops.test: hello text")
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False, "root": {"handlers": []}})
