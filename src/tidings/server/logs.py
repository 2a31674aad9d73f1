"""One log format for the server, uvicorn's error and access logs, and `tidings worker`.

Text (the default), one line per record, always with its time in UTC:

    2026-12-05T07:01:02.345Z INFO tidings.server: serving up to 1000 connections

JSON (`--log-format json`, for log shippers), one object per line with `time` (RFC 3339
UTC), `level`, `logger`, `message`, `exception` when the record carries one, and for
uvicorn's access lines `client`, `method`, `path`, `status`.

`configure_logging` puts one handler on the root logger; uvicorn is given no logging
config of its own (`log_config=None`), so its loggers propagate to that handler.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tidings.protocol.codecs import encode_json

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "log_time",
]

# uvicorn's level names, TRACE (below DEBUG) included.
TRACE = 5
LOG_LEVELS: dict[str, int] = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}
LOG_FORMATS = ("text", "json")

# uvicorn's access record: its message and the arguments it is formatted with.
_ACCESS_LOGGER = "uvicorn.access"
_ACCESS_ARGS = 5  # client, method, path with query, HTTP version, status


def log_time(created: float) -> str:
    """A record's time as RFC 3339 UTC with milliseconds: 2026-12-05T07:01:02.345Z."""
    whole = int(created)
    millis = int((created - whole) * 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(whole))}.{millis:03d}Z"


class TextFormatter(logging.Formatter):
    """`TIME LEVEL LOGGER: message`, then the traceback, if any, on the lines after."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{log_time(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        extra = _exception_text(self, record)
        return f"{line}\n{extra}" if extra else line


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback's newlines are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": log_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        args = record.args
        if record.name == _ACCESS_LOGGER and isinstance(args, tuple) and len(args) == _ACCESS_ARGS:
            client, method, path, _version, status = args
            entry.update(client=str(client), method=str(method), path=str(path), status=status)
        extra = _exception_text(self, record)
        if extra:
            entry["exception"] = extra
        return encode_json(entry).decode()


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The record's traceback and stack, as `logging.Formatter` would append them."""
    parts = []
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    if record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(parts)


def configure_logging(level: str, fmt: str) -> None:
    """Send every log record at `level` or above to stderr in format `fmt` (text or json).

    Replaces the root logger's handlers, so calling it again (a child process, a second
    configuration) leaves one handler. ValueError names the accepted values.
    """
    number = LOG_LEVELS.get(level.lower())
    if number is None:
        raise ValueError(f"log level {level!r}: use one of {', '.join(LOG_LEVELS)}")
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: use text or json")
    logging.addLevelName(TRACE, "TRACE")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=number, handlers=[handler], force=True)
    # uvicorn's loggers carry no handlers of their own here: their records reach the root.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
