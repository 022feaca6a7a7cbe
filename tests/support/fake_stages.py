"""The stages on the in-memory store (tests/support/fake_store.py), for the handlers' unit tests.

A batch is handled as the stage runtime handles it (common/runtime/stage.py): the envelopes' orders locked, the
stage's ``prepare`` hook, each envelope's handler in turn, one commit; without the broker and without the
inbox (the runtime's, on Postgres). Envelopes are built as the runtime builds them: the body validated with the
schema of the message's kind, so a handler sees what it sees in production.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from common import jsonutil
from common.messages.catalogue import MessageKind
from common.messaging.envelope import Envelope
from common.runtime.stage import StageSpec
from tests.support.fake_store import FakeMessage, FakeStore


def envelope(
    kind: MessageKind,
    body: Mapping[str, Any],
    *,
    user_id: str | None = None,
    correlation_id: str | None = None,
    message_id: str | None = None,
) -> Envelope:
    """A delivery of ``kind`` with ``body`` (camelCase, as it travels), loaded with the kind's schema."""
    assert kind.schema is not None, f"{kind.type} has no schema: no stage consumes it"
    loaded = kind.schema.load(jsonutil.loads(jsonutil.dumps(body)))
    return Envelope(
        message_id=message_id or str(uuid.uuid4()),
        routing_key=kind.routing_key,
        body=loaded,
        correlation_id=correlation_id,
        type=kind.type,
        headers={"x-oms-user": user_id} if user_id else {},
    )


def delivered(spec: StageSpec, message: FakeMessage) -> Envelope:
    """What ``spec``'s stage receives for a message another stage sent (an outbox message)."""
    kind = spec.kind_for(message.routing_key)
    assert kind is not None and kind.schema is not None, f"stage {spec.stage} does not take {message.routing_key}"
    schema = kind.schema
    return Envelope(
        message_id=message.message_id,
        routing_key=kind.routing_key,
        body=schema.load(jsonutil.loads(message.body)),
        correlation_id=message.correlation_id,
        type=message.type,
        headers=dict(message.headers),
    )


def run_batch(store: FakeStore, spec: StageSpec, *envelopes: Envelope) -> list[FakeMessage]:
    """Handle the envelopes in one unit of work, as one batch of the stage runtime; the messages it sends.

    A handler's exception (``DeadLetter`` included) propagates, and nothing of the batch is committed.
    """
    with store.unit_of_work() as uow:
        uow.orders.lock(order_id for order_id in (spec.order_id_of(env) for env in envelopes) if order_id)
        if spec.prepare is not None:
            spec.prepare(uow, list(envelopes))
        for env in envelopes:
            spec.handle(uow, env)
        return uow.commit()


def sent(messages: list[FakeMessage], kind: MessageKind) -> list[FakeMessage]:
    """The messages of one kind among ``messages``."""
    return [m for m in messages if m.type == kind.type]
