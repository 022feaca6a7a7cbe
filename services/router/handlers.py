"""Router: send approved orders, and cancel/replace requests, to the broker integration service.

Every request the venue sees is an ``order_requests`` row with its own ``requestId``; a request row moves
PENDING -> SENT when its message is in the outbox, or to SKIPPED when the order no longer needs it.

Round trips: request rows are written through the transaction's ``RequestRepository``, buffered and written at
commit in one statement per batch; the cancel and replace requests of a batch are read and locked together by
the stage's ``prepare`` (``lock_requests``), so a batch costs the same statements whatever its size.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from common.domain import Order, OrderState, RequestKind
from common.domain.validation import plain
from common.ids import new_id
from common.messaging.envelope import Envelope
from common.messaging.topology import BROKER_EXCHANGE
from common.runtime.stage import DeadLetter
from common.store.requests_repo import (
    REQUEST_NEW,
    REQUEST_PENDING,
    REQUEST_SENT,
    REQUEST_SKIPPED,
    RequestRepository,
    terms_of,
)
from common.store.uow import UnitOfWork
from services.intake.commands import ROUTE_CANCEL_KEY, ROUTE_NEW_KEY, ROUTE_REPLACE_KEY

log = logging.getLogger(__name__)

NEW_ORDER_KEY = "orders.new"
CANCEL_KEY = "orders.cancel"
REPLACE_KEY = "orders.replace"


def _trim(value: Decimal | None) -> Decimal | None:
    # The store's DECIMAL(20,8) scale would put 100.00000000 on the wire; the same number, written plainly.
    return None if value is None else Decimal(plain(value))


Terms = tuple[Decimal | None, Decimal | None, Decimal | None]


def broker_body(order: Order, request_id: str, terms: Terms | None = None) -> dict[str, Any]:
    """The public request contract (camelCase): the order with ``terms`` (quantity, price, stop price)
    in place of its own when given (a replace)."""
    quantity, price, stop_price = terms if terms is not None else (order.quantity, order.price, order.stop_price)
    return {
        "orderId": order.id,
        "requestId": request_id,
        "accountId": order.account_id,
        "symbol": order.symbol,
        "side": order.side.value,
        "type": order.type.value,
        "quantity": _trim(quantity),
        "price": _trim(price),
        "stopPrice": _trim(stop_price),
        "timeInForce": order.time_in_force.value,
    }


def _load_order(uow: UnitOfWork, order_id: str) -> Order:
    order = uow.orders.get(order_id, for_update=True)
    if order is None:
        raise DeadLetter(f"unknown order {order_id}")
    return order


def route_new(uow: UnitOfWork, env: Envelope) -> None:
    """Send an APPROVED order to the venue (anything else: already routed, canceled or modified; skip)."""
    order = _load_order(uow, env.body["order_id"])
    if order.state is not OrderState.APPROVED:
        log.info("route skipped: order not approved", extra={"state": order.state.value})
        return
    now = datetime.now(UTC)
    request_id = new_id()
    body = broker_body(order, request_id)
    uow.repository(RequestRepository).record(
        request_id=request_id,
        order_id=order.id,
        kind=REQUEST_NEW,
        terms={k: body[k] for k in ("quantity", "price", "stopPrice", "timeInForce")},
        status=REQUEST_SENT,
        reason=None,
        created_by=env.user_id,
        now=now,
    )
    order.mark_routed(request_id, now)
    uow.orders.save(order, correlation_id=env.correlation_id or order.id, message_id=env.message_id)
    uow.outbox.add(BROKER_EXCHANGE, NEW_ORDER_KEY, "NewOrderRequest", body, order.id)
    log.debug("order routed", extra={"request_id": request_id})


def _skip_reason(order: Order, kind: RequestKind) -> str | None:
    if order.is_terminal:
        return f"order is {order.state.value}"
    if order.state not in (
        OrderState.ROUTED,
        OrderState.OPEN,
        OrderState.PARTIALLY_FILLED,
        OrderState.PENDING_CANCEL,
        OrderState.PENDING_REPLACE,
    ):
        return f"order is not at the venue ({order.state.value})"
    pending = order.pending_request
    if kind is RequestKind.REPLACE and pending is not None and pending.kind is RequestKind.CANCEL:
        return f"superseded by cancel {pending.request_id}"
    return None


def route_request(uow: UnitOfWork, env: Envelope, kind: RequestKind) -> None:
    """Send a cancel or replace request recorded by the order commands."""
    order_id: str = env.body["order_id"]
    request_id: str = env.body["request_id"]
    requests = uow.repository(RequestRepository)
    request = requests.get(request_id)  # locked (for the whole batch by lock_requests)
    if request is None or request.order_id != order_id or request.kind != kind.value:
        raise DeadLetter(f"no {kind.value} request {request_id} for order {order_id}")
    if request.status != REQUEST_PENDING:
        log.info("request already handled", extra={"request_id": request_id, "status": request.status})
        return
    order = _load_order(uow, order_id)
    now = datetime.now(UTC)
    reason = _skip_reason(order, kind)
    if reason is not None:
        requests.set_status(request_id, REQUEST_SKIPPED, now, reason)
        log.info("request skipped", extra={"request_id": request_id, "reason": reason})
        return
    if kind is RequestKind.REPLACE:
        body = broker_body(order, request_id, terms_of(request))
        uow.outbox.add(BROKER_EXCHANGE, REPLACE_KEY, "ReplaceRequest", body, order.id)
    else:
        uow.outbox.add(BROKER_EXCHANGE, CANCEL_KEY, "CancelRequest", broker_body(order, request_id), order.id)
    requests.set_status(request_id, REQUEST_SENT, now)
    log.info("request sent", extra={"request_id": request_id, "kind": kind.value})


def lock_requests(uow: UnitOfWork, envelopes: list[Envelope]) -> None:
    """The stage's ``prepare``: read and lock the batch's cancel and replace requests in one round trip."""
    request_ids = [
        env.body["request_id"] for env in envelopes if env.routing_key in (ROUTE_CANCEL_KEY, ROUTE_REPLACE_KEY)
    ]
    if request_ids:
        uow.repository(RequestRepository).lock(request_ids)


def handle_route(uow: UnitOfWork, env: Envelope) -> None:
    """The stage handler: dispatch on the routing key."""
    if env.routing_key == ROUTE_NEW_KEY:
        route_new(uow, env)
    elif env.routing_key == ROUTE_CANCEL_KEY:
        route_request(uow, env, RequestKind.CANCEL)
    elif env.routing_key == ROUTE_REPLACE_KEY:
        route_request(uow, env, RequestKind.REPLACE)
    else:
        raise DeadLetter(f"router does not handle routing key {env.routing_key!r}")
