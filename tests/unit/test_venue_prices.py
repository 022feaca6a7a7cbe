"""The simulated venue's price walk: seeded, on the tick, positive."""

from __future__ import annotations

from decimal import Decimal

from services.venue_sim.prices import InstrumentSpec, Market, floor_to_lot, round_to_tick

AAPL = InstrumentSpec("AAPL", Decimal("190.00"), Decimal("0.01"), Decimal("1"))
VOD = InstrumentSpec("VOD", Decimal("70.00"), Decimal("0.02"), Decimal("100"))


def _path(market: Market, symbol: str, steps: int) -> list[Decimal]:
    return [market.step()[symbol] for _ in range(steps)]


def test_same_seed_same_path_and_other_seed_another() -> None:
    first = _path(Market([AAPL, VOD], seed=42), "AAPL", 200)
    again = _path(Market([AAPL, VOD], seed=42), "AAPL", 200)
    other = _path(Market([AAPL, VOD], seed=7), "AAPL", 200)
    assert first == again
    assert first != other
    assert len(set(first)) > 10  # it actually moves


def test_a_symbols_path_does_not_depend_on_the_other_symbols() -> None:
    alone = _path(Market([AAPL], seed=42), "AAPL", 100)
    with_others = _path(Market([VOD, AAPL, InstrumentSpec("MSFT", Decimal("410"))], seed=42), "AAPL", 100)
    assert alone == with_others


def test_prices_stay_on_the_tick() -> None:
    market = Market([VOD, AAPL], seed=1)
    for _ in range(2000):
        prices = market.step()
        assert prices["VOD"] % Decimal("0.02") == 0
        assert prices["AAPL"] % Decimal("0.01") == 0


def test_prices_stay_positive_even_when_wild() -> None:
    penny = InstrumentSpec("PENNY", Decimal("0.05"), Decimal("0.01"))
    market = Market([penny], seed=3, volatility=Decimal("0.5"), mean_reversion=Decimal(0))
    seen = _path(market, "PENNY", 2000)
    assert min(seen) == Decimal("0.01")  # it hit the floor, and stayed on it rather than going below
    assert all(price >= Decimal("0.01") for price in seen)


def test_mean_reversion_keeps_the_price_near_the_reference() -> None:
    market = Market([AAPL], seed=42)
    seen = _path(market, "AAPL", 20_000)
    assert all(Decimal("150") < price < Decimal("230") for price in seen)


def test_reference_price_is_put_on_the_tick_and_unknown_symbols_start_at_100() -> None:
    market = Market([InstrumentSpec("ODD", Decimal("70.03"), Decimal("0.02"))], seed=42)
    assert market.price("ODD") == Decimal("70.04")
    assert market.price("NEWCO") == Decimal("100.00")
    assert market.lot_size("NEWCO") == Decimal("1")
    assert "NEWCO" in market.step()  # and it walks from then on


def test_rounding_helpers() -> None:
    assert round_to_tick(Decimal("0.001"), Decimal("0.01")) == Decimal("0.01")
    assert round_to_tick(Decimal("12.345"), Decimal("0.25")) == Decimal("12.25")
    assert floor_to_lot(Decimal("333.3"), Decimal("100")) == Decimal("300")
    assert floor_to_lot(Decimal("0.00035"), Decimal("0.0001")) == Decimal("0.0003")
