"""Poison messages on the real broker and database (issue 9, finding 3): dead-lettered at once with a reason.

Real stage workers (the intake's and the execution handler's own specs) take a stream of valid messages with
poison ones in the middle: a body nested thousands of levels deep, NUL characters, numbers too long for
DECIMAL(20, 8), impossible report figures, bytes that are not JSON. Each poison message must be in the stage's
dead-letter queue with an ``x-oms-error`` reason, put there by the runtime on its first delivery (no
``x-death`` from the broker's delivery limit, no handler failure recorded), the worker must still be running,
and every valid message around them must have been applied.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from sqlalchemy import Engine, select

from common import jsonutil
from common.messages.exchanges import OMS_EXCHANGE
from common.messages.headers import ERROR_HEADER
from common.messaging.publisher import Publisher
from common.runtime.stage import StageSpec, StageWorker
from common.settings import InfraSettings, Settings, StageSettings
from common.store import tables
from common.store.outbox import OutboxMessage
from services.execution_handler.spec import SPEC as EXECUTION_HANDLER
from services.intake.spec import SPEC as INTAKE
from tests.support.orders import changing_order, create_order, mark_routed, store, trade_decision
from tests.support.polling import async_wait_until

pytestmark = pytest.mark.integration

D = Decimal


@asynccontextmanager
async def running(
    spec: StageSpec, database_url: str, amqp_url: str, engine: Engine
) -> AsyncIterator[tuple[asyncio.Task[None], AbstractRobustConnection]]:
    """The stage's real worker, consuming; yields its task (to check it never ended) and a connection."""
    worker = StageWorker(
        spec,
        Settings(infra=InfraSettings(database_url=database_url, amqp_url=amqp_url), stage=StageSettings(batch_size=20)),
        engine,
    )
    connection = await aio_pika.connect_robust(amqp_url)
    task = asyncio.create_task(worker.run())

    async def consuming() -> bool:
        probe = await connection.channel()  # a failed passive declare closes its channel
        try:
            declared = await probe.declare_queue(spec.queue.name, passive=True)
        except Exception:
            return False
        finally:
            if not probe.is_closed:
                await probe.close()
        return (declared.declaration_result.consumer_count or 0) > 0

    try:
        await async_wait_until(consuming, timeout=30, message=f"{spec.stage} worker consuming")
        yield task, connection
    finally:
        worker.stop()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 30)
        await connection.close()


async def publish(connection: AbstractRobustConnection, routing_key: str, body: str | bytes) -> str:
    message_id = str(uuid.uuid4())
    message = OutboxMessage(message_id, OMS_EXCHANGE, routing_key, "Test", message_id, body)
    assert await Publisher(connection).publish([message]) == [message_id]
    return message_id


async def dead_letters(connection: AbstractRobustConnection, queue: str, wanted: set[str]) -> dict[str, Any]:
    """Wait for the messages ``wanted`` (by id) in ``queue`` and take them; message id -> message."""
    found: dict[str, AbstractIncomingMessage] = {}
    channel = await connection.channel()
    try:
        source = await channel.declare_queue(queue, passive=True)

        async def all_there() -> bool:
            while (message := await source.get(no_ack=False, fail=False)) is not None:
                if message.message_id in wanted:
                    found[str(message.message_id)] = message
                    await message.ack()
                else:  # another test's: leave it
                    await message.nack(requeue=True)
                    break
            return set(found) == wanted

        await async_wait_until(all_there, timeout=30, message=f"{len(wanted)} dead letters in {queue}")
    finally:
        await channel.close()
    return found


def assert_dead_lettered_at_once(messages: dict[str, Any], engine: Engine, stage: str) -> dict[str, str]:
    """Each with the runtime's reason and none through a redelivery; returns message id -> reason."""
    reasons = {}
    for message_id, message in messages.items():
        headers = dict(message.headers or {})
        assert ERROR_HEADER in headers, headers
        assert "x-death" not in headers, headers  # the broker never dead-lettered it (delivery limit)
        assert not headers.get("x-delivery-count"), headers  # taken from the dead-letter queue on first delivery
        reasons[message_id] = str(headers[ERROR_HEADER])
    failures = tables.message_failures
    with engine.connect() as connection:
        recorded = connection.execute(
            select(failures.c.message_id).where(failures.c.stage == stage, failures.c.message_id.in_(list(messages)))
        ).all()
    assert recorded == []  # no handler ever failed on them
    return reasons


def orders_by_decision(engine: Engine, decision_ids: list[str]) -> dict[str, str]:
    o = tables.orders.c
    with engine.connect() as connection:
        rows = connection.execute(
            select(o.client_order_id, o.state).where(o.account_id == "ACC-001", o.client_order_id.in_(decision_ids))
        ).all()
    return {row.client_order_id: row.state for row in rows}


