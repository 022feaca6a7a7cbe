"""Order commands shared by the front end and the stages: submit, cancel, modify.

Each runs inside the caller's unit of work and never commits: the API commits its own, a stage's runtime
commits the batch. Orders are loaded ``FOR UPDATE`` so a command racing a fill serialises with it.

Cancels and replaces of an order at the venue are recorded as ``order_requests`` rows: a cancel goes straight
to the router (``RouteCancel``); a replace first to the risk gate (``RiskCheck`` with its ``requestId``), which
hands it to the router (``RouteReplace``) if its new terms pass. The order itself changes only when the venue
answers.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal

from common.domain import (
    InvalidCommand,
    InvalidTransition,
    Order,
    OrderState,
    OrderTerms,
    OrderType,
    RequestKind,
    Side,
    TimeInForce,
)
from common.domain.lifecycle import UNROUTED
from common.domain.validation import (
    UNBOOKABLE_CODES,
    summarize,
    validate_order,
    validate_terms,
)
from common.ids import new_id
from common.logging import log_context
from common.messages.bodies import risk_check_body, route_cancel_body
from common.messages.catalogue import RISK_CHECK, ROUTE_CANCEL
from common.messages.headers import user_headers
from common.orders.duplicates import check_duplicate
from common.orders.errors import InvalidOrderTerms, OrderNotFound, UnknownAccount
from common.orders.order_request import OrderRequest, storable
from common.orders.ports import AbstractReferenceData, AbstractUnitOfWork
from common.orders.records import REQUEST_PENDING

log = logging.getLogger(__name__)

_ZERO = Decimal(0)


def reference_of(uow: AbstractUnitOfWork) -> AbstractReferenceData:
    """The transaction's accounts and instruments (``uow.reference``), which intake prefetches per batch."""
    return uow.reference


def _load(uow: AbstractUnitOfWork, order_id: str) -> Order:
    order = uow.orders.get(order_id, for_update=True)
    if order is None:
        raise OrderNotFound(order_id)
    return order


def ask_risk(uow: AbstractUnitOfWork, order: Order, user_id: str | None = None, request_id: str | None = None) -> None:
    """Hand the order, at its current version, to the risk gate; with ``request_id``, the new terms of that
    replace request of an order at the venue. Partitioned by account: one risk gate replica sees all of an
    account's checks, in order, so replicas never contend for an account's exposure."""
    RISK_CHECK.send(
        uow.outbox,
        risk_check_body(order, request_id),
        order.id,
        headers=user_headers(user_id),
        partition_key=order.account_id,
    )


# --------------------------------------------------------------------------- commands


def submit_order(
    uow: AbstractUnitOfWork,
    request: OrderRequest,
    *,
    user_id: str | None,
    correlation_id: str | None,
    message_id: str | None,
) -> tuple[Order, bool]:
    """Book an order: NEW with a RiskCheck, or REJECTED with the broken rules' code and reason.

    Idempotent on (account_id, client_order_id): the same request seen before returns ``(existing, False)``;
    the same key with other terms raises ``ConflictingDuplicate``. Raises ``UnknownAccount`` (nowhere to book
    it) and ``InvalidOrderTerms`` (side, type or time in force outside the enums: nothing to record).
    """
    reference = reference_of(uow)
    reference.prefetch([request.account_id], [request.symbol])  # one statement (none if the batch's prepare read it)
    account = reference.account(request.account_id)
    if account is None:
        raise UnknownAccount(request.account_id)
    if request.client_order_id is not None:
        existing = uow.orders.find_by_client_order_id(request.account_id, request.client_order_id)
        if existing is not None:
            check_duplicate(uow, existing, request)
            return existing, False
    instrument = reference.instrument(request.symbol)
    violations = validate_order(request, instrument, account)
    unbookable = [v for v in violations if v.code in UNBOOKABLE_CODES]
    if unbookable:
        raise InvalidOrderTerms(unbookable)
    now = datetime.now(UTC)
    # A REJECTED order records what it can store; a valid request's values are storable as they are.
    terms = OrderTerms(
        account_id=request.account_id,
        symbol=request.symbol,
        side=Side(request.side),
        type=OrderType(request.type),
        quantity=storable(request.quantity) or _ZERO,
        price=storable(request.price),
        stop_price=storable(request.stop_price),
        time_in_force=TimeInForce(request.time_in_force),
        strategy_id=request.strategy_id,
        notes=request.notes,
        client_order_id=request.client_order_id,
    )
    if violations:
        code, reason = summarize(violations)
        order = Order.create_rejected(id=new_id(), terms=terms, now=now, user_id=user_id, code=code, reason=reason)
    else:
        order = Order.create(id=new_id(), terms=terms, now=now, user_id=user_id)
    uow.orders.add(order, correlation_id=correlation_id or order.id, message_id=message_id, user_id=user_id)
    with log_context(order_id=order.id):
        if order.state is OrderState.NEW:
            ask_risk(uow, order, user_id)
            # DEBUG: a line per order on the hot path (the repository records the order's state change).
            log.debug("order accepted", extra={"client_order_id": order.client_order_id})
        else:
            log.info(
                "order rejected at intake",
                extra={"code": order.rejection_code, "reason": order.rejection_reason},
            )
    return order, True


