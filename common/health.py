"""Liveness, readiness and Prometheus metrics of a worker process, on one small HTTP server.

    GET /health/live   200 while the process runs
    GET /health/ready  200 when every dependency answers, 503 with the reasons otherwise
    GET /metrics       the process's Prometheus metrics

Each worker (stages, relay, jobs worker, scheduler) serves these on ``OMS_METRICS_PORT``; the front end has
its own under the REST port. ``python -m common.health URL`` probes one (exit 0 on 200): the container
health checks use it, so the image needs no curl.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy import Engine, text

from common.messaging.connection import AmqpUrls, answers
from common.settings import DEFAULT_BIND_HOST

log = logging.getLogger(__name__)

UP = "UP"
DOWN = "DOWN"
CHECK_TIMEOUT_SECONDS = 2.0

Check = Callable[[], None]  # returns when the dependency answers, raises otherwise


def database_check(engine: Engine) -> Check:
    """A check that ``SELECT 1`` answers within two seconds."""

    def check() -> None:
        with engine.connect() as connection:
            connection.execute(text("SET LOCAL statement_timeout = 2000"))
            connection.execute(text("SELECT 1")).scalar_one()

    return check


def broker_check(amqp_url: AmqpUrls, name: str = "oms.readiness") -> Check:
    """A check that RabbitMQ (a node of those ``amqp_url`` lists) accepts an AMQP connection and opens a channel on
    it."""

    def check() -> None:
        # The HTTP server's thread has no event loop of its own: one per check (they are cached, see CachedChecks).
        asyncio.run(answers(amqp_url, name, CHECK_TIMEOUT_SECONDS))

    return check


class CachedChecks:
    """Runs the checks, caching the answer briefly so a busy prober cannot flood the dependencies."""

    def __init__(self, checks: Mapping[str, Check], cache_seconds: float = 2.0) -> None:
        self._checks = dict(checks)
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._last: tuple[float, dict[str, str]] | None = None

    def results(self) -> dict[str, str]:
        """Each dependency: ``UP`` or ``DOWN: <reason>``."""
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < self._cache_seconds:
                return self._last[1]
            results: dict[str, str] = {}
            for name, check in self._checks.items():
                try:
                    check()
                except Exception as exc:  # any failure means "not ready"; the reason is reported
                    results[name] = f"{DOWN}: {type(exc).__name__}: {exc}"[:300]
                else:
                    results[name] = UP
            self._last = (time.monotonic(), results)
            return results


def _handler(service: str, readiness: CachedChecks) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: Mapping[str, Any]) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/metrics":
                self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif path == "/health/live":
                self._json(200, {"status": UP, "service": service})
            elif path == "/health/ready":
                checks = readiness.results()
                ready = all(value == UP for value in checks.values())
                self._json(
                    200 if ready else 503, {"status": UP if ready else DOWN, "service": service, "checks": checks}
                )
            else:
                self._json(404, {"message": f"no such path {path!r}; try /metrics, /health/live, /health/ready"})

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would drown the service's own log lines

    return Handler


class ProcessEndpoints:
    """The running HTTP server; ``stop`` closes it."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def serve_process_endpoints(
    port: int,
    service: str,
    checks: Mapping[str, Check] | None = None,
    host: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> ProcessEndpoints | None:
    """Serve /metrics, /health/live and /health/ready on ``port`` in a daemon thread (0 means: do not serve).

    ``host``: the address to bind (``settings.infra.metrics_host``); loopback when not given. ``ssl_context``:
    HTTPS only (``OMS_METRICS_TLS``).
    """
    if not port:
        return None
    address = host or DEFAULT_BIND_HOST
    server = ThreadingHTTPServer((address, port), _handler(service, CachedChecks(checks or {})))
    if ssl_context is not None:
        # The handshake runs in the request's own thread, at its first read, not in the accepting loop: a client
        # that connects and stays silent holds one thread, never the whole server.
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=f"{service}-endpoints", daemon=True)
    thread.start()
    log.info("serving /metrics and /health", extra={"port": port})
    return ProcessEndpoints(server, thread)


def dependency_checks(engine: Engine | None, amqp_url: AmqpUrls | None, name: str) -> dict[str, Check]:
    """The usual readiness of a worker: its database and its broker."""
    checks: dict[str, Check] = {}
    if engine is not None:
        checks["database"] = database_check(engine)
    if amqp_url:
        checks["broker"] = broker_check(amqp_url, f"{name}.readiness")
    return checks


def probe(url: str, timeout: float = 3.0, context: ssl.SSLContext | None = None) -> int:
    """0 when ``url`` answers 200, else 1 (a container health check); only http(s) URLs are probed, an https
    one verified with ``context`` (default: the system's trust store)."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        return 1
    verified: dict[str, Any] = {} if context is None else {"context": context}
    try:
        # The scheme is checked above, so file: and custom schemes never reach urlopen (B310).
        with urllib.request.urlopen(url, timeout=timeout, **verified) as response:  # nosec B310
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


def _main(argv: list[str]) -> int:
    from common.settings import ConfigurationError, load_settings
    from common.tls import client_context

    url = argv[0] if argv else "http://127.0.0.1:9100/health/ready"
    try:
        context = client_context(load_settings().tls) if url.startswith("https:") else None
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        return 1
    return probe(url, context=context)  # an https endpoint is verified with OMS_TLS_CA_FILE


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
