"""The one place that wires dependencies: settings, logging, engine, workers."""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import Engine

from common.config import Settings, load_settings
from common.health import dependency_checks, serve_process_endpoints
from common.logging import configure_logging
from common.runtime.stage import StageSpec, StageWorker, run_stage_forever
from common.store.db import make_engine


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process's settings."""
    return load_settings()


@lru_cache(maxsize=4)
def engine(url: str | None = None, pre_ping: bool = True) -> Engine:
    """The process's database engine (see ``make_engine`` for ``pre_ping``)."""
    return make_engine(url or settings().database_url, pre_ping=pre_ping)


def stage_worker(spec: StageSpec, config: Settings | None = None) -> StageWorker:
    """A stage worker wired to the configured database and broker."""
    config = config or settings()
    return StageWorker(spec, config, engine(config.database_url, pre_ping=False))


def run_stage(spec: StageSpec) -> None:
    """Entry point of ``python -m services.<stage>``."""
    config = settings()
    configure_logging(f"oms.{spec.stage}", config.log_level)
    # /metrics, /health/live and /health/ready (database and broker answer) on OMS_METRICS_PORT.
    serve_process_endpoints(
        config.metrics_port,
        f"oms.{spec.stage}",
        dependency_checks(engine(config.database_url), config.amqp_url, f"oms.{spec.stage}"),
    )
    run_stage_forever(spec, lambda s: stage_worker(s, config))
