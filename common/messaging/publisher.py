"""Publishing with publisher confirms, pipelined: a batch is in flight at once and each is confirmed.

Every publisher of the system goes through ``Publisher``: the stages and the outbox relay (outbox rows), the
simulated venue and the tools (``publish_json``), the dead-letter replay (``send``: messages as received).

It publishes on aio-pika's channel but through the aiormq channel beneath it, with the AMQP properties built
once and ``wait=False``: aio-pika's ``Exchange.publish`` builds a ``Message`` (whose every attribute write is
guarded) and then the same properties again, and with ``wait=True`` each publish of a batch holds the channel
lock until its frames are written to the socket, one event-loop turn per message. The broker's confirm is still
awaited per message, which is what makes a publish count (docs/design.md, Speed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from common.messages.exchanges import BROKER_EXCHANGE, DEAD_LETTER_EXCHANGE, OMS_EXCHANGE
from common.store.outbox import OutboxMessage

log = logging.getLogger(__name__)

# Where no queue is bound the message must not vanish: the broker returns it and the publish fails, so the
# outbox row stays unsent. Order updates and position updates go to whoever subscribes, possibly nobody.
MANDATORY_EXCHANGES = frozenset({OMS_EXCHANGE, BROKER_EXCHANGE, DEAD_LETTER_EXCHANGE})


_PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)


def properties_of(message: OutboxMessage) -> aiormq.spec.Basic.Properties:
    """The AMQP properties of an outbox row: JSON, persistent, with ids, type and time (what ``aio_pika.Message``
    would make of them: tests/unit/test_publisher_properties.py)."""
    return aiormq.spec.Basic.Properties(
        content_type="application/json",
        delivery_mode=_PERSISTENT,
        priority=0,
        correlation_id=message.correlation_id,
        message_id=message.message_id,
        message_type=message.type,
        headers=dict(message.headers),
        timestamp=message.created_at,
    )


def _nacked(result: object) -> bool:
    """Whether a publish's result is the broker's nack (not a returned message, a timeout...)."""
    return isinstance(result, aiormq.exceptions.DeliveryError) and isinstance(result.frame, aiormq.spec.Basic.Nack)


class NoChannel(Exception):
    """No publishing channel could be opened (the broker is away): nothing of the batch was sent."""


@dataclass(frozen=True)
class Outgoing:
    """An AMQP message ready to go, and where to (``""``: the default exchange)."""

    exchange: str
    routing_key: str
    message: aio_pika.Message
    mandatory: bool = True


@dataclass(frozen=True, slots=True)
class _Frame:
    exchange: str
    routing_key: str
    body: bytes
    properties: aiormq.spec.Basic.Properties
    mandatory: bool


class Publisher:
    """Publishes on one confirming channel of ``connection`` (robust or not), opened when first needed."""

    def __init__(self, connection: AbstractConnection) -> None:
        self._connection = connection
        self._channel: AbstractChannel | None = None
        self._lock = asyncio.Lock()

    async def _channel_ready(self) -> AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            self._channel = await self._connection.channel(publisher_confirms=True, on_return_raises=True)
        return self._channel

    async def send(self, outgoing: Sequence[Outgoing], timeout: float = 30.0) -> list[BaseException | None]:
        """Publish all, confirms pipelined; per message, None (confirmed) or why not (a returned message, a nack,
        a timeout, no channel while the broker is away)."""
        return await self._send(
            [_Frame(o.exchange, o.routing_key, o.message.body, o.message.properties, o.mandatory) for o in outgoing],
            timeout,
        )

    async def _send(self, frames: Sequence[_Frame], timeout: float) -> list[BaseException | None]:
        if not frames:
            return []
        async with self._lock:
            try:
                channel = await self._channel_ready()
                # aiormq's own channel: its ``basic_publish`` takes ``wait``, which the abstract one does not name.
                underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
            except Exception as exc:
                # The robust connection reconnects meanwhile: nothing is confirmed, and every caller already
                # treats an unconfirmed message as "try again later".
                log.warning(
                    "no publishing channel; nothing published", extra={"count": len(frames), "error": repr(exc)}
                )
                failure = NoChannel(repr(exc))
                return [failure] * len(frames)
            results = await asyncio.gather(
                *(
                    underlay.basic_publish(
                        f.body,
                        exchange=f.exchange,
                        routing_key=f.routing_key,
                        properties=f.properties,
                        mandatory=f.mandatory,
                        timeout=timeout,
                        wait=False,
                    )
                    for f in frames
                ),
                return_exceptions=True,
            )
            if channel.is_closed or any(_nacked(result) for result in results):
                # After a nack, the next send opens a new channel: RabbitMQ 3.10 keeps nacking what a channel
                # publishes to a quorum queue whose leader was lost as the channel first published to it.
                self._channel = None
                with contextlib.suppress(Exception):
                    await channel.close()
            return [result if isinstance(result, BaseException) else None for result in results]

    async def publish(self, messages: Sequence[OutboxMessage], timeout: float = 30.0) -> list[str]:
        """Publish all, confirms pipelined; returns the message ids the broker confirmed (failures are logged)."""
        errors = await self._send(
            [
                _Frame(
                    m.exchange,
                    m.routing_key,
                    m.body if isinstance(m.body, bytes) else m.body.encode(),
                    properties_of(m),
                    m.exchange in MANDATORY_EXCHANGES,
                )
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
