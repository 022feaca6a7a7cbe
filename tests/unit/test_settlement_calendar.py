"""The settlement calendar: business days, cycles per asset class, holidays, trade dates in UTC."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.settlement_calendar import SettlementCalendar, parse_holidays, trade_date_of

WED, THU, FRI, SAT, SUN, MON, TUE = (date(2026, 11, 25) + timedelta(days=n) for n in range(7))


def test_the_weekdays_are_what_the_tests_assume() -> None:
    assert [d.strftime("%a") for d in (WED, FRI, SAT, MON, TUE)] == ["Wed", "Fri", "Sat", "Mon", "Tue"]


@pytest.mark.parametrize(
    ("start", "days", "expected"),
    [
        (WED, 1, THU),
        (THU, 1, FRI),
        (FRI, 1, MON),
        (FRI, 2, TUE),
        (SAT, 1, MON),
        (SUN, 1, MON),
        (FRI, 0, FRI),
        (SAT, 0, SAT),  # T+0 settles on the trade date itself
    ],
)
def test_business_days_skip_weekends(start: date, days: int, expected: date) -> None:
    assert SettlementCalendar().add_business_days(start, days) == expected


def test_holidays_are_skipped_too() -> None:
    calendar = SettlementCalendar.of(1, [THU, MON])
    assert calendar.add_business_days(WED, 1) == FRI
    assert calendar.add_business_days(FRI, 1) == TUE
    assert calendar.add_business_days(WED, 2) == TUE
    assert not calendar.is_business_day(THU)


@pytest.mark.parametrize(
    ("asset_class", "instrument_days", "expected"),
    [
        ("EQUITY", None, 1),
        ("ETF", None, 1),
        ("equity", None, 1),
        ("FUTURE", None, 0),
        ("CRYPTO", None, 0),
        ("FX", None, 2),
        ("BOND", None, 1),  # an asset class without a rule of its own follows equities
        ("EQUITY", 3, 3),  # the instrument's own cycle wins
        ("FX", 0, 0),
    ],
)
def test_cycle_per_asset_class(asset_class: str, instrument_days: int | None, expected: int) -> None:
    assert SettlementCalendar(equity_days=1).settlement_days(asset_class, instrument_days) == expected


def test_the_equity_cycle_is_configurable() -> None:
    calendar = SettlementCalendar(equity_days=2)
    assert calendar.settlement_date(FRI, "EQUITY") == TUE
    assert calendar.settlement_date(FRI, "ETF") == TUE
    assert calendar.settlement_date(FRI, "FX") == TUE
    assert calendar.settlement_date(FRI, "FUTURE") == FRI


def test_parse_holidays() -> None:
    assert parse_holidays("2026-11-26, 2026-12-25,,") == frozenset({THU, date(2026, 12, 25)})
    assert parse_holidays("") == frozenset()
    assert parse_holidays(None) == frozenset()
    with pytest.raises(ValueError, match="26/11/2026"):
        parse_holidays("2026-11-25,26/11/2026")


def test_trade_date_is_the_utc_date() -> None:
    new_york = timezone(timedelta(hours=-5))
    assert trade_date_of(datetime(2026, 11, 27, 20, 0, tzinfo=new_york)) == SAT
    assert trade_date_of(datetime(2026, 11, 27, 18, 59, tzinfo=new_york)) == FRI
    assert trade_date_of(datetime(2026, 11, 28, 0, 30)) == SAT  # naive: taken as UTC


def test_negative_days_are_refused() -> None:
    with pytest.raises(ValueError):
        SettlementCalendar(equity_days=-1)
    with pytest.raises(ValueError):
        SettlementCalendar().add_business_days(WED, -1)


@given(
    start=st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 1, 1)),
    days=st.integers(min_value=1, max_value=30),
    holidays=st.sets(st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 3, 1)), max_size=20),
)
def test_settlement_lands_on_the_nth_business_day(start: date, days: int, holidays: set[date]) -> None:
    calendar = SettlementCalendar.of(1, holidays)
    end = calendar.add_business_days(start, days)
    assert calendar.is_business_day(end)
    between = [start + timedelta(days=n) for n in range(1, (end - start).days + 1)]
    assert sum(calendar.is_business_day(d) for d in between) == days
