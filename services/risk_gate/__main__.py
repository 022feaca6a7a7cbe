"""``python -m services.risk_gate``: run the risk gate stage and, beside it, the reference price feed."""

from __future__ import annotations

import asyncio
import logging
import signal

from common import bootstrap
from common.logging import configure_logging
from common.metrics import serve_metrics
from services.risk_gate.handlers import configured_price_settings
from services.risk_gate.prices import ReferencePriceConsumer
from services.risk_gate.worker import SPEC, RiskGateWorker

log = logging.getLogger("services.risk_gate")


async def _feed_forever(feed: ReferencePriceConsumer, stopping: asyncio.Event) -> None:
    """The feed is best effort: if it fails, the gate goes on (prices age and the fallback applies)."""
    delay = 1.0
    while not stopping.is_set():
        try:
            await feed.run()
            return
        except Exception as exc:
            log.error("reference price feed failed; restarting", extra={"error": repr(exc), "delay": delay})
            try:
                await asyncio.wait_for(stopping.wait(), delay)
            except TimeoutError:
                delay = min(delay * 2, 30.0)


async def main() -> None:
    """Run the gate and the feed until SIGTERM or SIGINT."""
    config = bootstrap.settings()
    configured_price_settings()  # a bad OMS_RISK_* setting stops the process now, not at the first order
    engine = bootstrap.engine(config.database_url)
    worker = RiskGateWorker(SPEC, config, engine)
    feed = ReferencePriceConsumer(engine, config.amqp_url)
    stopping = asyncio.Event()

    def stop() -> None:
        stopping.set()
        worker.stop()
        feed.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    feed_task = asyncio.create_task(_feed_forever(feed, stopping))
    try:
        await worker.run()
    finally:
        stop()
        await feed_task


if __name__ == "__main__":
    config = bootstrap.settings()
    configure_logging(f"oms.{SPEC.stage}", config.log_level)
    serve_metrics(config.metrics_port)
    asyncio.run(main())
