"""Prometheus metrics of the REST app: requests and latency per endpoint, served at ``/metrics``."""

from __future__ import annotations

import os
import time

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

HTTP_REQUESTS = Counter("oms_http_requests_total", "REST requests served", ["method", "endpoint", "status"])
HTTP_SECONDS = Histogram(
    "oms_http_request_seconds",
    "REST request latency",
    ["method", "endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


def _metrics_response() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        payload = generate_latest(registry)
    else:
        payload = generate_latest()
    return Response(payload, mimetype=CONTENT_TYPE_LATEST)


def install_metrics(app: Flask) -> None:
    """Count and time every request of ``app`` and serve the metrics at ``/metrics``."""

    @app.before_request
    def _start_timer() -> None:
        g.oms_started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        HTTP_REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
        started = g.get("oms_started")
        if started is not None:
            HTTP_SECONDS.labels(request.method, endpoint).observe(time.perf_counter() - started)
        return response

    app.add_url_rule("/metrics", "metrics", _metrics_response)
