"""The one place that wires dependencies: from the settings an entry point built, the engines and workers.

Nothing here is cached or global: an entry point calls these once and passes what they build down as parameters.
Only entry points (``services/*/__main__.py``, the jobs' process modules, ``services/api/wsgi.py``) and tools
import this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sqlalchemy import Engine

from common.health import Check, dependency_checks
from common.runtime.process import run_service, settings_or_exit
from common.runtime.stage import StageSpec, StageWorker
from common.settings import Settings
from common.store.db import bounded_connect_args, make_engine
from common.store.field_crypto import DataKeys, with_data_keys


def engine(
    settings: Settings,
    *,
    pre_ping: bool = True,
    plan_cache_mode: str | None = None,
    connect_args: Mapping[str, object] | None = None,
    connect_deadline: float | None = None,
) -> Engine:
    """A database engine on the configured database, as the workers' role (``OMS_WORKER_DATABASE_URL``; see
    ``make_engine`` for the rest)."""
    # Carries the data keys: the store encrypts order notes at rest with them (common.store.field_crypto).
    keys = DataKeys(settings.infra.data_keys_file)
    database = make_engine(
        settings.infra.worker_database_url,
        pre_ping=pre_ping,
        plan_cache_mode=plan_cache_mode,
        connect_args=connect_args,
        connect_deadline=connect_deadline,
    )
    return with_data_keys(database, keys)


def retention_engine(settings: Settings, workers: Engine) -> Engine:
    """The engine retention deletes with (``OMS_RETENTION_DATABASE_URL``: a role the workers' is not), or
    ``workers`` when that is the same URL; the caller disposes of one it did not pass in."""
    if settings.infra.retention_database_url == settings.infra.worker_database_url:
        return workers
    return make_engine(settings.infra.retention_database_url, pool_size=1)


def worker_checks(settings: Settings, database: Engine | None, service: str) -> dict[str, Check]:
    """A worker's readiness: its database (when it has one) and its broker answer."""
    return dependency_checks(database, settings.infra.amqp_urls, service)


def stage_worker(spec: StageSpec, settings: Settings) -> StageWorker:
    """A stage worker on the configured database and broker; its pool skips the ping (it retries on errors), its
    connections plan their statements as ``OMS_STAGE_PLAN_CACHE_MODE`` says, and every wait on the database is
    bounded (``OMS_STAGE_DB_TIMEOUT_SECONDS``, ``OMS_STAGE_DB_STATEMENT_TIMEOUT_SECONDS``), so a lost database
    fails a batch, which is retried, instead of holding it and the worker's stop."""
    stage = settings.stage
    fixed = None if stage.plan_cache_mode in ("auto", "adaptive") else stage.plan_cache_mode  # adaptive: per batch
    database = engine(
        settings,
        pre_ping=False,
        plan_cache_mode=fixed,
        connect_args=bounded_connect_args(
            stage.db_timeout_seconds, stage.db_statement_timeout_seconds, keepalives=True
        ),
        connect_deadline=stage.db_timeout_seconds,
    )
    return StageWorker(spec, settings, database)


def run_stage(spec: StageSpec | Callable[[Settings], StageSpec], settings: Settings | None = None) -> int:
    """Entry point of ``python -m services.<stage>``: ``spec``, or the spec built from the settings."""
    settings = settings or settings_or_exit()
    stage = spec if isinstance(spec, StageSpec) else spec(settings)
    service = f"oms.{stage.stage}"
    # Readiness asks on a pool of its own, so a busy worker's pool never makes the process look down.
    checks = worker_checks(settings, engine(settings), service)
    return run_service(service, settings, lambda: stage_worker(stage, settings), checks)
