"""The broker topology: exchanges, quorum stage queues with their dead-letter queues, and bindings.

What binds where comes from the message catalogue: a stage's queue takes the kinds whose ``stage`` it is, the
simulated venue's queue the requests to the venue, a subscriber's queue the kind it follows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue
from aiormq.abc import FieldTable
from pamqp.common import Arguments

from common.messages.catalogue import BROKER_REQUESTS, STAGES, consumed_by
from common.messages.exchanges import (
    BROKER_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    DIRECT_EXCHANGES,
    OMS_EXCHANGE,
    TOPIC_EXCHANGES,
)


@dataclass(frozen=True)
class StageQueue:
    """A stage's queue on the ``oms`` exchange and the routing keys it takes."""

    stage: str
    routing_keys: tuple[str, ...]
    exchange: str = OMS_EXCHANGE

    @property
    def name(self) -> str:
        return f"oms.{self.stage}"

    @property
    def dead_letter_name(self) -> str:
        return f"oms.{self.stage}.dlq"


@dataclass(frozen=True)
class VenueQueue(StageQueue):
    """The simulated venue's queue on the ``broker`` exchange (``venue_sim.orders``, dead-lettering to ``.dlq``);
    a real broker integration service binds a queue of its own to the same keys instead."""

    @property
    def name(self) -> str:
        return f"{self.stage}.orders"

    @property
    def dead_letter_name(self) -> str:
        return f"{self.name}.dlq"


STAGE_QUEUES: dict[str, StageQueue] = {
    stage: StageQueue(stage, tuple(kind.routing_key for kind in consumed_by(stage))) for stage in STAGES
}
VENUE_QUEUE = VenueQueue("venue_sim", tuple(kind.routing_key for kind in BROKER_REQUESTS), BROKER_EXCHANGE)


# Members a quorum queue starts with, one per node, on as many nodes as the cluster has up to this (a single
# node: one). Two of three keep the queue available when one node is lost. An argument, so it is compared on
# every declaration: a queue declared before it was set (a broker's older data) needs it declared the same way.
QUORUM_GROUP_SIZE = 3
_GROUP_SIZE = "x-quorum-initial-group-size"

log = logging.getLogger(__name__)


def dead_letter_queue_arguments() -> Arguments:
    """A dead-letter queue: quorum, replicated as the stage queues are."""
    return {"x-queue-type": "quorum", "x-quorum-initial-group-size": QUORUM_GROUP_SIZE}


def stage_queue_arguments(queue: StageQueue, delivery_limit: int) -> Arguments:
    """Quorum queue with a poison-message limit and at-least-once dead-lettering (RabbitMQ's own guarantees),
    replicated on up to QUORUM_GROUP_SIZE nodes."""
    return {
        "x-queue-type": "quorum",
        "x-quorum-initial-group-size": QUORUM_GROUP_SIZE,
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": queue.dead_letter_name,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


async def declare_exchanges(channel: AbstractChannel) -> dict[str, AbstractExchange]:
    """Declare every exchange (idempotent)."""
    exchanges = {
        name: await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
        for name in TOPIC_EXCHANGES
    }
    for name in DIRECT_EXCHANGES:
        exchanges[name] = await channel.declare_exchange(name, aio_pika.ExchangeType.DIRECT, durable=True)
    return exchanges


async def declare_stage_queue(
    channel: AbstractChannel, queue: StageQueue, delivery_limit: int, *, declare: bool = True
) -> AbstractQueue:
    """Declare one stage queue (or the venue's), its dead-letter queue and their bindings. With ``declare``
    False the broker's definitions own the topology (``OMS_AMQP_DECLARE_TOPOLOGY``): the queue is only looked up
    (a passive declaration, which needs no permission; a missing queue closes the channel with NOT_FOUND)."""
    if not declare:
        return await channel.declare_queue(queue.name, passive=True)
    exchanges = await declare_exchanges(channel)
    dlq = await _declare_quorum(channel, queue.dead_letter_name, dead_letter_queue_arguments())
    await dlq.bind(exchanges[DEAD_LETTER_EXCHANGE], routing_key=queue.dead_letter_name)
    declared = await _declare_quorum(channel, queue.name, stage_queue_arguments(queue, delivery_limit))
    for key in queue.routing_keys:
        await declared.bind(exchanges[queue.exchange], routing_key=key)
    return declared


async def _declare_quorum(channel: AbstractChannel, name: str, arguments: Arguments) -> AbstractQueue:
    """Declare a quorum queue; one declared before the initial group size was set (an upgrade) is taken as it is.

    The group size only applies when a queue is created, but RabbitMQ still refuses a redeclaration that names
    it where the queue has none (PRECONDITION_FAILED, which closes the channel): without this, every worker that
    declares its topology would fail to start against a broker whose queues an older version declared. Every
    other argument is still checked by the second declaration.
    """
    try:
        return await channel.declare_queue(name, durable=True, arguments=cast("FieldTable", arguments))
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        if _GROUP_SIZE not in str(exc):
            raise
        log.warning(
            "quorum queue declared before its initial group size was set; taken as it is (on a cluster, give it "
            "members on more nodes with `rabbitmq-queues grow`)",
            extra={"queue": name, "error": str(exc)},
        )
    await channel.reopen()
    rest = {key: value for key, value in (arguments or {}).items() if key != _GROUP_SIZE}
    return await channel.declare_queue(name, durable=True, arguments=rest)


async def declare_topology(channel: AbstractChannel, delivery_limit: int) -> None:
    """Declare the whole topology, so nothing published before a worker starts is lost."""
    for queue in STAGE_QUEUES.values():
        await declare_stage_queue(channel, queue, delivery_limit)


async def declare_subscription(channel: AbstractChannel, exchange: str, binding_keys: Iterable[str]) -> AbstractQueue:
    """An exclusive, auto-deleted queue bound to the topic ``exchange`` (declared too, idempotent) with each key: a
    live feed for this connection alone (prices, order updates), gone when it closes. On a robust channel it is
    declared and bound again after a reconnect."""
    target = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    for key in binding_keys:
        await queue.bind(target, routing_key=key)
    return queue
