"""What the simulated venue runs with: its settings section (``OMS_VENUE_*``), the broker and database it uses,
and the switches tests turn."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.settings import Settings, StageSettings, VenueSettings
from services.venue_sim.book import BookRules
from services.venue_sim.prices import InstrumentSpec


@dataclass(frozen=True)
class VenueConfig:
    """Everything the venue process needs; ``from_settings`` builds the process's, tests build it directly."""

    amqp_url: str
    database_url: str
    venue: VenueSettings = field(default_factory=VenueSettings)
    delivery_limit: int = StageSettings().delivery_limit
    # None: read instruments from the database at start; tests pass them here and need no database.
    instruments: tuple[InstrumentSpec, ...] | None = None
    # Declare the pipeline's stage queues too, so reports published before the OMS workers first start are
    # kept; tests that run the venue alone turn it off to leave the shared vhost alone.
    declare_pipeline: bool = True
    # False: the broker's definitions own the topology (OMS_AMQP_DECLARE_TOPOLOGY); the venue only looks its queue
    # up, which its broker user (with no right to declare) can.
    declare_queue: bool = True
    publish_prices: bool = True
    # Journal the venue's state in the database (answered request ids, working orders, unpublished reports:
    # services.venue_sim.journal) so that a restarted venue carries on where it stopped. None: when it reads its
    # instruments from the database (tests that give instruments run without one unless they ask).
    durable: bool | None = None
    # Every node of the broker's cluster, amqp_url's first (OMS_AMQP_NODES), to fail over among; empty: amqp_url's.
    amqp_urls: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> VenueConfig:
        """The venue of these settings: ``OMS_VENUE_*``, on the configured broker and database."""
        return cls(
            amqp_url=settings.infra.amqp_url,
            amqp_urls=settings.infra.amqp_urls,
            database_url=settings.infra.worker_database_url,
            venue=settings.venue,
            delivery_limit=settings.stage.delivery_limit,
            declare_pipeline=settings.infra.amqp_declare_topology,
            declare_queue=settings.infra.amqp_declare_topology,
        )

    @property
    def journaled(self) -> bool:
        """Whether the venue's state is kept in the database."""
        return self.instruments is None if self.durable is None else self.durable

    @property
    def rules(self) -> BookRules:
        """The book's rules from these settings."""
        return BookRules(
            partial_fills=self.venue.partial_fills,
            reject_symbols=self.venue.reject_symbols,
            max_qty=self.venue.max_qty,
            fee_rate=self.venue.fee_rate,
        )
