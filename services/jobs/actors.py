"""The background jobs as dramatiq actors, on queue ``oms.jobs`` of the broker at ``OMS_AMQP_URL``.

Actors return nothing (dramatiq keeps no results here): each run's summary is in ``job_runs``. Every job is
safe to run again (dramatiq retries a failed one with backoff): each works from the state in the
database, not from what the message says. The logic lives in plain functions beside this module
(``expiry``, ``statistics``, ``retention``, ``reconcile``, ``deadletters``); an actor only wires the process's
settings and engine, and records the run (``job_runs``, metrics, a log line).

``OMS_JOBS_BROKER=stub`` binds the actors to dramatiq's in-memory ``StubBroker`` (tests).
"""

from __future__ import annotations

import asyncio
import getpass
import os
from datetime import datetime
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import Engine

from common import bootstrap
from services.jobs import deadletters, expiry, invariants, reconcile, retention, statistics
from services.jobs.config import JOBS_QUEUE, JobsConfig
from services.jobs.middleware import JobsProcess
from services.jobs.runs import run_job

_wiring: tuple[JobsConfig, Engine] | None = None


def wire(config: JobsConfig, engine: Engine) -> None:
    """Point the actors at these settings and this engine (tests; the worker wires itself from the env)."""
    global _wiring
    _wiring = (config, engine)


def wiring() -> tuple[JobsConfig, Engine]:
    """The settings and engine the actors use."""
    global _wiring
    if _wiring is None:
        config = JobsConfig.from_env(bootstrap.settings())
        _wiring = (config, bootstrap.engine(config.database_url))
    return _wiring


def _make_broker() -> dramatiq.Broker:
    if os.environ.get("OMS_JOBS_BROKER", "rabbitmq") == "stub":
        broker: dramatiq.Broker = StubBroker()
    else:
        # confirm_delivery: an enqueue returns only once RabbitMQ has the job.
        broker = RabbitmqBroker(url=bootstrap.settings().amqp_url, confirm_delivery=True)
    broker.add_middleware(JobsProcess(wiring))
    return broker


broker = _make_broker()
dramatiq.set_broker(broker)

_MINUTE = 60_000


@dramatiq.actor(
    queue_name=JOBS_QUEUE, max_retries=5, min_backoff=5_000, max_backoff=5 * _MINUTE, time_limit=30 * _MINUTE
)
def expire_day_orders(now: str | None = None) -> None:
    """End the DAY orders whose session has closed (``now``: an ISO timestamp to judge by, default the clock)."""
    config, engine = wiring()
    at = datetime.fromisoformat(now) if now else None
    run_job(engine, "expire_day_orders", lambda: expiry.expire_day_orders(engine, config.calendar, at))


@dramatiq.actor(queue_name=JOBS_QUEUE, max_retries=3, min_backoff=5_000, max_backoff=_MINUTE, time_limit=30 * _MINUTE)
def refresh_statistics() -> None:
    """Refresh the ``daily_order_statistics`` materialized view."""
    _, engine = wiring()
    run_job(engine, "refresh_statistics", lambda: statistics.refresh_statistics(engine))


@dramatiq.actor(
    queue_name=JOBS_QUEUE, max_retries=3, min_backoff=10_000, max_backoff=10 * _MINUTE, time_limit=60 * _MINUTE
)
def purge_retention() -> None:
    """Delete operational records older than ``OMS_RETENTION_DAYS`` (audit records are kept)."""
    config, engine = wiring()
    run_job(engine, "purge_retention", lambda: retention.purge_retention(engine, config.retention_days))


@dramatiq.actor(queue_name=JOBS_QUEUE, max_retries=3, min_backoff=5_000, max_backoff=_MINUTE, time_limit=10 * _MINUTE)
def reconcile_stuck_orders() -> None:
    """Re-drive, or ask the venue about, orders that made no progress for ``OMS_RECONCILE_AFTER_SECONDS``."""
    config, engine = wiring()
    run_job(
        engine,
        "reconcile_stuck_orders",
        lambda: reconcile.reconcile_stuck_orders(engine, config.reconcile_after_seconds),
    )


@dramatiq.actor(queue_name=JOBS_QUEUE, max_retries=3, min_backoff=5_000, max_backoff=_MINUTE, time_limit=10 * _MINUTE)
def check_invariants() -> None:
    """Check the invariants (``oms check``) over what changed in the last ``OMS_CHECK_WINDOW_HOURS``."""
    config, engine = wiring()
    run_job(engine, "check_invariants", lambda: invariants.run_invariant_check(engine, config.check_window_hours))


@dramatiq.actor(queue_name=JOBS_QUEUE, max_retries=2, min_backoff=10_000, max_backoff=_MINUTE, time_limit=120 * _MINUTE)
def replay_dead_letters(
    queues: list[str],
    reason: str | None = None,
    type: str | None = None,
    order_id: str | None = None,
    message_ids: list[str] | None = None,
    limit: int | None = None,
    actor: str | None = None,
) -> None:
    """Replay dead letters as ``oms dlq replay`` does (an operator asked for it with ``--background``)."""
    config, engine = wiring()
    selection = deadletters.Selection(
        reason=reason, type=type, order_id=order_id, message_ids=frozenset(message_ids or ()), limit=limit
    )
    who = actor or f"{getpass.getuser()} (jobs)"

    def work() -> dict[str, Any]:
        reports = [
            asyncio.run(deadletters.replay(config.amqp_url, engine, queue, selection, actor=who)).as_dict()
            for queue in queues
        ]
        return {"actor": who, "replayed": sum(r["done"] for r in reports), "queues": reports}

    run_job(engine, "replay_dead_letters", work)


PERIODIC_ACTORS: dict[str, dramatiq.Actor[..., Any]] = {
    "expire_day_orders": expire_day_orders,
    "refresh_statistics": refresh_statistics,
    "purge_retention": purge_retention,
    "reconcile_stuck_orders": reconcile_stuck_orders,
    "check_invariants": check_invariants,
}
