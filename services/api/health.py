"""Readiness of the front end: the shared checks of ``common.health`` (database and broker), as REST and gRPC
report them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from common.health import UP, dependency_checks
from common.health import Readiness as CachedChecks

__all__ = ["UP", "Readiness", "ReadinessProbe"]


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

    def __init__(self, engine: Engine, amqp_url: str, cache_seconds: float = 1.0) -> None:
        self._checks = CachedChecks(dependency_checks(engine, amqp_url, "oms.api"), cache_seconds)

    def check(self) -> Readiness:
        """Run the checks (or return the answer of the last second)."""
        return Readiness(self._checks.results())
