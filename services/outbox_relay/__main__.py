"""``python -m services.outbox_relay``: publish outbox rows that no writer published."""

from __future__ import annotations

from common import bootstrap
from common.runtime.outbox_relay import OutboxRelay
from common.runtime.process import run_service, settings_or_exit

SERVICE = "oms.outbox_relay"


def main() -> int:
    """Entry point."""
    settings = settings_or_exit()
    engine = bootstrap.engine(settings)
    checks = bootstrap.worker_checks(settings, engine, SERVICE)
    return run_service(SERVICE, settings, lambda: OutboxRelay(settings, engine), checks)


if __name__ == "__main__":
    raise SystemExit(main())
