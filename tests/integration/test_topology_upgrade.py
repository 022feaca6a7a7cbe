"""A broker whose queues an older version declared: a worker that declares its topology still starts.

Quorum queues gained ``x-quorum-initial-group-size`` (for a cluster). RabbitMQ refuses a redeclaration naming an
argument the existing queue lacks, which would leave every worker that declares its topology unable to start
after an upgrade; ``declare_stage_queue`` takes such a queue as it is, and still checks every other argument.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import aiormq
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiormq.abc import FieldTable

from common.messaging.connection import connect
from common.messaging.topology import (
    StageQueue,
    dead_letter_queue_arguments,
    declare_stage_queue,
    stage_queue_arguments,
)

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def connection(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    conn = await connect(amqp_url, "test-topology-upgrade", attempts=3)
    yield conn
    await conn.close()


def _older(arguments: Any) -> FieldTable:
    """The arguments as the version before the group size declared them."""
    return cast(FieldTable, {k: v for k, v in dict(arguments).items() if k != "x-quorum-initial-group-size"})


async def _declare_as_before(connection: AbstractRobustConnection, queue: StageQueue, delivery_limit: int) -> None:
    channel = await connection.channel()
    await channel.declare_queue(queue.dead_letter_name, durable=True, arguments=_older(dead_letter_queue_arguments()))
    await channel.declare_queue(
        queue.name, durable=True, arguments=_older(stage_queue_arguments(queue, delivery_limit))
    )
    await channel.close()


async def _delete(connection: AbstractRobustConnection, queue: StageQueue) -> None:
    channel = await connection.channel()
    await channel.queue_delete(queue.name)
    await channel.queue_delete(queue.dead_letter_name)
    await channel.close()


async def test_queues_of_an_older_version_are_taken_as_they_are(connection: AbstractRobustConnection) -> None:
    queue = StageQueue(f"upgrade-{uuid.uuid4().hex[:8]}", (f"test.upgrade.{uuid.uuid4().hex}",))
    await _declare_as_before(connection, queue, 5)
    try:
        channel = await connection.channel()
        declared = await declare_stage_queue(channel, queue, 5)
        assert declared.name == queue.name
        # The channel is usable afterwards: the refused declaration's closed channel was reopened.
        assert (await channel.declare_queue(queue.name, passive=True)).name == queue.name
        await channel.close()
    finally:
        await _delete(connection, queue)


async def test_any_other_difference_is_still_refused(connection: AbstractRobustConnection) -> None:
    queue = StageQueue(f"upgrade-{uuid.uuid4().hex[:8]}", (f"test.upgrade.{uuid.uuid4().hex}",))
    await _declare_as_before(connection, queue, 5)
    try:
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="x-delivery-limit"):
            await declare_stage_queue(channel, queue, 7)
    finally:
        await _delete(connection, queue)
