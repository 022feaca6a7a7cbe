"""Structured JSON logs that carry the order id, message id and correlation id of the work at hand.

One JSON object per line on stderr: ``ts`` (ISO 8601 in UTC with its offset and milliseconds, e.g.
``2026-11-30T09:30:00.123+00:00``), ``level``, ``logger``, ``message``, ``service``, then whatever the call
site and ``log_context`` add. Processes never write log files themselves: their supervisor (``oms up``,
``tools/processes.py``) sends each one's output to ``<data dir>/logs/<name>.log`` and rotates it by size;
in containers the engine collects stderr.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO

from pythonjsonlogger.json import JsonFormatter

_CONTEXT: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("oms_log_context", default={})  # noqa: B039

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
RENAMED = {"asctime": "ts", "levelname": "level", "name": "logger"}


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _CONTEXT.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class UtcJsonFormatter(JsonFormatter):
    """JSON lines whose ``ts`` is ISO 8601 in UTC with an explicit offset, to the millisecond."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Add fields (order_id, message_id, correlation_id, ...) to every log line inside the block."""
    merged = {**_CONTEXT.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _CONTEXT.set(merged)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def json_formatter(service: str) -> logging.Formatter:
    """The formatter of every OMS log line, naming the service."""
    return UtcJsonFormatter(FORMAT, rename_fields=dict(RENAMED), static_fields={"service": service})


def json_handler(service: str, stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing JSON lines (to stderr unless told) with the fields of ``log_context``."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(json_formatter(service))
    handler.addFilter(_ContextFilter())
    return handler


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send JSON lines to stderr, each naming the service."""
    root = logging.getLogger()
    root.handlers[:] = [json_handler(service)]
    root.setLevel(level)
    # aiormq and pika log every frame at DEBUG and reconnect chatter at INFO; keep the service's own lines readable.
    for noisy in ("aiormq", "aio_pika", "pika", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
