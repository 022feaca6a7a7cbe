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

from common.health import ProcessEndpoints, dependency_checks
from common.runtime.process import configure_process, serve_endpoints
from common.settings import Settings
from services.jobs.gauges import GaugeRefresher

SERVICE = "oms.jobs_worker"


class JobsProcess(Middleware):
    """Starts the process's endpoints and gauges when the worker boots, stops them at shutdown."""

    def __init__(self, wiring: Callable[[], tuple[Settings, Engine]]) -> None:
        self._wiring = wiring
        self._endpoints: ProcessEndpoints | None = None
        self._gauges: GaugeRefresher | None = None

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        configure_process(SERVICE, self._wiring()[0])

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        settings, engine = self._wiring()
        amqp_url = settings.infra.amqp_urls
        self._endpoints = serve_endpoints(SERVICE, settings, dependency_checks(engine, amqp_url, SERVICE))
        self._gauges = GaugeRefresher(engine, amqp_url, settings.jobs.gauges_every_seconds)
        self._gauges.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if self._gauges is not None:
            self._gauges.stop()
        if self._endpoints is not None:
            self._endpoints.stop()
