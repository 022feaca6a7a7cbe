"""Outages end to end: every worker its own process, a stream of orders flowing, then the broker drops every
connection (a broker restart, as the clients see it) or the database goes away for a few seconds. No process
may exit (nothing restarts them here), and every order must still end FILLED with each fill booked once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal

import pytest
from aio_pika.abc import AbstractRobustConnection

from common.messages.exchanges import OMS_EXCHANGE
from common.messaging.publisher import Publisher
from tests.e2e.conftest import RunningSystem
from tests.e2e.support import count
from tests.support import outages
from tests.support.orders import trade_decision
from tests.support.polling import async_wait_until

pytestmark = pytest.mark.e2e
PIPELINE = "pipeline_with_venue"
ORDERS = 150
QUANTITY = Decimal("10")


async def _stream_through(
    running: RunningSystem, amqp: AbstractRobustConnection, strategy: str, outage: Callable[[], Awaitable[None]]
) -> None:
    engine = running.engine
    bodies = [
        trade_decision(accountId="ACC-002", symbol="SPY", quantity=QUANTITY, strategyId=strategy) for _ in range(ORDERS)
    ]
    position_before = count(
        engine, "SELECT coalesce(sum(quantity), 0) FROM positions WHERE account_id = 'ACC-002' AND symbol = 'SPY'"
    )
    publisher = Publisher(amqp)

    async def stream() -> None:
        for body in bodies:
            # The test's own connection is spared by the outage: the stream goes on throughout.
            await publisher.publish_json(OMS_EXCHANGE, "intake.decision", "TradeDecision", body)

    streaming = asyncio.create_task(stream())
    await async_wait_until(
        lambda: count(engine, "SELECT count(*) FROM orders WHERE strategy_id = :s", s=strategy) >= ORDERS // 10,
        timeout=60,
        interval=0.01,
        message="the stream under way",
    )
    await outage()
    await streaming

    def filled() -> int:
        return count(engine, "SELECT count(*) FROM orders WHERE strategy_id = :s AND state = 'FILLED'", s=strategy)

    await async_wait_until(lambda: filled() == ORDERS, timeout=240, message=lambda: f"{filled()}/{ORDERS} filled")
    assert running.supervisor.dead() == [], [r.spec.name for r in running.supervisor.dead()]
    assert count(engine, "SELECT count(*) FROM orders WHERE strategy_id = :s", s=strategy) == ORDERS
    fills = count(
        engine,
        "SELECT count(*) FROM execution_reports e JOIN orders o ON o.id = e.order_id "
        "WHERE o.strategy_id = :s AND e.exec_type IN ('PARTIAL_FILL', 'FILL')",
        s=strategy,
    )

    def confirmations() -> int:
        return count(
            engine,
            "SELECT count(*) FROM trade_confirmations c JOIN orders o ON o.id = c.order_id WHERE o.strategy_id = :s",
            s=strategy,
        )

    await async_wait_until(lambda: confirmations() == fills, timeout=120, message=lambda: f"{confirmations()}/{fills}")
    position_after = count(
        engine, "SELECT coalesce(sum(quantity), 0) FROM positions WHERE account_id = 'ACC-002' AND symbol = 'SPY'"
    )
    assert position_after - position_before == ORDERS * QUANTITY
    await async_wait_until(
        lambda: count(engine, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0,
        timeout=60,
        message="outbox drained",
    )
    assert running.supervisor.dead() == []


async def test_every_process_outlives_a_broker_restart_mid_stream(
    pipeline_with_venue: RunningSystem, amqp: AbstractRobustConnection
) -> None:
    running = pipeline_with_venue

    async def broker_restart() -> None:
        closed = await asyncio.to_thread(
            outages.kill_all_connections, running.management_url, running.vhost, frozenset({"oms.e2e-test"})
        )
        assert len(closed) >= 6  # the stages, the relay, the venue

    await _stream_through(running, amqp, "outage-broker", broker_restart)


async def test_every_process_outlives_a_database_outage_mid_stream(
    pipeline_with_venue: RunningSystem, amqp: AbstractRobustConnection
) -> None:
    running = pipeline_with_venue

    async def database_outage() -> None:
        with outages.database_down(running.database_url):
            await asyncio.sleep(4)  # the length of the outage (not a wait for state)

    await _stream_through(running, amqp, "outage-database", database_outage)
