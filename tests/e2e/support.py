"""Helpers for end-to-end tests: send what other services send, read what the OMS booked, play the broker."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection
from sqlalchemy import Engine, select, text

from common import jsonutil
from common.messages.exchanges import BROKER_EXCHANGE, OMS_EXCHANGE
from common.messaging.publisher import Publisher
from common.store import tables
from tests.support.orders import find_order_record
from tests.support.polling import async_wait_until


async def send_decision(connection: AbstractRobustConnection, body: dict[str, Any]) -> str:
    """Publish a decision as the strategy service does; returns the decision id."""
    await Publisher(connection).publish_json(
        OMS_EXCHANGE, "intake.decision", "TradeDecision", body, correlation_id=body.get("decisionId")
    )
    return str(body["decisionId"])


def order_row(engine: Engine, account_id: str, decision_id: str) -> Any:
    """The order a decision made, or None."""
    with engine.connect() as connection:
        return connection.execute(
            select(tables.orders).where(
                tables.orders.c.account_id == account_id, tables.orders.c.client_order_id == decision_id
            )
        ).first()


async def wait_for_order(engine: Engine, account_id: str, decision_id: str, timeout: float = 30) -> Any:
    """Poll until the decision's order exists."""
    return await async_wait_until(
        lambda: order_row(engine, account_id, decision_id), timeout=timeout, message=f"order of {decision_id}"
    )


async def wait_for_state(engine: Engine, order_id: str, *states: str, timeout: float = 30) -> Any:
    """Poll until the order is in one of ``states``; returns the row."""

    def reached() -> Any:
        row = find_order_record(engine, order_id)
        return row if row is not None and row.state in states else None

    def progress() -> str:
        row = find_order_record(engine, order_id)
        return f"order {order_id} in {states}, last {getattr(row, 'state', None)}"

    return await async_wait_until(reached, timeout=timeout, message=progress)


def count(engine: Engine, sql: str, **params: Any) -> int:
    """A scalar count (the SQL is the test's own constant; values are bound)."""
    with engine.connect() as connection:
        return int(connection.execute(text(sql), params).scalar() or 0)


@dataclass
class BrokerPlayer:
    """Plays the broker integration service: takes the OMS's requests, sends back the reports a test writes."""

    connection: AbstractRobustConnection
    queue: AbstractQueue
    publisher: Publisher

    @classmethod
    async def start(cls, connection: AbstractRobustConnection) -> BrokerPlayer:
        """Bind a private queue to every ``orders.*`` request."""
        channel = await connection.channel()
        queue = await channel.declare_queue(f"test.broker.{uuid.uuid4().hex[:8]}", exclusive=True)
        exchange = await channel.get_exchange(BROKER_EXCHANGE)
        await queue.bind(exchange, "orders.*")
        return cls(connection, queue, Publisher(connection))

    async def next_request(self, order_id: str, kind: str, timeout: float = 30) -> dict[str, Any]:
        """Wait for the next request of ``kind`` (new, cancel, replace) for the order; returns its body."""
        seen: list[dict[str, Any]] = []

        async def arrived() -> dict[str, Any] | None:
            while (message := await self.queue.get(no_ack=True, fail=False)) is not None:
                seen.append(_request(message))
            for body in seen:
                if body["orderId"] == order_id and body["_kind"] == kind:
                    seen.remove(body)
                    self._unclaimed.extend(seen)
                    seen.clear()
                    return body
            return None

        if not hasattr(self, "_unclaimed"):
            self._unclaimed: list[dict[str, Any]] = []
        seen.extend(self._unclaimed)
        self._unclaimed.clear()
        result: dict[str, Any] = await async_wait_until(arrived, timeout=timeout, message=f"{kind} for {order_id}")
        return result

    async def report(self, order_id: str, exec_type: str, **fields: Any) -> str:
        """Send one execution report; returns its execution id."""
        body: dict[str, Any] = {
            "executionId": fields.pop("executionId", str(uuid.uuid4())),
            "orderId": order_id,
            "execType": exec_type,
            "timestamp": datetime.now(UTC),
            "venue": "TEST",
            "brokerOrderId": f"BRK-{order_id[:8]}",
            **fields,
        }
        await self.publisher.publish_json(
            OMS_EXCHANGE, "execution.report", "ExecutionReport", body, correlation_id=order_id
        )
        return str(body["executionId"])


def _request(message: AbstractIncomingMessage) -> dict[str, Any]:
    body: dict[str, Any] = jsonutil.loads(message.body)
    body["_kind"] = (message.routing_key or "").removeprefix("orders.")
    return body
