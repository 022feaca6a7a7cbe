"""The session calendar and the scheduler's timetable (pure: no servers)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from common.settings import ConfigurationError, JobsSettings, SessionSettings, load_settings, parse_weekdays
from services.jobs.config import session_calendar
from services.jobs.scheduler import EXPIRY_JOB, Scheduler
from services.jobs.session import SessionCalendar

NY = ZoneInfo("America/New_York")
US = SessionCalendar.of("America/New_York", "16:00")


def ny(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=NY)


def test_last_and_next_close_on_a_weekday() -> None:
    assert US.last_close(ny(2026, 3, 11, 15, 59)) == ny(2026, 3, 10, 16, 0)
    assert US.last_close(ny(2026, 3, 11, 16, 0)) == ny(2026, 3, 11, 16, 0)
    assert US.next_close(ny(2026, 3, 11, 16, 0)) == ny(2026, 3, 12, 16, 0)


def test_weekends_and_holidays_have_no_close() -> None:
    assert US.last_close(ny(2026, 3, 15, 12, 0)) == ny(2026, 3, 13, 16, 0)  # Sunday -> Friday
    assert US.next_close(ny(2026, 3, 13, 17, 0)) == ny(2026, 3, 16, 16, 0)  # Friday evening -> Monday
    with_holiday = SessionCalendar.of("America/New_York", "16:00", holidays=[date(2026, 3, 16)])
    assert with_holiday.next_close(ny(2026, 3, 13, 17, 0)) == ny(2026, 3, 17, 16, 0)


def test_the_close_stays_at_local_time_across_daylight_saving() -> None:
    # New York moves to daylight time on 2026-03-08: 16:00 local is 21:00 UTC before and 20:00 UTC after.
    assert US.close_on(date(2026, 3, 6)) == datetime(2026, 3, 6, 21, 0, tzinfo=UTC)
    assert US.close_on(date(2026, 3, 9)) == datetime(2026, 3, 9, 20, 0, tzinfo=UTC)


def test_an_instrument_session_overrides_time_and_zone() -> None:
    london = US.for_instrument(time(16, 30), "Europe/London")
    assert london.close_on(date(2026, 1, 6)) == datetime(2026, 1, 6, 16, 30, tzinfo=UTC)
    assert US.for_instrument(None, None) is US


def test_weekday_setting() -> None:
    assert parse_weekdays("mon,tue,wed,thu,fri") == frozenset(range(5))
    assert parse_weekdays("sun, 0") == frozenset({6, 0})
    with pytest.raises(ValueError):
        parse_weekdays("funday")


def test_session_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMS_SESSION_WEEKDAYS", "sun,mon")
    monkeypatch.setenv("OMS_SESSION_HOLIDAYS", "2026-12-25, 2026-01-01")
    monkeypatch.setenv("OMS_SESSION_TZ", "Europe/London")
    monkeypatch.delenv("OMS_SESSION_CLOSE", raising=False)
    session = load_settings().session
    assert session.weekdays == frozenset({6, 0})
    assert session.holidays == frozenset({date(2026, 12, 25), date(2026, 1, 1)})
    calendar = session_calendar(session)
    assert (calendar.close, calendar.zone) == (time(16, 0), ZoneInfo("Europe/London"))
    monkeypatch.setenv("OMS_SESSION_TZ", "Mars/Olympus")
    monkeypatch.setenv("OMS_SESSION_CLOSE", "4pm")
    with pytest.raises(ConfigurationError, match="OMS_SESSION_TZ: .*unknown time zone.*; OMS_SESSION_CLOSE: "):
        load_settings()


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_scheduler_runs_everything_at_start_then_on_intervals_and_at_the_close() -> None:
    jobs = JobsSettings(expiry_check_every_seconds=3600, reconcile_every_seconds=60)
    clock = Clock(ny(2026, 3, 10, 15, 58).astimezone(UTC))
    sent: list[str] = []
    scheduler = Scheduler(jobs, session_calendar(SessionSettings()), sent.append, engine=None, clock=clock)

    assert sorted(scheduler.tick()) == sorted(
        ["expire_day_orders", "refresh_statistics", "purge_retention", "reconcile_stuck_orders", "check_invariants"]
    )
    assert scheduler.tick() == []  # nothing due twice
    clock.now += timedelta(seconds=60)
    assert scheduler.tick() == ["reconcile_stuck_orders"]
    # Just after the 16:00 close: the expiry runs, though its sweep interval is an hour.
    clock.now = ny(2026, 3, 10, 16, 0, 1).astimezone(UTC)
    assert EXPIRY_JOB in scheduler.tick()
    assert scheduler.next_wakeup() <= clock.now + timedelta(seconds=60)


def test_scheduler_keeps_a_job_due_when_the_broker_is_away() -> None:
    clock = Clock(datetime(2026, 3, 10, 12, 0, tzinfo=UTC))
    down = True

    def send(job: str) -> None:
        if down:
            raise ConnectionError("broker away")

    scheduler = Scheduler(JobsSettings(), US, send, clock=clock)
    assert scheduler.tick() == []
    down = False
    clock.now += timedelta(seconds=5)
    assert len(scheduler.tick()) == 5
