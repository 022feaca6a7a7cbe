"""Dead-lettering a message ourselves, when the reason is known (a body that fails validation, a lost order)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from common.messages.exchanges import DEAD_LETTER_EXCHANGE
from common.messages.headers import (
    DEAD_LETTERED_AT_HEADER,
    ERROR_HEADER,
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_ROUTING_KEY_HEADER,
    STAGE_HEADER,
)
from common.messaging.batch import Record
from common.messaging.publisher import Publisher
from common.messaging.topology import StageQueue
from common.store.outbox import OutboxMessage


def republishable(value: Any) -> Any:
    """A header value as the client can send it again: a string header that was not UTF-8 arrives as bytes,
    which the encoder refuses; as a byte array it goes back with the same bytes."""
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, Mapping):
        return {k: republishable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [republishable(v) for v in value]
    return value


async def dead_letter(
    publisher: Publisher,
    queue: StageQueue,
    message: AbstractIncomingMessage,
    message_id: str,
    reason: str,
    record: Record | None = None,
) -> None:
    """Publish the message, unchanged, to the stage's dead-letter queue with the reason in a header.

    With ``record`` (one record of a carrier), the copy is that record alone, as a plain message: the way it
    would have travelled on its own, so it can be replayed like any other. The caller acks the original only
    after this returns: the broker confirmed the copy, so nothing is lost.
    """
    source_headers = record.headers if record is not None else message.headers
    headers = {k: republishable(v) for k, v in (source_headers or {}).items()}
    headers.update(
        {
            ERROR_HEADER: reason[:4000],
            STAGE_HEADER: queue.stage,
            ORIGINAL_EXCHANGE_HEADER: message.exchange or "",
            ORIGINAL_ROUTING_KEY_HEADER: message.routing_key or "",
            DEAD_LETTERED_AT_HEADER: datetime.now(UTC).isoformat(),
        }
    )
    copy = OutboxMessage(
        message_id=message_id,
        exchange=DEAD_LETTER_EXCHANGE,
        routing_key=queue.dead_letter_name,
        type=(record.type if record is not None else message.type) or "unknown",
        correlation_id=record.correlation_id if record is not None else message.correlation_id,
        body=record.body if record is not None else message.body,
        headers=headers,
    )
    if not await publisher.publish([copy]):
        raise RuntimeError(f"dead-letter publish of {message_id} was not confirmed")
