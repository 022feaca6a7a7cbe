"""The broker topology: exchanges, quorum stage queues with their dead-letter queues, and bindings.

What binds where comes from the message catalogue: a stage's queue takes the kinds whose ``stage`` it is, the
simulated venue's queue the requests to the venue, a subscriber's queue the kind it follows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue
from aiormq.abc import FieldTable
from pamqp.common import Arguments

from common.messages.catalogue import BROKER_REQUESTS, EXECUTION_REPORT, STAGES, TRADE_DECISION, consumed_by
from common.messages.exchanges import (
    BROKER_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    DIRECT_EXCHANGES,
    OMS_EXCHANGE,
    TOPIC_EXCHANGES,
)
from common.messages.headers import ACCOUNT_HEADER
from common.messages.partitions import PARTITIONS, owned_partitions

# How the broker spreads the messages other services send a stage (their routing keys are public and carry no
# partition) over the stage's partitions, with its consistent-hash exchange: an execution report by its
# correlation id (the order id, as its contract says), a decision by the account header its publisher sets
# (decisions without one all hash alike: one partition, in order).
HASHED_ON: dict[str, dict[str, str]] = {
    TRADE_DECISION.routing_key: {"hash-header": ACCOUNT_HEADER},
    EXECUTION_REPORT.routing_key: {"hash-property": "correlation_id"},
}
# Points each partition queue takes on the exchange's hash ring: many, so four queues share it evenly.
HASH_WEIGHT = "100"
HASH_EXCHANGE_TYPE = "x-consistent-hash"


@dataclass(frozen=True)
class StageQueue:
    """One partition queue of a stage on the ``oms`` exchange, and what binds to it.

    Partition 0 keeps the stage's historical name (``oms.<stage>``), the others are ``oms.<stage>.p<i>``; all
    dead-letter to ``oms.<stage>.dlq``. ``routing_keys`` are the stage's kinds: a hand-over between stages binds
    as ``<key>.<partition>`` (partition 0 also takes the bare key), a key of another service's (``hashed_keys``)
    reaches the partitions through the stage's consistent-hash exchange.
    """

    stage: str
    routing_keys: tuple[str, ...]
    exchange: str = OMS_EXCHANGE
    partition: int = 0
    partitions: int = 1
    hashed_keys: tuple[str, ...] = ()
    single_active: bool = True  # one consumer at a time keeps order even if two replicas take one partition

    @property
    def name(self) -> str:
        return f"oms.{self.stage}" if self.partition == 0 else f"oms.{self.stage}.p{self.partition}"

    @property
    def dead_letter_name(self) -> str:
        return f"oms.{self.stage}.dlq"

    @property
    def hash_exchange(self) -> str:
        """The consistent-hash exchange spreading ``hashed_keys`` over the partitions."""
        return f"oms.{self.stage}.partitions"

    @property
    def hash_arguments(self) -> dict[str, str]:
        """What the hash exchange hashes (a header or a property: see HASHED_ON)."""
        choices = {tuple(sorted(HASHED_ON[key].items())) for key in self.hashed_keys}
        if len(choices) != 1:
            raise ValueError(f"stage {self.stage}: its keys from other services hash on {choices or 'nothing'}")
        return dict(choices.pop())

    def partition_queues(self) -> tuple[StageQueue, ...]:
        """Every partition queue of this stage (this one among them)."""
        return tuple(replace(self, partition=i) for i in range(self.partitions))

    def bindings(self) -> list[tuple[str, str]]:
        """(source exchange, binding key) of every binding of this queue."""
        if self.partitions == 1:
            return [(self.exchange, key) for key in self.routing_keys]
        bound: list[tuple[str, str]] = []
        for key in self.routing_keys:
            if key in self.hashed_keys:
                continue
            bound.append((self.exchange, f"{key}.{self.partition}"))
            if self.partition == 0:
                bound.append((self.exchange, key))  # rows written without a partition
        if self.hashed_keys:
            bound.append((self.hash_exchange, HASH_WEIGHT))
        return bound

    def obsolete_bindings(self) -> list[tuple[str, str]]:
        """Bindings an unpartitioned broker gave this queue that partitioning replaces (each would copy a message
        the hash exchange also routes)."""
        if self.partitions == 1 or self.partition != 0:
            return []
        return [(self.exchange, key) for key in self.hashed_keys]


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


def _stage_queue(stage: str) -> StageQueue:
    kinds = consumed_by(stage)
    return StageQueue(
        stage,
        tuple(kind.routing_key for kind in kinds),
        partitions=PARTITIONS,
        hashed_keys=tuple(kind.routing_key for kind in kinds if not kind.internal),
    )


# Each stage's partition 0 (the stage's queue as tools name it); ``partition_queues()`` gives them all.
STAGE_QUEUES: dict[str, StageQueue] = {stage: _stage_queue(stage) for stage in STAGES}
VENUE_QUEUE = VenueQueue(
    "venue_sim", tuple(kind.routing_key for kind in BROKER_REQUESTS), BROKER_EXCHANGE, single_active=False
)


def all_stage_queues() -> list[StageQueue]:
    """Every partition queue of every stage, in pipeline order."""
    return [q for stage in STAGE_QUEUES.values() for q in stage.partition_queues()]


def replica_queues(stage: StageQueue, replica: int, replicas: int) -> tuple[StageQueue, ...]:
    """The partition queues replica ``replica`` of ``replicas`` consumes."""
    return tuple(replace(stage, partition=p) for p in owned_partitions(replica, replicas, stage.partitions))


# Members a quorum queue starts with, one per node, on as many nodes as the cluster has up to this (a single
# node: one). Two of three keep the queue available when one node is lost. An argument, so it is compared on
# every declaration: a queue declared before it was set (a broker's older data) needs it declared the same way.
QUORUM_GROUP_SIZE = 3
_GROUP_SIZE = "x-quorum-initial-group-size"
_SINGLE_ACTIVE = "x-single-active-consumer"
# Arguments a queue an older version declared may lack; taken as they are (see _declare_quorum).
_ADDED_SINCE = (_GROUP_SIZE, _SINGLE_ACTIVE)

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
        **({_SINGLE_ACTIVE: True} if queue.single_active else {}),
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
    if queue.hashed_keys and queue.partitions > 1:
        spread = await channel.declare_exchange(
            queue.hash_exchange,
            HASH_EXCHANGE_TYPE,
            durable=True,
            arguments=cast("FieldTable", queue.hash_arguments),
        )
        exchanges[queue.hash_exchange] = spread
        for key in queue.hashed_keys:
            await spread.bind(exchanges[queue.exchange], routing_key=key)
    for source, key in queue.obsolete_bindings():
        await declared.unbind(exchanges[source], routing_key=key)
    for source, key in queue.bindings():
        await declared.bind(exchanges[source], routing_key=key)
    return declared


async def _declare_quorum(channel: AbstractChannel, name: str, arguments: Arguments) -> AbstractQueue:
    """Declare a quorum queue; one an older version declared without an argument added since (the initial group
    size, single active consumer) is taken as it is.

    RabbitMQ refuses a redeclaration that names an argument the queue does not have (PRECONDITION_FAILED, which
    closes the channel): without this, every worker that declares its topology would fail to start against a
    broker whose queues an older version declared. Every other argument is still checked by the declaration
    that follows. Such a queue keeps working; the runbook says how to recreate it with the new arguments.
    """
    wanted = dict(arguments or {})
    while True:
        try:
            return await channel.declare_queue(name, durable=True, arguments=wanted)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            missing = [key for key in _ADDED_SINCE if key in wanted and key in str(exc)]
            if not missing:
                raise
            log.warning(
                "queue declared by an older version without an argument; taken as it is (runbook: recreate it "
                "drained to add it)",
                extra={"queue": name, "argument": missing[0], "error": str(exc)},
            )
            del wanted[missing[0]]
            await channel.reopen()


async def declare_topology(channel: AbstractChannel, delivery_limit: int) -> None:
    """Declare the whole topology, so nothing published before a worker starts is lost."""
    for queue in all_stage_queues():
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
