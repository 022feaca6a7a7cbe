"""Router: send approved orders, and cancel/replace requests, to the broker integration service.

Every request the venue sees is an ``order_requests`` row with its own ``requestId``; a request row moves
PENDING -> SENT when its message is in the outbox, or to SKIPPED when the order no longer needs it.

Round trips: request rows are written through the transaction's ``uow.requests``, buffered and written at
commit in one statement per batch; the cancel and replace requests of a batch are read and locked together by
the stage's ``prepare`` (``lock_requests``), so a batch costs the same statements whatever its size.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from common.domain import Order, OrderState, RequestKind
from common.domain.lifecycle import AT_VENUE
from common.ids import new_id
from common.messages.bodies import broker_request_body
from common.messages.catalogue import CANCEL_REQUEST, NEW_ORDER_REQUEST, REPLACE_REQUEST, ROUTE_CANCEL, ROUTE_REPLACE
from common.messaging.envelope import Envelope
from common.orders.ports import AbstractUnitOfWork
from common.orders.records import REQUEST_NEW, REQUEST_PENDING, REQUEST_SENT, REQUEST_SKIPPED, terms_of
from common.runtime.stage import DeadLetter

log = logging.getLogger(__name__)


def _load_order(uow: AbstractUnitOfWork, order_id: str) -> Order:
    order = uow.orders.get(order_id, for_update=True)
    if order is None:
        raise DeadLetter(f"unknown order {order_id}")
    return order


def handle_route_new(uow: AbstractUnitOfWork, env: Envelope) -> None:
    """``RouteNew``: send an APPROVED order to the venue (anything else: already routed, canceled or modified;
    skip)."""
    order = _load_order(uow, env.body["order_id"])
    if order.state is not OrderState.APPROVED:
        log.info("route skipped: order not approved", extra={"state": order.state.value})
        return
    now = datetime.now(UTC)
    request_id = new_id()
    body = broker_request_body(order, request_id)
    uow.requests.record(
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
    NEW_ORDER_REQUEST.send(uow.outbox, body, order.id)
    log.debug("order routed", extra={"request_id": request_id})


def _skip_reason(order: Order, kind: RequestKind) -> str | None:
    if order.is_terminal:
        return f"order is {order.state.value}"
    if order.state not in AT_VENUE:
        return f"order is not at the venue ({order.state.value})"
    pending = order.pending_request
    if kind is RequestKind.REPLACE and pending is not None and pending.kind is RequestKind.CANCEL:
        return f"superseded by cancel {pending.request_id}"
    return None


def _route_request(uow: AbstractUnitOfWork, env: Envelope, kind: RequestKind) -> None:
    """Send a cancel or replace request recorded by the order commands."""
    order_id: str = env.body["order_id"]
    request_id: str = env.body["request_id"]
    requests = uow.requests
    # B113 (a call to requests without a timeout) is a false positive: `requests` is the requests repository.
    request = requests.get(request_id)  # locked (for the whole batch by lock_requests)  # nosec B113
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
        REPLACE_REQUEST.send(uow.outbox, broker_request_body(order, request_id, terms_of(request)), order.id)
    else:
        CANCEL_REQUEST.send(uow.outbox, broker_request_body(order, request_id), order.id)
    requests.set_status(request_id, REQUEST_SENT, now)
    log.info("request sent", extra={"request_id": request_id, "kind": kind.value})


def lock_requests(uow: AbstractUnitOfWork, envelopes: list[Envelope]) -> None:
    """The stage's ``prepare``: read and lock the batch's cancel and replace requests in one round trip."""
    request_ids = [
        env.body["request_id"]
        for env in envelopes
        if env.routing_key in (ROUTE_CANCEL.routing_key, ROUTE_REPLACE.routing_key)
    ]
    if request_ids:
        uow.requests.lock(request_ids)


def handle_route_cancel(uow: AbstractUnitOfWork, env: Envelope) -> None:
    """``RouteCancel``: send the cancel request the order commands recorded."""
    _route_request(uow, env, RequestKind.CANCEL)


def handle_route_replace(uow: AbstractUnitOfWork, env: Envelope) -> None:
    """``RouteReplace``: send the replace request whose new terms the risk gate approved."""
    _route_request(uow, env, RequestKind.REPLACE)