def cancel_order(uow: AbstractUnitOfWork, order_id: str, *, reason: str | None, user_id: str | None) -> Order:
    """Cancel an order: NEW/APPROVED at once; at the venue, a CANCEL request and a RouteCancel to the router
    (the order changes when the venue answers). Terminal, or a cancel already outstanding: InvalidTransition.
    """
    order = _load(uow, order_id)
    now = datetime.now(UTC)
    with log_context(order_id=order.id):
        if order.state in UNROUTED:
            order.cancel_unrouted(reason, now, user_id)
            uow.orders.save(order, correlation_id=order.id, message_id=None, user_id=user_id)
            log.info("order canceled before routing")
            return order
        request_id = new_id()
        order.request_cancel(request_id, reason, now, user_id)
        uow.requests.record(
            request_id=request_id,
            order_id=order.id,
            kind=RequestKind.CANCEL.value,
            terms={},
            status=REQUEST_PENDING,
            reason=reason,
            created_by=user_id,
            now=now,
        )
        uow.orders.save(order, correlation_id=order.id, message_id=None, user_id=user_id)
        body = route_cancel_body(order.id, request_id)
        ROUTE_CANCEL.send(uow.outbox, body, order.id, headers=user_headers(user_id))
        log.info("cancel requested", extra={"request_id": request_id})
    return order


def modify_order(
    uow: AbstractUnitOfWork,
    order_id: str,
    *,
    quantity: Decimal | None,
    price: Decimal | None,
    stop_price: Decimal | None,
    notes: str | None,
    user_id: str | None,
) -> Order:
    """Change an order's terms (a value left None keeps the current one).

    NEW/APPROVED: new terms at once and risk runs again (RiskCheck at the new version). At the venue: a
    REPLACE request with the complete new terms and a RiskCheck of them (the gate hands the request to the
    router, or rejects it); in force only when the venue confirms.
    Raises ``InvalidOrderTerms`` (a rule broken), ``InvalidCommand`` (nothing to change, or only notes of
    an order at the venue), ``InvalidTransition`` (terminal, or a cancel outstanding).
    """
    order = _load(uow, order_id)
    if order.is_terminal:
        raise InvalidTransition("modify", order.state)
    # The base is what the user last asked for: a replace still outstanding carries newer terms (FIX chain).
    pending = order.pending_request
    if pending is not None and pending.kind is RequestKind.REPLACE and pending.quantity is not None:
        base = (pending.quantity, pending.price, pending.stop_price)
    else:
        base = (order.quantity, order.price, order.stop_price)
    new_terms = (
        quantity if quantity is not None else base[0],
        price if price is not None else base[1],
        stop_price if stop_price is not None else base[2],
    )
    new_quantity, new_price, new_stop_price = new_terms
    violations = validate_terms(
        order.type, new_quantity, new_price, new_stop_price, reference_of(uow).instrument(order.symbol)
    )
    if violations:
        raise InvalidOrderTerms(violations)
    notes_changed = notes is not None and notes != order.notes
    if new_terms == base and not notes_changed:
        raise InvalidCommand("nothing to modify: quantity, price, stop price and notes are unchanged")
    now = datetime.now(UTC)
    with log_context(order_id=order.id):
        if order.state in UNROUTED:
            order.modify_unrouted(new_quantity, new_price, new_stop_price, now, user_id)
            if notes_changed:
                order.notes = notes
            uow.orders.save(order, correlation_id=order.id, message_id=None, user_id=user_id)
            ask_risk(uow, order, user_id)
            log.info("order modified before routing; risk runs again", extra={"version": order.version})
            return order
        if new_terms == base:
            raise InvalidCommand("the order is at the venue: notes alone cannot be changed there")
        request_id = new_id()
        order.request_replace(request_id, new_quantity, new_price, new_stop_price, now, user_id)
        if notes_changed:
            order.notes = notes
        terms = {"quantity": new_quantity, "price": new_price, "stopPrice": new_stop_price}
        uow.requests.record(
            request_id=request_id,
            order_id=order.id,
            kind=RequestKind.REPLACE.value,
            terms=terms,
            status=REQUEST_PENDING,
            reason=None,
            created_by=user_id,
            now=now,
        )
        uow.orders.save(order, correlation_id=order.id, message_id=None, user_id=user_id)
        ask_risk(uow, order, user_id, request_id=request_id)
        log.info("replace requested; risk checks its terms", extra={"request_id": request_id})
    return order
