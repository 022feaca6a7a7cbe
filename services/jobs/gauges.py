"""Gauges read from the state of the system: orders by public status, and the depth of each dead-letter queue.

The jobs worker refreshes them in a thread of its own every ``OMS_GAUGES_EVERY_SECONDS`` and serves them on
its metrics port, so one scrape target carries the system-wide numbers.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from sqlalchemy import Engine, text

from common.domain import OrderStatus
from common.messaging.connection import AmqpUrls, connect_once
from common.metrics import DEAD_LETTER_DEPTH, ORDERS_BY_STATUS
from services.jobs.deadletters import CONNECTION_NAME, dead_letter_queues, queue_depths

log = logging.getLogger(__name__)

_BY_STATUS = text("SELECT status, count(*) AS n FROM orders GROUP BY status")


def refresh_order_gauges(engine: Engine) -> dict[str, int]:
    """Set ``oms_orders{status}`` from the orders table (every public status, zero included)."""
    with engine.connect() as connection:
        counts = {row.status: int(row.n) for row in connection.execute(_BY_STATUS)}
    for status in OrderStatus:
        ORDERS_BY_STATUS.labels(status.value).set(counts.get(status.value, 0))
    return counts


async def _depths(amqp_url: AmqpUrls) -> dict[str, int | None]:
    connection = await connect_once(amqp_url, CONNECTION_NAME)
    try:
        return await queue_depths(connection, dead_letter_queues())
    finally:
        await connection.close()


def refresh_dead_letter_gauges(amqp_url: AmqpUrls) -> dict[str, int | None]:
    """Set ``oms_dead_letter_depth{queue}`` for every dead-letter queue that exists."""
    depths = asyncio.run(_depths(amqp_url))
    for queue, depth in depths.items():
        if depth is not None:
            DEAD_LETTER_DEPTH.labels(queue).set(depth)
    return depths


class GaugeRefresher:
    """A daemon thread refreshing the gauges until stopped; a failed refresh is logged and retried next time."""

    def __init__(self, engine: Engine, amqp_url: AmqpUrls, every_seconds: float) -> None:
        self.engine = engine
        self.amqp_url = amqp_url
        self.every_seconds = every_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oms-gauges", daemon=True)

    def refresh(self) -> None:
        """One round of both refreshes."""
        for name, refresh in (
            ("orders", lambda: refresh_order_gauges(self.engine)),
            ("dead letters", lambda: refresh_dead_letter_gauges(self.amqp_url)),
        ):
            try:
                refresh()
            except Exception as exc:
                log.warning("gauge refresh failed", extra={"gauges": name, "error": repr(exc)})

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.every_seconds)

    def start(self) -> None:
        """Start refreshing."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the round at hand."""
        self._stop.set()
