"""Readiness of the front end: the shared checks of ``common.health`` (database and broker), as REST and gRPC
report them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from common.health import UP, CachedChecks, dependency_checks
from common.messaging.connection import AmqpUrls
from services.api.errors import Unavailable

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["UP", "Readiness", "ReadinessProbe", "answer_503_while_the_database_is_away"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Readiness:
    """The outcome of one readiness check: each dependency UP, or DOWN with the reason."""

    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        """True when every dependency is up."""
        return all(value == UP for value in self.checks.values())


class ReadinessProbe:
    """Checks the database and the broker; the answer is cached briefly so a busy probe cannot flood them."""

    def __init__(self, engine: Engine, amqp_url: AmqpUrls, cache_seconds: float = 1.0) -> None:
        self._checks = CachedChecks(dependency_checks(engine, amqp_url, "oms.api"), cache_seconds)

    def check(self) -> Readiness:
        """Run the checks (or return the answer of the last second)."""
        return Readiness(self._checks.results())


DATABASE_UNAVAILABLE = "the database is unavailable; retry shortly"


def _database_unavailable(error: Exception) -> tuple[dict[str, str], int, dict[str, str]]:
    log.warning("request answered 503: the database is unavailable", extra={"error": repr(error)})
    return {"message": DATABASE_UNAVAILABLE, "code": Unavailable.code}, 503, {"Retry-After": "2"}


def answer_503_while_the_database_is_away(app: Flask) -> None:
    """Make a request that meets a database outage a 503 the client may retry, rather than a 500.

    The worker process itself survives either way (the pool reconnects with pre-ping once the database is
    back); this only tells the caller the truth: it is temporary.
    """
    app.register_error_handler(OperationalError, _database_unavailable)
    app.register_error_handler(psycopg.OperationalError, _database_unavailable)
    # Every pooled connection taken for longer than the pool's timeout: the database is too slow to serve.
    app.register_error_handler(PoolTimeout, _database_unavailable)
