"""The publisher builds AMQP properties itself (docs/design.md, Speed): they must be what aio-pika's ``Message``
made of an outbox row, or consumers would see other properties than before."""

from __future__ import annotations

from datetime import UTC, datetime

import aio_pika

from common.messaging.publisher import properties_of
from common.store.outbox import OutboxMessage


def _as_message(message: OutboxMessage) -> aio_pika.Message:
    # What the publisher used to send: the reference the direct properties are held to.
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


def test_properties_are_those_of_an_aio_pika_message() -> None:
    rows = [
        OutboxMessage.json("oms", "risk.check", "RiskCheck", {"a": 1}, "corr-1", {"x-oms-user": "u1", "n": 3}),
        OutboxMessage("m-2", "oms.order_updates", "order.NEW", "OrderUpdate", None, b"{}", {}, datetime.now(UTC)),
    ]
    for row in rows:
        assert properties_of(row) == _as_message(row).properties
        assert properties_of(row).delivery_mode == 2
