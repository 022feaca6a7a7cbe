"""The background jobs' settings: ``OMS_*`` environment variables on top of the common settings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date

from common.config import Settings, load_settings
from services.jobs.session import SessionCalendar, parse_weekdays
from services.settlement.calendar import parse_holidays

JOBS_QUEUE = "oms.jobs"
SYSTEM_USER = "system:jobs"


@dataclass(frozen=True)
class JobsConfig:
    """Everything the jobs worker and the scheduler need; ``from_env`` reads it, tests build it directly."""

    database_url: str
    amqp_url: str
    management_url: str = ""
    session_timezone: str = "America/New_York"
    session_close: str = "16:00"
    session_weekdays: frozenset[int] = frozenset(range(5))
    holidays: frozenset[date] = field(default_factory=frozenset)
    # Inbox rows, sent outbox rows, failure records and job runs older than this are deleted.
    retention_days: int = 30
    # An order still NEW/APPROVED/ROUTED/PENDING_* after this long is re-driven or asked about again.
    reconcile_after_seconds: float = 300.0
    # How often the scheduler enqueues each periodic job.
    statistics_every_seconds: float = 300.0
    retention_every_seconds: float = 3600.0
    reconcile_every_seconds: float = 60.0
    expiry_check_every_seconds: float = 300.0
    gauges_every_seconds: float = 15.0
    # The invariant check (oms check): how often, and how far back each run looks.
    check_every_seconds: float = 300.0
    check_window_hours: float = 24.0
    delivery_limit: int = 5

    @property
    def calendar(self) -> SessionCalendar:
        """The default session calendar (instruments with their own session close override time and zone)."""
        return SessionCalendar.of(self.session_timezone, self.session_close, self.holidays, self.session_weekdays)

    @classmethod
    def from_env(cls, settings: Settings | None = None) -> JobsConfig:
        """Read the settings (``OMS_SESSION_*``, ``OMS_RETENTION_DAYS``, ``OMS_RECONCILE_AFTER_SECONDS``, ...)."""
        settings = settings or load_settings()
        env = os.environ.get
        return cls(
            database_url=settings.database_url,
            amqp_url=settings.amqp_url,
            management_url=env("OMS_RABBITMQ_MANAGEMENT_URL", ""),
            session_timezone=settings.session_timezone,
            session_close=settings.session_close,
            session_weekdays=parse_weekdays(env("OMS_SESSION_WEEKDAYS", "mon,tue,wed,thu,fri")),
            holidays=parse_holidays(env("OMS_SESSION_HOLIDAYS", "")),
            retention_days=int(env("OMS_RETENTION_DAYS", "30")),
            reconcile_after_seconds=float(env("OMS_RECONCILE_AFTER_SECONDS", "300")),
            statistics_every_seconds=float(env("OMS_STATISTICS_EVERY_SECONDS", "300")),
            retention_every_seconds=float(env("OMS_RETENTION_EVERY_SECONDS", "3600")),
            reconcile_every_seconds=float(env("OMS_RECONCILE_EVERY_SECONDS", "60")),
            expiry_check_every_seconds=float(env("OMS_EXPIRY_CHECK_EVERY_SECONDS", "300")),
            gauges_every_seconds=float(env("OMS_GAUGES_EVERY_SECONDS", "15")),
            check_every_seconds=float(env("OMS_CHECK_EVERY_SECONDS", "300")),
            check_window_hours=float(env("OMS_CHECK_WINDOW_HOURS", "24")),
            delivery_limit=settings.delivery_limit,
        )
