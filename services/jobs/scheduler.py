"""``python -m services.jobs.scheduler``: enqueues the periodic jobs; the jobs worker runs them.

- ``expire_day_orders``: at every session close (the configured one and each instrument's own), and every
  ``OMS_EXPIRY_CHECK_EVERY_SECONDS`` (300) as a sweep;
- ``refresh_statistics``: every ``OMS_STATISTICS_EVERY_SECONDS`` (300);
- ``purge_retention``: every ``OMS_RETENTION_EVERY_SECONDS`` (3600);
- ``reconcile_stuck_orders``: every ``OMS_RECONCILE_EVERY_SECONDS`` (60);
- ``check_invariants``: every ``OMS_CHECK_EVERY_SECONDS`` (300).

Every job also runs once when the scheduler starts, so a scheduler that was down catches up. The jobs judge by
the state of the database (expiry: the latest close that has passed), so a late or repeated run is harmless;
run one scheduler all the same, since two do the work twice. A small loop rather than a scheduling library:
the only calendar-aware entry needs the session calendar below anyway, the rest are fixed intervals.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from common import bootstrap
from common.runtime.process import ThreadedService, run_service, settings_or_exit
from common.settings import JobsSettings
from common.store import tables
from services.jobs.config import session_calendar
from services.jobs.metrics import JOBS_ENQUEUED
from services.jobs.session import SessionCalendar

log = logging.getLogger(__name__)

SERVICE = "oms.jobs_scheduler"
EXPIRY_JOB = "expire_day_orders"
# After a close, wait a moment so that "the latest close that has passed" is that close on every clock.
_AFTER_CLOSE = timedelta(seconds=1)
_RETRY_ENQUEUE = timedelta(seconds=5)

Send = Callable[[str], None]
Clock = Callable[[], datetime]


@dataclass
class _Entry:
    job: str
    every: timedelta | None  # None: calendar-driven (the session close)
    next_at: datetime


def session_calendars(engine: Engine | None, default: SessionCalendar) -> list[SessionCalendar]:
    """The default calendar and every instrument session that differs from it."""
    calendars = [default]
    if engine is None:
        return calendars
    instruments = tables.instruments
    query = select(instruments.c.session_close, instruments.c.session_timezone).distinct()
    try:
        with engine.connect() as connection:
            rows = list(connection.execute(query))
    except Exception as exc:  # the default close still works; instrument closes come back with the database
        log.warning("could not read instrument sessions", extra={"error": repr(exc)})
        return calendars
    for row in rows:
        calendar = default.for_instrument(row.session_close, row.session_timezone)
        if calendar not in calendars:
            calendars.append(calendar)
    return calendars


class Scheduler:
    """Decides which jobs are due; ``run`` enqueues them until stopped."""

    def __init__(
        self,
        jobs: JobsSettings,
        calendar: SessionCalendar,
        send: Send,
        engine: Engine | None = None,
        clock: Clock | None = None,
    ):
        self.calendar = calendar
        self.send = send
        self.engine = engine
        self.clock = clock or (lambda: datetime.now(UTC))
        now = self.clock()
        every = {
            EXPIRY_JOB: jobs.expiry_check_every_seconds,
            "refresh_statistics": jobs.statistics_every_seconds,
            "purge_retention": jobs.retention_every_seconds,
            "reconcile_stuck_orders": jobs.reconcile_every_seconds,
            "check_invariants": jobs.check_every_seconds,
        }
        # Everything once at start (catch-up), then on its interval; the expiry also at each close.
        self.entries = [_Entry(job, timedelta(seconds=seconds), now) for job, seconds in every.items()]
        self.entries.append(_Entry(EXPIRY_JOB, None, self._next_close(now)))

    def _next_close(self, now: datetime) -> datetime:
        closes = [c for c in (cal.next_close(now) for cal in session_calendars(self.engine, self.calendar)) if c]
        # No trading day in the search window (a calendar of holidays only): look again in a day.
        return min(closes) + _AFTER_CLOSE if closes else now + timedelta(days=1)

    def next_wakeup(self) -> datetime:
        """When the next job is due."""
        return min(entry.next_at for entry in self.entries)

    def tick(self) -> list[str]:
        """Enqueue every job that is due; returns the jobs enqueued (one enqueue per job per tick)."""
        now = self.clock()
        sent: list[str] = []
        for entry in self.entries:
            if entry.next_at > now:
                continue
            if entry.job not in sent:
                try:
                    self.send(entry.job)
                except Exception as exc:  # the broker is away: try again shortly, keep the schedule
                    log.error("could not enqueue job", extra={"job": entry.job, "error": repr(exc)})
                    entry.next_at = now + _RETRY_ENQUEUE
                    continue
                sent.append(entry.job)
                JOBS_ENQUEUED.labels(entry.job).inc()
                log.info("job enqueued", extra={"job": entry.job})
            entry.next_at = now + entry.every if entry.every is not None else self._next_close(now)
        return sent

    def run(self, stop: threading.Event) -> None:
        """Enqueue due jobs until ``stop`` is set."""
        log.info("scheduler running", extra={"next_close": self.entries[-1].next_at.isoformat()})
        while not stop.is_set():
            self.tick()
            wait = (self.next_wakeup() - self.clock()).total_seconds()
            # Wake at least once a minute, so a clock change or a suspended host cannot stall the schedule.
            stop.wait(min(max(wait, 0.05), 60.0))


def _send_with_dramatiq(job: str) -> None:
    from services.jobs.actors import PERIODIC_ACTORS

    PERIODIC_ACTORS[job].send()


def main() -> int:
    """Entry point."""
    settings = settings_or_exit()
    engine = bootstrap.engine(settings)
    calendar = session_calendar(settings.session)

    def build() -> ThreadedService:
        # Built once logging is set up: it reads the instruments' sessions, and says so if it cannot.
        return ThreadedService(Scheduler(settings.jobs, calendar, _send_with_dramatiq, engine).run)

    return run_service(SERVICE, settings, build, bootstrap.worker_checks(settings, engine, SERVICE))


if __name__ == "__main__":
    raise SystemExit(main())
