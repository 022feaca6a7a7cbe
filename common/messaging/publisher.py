"""Publishing with publisher confirms, pipelined: a batch is in flight at once and each is confirmed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection

from common.messaging.topology import BROKER_EXCHANGE, DEAD_LETTER_EXCHANGE, OMS_EXCHANGE
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


class Publisher:
    """Publishes outbox messages on one confirming channel."""

    def __init__(self, connection: AbstractRobustConnection) -> None:
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
            self._exchanges[name] = await channel.get_exchange(name, ensure=False)
        return self._exchanges[name]

    async def publish(self, messages: Sequence[OutboxMessage], timeout: float = 30.0) -> list[str]:
        """Publish all, confirms pipelined; returns the message ids the broker confirmed (failures are logged)."""
        if not messages:
            return []
        async with self._lock:
            try:
                channel = await self._channel_ready()
                exchanges = {m.exchange: await self._exchange(m.exchange) for m in messages}
            except Exception as exc:
                # No channel while the broker is away (the robust connection reconnects meanwhile): nothing
                # is confirmed, and every caller already treats an unconfirmed message as "try again later".
                log.warning(
                    "no publishing channel; nothing published",
                    extra={"count": len(messages), "error": repr(exc)},
                )
                return []
            results = await asyncio.gather(
                *(
                    exchanges[m.exchange].publish(
                        build_message(m),
                        routing_key=m.routing_key,
                        mandatory=m.exchange in MANDATORY_EXCHANGES,
                        timeout=timeout,
                    )
                    for m in messages
                ),
                return_exceptions=True,
            )
            confirmed = []
            for message, result in zip(messages, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning(
                        "publish not confirmed; the outbox keeps it for the relay",
                        extra={
                            "message_id": message.message_id,
                            "correlation_id": message.correlation_id,
                            "exchange": message.exchange,
                            "routing_key": message.routing_key,
                            "error": repr(result),
                        },
                    )
                else:
                    confirmed.append(message.message_id)
            if channel.is_closed:
                self._channel = None
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
