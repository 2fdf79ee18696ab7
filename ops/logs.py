"""Log output of the worker and the CLI: plain text (default) or one JSON object per line.

``DUPN_LOG_FORMAT=json`` makes every record a single line
``{"ts", "level", "logger", "message", ...extra fields}`` that log shippers
can parse without a grok pattern; ``extra={...}`` fields of a log call and an
exception's traceback (``exc``) become keys of that object.
"""

from __future__ import annotations

import json
import logging
import logging.config
import sys
import time
from typing import Any

from core.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; non-JSON extra values are written as their ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _iso_utc(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def _iso_utc(created: float) -> str:
    ms = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{ms:03d}Z"


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted (tests and tools swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def logging_config(s: Settings, stream: str | None = "ext://sys.stderr") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict for ``s.worker.log_format`` / ``s.worker.log_level``.

    The worker gives it to Faust with the stream fixed at configuration time
    (Faust then redirects ``sys.stderr`` into logging, which must not loop);
    ``stream=None`` follows ``sys.stderr`` instead (the CLI).
    """
    formatter: dict[str, Any] = {"()": JsonFormatter} if s.worker.log_format == "json" else {"format": TEXT_FORMAT}
    handler: dict[str, Any] = {"class": "logging.StreamHandler", "stream": stream} if stream else {
        "class": "ops.logs.StderrHandler"
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"dupn": formatter},
        "handlers": {"dupn": {**handler, "formatter": "dupn"}},
        "root": {"level": s.worker.log_level.upper(), "handlers": ["dupn"]},
    }


def configure_logging(s: Settings) -> None:
    """The CLI's logging (the worker hands :func:`logging_config` to Faust instead).

    Kafka clients log connection chatter at INFO; a command's own output is what
    the user asked for, so they only speak from WARNING up here.
    """
    config = logging_config(s, stream=None)
    config["loggers"] = {name: {"level": "WARNING"} for name in ("kafka", "aiokafka")}
    logging.config.dictConfig(config)
