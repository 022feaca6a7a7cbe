"""Nothing doubled, nothing lost on bad input: duplicates are applied once, bad messages are dead-lettered with
the reason and the workers keep going. The test plays the broker.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from common import jsonutil
from common.messages.exchanges import OMS_EXCHANGE
from common.messages.headers import ERROR_HEADER
from common.messaging.publisher import Publisher
from tests.e2e.conftest import RunningSystem
from tests.e2e.support import BrokerPlayer, count, send_decision, wait_for_order, wait_for_state
from tests.support.orders import order_record, trade_decision
from tests.support.polling import async_wait_until

pytestmark = pytest.mark.e2e
PIPELINE = "pipeline_without_venue"
D = Decimal


async def _dead_letters(connection: AbstractRobustConnection, queue: str, count_: int) -> list[AbstractIncomingMessage]:
    channel = await connection.channel()
    dlq = await channel.declare_queue(queue, passive=True)
    got: list[AbstractIncomingMessage] = []

    async def enough() -> bool:
        while (message := await dlq.get(no_ack=False, fail=False)) is not None:
            got.append(message)
        return len(got) >= count_

    await async_wait_until(enough, timeout=30, message=f"{count_} dead letters in {queue}")
    for message in got:
        await message.reject(requeue=True)  # leave them for the operators (and other tests) to see
    return got


async def _routed_order(running: RunningSystem, amqp: AbstractRobustConnection, player: BrokerPlayer) -> str:
    body = trade_decision(type="LIMIT", price=D("150.00"), quantity=D("100"))
    await send_decision(amqp, body)
    order_id: str = (await wait_for_order(running.engine, "ACC-001", body["decisionId"])).id
    await player.next_request(order_id, "new")
    await player.report(order_id, "NEW", cumQty=0, leavesQty=100, orderQty=100, price=D("150.00"))
    await wait_for_state(running.engine, order_id, "OPEN")
    return order_id


async def test_the_same_decision_twice_makes_one_order(
    pipeline_without_venue: RunningSystem, amqp: AbstractRobustConnection
) -> None:
    running = pipeline_without_venue
    player = await BrokerPlayer.start(amqp)
    body = trade_decision(quantity=D("5"))
    # Two publishes, two message ids (so the inbox cannot help): only the decision id is the same.
    publisher = Publisher(amqp)
    ids = [await publisher.publish_json(OMS_EXCHANGE, "intake.decision", "TradeDecision", body) for _ in range(2)]
    order = await wait_for_order(running.engine, "ACC-001", body["decisionId"])
    await player.next_request(order.id, "new")
    await async_wait_until(
        lambda: (
            count(
                running.engine, "SELECT count(*) FROM inbox WHERE stage = 'intake' AND message_id = ANY(:ids)", ids=ids
            )
            == 2
        ),
        timeout=30,
        message="intake took both copies",
    )
    assert count(running.engine, "SELECT count(*) FROM orders WHERE client_order_id = :d", d=body["decisionId"]) == 1
    assert (
        count(running.engine, "SELECT count(*) FROM order_requests WHERE order_id = :o AND kind = 'NEW'", o=order.id)
        == 1
    )


async def test_the_same_execution_report_twice_is_applied_once(
    pipeline_without_venue: RunningSystem, amqp: AbstractRobustConnection
) -> None:
    running = pipeline_without_venue
    player = await BrokerPlayer.start(amqp)
    order_id = await _routed_order(running, amqp, player)
    fill = {"cumQty": 40, "leavesQty": 60, "lastQty": 40, "lastPx": D("149.50"), "avgPx": D("149.50"), "fees": D("1")}
    execution_id = await player.report(order_id, "PARTIAL_FILL", **fill)
    await player.report(order_id, "PARTIAL_FILL", executionId=execution_id, **fill)  # redelivered by the broker
    marker = await player.report(order_id, "PENDING_CANCEL", cumQty=40, leavesQty=60)  # a later report
    await async_wait_until(
        lambda: count(running.engine, "SELECT count(*) FROM execution_reports WHERE execution_id = :e", e=marker),
        timeout=30,
        message="the later report",
    )
    row = order_record(running.engine, order_id)
    assert (row.filled_quantity, row.fees) == (D("40"), D("1"))
    assert count(running.engine, "SELECT count(*) FROM execution_reports WHERE execution_id = :e", e=execution_id) == 1
    await async_wait_until(
        lambda: count(running.engine, "SELECT count(*) FROM trade_confirmations WHERE order_id = :o", o=order_id),
        timeout=30,
        message="settlement",
    )
    assert count(running.engine, "SELECT count(*) FROM trade_confirmations WHERE order_id = :o", o=order_id) == 1


async def test_a_cancel_racing_a_fill_keeps_both(
    pipeline_without_venue: RunningSystem, amqp: AbstractRobustConnection
) -> None:
    from common.orders.commands import cancel_order
    from common.store.uow import UnitOfWork

    running = pipeline_without_venue
    player = await BrokerPlayer.start(amqp)
    order_id = await _routed_order(running, amqp, player)
    with UnitOfWork(running.engine) as uow:
        cancel_order(uow, order_id, reason="race", user_id="e2e")
        uow.commit()
    cancel = await player.next_request(order_id, "cancel")
    # The venue filled part of the order before it saw the cancel, then canceled the rest.
    await player.report(order_id, "PARTIAL_FILL", cumQty=30, leavesQty=70, lastQty=30, lastPx=D("150"), avgPx=D("150"))
    await player.report(order_id, "CANCELED", cumQty=30, leavesQty=0, avgPx=D("150"), requestId=cancel["requestId"])
    row = await wait_for_state(running.engine, order_id, "CANCELED")
    assert (row.status, row.filled_quantity, row.average_execution_price) == ("CANCELED", D("30"), D("150"))
    await async_wait_until(
        lambda: count(running.engine, "SELECT count(*) FROM trade_confirmations WHERE order_id = :o", o=order_id),
        timeout=30,
        message="the fill settled",
    )


async def test_bad_messages_are_dead_lettered_with_the_reason_and_work_goes_on(
    pipeline_without_venue: RunningSystem, amqp: AbstractRobustConnection
) -> None:
    running = pipeline_without_venue
    player = await BrokerPlayer.start(amqp)
    channel = await amqp.channel()
    exchange = await channel.get_exchange(OMS_EXCHANGE)
    garbage_id = str(uuid.uuid4())
    await exchange.publish(
        aio_pika.Message(b"\x00 not json", message_id=garbage_id, content_type="application/json"),
        routing_key="intake.decision",
    )
    missing_fields = trade_decision()
    del missing_fields["side"]
    shape_id = await Publisher(amqp).publish_json(OMS_EXCHANGE, "intake.decision", "TradeDecision", missing_fields)
    unknown_order = str(uuid.uuid4())
    report_id = await Publisher(amqp).publish_json(
        OMS_EXCHANGE,
        "execution.report",
        "ExecutionReport",
        {
            "executionId": str(uuid.uuid4()),
            "orderId": unknown_order,
            "execType": "FILL",
            "lastQty": 1,
            "lastPx": 10,
            "cumQty": 1,
            "leavesQty": 0,
            "timestamp": datetime.now(UTC),
        },
    )
    unknown_account = trade_decision(accountId="NO-SUCH-ACCOUNT")
    account_id = await Publisher(amqp).publish_json(OMS_EXCHANGE, "intake.decision", "TradeDecision", unknown_account)

    intake_dead = {m.message_id: m for m in await _dead_letters(amqp, "oms.intake.dlq", 3)}
    assert "not JSON" in str(intake_dead[garbage_id].headers[ERROR_HEADER])
    assert "side" in str(intake_dead[shape_id].headers[ERROR_HEADER])
    assert "account" in str(intake_dead[account_id].headers[ERROR_HEADER]).lower()
    handler_dead = {m.message_id: m for m in await _dead_letters(amqp, "oms.execution_handler.dlq", 1)}
    assert unknown_order in str(handler_dead[report_id].headers[ERROR_HEADER])
    assert jsonutil.loads(handler_dead[report_id].body)["orderId"] == unknown_order

    # ...and the workers are still there: a good order goes through.
    await _routed_order(running, amqp, player)
