"""The trading session calendar: when a session closes, in its own time zone, skipping non-trading days.

Pure functions over ``zoneinfo``: DST changes move the close in UTC, never in local time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

# Far enough to step over any run of holidays and weekends a real calendar has.
_SEARCH_DAYS = 40


def parse_close(text: str) -> time:
    """``HH:MM`` (or ``HH:MM:SS``) as a time of day."""
    try:
        return time.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"session close {text!r} is not HH:MM") from exc


@dataclass(frozen=True)
class SessionCalendar:
    """Sessions close at ``close`` local time in ``zone`` on ``weekdays`` that are not ``holidays``."""

    zone: ZoneInfo
    close: time
    holidays: frozenset[date] = frozenset()
    weekdays: frozenset[int] = frozenset(range(5))

    @classmethod
    def of(
        cls, timezone: str, close: str, holidays: Iterable[date] = (), weekdays: Iterable[int] = range(5)
    ) -> SessionCalendar:
        """A calendar from settings text (``America/New_York``, ``16:00``)."""
        return cls(ZoneInfo(timezone), parse_close(close), frozenset(holidays), frozenset(weekdays))

    def for_instrument(self, close: time | None, timezone: str | None) -> SessionCalendar:
        """The calendar of an instrument with its own session close and zone (either may be missing)."""
        if close is None and not timezone:
            return self
        return replace(
            self, close=close if close is not None else self.close, zone=ZoneInfo(timezone) if timezone else self.zone
        )

    def is_trading_day(self, day: date) -> bool:
        """True when a session runs on ``day``."""
        return day.weekday() in self.weekdays and day not in self.holidays

    def close_on(self, day: date) -> datetime:
        """The session close of ``day`` (in UTC)."""
        return datetime.combine(day, self.close, tzinfo=self.zone).astimezone(UTC)

    def last_close(self, now: datetime) -> datetime | None:
        """The latest session close at or before ``now``; None when none in the search window."""
        today = now.astimezone(self.zone).date()
        for back in range(_SEARCH_DAYS):
            day = today - timedelta(days=back)
            if self.is_trading_day(day) and self.close_on(day) <= now:
                return self.close_on(day)
        return None

    def next_close(self, now: datetime) -> datetime | None:
        """The first session close after ``now``; None when none in the search window."""
        today = now.astimezone(self.zone).date()
        for ahead in range(_SEARCH_DAYS):
            day = today + timedelta(days=ahead)
            if self.is_trading_day(day) and self.close_on(day) > now:
                return self.close_on(day)
        return None
