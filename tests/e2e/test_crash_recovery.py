"""Crash anywhere, restart, and every order reaches the state it would have reached.

For each stage worker in turn: a stream of orders goes in, the worker is killed with SIGKILL while the stream
is flowing through it, and started again. Every order must end FILLED, every fill booked exactly once (order,
execution reports, confirmations, position) and nothing left unsent in the outbox.
"""

from __future__ import annotations

import asyncio
import signal
from decimal import Decimal

import pytest
from aio_pika.abc import AbstractRobustConnection

from common.messages.exchanges import OMS_EXCHANGE
from common.messaging.publisher import Publisher
from tests.e2e.conftest import RunningSystem
from tests.e2e.support import count
from tests.support.orders import trade_decision
from tests.support.polling import async_wait_until

pytestmark = pytest.mark.e2e
PIPELINE = "pipeline_with_venue"
ORDERS = 200
QUANTITY = Decimal("10")
# How far the stream has gone through each victim: the count that must reach a tenth before the kill.
PROGRESS = {
    "intake": "SELECT count(*) FROM orders WHERE strategy_id = :s",
    "risk_gate": "SELECT count(*) FROM orders WHERE strategy_id = :s AND state <> 'NEW'",
    "router": "SELECT count(*) FROM orders WHERE strategy_id = :s AND state NOT IN ('NEW', 'APPROVED')",
    "execution_handler": "SELECT count(*) FROM orders WHERE strategy_id = :s AND filled_quantity > 0",
    "settlement": "SELECT count(*) FROM trade_confirmations c JOIN orders o ON o.id = c.order_id "
    "WHERE o.strategy_id = :s",
}
VICTIMS = list(PROGRESS)


@pytest.mark.parametrize("victim", VICTIMS)
async def test_sigkill_mid_stream_loses_and_doubles_nothing(
    pipeline_with_venue: RunningSystem, amqp: AbstractRobustConnection, victim: str
) -> None:
    running = pipeline_with_venue
    engine = running.engine
    strategy = f"crash-{victim}"[:36]
    bodies = [
        trade_decision(accountId="ACC-002", symbol="SPY", quantity=QUANTITY, strategyId=strategy) for _ in range(ORDERS)
    ]
    position_before = count(
        engine, "SELECT coalesce(sum(quantity), 0) FROM positions WHERE account_id = 'ACC-002' AND symbol = 'SPY'"
    )
    publisher = Publisher(amqp)

    async def stream() -> None:
        for body in bodies:
            await publisher.publish_json(OMS_EXCHANGE, "intake.decision", "TradeDecision", body)

    streaming = asyncio.create_task(stream())
    # Kill once the victim has handled part of the stream: it is in the middle of it.
    await async_wait_until(
        lambda: count(engine, PROGRESS[victim], s=strategy) >= ORDERS // 10,
        timeout=60,
        interval=0.01,
        message=f"{victim} under way",
    )
    running.supervisor.kill(victim, signal.SIGKILL)
    await streaming
    running.restart(victim)

    def filled() -> int:
        return count(engine, "SELECT count(*) FROM orders WHERE strategy_id = :s AND state = 'FILLED'", s=strategy)

    await async_wait_until(lambda: filled() == ORDERS, timeout=180, message=lambda: f"{filled()}/{ORDERS} filled")
    assert count(engine, "SELECT count(*) FROM orders WHERE strategy_id = :s", s=strategy) == ORDERS
    assert (
        count(
            engine,
            "SELECT count(*) FROM orders WHERE strategy_id = :s AND filled_quantity <> :q",
            s=strategy,
            q=QUANTITY,
        )
        == 0
    )
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
    assert (
        count(
            engine,
            "SELECT count(*) FROM (SELECT execution_id FROM trade_confirmations GROUP BY execution_id, reversal "
            "HAVING count(*) > 1) d",
        )
        == 0
    )
    position_after = count(
        engine, "SELECT coalesce(sum(quantity), 0) FROM positions WHERE account_id = 'ACC-002' AND symbol = 'SPY'"
    )
    assert position_after - position_before == ORDERS * QUANTITY
    await async_wait_until(
        lambda: count(engine, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0,
        timeout=60,
        message="outbox drained",
    )
