"""The session calendar and the scheduler's timetable (pure: no servers)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.jobs.config import JobsConfig
from services.jobs.scheduler import EXPIRY_JOB, Scheduler
from services.jobs.session import SessionCalendar, parse_weekdays

NY = ZoneInfo("America/New_York")
US = SessionCalendar.of("America/New_York", "16:00")


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NY)  # type: ignore[misc]


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


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_scheduler_runs_everything_at_start_then_on_intervals_and_at_the_close() -> None:
    config = JobsConfig(database_url="", amqp_url="", expiry_check_every_seconds=3600, reconcile_every_seconds=60)
    clock = Clock(ny(2026, 3, 10, 15, 58).astimezone(UTC))
    sent: list[str] = []
    scheduler = Scheduler(config, sent.append, engine=None, clock=clock)

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
    config = JobsConfig(database_url="", amqp_url="")
    clock = Clock(datetime(2026, 3, 10, 12, 0, tzinfo=UTC))
    down = True

    def send(job: str) -> None:
        if down:
            raise ConnectionError("broker away")

    scheduler = Scheduler(config, send, clock=clock)
    assert scheduler.tick() == []
    down = False
    clock.now += timedelta(seconds=5)
    assert len(scheduler.tick()) == 5
