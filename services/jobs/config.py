"""The background jobs' constants and their session calendar (their settings are ``Settings.jobs`` and
``Settings.session``: ``OMS_RETENTION_DAYS``, ``OMS_SESSION_*``, ...)."""

from __future__ import annotations

from common.settings import SessionSettings
from services.jobs.session import SessionCalendar

JOBS_QUEUE = "oms.jobs"
SYSTEM_USER = "system:jobs"


def session_calendar(session: SessionSettings) -> SessionCalendar:
    """The default session calendar (instruments with their own session close override time and zone)."""
    return SessionCalendar.of(session.timezone, session.close, session.holidays, session.weekdays)
