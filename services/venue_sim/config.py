"""The simulated venue's settings: ``OMS_VENUE_*`` environment variables on top of the common settings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal

from common.config import Settings, load_settings
from services.venue_sim.book import BookRules
from services.venue_sim.prices import InstrumentSpec


def _decimal_or_none(text: str) -> Decimal | None:
    return Decimal(text) if text.strip() else None


@dataclass(frozen=True)
class VenueConfig:
    """Everything the venue process needs; ``from_env`` reads it, tests build it directly."""

    amqp_url: str
    database_url: str
    seed: int = 42
    tick_ms: float = 200.0
    latency_ms: float = 0.0
    partial_fills: int = 1
    reject_symbols: frozenset[str] = frozenset()
    max_qty: Decimal | None = None
    fee_rate: Decimal = Decimal("0.0005")
    # Relative standard deviation of one tick's price move, and the per-tick pull back to the reference price.
    volatility: Decimal = Decimal("0.0005")
    mean_reversion: Decimal = Decimal("0.001")
    prefetch: int = 500
    delivery_limit: int = 5
    # None: read instruments from the database at start; tests pass them here and need no database.
    instruments: tuple[InstrumentSpec, ...] | None = None
    # Declare the pipeline's stage queues too, so reports published before the OMS workers first start are
    # kept; tests that run the venue alone turn it off to leave the shared vhost alone.
    declare_pipeline: bool = True
    publish_prices: bool = True
    # Journal the venue's state in the database (answered request ids, working orders, unpublished reports:
    # services.venue_sim.journal) so that a restarted venue carries on where it stopped. None: when it reads its
    # instruments from the database (tests that give instruments run without one unless they ask).
    durable: bool | None = None

    @classmethod
    def from_env(cls, settings: Settings | None = None) -> VenueConfig:
        """Read ``OMS_VENUE_*`` (and the common ``OMS_*`` settings)."""
        settings = settings or load_settings()
        env = os.environ.get
        return cls(
            amqp_url=settings.amqp_url,
            database_url=settings.database_url,
            seed=int(env("OMS_VENUE_SEED", "42")),
            tick_ms=float(env("OMS_VENUE_TICK_MS", "200")),
            latency_ms=float(env("OMS_VENUE_LATENCY_MS", "0")),
            partial_fills=max(int(env("OMS_VENUE_PARTIAL_FILLS", "1")), 1),
            reject_symbols=frozenset(
                s.strip().upper() for s in env("OMS_VENUE_REJECT_SYMBOLS", "").split(",") if s.strip()
            ),
            max_qty=_decimal_or_none(env("OMS_VENUE_MAX_QTY", "")),
            fee_rate=settings.default_fee_rate,  # OMS_VENUE_FEE_RATE
            volatility=Decimal(env("OMS_VENUE_VOLATILITY", "0.0005")),
            mean_reversion=Decimal(env("OMS_VENUE_MEAN_REVERSION", "0.001")),
            prefetch=int(env("OMS_VENUE_PREFETCH", "500")),
            delivery_limit=settings.delivery_limit,
        )

    @property
    def journaled(self) -> bool:
        """Whether the venue's state is kept in the database."""
        return self.instruments is None if self.durable is None else self.durable

    @property
    def rules(self) -> BookRules:
        """The book's rules from these settings."""
        return BookRules(
            partial_fills=self.partial_fills,
            reject_symbols=self.reject_symbols,
            max_qty=self.max_qty,
            fee_rate=self.fee_rate,
        )
