"""The background jobs as dramatiq actors, on queue ``oms.jobs`` of the broker at ``OMS_AMQP_URL``.

Actors return nothing (dramatiq keeps no results here): each run's summary is in ``job_runs``. Every job is
safe to run again (dramatiq retries a failed one with backoff): each works from the state in the
database, not from what the message says. The logic lives in plain functions beside this module
(``expiry``, ``statistics``, ``retention``, ``reconcile``, ``deadletters``); an actor only wires the process's
settings and engine, and records the run (``job_runs``, metrics, a log line).

``OMS_JOBS_BROKER=stub`` binds the actors to dramatiq's in-memory ``StubBroker`` (tests).

dramatiq needs its broker when an actor is declared, that is when this module is imported, and its worker
imports this module in each process it starts, where no entry point of ours runs first: so the process's
settings are built here, at import (a bad value stops the import with the variable's name).
"""

from __future__ import annotations

import asyncio
import getpass
from datetime import datetime
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import Engine

from common import bootstrap
from common.runtime.process import settings_or_exit
from common.settings import Settings
from common.tls import pika_broker_options
from services.jobs import deadletters, expiry, invariants, reconcile, retention, statistics
from services.jobs.config import JOBS_QUEUE, session_calendar
from services.jobs.middleware import JobsProcess
from services.jobs.runs import run_job

SETTINGS = settings_or_exit()
_wiring: tuple[Settings, Engine] | None = None


def wire(settings: Settings, engine: Engine) -> None:
    """Point the actors at these settings and this engine (tests; the worker wires itself on first use)."""
    global _wiring
    _wiring = (settings, engine)


def wiring() -> tuple[Settings, Engine]:
    """The settings and engine the actors use: those wired, else the process's (its engine made on first use,
    after dramatiq has forked)."""
    global _wiring
    if _wiring is None:
        _wiring = (SETTINGS, bootstrap.engine(SETTINGS))
    return _wiring


def _make_broker(settings: Settings) -> dramatiq.Broker:
    if settings.jobs.broker == "stub":
        broker: dramatiq.Broker = StubBroker()
    else:
        # confirm_delivery: an enqueue returns only once RabbitMQ has the job. An amqps URL becomes pika
        # parameters with the URL's CA (common.tls).
        broker = RabbitmqBroker(confirm_delivery=True, **pika_broker_options(";".join(settings.infra.amqp_urls)))
    broker.add_middleware(JobsProcess(wiring))
    return broker


broker = _make_broker(SETTINGS)
dramatiq.set_broker(broker)

_MINUTE = 60_000


@dramatiq.actor(
    queue_name=JOBS_QUEUE, max_retries=5, min_backoff=5_000, max_backoff=5 * _MINUTE, time_limit=30 * _MINUTE
)
def expire_day_orders(now: str | None = None) -> None:
    """End the DAY orders whose session has closed (``now``: an ISO timestamp to judge by, default the clock)."""
    settings, engine = wiring()
    at = datetime.fromisoformat(now) if now else None
    calendar = session_calendar(settings.session)
    run_job(engine, "expire_day_orders", lambda: expiry.expire_day_orders(engine, calendar, at))


@dramatiq.actor(queue_name=JOBS_QUEUE, max_retries=3, min_backoff=5_000, max_backoff=_MINUTE, time_limit=30 * _MINUTE)
def refresh_statistics() -> None:
    """Refresh the ``daily_order_statistics`` materialized view."""
    _, engine = wiring()
    run_job(engine, "refresh_statistics", lambda: statistics.refresh_statistics(engine))


@dramatiq.actor(
    queue_name=JOBS_QUEUE, max_retries=3, min_backoff=10_000, max_backoff=10 * _MINUTE, time_limit=60 * _MINUTE
)
def purge_retention() -> None:
    """Delete operational records older than ``OMS_RETENTION_DAYS`` (audit records are kept; closed orders' event
    chains only past ``OMS_ORDER_EVENTS_RETENTION_DAYS``, recorded), as the retention role."""
    settings, engine = wiring()
    deleter = bootstrap.retention_engine(settings, engine)
    try:
        run_job(
            engine,
            "purge_retention",
            lambda: retention.purge_retention(
                deleter, settings.jobs.retention_days, order_events_days=settings.jobs.order_events_retention_days
            ),
        )
    finally:
        if deleter is not engine:
            deleter.dispose()


@dramatiq.actor(queue_name=JOBS_QUEUE, max_retries=3, min_backoff=5_000, max_backoff=_MINUTE, time_limit=10 * _MINUTE)
def reconcile_stuck_orders() -> None:
    """Re-drive, or ask the venue about, orders that made no progress for ``OMS_RECONCILE_AFTER_SECONDS``."""
    settings, engine = wiring()
    run_job(
        engine,
        "reconcile_stuck_orders",
        lambda: reconcile.reconcile_stuck_orders(engine, settings.jobs.reconcile_after_seconds),
    )


@dramatiq.actor(queue_name=JOBS_QUEUE, max_retries=3, min_backoff=5_000, max_backoff=_MINUTE, time_limit=10 * _MINUTE)
def check_invariants() -> None:
    """Check the invariants (``oms check``) over what changed in the last ``OMS_CHECK_WINDOW_HOURS``."""
    settings, engine = wiring()
    window = settings.jobs.check_window_hours
    run_job(engine, "check_invariants", lambda: invariants.run_invariant_check(engine, window))


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
    settings, engine = wiring()
    selection = deadletters.Selection(
        reason=reason, type=type, order_id=order_id, message_ids=frozenset(message_ids or ()), limit=limit
    )
    who = actor or f"{getpass.getuser()} (jobs)"

    def work() -> dict[str, Any]:
        reports = [
            asyncio.run(deadletters.replay(settings.infra.amqp_urls, engine, queue, selection, actor=who)).as_dict()
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
