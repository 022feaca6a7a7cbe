"""Structured JSON logs that carry the order id, message id and correlation id of the work at hand."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator

from pythonjsonlogger.json import JsonFormatter

_CONTEXT: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("oms_log_context", default={})  # noqa: B039


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _CONTEXT.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Add fields (order_id, message_id, correlation_id, ...) to every log line inside the block."""
    merged = {**_CONTEXT.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _CONTEXT.set(merged)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send JSON lines to stderr, each naming the service."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
        )
    )
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiormq and pika log every frame at DEBUG and reconnect chatter at INFO; keep the service's own lines readable.
    for noisy in ("aiormq", "aio_pika", "pika", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
