"""``python -m services.venue_sim``: run the simulated venue until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal

from common.config import load_settings
from common.health import dependency_checks, serve_process_endpoints
from common.logging import configure_logging
from common.runtime.loop import run as run_loop
from services.venue_sim.config import VenueConfig
from services.venue_sim.venue import VenueSim


async def _run(config: VenueConfig) -> None:
    venue = VenueSim(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, venue.stop)
    await venue.run()


def main() -> None:
    """Entry point."""
    settings = load_settings()
    configure_logging("oms.venue_sim", settings.log_level)
    # Its readiness is the broker: while the database is away the venue is up but waits to journal, and reports
    # nothing meanwhile (see services.venue_sim.venue).
    serve_process_endpoints(
        settings.metrics_port, "oms.venue_sim", dependency_checks(None, settings.amqp_url, "oms.venue_sim")
    )
    run_loop(_run(VenueConfig.from_env(settings)))


if __name__ == "__main__":
    main()
