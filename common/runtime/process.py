"""The one way an OMS process starts: settings, logging, /metrics + /health, signals, a clean drain.

Every entry point (the five stages, the outbox relay, the venue, the jobs scheduler) runs through
``run_service``: settings built once (``settings_or_exit``: a bad value is one line on stderr and exit 2, not a
traceback), JSON logs, the health and metrics server on ``OMS_METRICS_PORT``, then the service's ``run`` on the
event loop until SIGTERM or SIGINT calls its ``stop``: it finishes the batch at hand and returns, and the process
exits 0. The front end (gunicorn) and the jobs worker (dramatiq) have their own process managers; they use the
pieces (``settings_or_exit``, ``configure_process``, ``serve_endpoints``, ``stop_on_signals``).

``common.health`` is imported only when the endpoints are served: it imports prometheus_client, which the API's
gunicorn arbiter must not import before it has named its multiprocess metrics folder.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from common.logging import configure_logging
from common.runtime.loop import run as run_loop
from common.settings import ConfigurationError, Settings, load_settings

if TYPE_CHECKING:
    from common.health import Check, ProcessEndpoints

log = logging.getLogger(__name__)

# A usage error, as for the `oms` tools: the process was started wrong and restarting it will not help.
EXIT_CONFIGURATION = 2
SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Service(Protocol):
    """What a process runs: ``run`` until ``stop`` is called, finishing the work at hand first."""

    async def run(self) -> None:
        """Work until stopped."""

    def stop(self) -> None:
        """Make ``run`` return once the work at hand is done."""


def settings_or_exit() -> Settings:
    """The process's settings; a bad value prints one line naming the variable and exits 2."""
    try:
        return load_settings()
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(EXIT_CONFIGURATION) from None


def configure_process(service: str, settings: Settings) -> None:
    """JSON log lines naming ``service``, at the configured level; the garbage collector tuned."""
    configure_logging(service, settings.logging.level)
    tune_garbage_collector(settings.stage.gc_threshold)


def tune_garbage_collector(threshold: int) -> None:
    """Fewer and cheaper cyclic collections (docs/design.md, Speed, session 8).

    What the process holds now (modules, schemas, the SQLAlchemy metadata) is moved out of the collector's
    sight with ``gc.freeze``: it lives as long as the process, and a full collection walked all of it. The
    youngest generation is collected after ``threshold`` net allocations instead of 700: a batch's short-lived
    objects (most freed by reference counting anyway) crossed 700 several times per batch, and each collection
    walked the whole batch. 0 keeps Python's threshold. ``run_service`` freezes again once its service is built.
    """
    gc.freeze()
    if threshold:
        gc.set_threshold(threshold)


def serve_endpoints(service: str, settings: Settings, checks: Mapping[str, Check]) -> ProcessEndpoints | None:
    """/metrics, /health/live and /health/ready (``checks`` answer) on the configured metrics host and port."""
    from common.health import serve_process_endpoints

    context = None
    if settings.tls.metrics and settings.infra.metrics_port:
        from common.tls import server_context

        context = server_context(settings.tls)
    return serve_process_endpoints(
        settings.infra.metrics_port, service, checks, host=settings.infra.metrics_host, ssl_context=context
    )


def stop_on_signals(stop: Callable[[], None]) -> None:
    """Call ``stop`` on SIGTERM or SIGINT (from inside the running event loop)."""
    loop = asyncio.get_running_loop()
    for sig in SHUTDOWN_SIGNALS:
        loop.add_signal_handler(sig, stop)


async def _until_stopped(build: Callable[[], Service]) -> None:
    service = build()  # in the loop: a service may make loop-bound objects (events, queues) as it is built
    gc.freeze()  # what building made lives as long as the process too (tune_garbage_collector)
    stop_on_signals(service.stop)
    await service.run()


def run_service(
    service: str, settings: Settings, build: Callable[[], Service], checks: Mapping[str, Check] | None = None
) -> int:
    """Run a service process to its end: logging, endpoints, ``build()``'s service until a signal; returns 0."""
    configure_process(service, settings)
    endpoints = serve_endpoints(service, settings, checks or {})
    try:
        run_loop(_until_stopped(build), settings.stage.event_loop)
    finally:
        if endpoints is not None:
            endpoints.stop()
    log.info("stopped", extra={"service": service})
    return 0


class ThreadedService:
    """A blocking ``work(stop)`` (a loop that returns once ``stop`` is set) run as a ``Service``, in a thread."""

    def __init__(self, work: Callable[[threading.Event], None]) -> None:
        self._work = work
        self._stop = threading.Event()

    async def run(self) -> None:
        """Run the work in a thread until it returns."""
        await asyncio.to_thread(self._work, self._stop)

    def stop(self) -> None:
        """Ask the work to return."""
        self._stop.set()
