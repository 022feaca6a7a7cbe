"""Venue requests (``order_requests``): one row per new, cancel or replace request the OMS sends the venue.

Statuses: PENDING (written, not yet handed to the broker; a replace waits for the risk gate, then the router),
SENT (in the router's outbox), SKIPPED (not sent: the order ended or another request superseded it; the reason
says which), ACCEPTED (the venue acknowledged it), DONE (the venue carried it out), REJECTED (the venue refused
it, or the risk gate refused a replace's new terms: the reason says which rule). DONE and REJECTED are final.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, insert, select, update

from common.store import tables

# order_requests.kind: the domain's RequestKind plus the router's NEW.
REQUEST_NEW = "NEW"
REQUEST_PENDING = "PENDING"
REQUEST_SENT = "SENT"
REQUEST_SKIPPED = "SKIPPED"
REQUEST_ACCEPTED = "ACCEPTED"
REQUEST_DONE = "DONE"
REQUEST_REJECTED = "REJECTED"
FINAL_REQUEST_STATUSES = (REQUEST_DONE, REQUEST_REJECTED)


@dataclass(frozen=True)
class VenueRequest:
    """An ``order_requests`` row: one new/cancel/replace request for the venue."""

    request_id: str
    order_id: str
    kind: str
    terms: Mapping[str, Any]
    status: str
    reason: str | None
    created_by: str | None


def _decimal(value: object) -> Decimal | None:
    # JSONB may come back as float through an engine without the Decimal-exact deserialiser.
    return None if value is None else Decimal(str(value))


def terms_of(request: VenueRequest) -> tuple[Decimal | None, Decimal | None, Decimal | None]:
    """The (quantity, price, stop price) a replace request asks for."""
    terms = request.terms
    return _decimal(terms.get("quantity")), _decimal(terms.get("price")), _decimal(terms.get("stopPrice"))


def record_request(
    connection: Connection,
    *,
    request_id: str,
    order_id: str,
    kind: str,
    terms: Mapping[str, Any],
    status: str,
    reason: str | None,
    created_by: str | None,
    now: datetime,
) -> None:
    """Insert an ``order_requests`` row."""
    connection.execute(
        insert(tables.order_requests).values(
            request_id=request_id,
            order_id=order_id,
            kind=kind,
            terms=dict(terms),
            status=status,
            reason=reason,
            created_by=created_by,
            created_at=now,
            updated_at=now,
        )
    )


def load_request(connection: Connection, request_id: str) -> VenueRequest | None:
    """The request row, locked for this transaction (the router updates it)."""
    row = (
        connection.execute(
            select(tables.order_requests).where(tables.order_requests.c.request_id == request_id).with_for_update()
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    return VenueRequest(
        request_id=row["request_id"],
        order_id=row["order_id"],
        kind=row["kind"],
        terms=row["terms"] or {},
        status=row["status"],
        reason=row["reason"],
        created_by=row["created_by"],
    )


def set_request_status(
    connection: Connection, request_id: str, status: str, now: datetime, reason: str | None = None
) -> None:
    """Move a request row to ``status`` (keeping its reason unless a new one is given)."""
    values: dict[str, Any] = {"status": status, "updated_at": now}
    if reason is not None:
        values["reason"] = reason
    connection.execute(
        update(tables.order_requests).where(tables.order_requests.c.request_id == request_id).values(**values)
    )


def answer_request(
    connection: Connection, order_id: str, request_id: str, status: str, reason: str | None, now: datetime
) -> bool:
    """Move this order's ``order_requests`` row to ``status``; False if unknown or already final."""
    r = tables.order_requests.c
    values: dict[str, object] = {"status": status, "updated_at": now}
    if reason is not None:
        values["reason"] = reason
    result = connection.execute(
        update(tables.order_requests)
        .where(
            r.request_id == request_id,
            r.order_id == order_id,
            r.status.not_in(FINAL_REQUEST_STATUSES),
        )
        .values(**values)
        .returning(r.request_id)
    )
    return result.first() is not None
