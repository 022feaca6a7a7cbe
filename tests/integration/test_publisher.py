"""Publishing through aiormq directly: confirms, returned messages and the exchanges that need no queue."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from common.messages.exchanges import OMS_EXCHANGE, ORDER_UPDATES_EXCHANGE
from common.messaging.connection import connect
from common.messaging.publisher import Publisher
from common.messaging.topology import declare_exchanges
from common.store.outbox import OutboxMessage

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def connection(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    conn = await connect(amqp_url, "test-publisher", attempts=3)
    channel = await conn.channel()
    await declare_exchanges(channel)
    await channel.close()
    yield conn
    await conn.close()


def _row(exchange: str, routing_key: str) -> OutboxMessage:
    return OutboxMessage.json(exchange, routing_key, "Test", {"n": 1}, str(uuid.uuid4()))


async def test_a_routed_message_arrives_with_its_properties(connection: AbstractRobustConnection) -> None:
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True)
    key = f"test.publisher.{uuid.uuid4().hex}"
    await queue.bind(OMS_EXCHANGE, key)
    row = _row(OMS_EXCHANGE, key)
    assert await Publisher(connection).publish([row]) == [row.message_id]
    message = await queue.get(timeout=5, fail=True)
    assert message is not None
    assert (message.message_id, message.correlation_id, message.type) == (row.message_id, row.correlation_id, "Test")
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.body == (row.body if isinstance(row.body, bytes) else row.body.encode())
    await message.ack()
    await channel.close()


async def test_an_unroutable_message_is_not_confirmed_where_a_queue_is_owed(
    connection: AbstractRobustConnection,
) -> None:
    # The oms exchange is mandatory: a message no queue takes comes back, and its outbox row stays unsent.
    lost = _row(OMS_EXCHANGE, f"nobody.listens.{uuid.uuid4().hex}")
    # Order updates go to whoever subscribes, possibly nobody: confirmed either way.
    update = _row(ORDER_UPDATES_EXCHANGE, "order.NEW")
    publisher = Publisher(connection)
    assert await publisher.publish([lost, update]) == [update.message_id]
    # The channel survives a returned message: the next batch goes out on it.
    again = _row(ORDER_UPDATES_EXCHANGE, "order.NEW")
    assert await publisher.publish([again]) == [again.message_id]
