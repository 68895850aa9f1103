"""Structured logging for the worker: the "sparegrid.worker" logger, JSON lines on request."""

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

LOGGER_NAME = "sparegrid.worker"

# Attributes every LogRecord has; anything else was passed in `extra` and is logged as a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **record_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines with the `extra` fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{k}={v}" for k, v in record_fields(record).items())
        return f"{line} {extra}" if extra else line


class _AboveStatusLine(logging.StreamHandler):  # type: ignore[type-arg]
    """Clears the live status line before a log line, so the two do not mix."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream.write("\r\x1b[K")
        super().emit(record)


def configure_logging(
    json_lines: bool,
    level: int = logging.INFO,
    stream: TextIO | None = None,
    live_line: bool = False,
) -> None:
    """Sends the worker's logs to `stream` (stderr) once; calling it again replaces the handler.
    `live_line`: a status line is kept at the bottom of the terminal (sparegrid.worker.cli)."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler_type = _AboveStatusLine if live_line else logging.StreamHandler
    handler = handler_type(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
