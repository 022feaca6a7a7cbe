"""The settlement calendar: trade date, settlement cycle per asset class, business days. Pure functions.

A settlement date is the trade date plus the instrument's settlement days counted in business days
(Saturdays, Sundays and the configured holidays skipped). T+0 settles on the trade date itself, whatever
day that is (crypto and futures trade and settle every day the venue is open).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

# Settlement cycles by asset class; None = the configured equity cycle (OMS_SETTLEMENT_DAYS_EQUITY).
_CYCLE_BY_ASSET_CLASS: dict[str, int | None] = {
    "EQUITY": None,
    "ETF": None,
    "FUTURE": 0,
    "CRYPTO": 0,
    "FX": 2,
}
_SATURDAY = 5


def parse_holidays(text: str | None) -> frozenset[date]:
    """Parse ``YYYY-MM-DD,YYYY-MM-DD,...`` (blanks ignored); a malformed entry raises ``ValueError``."""
    days: set[date] = set()
    for part in (text or "").split(","):
        item = part.strip()
        if not item:
            continue
        try:
            days.add(date.fromisoformat(item))
        except ValueError as exc:
            raise ValueError(f"settlement holiday {item!r} is not a YYYY-MM-DD date") from exc
    return frozenset(days)


def trade_date_of(timestamp: datetime) -> date:
    """The trade date of an execution: its date in UTC (a naive timestamp is taken as UTC)."""
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    return timestamp.astimezone(UTC).date()


@dataclass(frozen=True)
class SettlementCalendar:
    """Business days and settlement cycles; ``equity_days`` is the EQUITY/ETF (and unknown class) cycle."""

    equity_days: int = 1
    holidays: frozenset[date] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.equity_days < 0:
            raise ValueError("equity settlement days must not be negative")

    @classmethod
    def of(cls, equity_days: int, holidays: Iterable[date] = ()) -> SettlementCalendar:
        """A calendar with these equity days and holidays."""
        return cls(equity_days=equity_days, holidays=frozenset(holidays))

    def is_business_day(self, day: date) -> bool:
        """Monday to Friday and not a holiday."""
        return day.weekday() < _SATURDAY and day not in self.holidays

    def add_business_days(self, start: date, days: int) -> date:
        """``start`` moved forward by ``days`` business days (``days`` = 0 returns ``start`` unchanged)."""
        if days < 0:
            raise ValueError("business days to add must not be negative")
        day = start
        remaining = days
        while remaining > 0:
            day += timedelta(days=1)
            if self.is_business_day(day):
                remaining -= 1
        return day

    def settlement_days(self, asset_class: str, instrument_days: int | None = None) -> int:
        """The cycle of an instrument: its own ``settlement_days`` if set, else its asset class default."""
        if instrument_days is not None:
            return instrument_days
        cycle = _CYCLE_BY_ASSET_CLASS.get(asset_class.upper())
        return self.equity_days if cycle is None else cycle

    def settlement_date(self, trade_date: date, asset_class: str, instrument_days: int | None = None) -> date:
        """When a trade made on ``trade_date`` settles."""
        return self.add_business_days(trade_date, self.settlement_days(asset_class, instrument_days))
