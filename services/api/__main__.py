"""``python -m services.api``: the REST API under gunicorn and the gRPC server beside it.

    python -m services.api                 # both: REST on OMS_REST_PORT (8080), gRPC on OMS_GRPC_PORT (50051)
    python -m services.api --rest-only     # or --grpc-only; --rest-port/--grpc-port/--workers override

gunicorn's arbiter runs in this process and serves REST from its workers (gthread); the gRPC server runs in
a child process. When either ends, the other is stopped too, so a supervisor sees one service go down. The
settings are built once, here (``common.runtime.process``), and handed to the workers and the gRPC child; gunicorn
handles SIGTERM itself (its workers finish the requests at hand), and the gRPC child drains on the same signal.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from common.runtime.process import configure_process, settings_or_exit
from common.settings import Settings

log = logging.getLogger("services.api")


def _prepare_metrics_dir(settings: Settings) -> Path | None:
    """A fresh folder through which prometheus_client sums the metrics of gunicorn's worker processes.

    It must be named before prometheus_client is first imported, hence here; None when the caller named one.
    """
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        return None
    folder = settings.infra.data_dir / "prometheus" / f"api-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder


# ---- REST ---------------------------------------------------------------------------------------------------


def _gunicorn_app(settings: Settings, options: dict[str, Any], on_exit: Any) -> Any:
    from gunicorn.app.base import BaseApplication

    class RestApplication(BaseApplication):  # type: ignore[misc]
        """gunicorn serving ``services.api.app.create_app`` (built in each worker, after the fork)."""

        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)
            self.cfg.set("child_exit", _child_exit)
            self.cfg.set("on_exit", on_exit)

        def load(self) -> Any:
            # In each worker, after the fork: its own engine (a pool must not cross a fork), the parent's settings.
            from services.api.app import create_app
            from services.api.database import front_end_engine, query_engine

            configure_process("oms.api.rest", settings)
            engine = front_end_engine(settings)
            return create_app(settings, engine, read_engine=query_engine(settings, engine))

    return RestApplication()


def _json_logger_class() -> type:
    """gunicorn's logger writing JSON lines like every OMS process: its own lines and one per request."""
    import datetime as dt

    from gunicorn.glogging import Logger

    from common.logging import json_formatter

    class JsonLogger(Logger):  # type: ignore[misc]
        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            # gunicorn's own handlers (stderr for its lines, stdout for the access log) get the OMS formatter.
            for target, service in ((self.error_log, "oms.api"), (self.access_log, "oms.api.access")):
                for handler in target.handlers:
                    if getattr(handler, "_gunicorn", False):
                        handler.setFormatter(json_formatter(service))

        def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: dt.timedelta) -> None:
            if not self.access_log_enabled:
                return
            status = resp.status
            try:
                code = int(status.split(None, 1)[0]) if isinstance(status, str) else int(status)
            except (TypeError, ValueError):
                code = 0
            self.access_log.info(
                "request",
                extra={
                    "remote_addr": environ.get("REMOTE_ADDR"),
                    "method": environ.get("REQUEST_METHOD"),
                    "path": environ.get("PATH_INFO"),
                    "query": environ.get("QUERY_STRING") or None,
                    "status": code,
                    "bytes": getattr(resp, "sent", None),
                    "ms": round(request_time.total_seconds() * 1000, 2),
                    "user_agent": environ.get("HTTP_USER_AGENT"),
                },
            )

    return JsonLogger


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def _watch(child: BaseProcess, stopping: threading.Event) -> None:
    child.join()
    if not stopping.is_set():
        log.error("gRPC server exited (code %s); stopping the REST server too", child.exitcode)
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    # Not common.bootstrap here: it imports prometheus_client, which must wait for _prepare_metrics_dir.
    settings = settings_or_exit()
    parser = argparse.ArgumentParser(prog="python -m services.api", description=__doc__.splitlines()[0])
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--rest-only", action="store_true", help="serve REST only")
    only.add_argument("--grpc-only", action="store_true", help="serve gRPC only")
    api = settings.api
    parser.add_argument("--host", default=api.host, help="address to listen on (OMS_API_HOST)")
    parser.add_argument("--rest-port", type=int, default=api.rest_port, help="(OMS_REST_PORT)")
    parser.add_argument("--grpc-port", type=int, default=api.grpc_port, help="(OMS_GRPC_PORT)")
    parser.add_argument("--workers", type=int, default=api.workers, help="gunicorn workers (OMS_API_WORKERS)")
    parser.add_argument("--threads", type=int, default=api.threads, help="threads per worker (OMS_API_THREADS)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    configure_process("oms.api", settings)

    if args.grpc_only:
        from services.api.grpc_server import run_in_child

        run_in_child(settings, args.host, args.grpc_port)
        return 0

    metrics_dir = _prepare_metrics_dir(settings)
    stopping = threading.Event()
    child: BaseProcess | None = None
    if not args.rest_only:
        from services.api.grpc_server import run_in_child

        child = multiprocessing.get_context("spawn").Process(
            target=run_in_child, args=(settings, args.host, args.grpc_port), name="oms-api-grpc"
        )
        child.start()
        threading.Thread(target=_watch, args=(child, stopping), daemon=True, name="grpc-watch").start()

    def on_exit(server: Any) -> None:
        stopping.set()
        if child is not None and child.is_alive():
            child.terminate()
            child.join(timeout=10)
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)

    options = {
        "bind": f"{args.host}:{args.rest_port}",
        "workers": args.workers,
        "worker_class": "gthread",
        "threads": args.threads,
        "graceful_timeout": 10,
        "proc_name": "oms-api-rest",
        "loglevel": settings.logging.level.lower(),
        # JSON lines like every other process (_json_logger_class): gunicorn's own on stderr, one per request
        # (the access log) on stdout; the supervisor sends both to api.log.
        "logger_class": _json_logger_class(),
        "accesslog": "-",
    }
    if settings.tls.rest:  # HTTPS only: gunicorn's workers do the handshake (a plaintext request is dropped)
        options.update(certfile=str(settings.tls.cert_file), keyfile=str(settings.tls.key_file))
    log.info("starting REST (%s) on %s:%s", "https" if settings.tls.rest else "http", args.host, args.rest_port)
    _gunicorn_app(settings, options, on_exit).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
