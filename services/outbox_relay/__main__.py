"""``python -m services.outbox_relay``: publish outbox rows that no writer published."""

from __future__ import annotations

import asyncio
import signal

from common import bootstrap
from common.logging import configure_logging
from common.metrics import serve_metrics
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
    serve_metrics(bootstrap.settings().metrics_port)
    asyncio.run(_main())
