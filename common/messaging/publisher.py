"""Publishing with publisher confirms, pipelined: a batch is in flight at once and each is confirmed.

Every publisher of the system goes through ``Publisher``: the stages and the outbox relay (outbox rows), the
simulated venue and the tools (``publish_json``), the dead-letter replay (``send``: messages as received).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from common.messages.exchanges import BROKER_EXCHANGE, DEAD_LETTER_EXCHANGE, OMS_EXCHANGE
from common.store.outbox import OutboxMessage

log = logging.getLogger(__name__)

# Where no queue is bound the message must not vanish: the broker returns it and the publish fails, so the
# outbox row stays unsent. Order updates and position updates go to whoever subscribes, possibly nobody.
MANDATORY_EXCHANGES = frozenset({OMS_EXCHANGE, BROKER_EXCHANGE, DEAD_LETTER_EXCHANGE})


def build_message(message: OutboxMessage) -> aio_pika.Message:
    """The AMQP message for an outbox row: JSON, persistent, with ids and type as properties."""
    return aio_pika.Message(
        body=message.body if isinstance(message.body, bytes) else message.body.encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        type=message.type,
        headers=dict(message.headers),
        timestamp=message.created_at,
    )


class NoChannel(Exception):
    """No publishing channel could be opened (the broker is away): nothing of the batch was sent."""


@dataclass(frozen=True)
class Outgoing:
    """An AMQP message ready to go, and where to (``""``: the default exchange)."""

    exchange: str
    routing_key: str
    message: aio_pika.Message
    mandatory: bool = True


class Publisher:
    """Publishes on one confirming channel of ``connection`` (robust or not), opened when first needed."""

    def __init__(self, connection: AbstractConnection) -> None:
        self._connection = connection
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._lock = asyncio.Lock()

    async def _channel_ready(self) -> AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
            self._exchanges.clear()
        return self._channel

    async def _exchange(self, name: str) -> AbstractExchange:
        channel = await self._channel_ready()
        if name not in self._exchanges:
            self._exchanges[name] = (
                channel.default_exchange if name == "" else await channel.get_exchange(name, ensure=False)
            )
        return self._exchanges[name]

    async def send(self, outgoing: Sequence[Outgoing], timeout: float = 30.0) -> list[BaseException | None]:
        """Publish all, confirms pipelined; per message, None (confirmed) or why not (a returned message, a nack,
        a timeout, no channel while the broker is away)."""
        if not outgoing:
            return []
        async with self._lock:
            try:
                channel = await self._channel_ready()
                exchanges = {o.exchange: await self._exchange(o.exchange) for o in outgoing}
            except Exception as exc:
                # The robust connection reconnects meanwhile: nothing is confirmed, and every caller already
                # treats an unconfirmed message as "try again later".
                log.warning(
                    "no publishing channel; nothing published", extra={"count": len(outgoing), "error": repr(exc)}
                )
                failure = NoChannel(repr(exc))
                return [failure] * len(outgoing)
            results = await asyncio.gather(
                *(
                    exchanges[o.exchange].publish(
                        o.message, routing_key=o.routing_key, mandatory=o.mandatory, timeout=timeout
                    )
                    for o in outgoing
                ),
                return_exceptions=True,
            )
            if channel.is_closed:
                self._channel = None
            return [result if isinstance(result, BaseException) else None for result in results]

    async def publish(self, messages: Sequence[OutboxMessage], timeout: float = 30.0) -> list[str]:
        """Publish all, confirms pipelined; returns the message ids the broker confirmed (failures are logged)."""
        errors = await self.send(
            [
                Outgoing(m.exchange, m.routing_key, build_message(m), mandatory=m.exchange in MANDATORY_EXCHANGES)
                for m in messages
            ],
            timeout,
        )
        confirmed = []
        for message, error in zip(messages, errors, strict=True):
            if error is None:
                confirmed.append(message.message_id)
            elif not isinstance(error, NoChannel):  # logged once for the batch
                log.warning(
                    "publish not confirmed; the outbox keeps it for the relay",
                    extra={
                        "message_id": message.message_id,
                        "correlation_id": message.correlation_id,
                        "exchange": message.exchange,
                        "routing_key": message.routing_key,
                        "error": repr(error),
                    },
                )
        return confirmed

    async def publish_json(
        self,
        exchange: str,
        routing_key: str,
        type: str,
        body: Mapping[str, Any],
        correlation_id: str | None = None,
        headers: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str:
        """Publish one JSON body with confirm (for tools and the simulated venue); raises if not confirmed."""
        message = OutboxMessage.json(exchange, routing_key, type, body, correlation_id, headers, message_id)
        confirmed = await self.publish([message])
        if not confirmed:
            raise RuntimeError(f"publish to {exchange}/{routing_key} was not confirmed")
        return message.message_id
