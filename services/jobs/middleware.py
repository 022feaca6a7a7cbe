"""What the jobs worker process needs besides the actors: JSON logs, /metrics and /health, the gauges thread.

A dramatiq middleware, because dramatiq's CLI runs the actors in a child process it forks: the hooks run in
that child, where the HTTP server and the gauges must live.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware
from sqlalchemy import Engine

from common import bootstrap
from common.health import ProcessEndpoints, dependency_checks, serve_process_endpoints
from common.logging import configure_logging
from services.jobs.config import JobsConfig
from services.jobs.gauges import GaugeRefresher

SERVICE = "oms.jobs_worker"


class JobsProcess(Middleware):
    """Starts the process's endpoints and gauges when the worker boots, stops them at shutdown."""

    def __init__(self, wiring: Callable[[], tuple[JobsConfig, Engine]]) -> None:
        self._wiring = wiring
        self._endpoints: ProcessEndpoints | None = None
        self._gauges: GaugeRefresher | None = None

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        configure_logging(SERVICE, bootstrap.settings().log_level)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        config, engine = self._wiring()
        settings = bootstrap.settings()
        self._endpoints = serve_process_endpoints(
            settings.metrics_port, SERVICE, dependency_checks(engine, config.amqp_url, SERVICE)
        )
        self._gauges = GaugeRefresher(engine, config.amqp_url, config.gauges_every_seconds)
        self._gauges.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self._gauges is not None:
            self._gauges.stop()
        if self._endpoints is not None:
            self._endpoints.stop()
