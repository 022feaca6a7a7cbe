"""``python -m services.venue_sim``: run the simulated venue until SIGTERM or SIGINT."""

from __future__ import annotations

from common import bootstrap
from common.runtime.process import run_service, settings_or_exit
from services.venue_sim.config import VenueConfig
from services.venue_sim.venue import VenueSim

SERVICE = "oms.venue_sim"


def main() -> int:
    """Entry point."""
    settings = settings_or_exit()
    # Its readiness is the broker: while the database is away the venue is up but waits to journal, and reports
    # nothing meanwhile (see services.venue_sim.venue).
    checks = bootstrap.worker_checks(settings, None, SERVICE)
    return run_service(SERVICE, settings, lambda: VenueSim(VenueConfig.from_settings(settings)), checks)


if __name__ == "__main__":
    raise SystemExit(main())
