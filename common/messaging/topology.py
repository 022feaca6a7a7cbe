"""The broker topology: exchanges, quorum stage queues with their dead-letter queues, and bindings."""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue
from pamqp.common import Arguments

OMS_EXCHANGE = "oms"
BROKER_EXCHANGE = "broker"
ORDER_UPDATES_EXCHANGE = "oms.order_updates"
PORTFOLIO_EXCHANGE = "portfolio"
DEAD_LETTER_EXCHANGE = "oms.dlx"

TOPIC_EXCHANGES = (OMS_EXCHANGE, BROKER_EXCHANGE, ORDER_UPDATES_EXCHANGE, PORTFOLIO_EXCHANGE)


@dataclass(frozen=True)
class StageQueue:
    """A stage's queue on the ``oms`` exchange and the routing keys it takes."""

    stage: str
    routing_keys: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"oms.{self.stage}"

    @property
    def dead_letter_name(self) -> str:
        return f"oms.{self.stage}.dlq"


STAGE_QUEUES: dict[str, StageQueue] = {
    q.stage: q
    for q in (
        StageQueue("intake", ("intake.decision",)),
        StageQueue("risk_gate", ("risk.check",)),
        StageQueue("router", ("router.new", "router.cancel", "router.replace")),
        StageQueue("execution_handler", ("execution.report",)),
        StageQueue("settlement", ("settlement.fill",)),
    )
}


def stage_queue_arguments(queue: StageQueue, delivery_limit: int) -> Arguments:
    """Quorum queue with a poison-message limit and at-least-once dead-lettering (RabbitMQ's own guarantees)."""
    return {
        "x-queue-type": "quorum",
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
    exchanges[DEAD_LETTER_EXCHANGE] = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
    )
    return exchanges


async def declare_stage_queue(channel: AbstractChannel, queue: StageQueue, delivery_limit: int) -> AbstractQueue:
    """Declare one stage queue, its dead-letter queue and their bindings."""
    exchanges = await declare_exchanges(channel)
    dlq = await channel.declare_queue(queue.dead_letter_name, durable=True, arguments={"x-queue-type": "quorum"})
    await dlq.bind(exchanges[DEAD_LETTER_EXCHANGE], routing_key=queue.dead_letter_name)
    declared = await channel.declare_queue(
        queue.name, durable=True, arguments=stage_queue_arguments(queue, delivery_limit)
    )
    for key in queue.routing_keys:
        await declared.bind(exchanges[OMS_EXCHANGE], routing_key=key)
    return declared


async def declare_topology(channel: AbstractChannel, delivery_limit: int) -> None:
    """Declare the whole topology, so nothing published before a worker starts is lost."""
    for queue in STAGE_QUEUES.values():
        await declare_stage_queue(channel, queue, delivery_limit)