async def test_poison_decisions_are_dead_lettered_at_once_and_every_valid_one_is_booked(
    engine: Engine, database_url: str, amqp_url: str
) -> None:
    valid = [trade_decision(type="LIMIT", price=D("190.00")) for _ in range(40)]
    deep = 5_000
    poison: dict[str, tuple[str | bytes, str]] = {
        "deep": ('{"decisionId":' * deep + '"x"' + "}" * deep, "body refused: nested deeper than 32 levels"),
        "deep array": (
            jsonutil.dumps({**trade_decision(), "notes": "X"}).replace('"X"', "[" * 1_500 + "]" * 1_500),
            "body refused: nested deeper than 32 levels",
        ),
        "nul": (jsonutil.dumps(trade_decision(notes="a\u0000b")), 'invalid body: {"notes":'),
        "nul symbol": (jsonutil.dumps(trade_decision(symbol="AA\u0000PL")), 'invalid body: {"symbol":'),
        "30 digits": (
            jsonutil.dumps(trade_decision(quantity=D("123456789012345678901234567890"))),
            'invalid body: {"quantity":["Must have at most 20 digits before the decimal point."]}',
        ),
        "too precise": (
            jsonutil.dumps(trade_decision(type="LIMIT", price=D("190.000000001"))),
            'invalid body: {"price":["Must have at most 8 decimal places."]}',
        ),
        "binary": (b"\xff\xfe\x00\x01not json", "body is not JSON"),
    }
    queued = list(poison.items())
    async with running(INTAKE, database_url, amqp_url, engine) as (task, connection):
        ids: dict[str, str] = {}
        for i, body in enumerate(valid):
            await publish(connection, "intake.decision", jsonutil.dumps(body))
            if i % 5 == 2 and queued:  # the poison ones in the middle of the stream, among valid neighbours
                name, (raw, _) = queued.pop(0)
                ids[name] = await publish(connection, "intake.decision", raw)
        assert not queued, "every poison message was sent"
        decision_ids = [body["decisionId"] for body in valid]
        await async_wait_until(
            lambda: len(orders_by_decision(engine, decision_ids)) == len(valid),
            timeout=60,
            message="every valid decision booked",
        )
        taken = await dead_letters(connection, INTAKE.queue.dead_letter_name, set(ids.values()))
        assert not task.done(), "the worker ended"  # it neither crashed nor was restarted
    assert set(orders_by_decision(engine, decision_ids).values()) == {"NEW"}
    reasons = assert_dead_lettered_at_once(taken, engine, "intake")
    for name, message_id in ids.items():
        assert reasons[message_id].startswith(poison[name][1]), (name, reasons[message_id])


def routed(engine: Engine) -> str:
    now = datetime.now(UTC)
    order_id = store(engine, create_order(quantity=D(100), price=D("10.00")))
    with changing_order(engine, order_id) as (_, order):
        mark_routed(order, now)
    return order_id


def report(order_id: str, exec_type: str, cum: int, leaves: int, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "executionId": str(uuid.uuid4()),
        "orderId": order_id,
        "execType": exec_type,
        "cumQty": cum,
        "leavesQty": leaves,
        "orderQty": 100,
        "venue": "SIM",
        "timestamp": datetime.now(UTC).isoformat(),
    }
    return body | fields


def fill(order_id: str, cum: int, **fields: Any) -> dict[str, Any]:
    terms = {"lastQty": 10, "lastPx": D("10.00"), "avgPx": D("10.00"), "fees": D("0.05")}
    return report(order_id, "PARTIAL_FILL", cum, 100 - cum, **(terms | fields))


async def test_impossible_reports_are_dead_lettered_at_once_and_the_order_takes_only_the_real_ones(
    engine: Engine, database_url: str, amqp_url: str
) -> None:
    order_id = routed(engine)
    impossible: dict[str, tuple[dict[str, Any], str]] = {
        "30-digit lastPx": (fill(order_id, 20, lastPx=D("123456789012345678901234567890")), '{"lastPx":'),
        "negative lastPx": (fill(order_id, 20, lastPx=D(-5)), '{"lastPx":["Must not be negative."]}'),
        "zero lastPx": (fill(order_id, 20, lastPx=D(0)), '{"lastPx":["A PARTIAL_FILL needs a positive lastPx."]}'),
        "negative lastQty": (fill(order_id, 20, lastQty=D(-10)), '{"lastQty":["Must not be negative."]}'),
        "fees -1000": (fill(order_id, 20, fees=D(-1000)), '{"fees":["Must be between -1 and 100'),
        "bust naming nothing": (
            report(order_id, "TRADE_CANCEL", 0, 100, lastQty=10, lastPx=D("10.00")),
            '{"execRefId":["A TRADE_CANCEL must name the execution it busts."]}',
        ),
        "NUL venue": (fill(order_id, 20, venue="S\u0000M"), '{"venue":["Must not contain NUL characters."]}'),
    }
    async with running(EXECUTION_HANDLER, database_url, amqp_url, engine) as (task, connection):
        await publish(connection, "execution.report", jsonutil.dumps(report(order_id, "NEW", 0, 100)))
        await publish(connection, "execution.report", jsonutil.dumps(fill(order_id, 10)))
        ids = {
            name: await publish(connection, "execution.report", jsonutil.dumps(body))
            for name, (body, _) in impossible.items()
        }
        await publish(connection, "execution.report", jsonutil.dumps(fill(order_id, 20)))

        def filled() -> Decimal:
            with engine.connect() as c:
                row = c.execute(select(tables.orders.c.filled_quantity).where(tables.orders.c.id == order_id)).one()
            return D(row.filled_quantity)

        await async_wait_until(lambda: filled() == 20, timeout=60, message="both real fills applied")
        taken = await dead_letters(connection, EXECUTION_HANDLER.queue.dead_letter_name, set(ids.values()))
        assert not task.done(), "the worker ended"
    reasons = assert_dead_lettered_at_once(taken, engine, "execution_handler")
    for name, message_id in ids.items():
        expected = "invalid body: " + impossible[name][1]
        assert reasons[message_id].startswith(expected), (name, reasons[message_id])
    assert filled() == 20
