"""Simulated reference prices: a seeded random walk per symbol, always positive and on the instrument's tick.

Each symbol draws from its own generator, seeded from the venue seed and the symbol, so a symbol's path
depends only on the seed and how many ticks have passed, not on which other symbols exist or trade. A weak
pull towards the instrument's reference price keeps a long session from wandering off (without it, a day's
walk drifts far enough that demo limit orders near the reference would never fill).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

DEFAULT_REFERENCE_PRICE = Decimal("100")
DEFAULT_TICK_SIZE = Decimal("0.01")
DEFAULT_LOT_SIZE = Decimal("1")


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """What the venue needs to know of an instrument."""

    symbol: str
    reference_price: Decimal = DEFAULT_REFERENCE_PRICE
    tick_size: Decimal = DEFAULT_TICK_SIZE
    lot_size: Decimal = DEFAULT_LOT_SIZE


def round_to_tick(price: Decimal, tick: Decimal) -> Decimal:
    """The nearest price on the tick grid, never below one tick."""
    ticks = (price / tick).to_integral_value(rounding=ROUND_HALF_EVEN)
    return max(ticks, Decimal(1)) * tick


def floor_to_lot(quantity: Decimal, lot: Decimal) -> Decimal:
    """The largest whole number of lots not above ``quantity``."""
    return (quantity / lot).to_integral_value(rounding=ROUND_FLOOR) * lot


class RandomWalk:
    """One symbol's price: each step moves a whole number of ticks drawn from a seeded normal distribution."""

    def __init__(self, spec: InstrumentSpec, seed: int, volatility: Decimal, mean_reversion: Decimal) -> None:
        self.spec = spec
        self._anchor = round_to_tick(spec.reference_price, spec.tick_size)
        self.price = self._anchor
        # A string seed is hashed with SHA-512 by random.Random: stable across runs and processes. A simulated
        # price walk must be reproducible from its seed, and nothing secret comes from it (B311).
        self._rng = random.Random(f"{seed}/{spec.symbol}")  # nosec B311
        self._volatility = volatility
        self._mean_reversion = mean_reversion

    def step(self) -> Decimal:
        """Advance one tick of time and return the new price."""
        tick = self.spec.tick_size
        # Floats only to draw how many ticks to move; the price itself stays an exact Decimal on the grid.
        sigma_ticks = float(self.price * self._volatility / tick)
        pull_ticks = float((self._anchor - self.price) * self._mean_reversion / tick)
        moved = round(self._rng.gauss(pull_ticks, sigma_ticks)) if sigma_ticks > 0 else round(pull_ticks)
        self.price = max(self.price + moved * tick, tick)
        return self.price


class Market:
    """Every symbol's current price, tick and lot; unknown symbols start at 100 on a 0.01 tick."""

    def __init__(
        self,
        instruments: list[InstrumentSpec] | tuple[InstrumentSpec, ...],
        seed: int,
        volatility: Decimal = Decimal("0.0005"),
        mean_reversion: Decimal = Decimal("0.001"),
    ) -> None:
        self._seed = seed
        self._volatility = volatility
        self._mean_reversion = mean_reversion
        self._walks: dict[str, RandomWalk] = {}
        for spec in instruments:
            self._add(spec)

    def _add(self, spec: InstrumentSpec) -> RandomWalk:
        walk = RandomWalk(spec, self._seed, self._volatility, self._mean_reversion)
        self._walks[spec.symbol] = walk
        return walk

    def _walk(self, symbol: str) -> RandomWalk:
        walk = self._walks.get(symbol)
        return walk if walk is not None else self._add(InstrumentSpec(symbol))

    def price(self, symbol: str) -> Decimal:
        """The symbol's current price."""
        return self._walk(symbol).price

    def lot_size(self, symbol: str) -> Decimal:
        """The symbol's lot size (1 when unknown)."""
        return self._walk(symbol).spec.lot_size

    def set_price(self, symbol: str, price: Decimal) -> None:
        """Move a symbol's price by hand (tests, demos); rounded to its tick."""
        walk = self._walk(symbol)
        walk.price = round_to_tick(price, walk.spec.tick_size)

    def step(self) -> dict[str, Decimal]:
        """Advance every symbol one tick; returns the new prices."""
        return {symbol: walk.step() for symbol, walk in self._walks.items()}

    def prices(self) -> dict[str, Decimal]:
        """Every symbol's current price."""
        return {symbol: walk.price for symbol, walk in self._walks.items()}
