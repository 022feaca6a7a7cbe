"""An order's audit trail (``order_events``) in sequence: one query for REST, gRPC and ``oms order show``.

Every change of an order writes one ``order_events`` row with a per-order ``sequence`` (unique with the order
id), so reading them in sequence order tells the order's story. Paging is by sequence ("after this one"), not
by offset: a page stays right while the order keeps changing.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, select

from common.store import tables
from common.store.field_crypto import open_payload
from services.api.auth import SCOPE_READ, Principal
from services.api.order_service import OrderService

# One order rarely has more than a few dozen events; the cap only bounds what a single call may return.
MAX_EVENTS = 1000

_COLUMNS = [
    tables.order_events.c.sequence,
    tables.order_events.c.type,
    tables.order_events.c.timestamp,
    tables.order_events.c.user_id,
    tables.order_events.c.correlation_id,
    tables.order_events.c.message_id,
    tables.order_events.c.payload,
]


def order_events(
    connection: Connection, order_id: str, after_sequence: int = 0, limit: int = MAX_EVENTS
) -> list[dict[str, Any]]:
    """The order's events with a sequence above ``after_sequence``, in sequence order (snake_case dicts), their
    encrypted fields (the notes of ORDER_CREATED) opened with the connection's data keys."""
    events = tables.order_events
    rows = connection.execute(
        select(*_COLUMNS)
        .where(events.c.order_id == order_id, events.c.sequence > after_sequence)
        .order_by(events.c.sequence)
        .limit(limit)
    ).mappings()
    return [{**row, "payload": open_payload(connection, row["payload"], order_id)} for row in rows]


def visible_order_events(
    service: OrderService,
    engine: Engine,
    principal: Principal,
    order_id: str,
    after_sequence: int = 0,
    limit: int = MAX_EVENTS,
) -> list[dict[str, Any]]:
    """The events of an order the caller may read: the same scope and account rules as reading the order.

    Raises Forbidden without ``orders:read``, NotFound for an unknown id or another account's order (its
    existence is not the caller's business).
    """
    service.require_scope(principal, SCOPE_READ)
    service.visible_order(principal, order_id)
    with engine.connect() as connection:
        return order_events(connection, order_id, after_sequence, limit)
