"""Liveness and readiness: is the process up, and can it reach the database and the broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pika
from sqlalchemy import Engine, text

UP = "UP"
DOWN = "DOWN"
CHECK_TIMEOUT_SECONDS = 2.0


def check_database(engine: Engine) -> None:
    """Raise unless ``SELECT 1`` answers."""
    with engine.connect() as connection:
        connection.execute(text("SET LOCAL statement_timeout = 2000"))
        connection.execute(text("SELECT 1")).scalar_one()


def check_broker(amqp_url: str, timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
    """Raise unless RabbitMQ accepts an AMQP connection and answers on it (a heartbeat round)."""
    parameters = pika.URLParameters(amqp_url)
    parameters.socket_timeout = timeout
    parameters.stack_timeout = timeout
    parameters.blocked_connection_timeout = timeout
    parameters.connection_attempts = 1
    parameters.client_properties = {"connection_name": "oms.api.readiness"}
    connection = pika.BlockingConnection(parameters)
    try:
        connection.process_data_events(time_limit=0)
    finally:
        connection.close()


@dataclass(frozen=True)
class Readiness:
    """The outcome of one readiness check: each dependency UP, or DOWN with the reason."""

    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        """True when every dependency is up."""
        return all(value == UP for value in self.checks.values())


class ReadinessProbe:
    """Checks the database and the broker; caches the answer briefly so a busy probe cannot flood them."""

    def __init__(self, engine: Engine, amqp_url: str, cache_seconds: float = 1.0) -> None:
        self._checks: dict[str, Callable[[], None]] = {
            "database": lambda: check_database(engine),
            "broker": lambda: check_broker(amqp_url),
        }
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._last: tuple[float, Readiness] | None = None

    def check(self) -> Readiness:
        """Run the checks (or return the answer of the last second)."""
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < self._cache_seconds:
                return self._last[1]
            results: dict[str, str] = {}
            for name, probe in self._checks.items():
                try:
                    probe()
                except Exception as exc:  # any failure means "not ready"; the reason is reported
                    results[name] = f"{DOWN}: {type(exc).__name__}: {exc}"[:300]
                else:
                    results[name] = UP
            self._last = (time.monotonic(), Readiness(results))
            return self._last[1]
