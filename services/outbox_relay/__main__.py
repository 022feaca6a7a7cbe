"""``python -m services.outbox_relay``: publish outbox rows that no writer published."""

from __future__ import annotations

import asyncio
import signal

from common import bootstrap
from common.health import dependency_checks, serve_process_endpoints
from common.logging import configure_logging
from common.runtime.loop import run as run_loop
from common.runtime.outbox_relay import OutboxRelay


async def _main() -> None:
    settings = bootstrap.settings()
    relay = OutboxRelay(settings, bootstrap.engine())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, relay.stop)
    await relay.run()


if __name__ == "__main__":
    configure_logging("oms.outbox_relay", bootstrap.settings().log_level)
    settings = bootstrap.settings()
    serve_process_endpoints(
        settings.metrics_port,
        "oms.outbox_relay",
        dependency_checks(bootstrap.engine(), settings.amqp_url, "oms.outbox_relay"),
    )
    run_loop(_main())
