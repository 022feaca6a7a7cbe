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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from common.domain import (
    InvalidCommand,
    InvalidTransition,
    Order,
    OrderState,
    OrderType,
    RequestKind,
    Side,
    TimeInForce,
)
from common.domain.lifecycle import UNROUTED
from common.domain.validation import (
    MAX_STORABLE,
    UNBOOKABLE_CODES,
    RuleViolation,
    summarize,
    validate_order,
    validate_terms,
)
from common.ids import new_id
from common.logging import log_context
from common.messaging.topology import OMS_EXCHANGE
from common.store.reference import ReferenceData
from common.store.requests_repo import (
    REQUEST_PENDING,
    record_request,
)
from common.store.uow import UnitOfWork

log = logging.getLogger(__name__)

_ZERO = Decimal(0)
USER_HEADER = "x-oms-user"

RISK_CHECK_KEY = "risk.check"
ROUTE_NEW_KEY = "router.new"
ROUTE_CANCEL_KEY = "router.cancel"
ROUTE_REPLACE_KEY = "router.replace"


@dataclass(frozen=True)
class OrderRequest:
    """What a REST/gRPC create or a trade decision asks for (values as received; the rules check them)."""

    account_id: str
    symbol: str
    side: str
    type: str
    quantity: Decimal | None
    price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: str = "DAY"
    strategy_id: str | None = None
    notes: str | None = None
    client_order_id: str | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any], client_order_id: str | None) -> OrderRequest:
        """From a schema-loaded ``CreateOrderRequest`` or ``TradeDecision`` (snake_case keys, Decimal numbers)."""
        return cls(
            account_id=body["account_id"],
            symbol=body["symbol"],
            side=body["side"],
            type=body["type"],
            quantity=body["quantity"],
            price=body.get("price"),
            stop_price=body.get("stop_price"),
            time_in_force=body.get("time_in_force") or "DAY",
            strategy_id=body.get("strategy_id"),
            notes=body.get("notes"),
            client_order_id=client_order_id,
        )


class OrderNotFound(Exception):
    """No order has this id."""

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id
        super().__init__(f"order {order_id} not found")


class UnknownAccount(Exception):
    """The account does not exist, so the order cannot be booked at all (not even as REJECTED)."""

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        super().__init__(f"unknown account {account_id}")


class InvalidOrderTerms(InvalidCommand):
    """Terms that break a rule where no REJECTED order can record it: new terms of a modify, or a value
    outside the enums. ``violations`` carry field and message for a 400 response."""

    def __init__(self, violations: Sequence[RuleViolation]) -> None:
        self.violations = list(violations)
        super().__init__("; ".join(v.message for v in self.violations))


class ConflictingDuplicate(Exception):
    """An idempotency key (decision id, Idempotency-Key, clientOrderId) seen before with other order terms.

    Answering with the first order would tell the sender its second request was booked when it was not.
    ``differences`` name each term that differs, as on the wire (camelCase).
    """

    def __init__(self, order: Order, key: str, differences: Sequence[TermDifference]) -> None:
        self.order = order
        self.key = key
        self.differences = list(differences)
        super().__init__(
            f"{key} was already used for order {order.id} with other terms: "
            + "; ".join(str(d) for d in self.differences)
        )

    @property
    def fields(self) -> list[str]:
        """The names of the terms that differ."""
        return [d.field for d in self.differences]


@dataclass(frozen=True)
class TermDifference:
    """One order term whose value differs between the order booked under a key and a new request with it."""

    field: str
    booked: object
    received: object

    def __str__(self) -> str:
        return f"{self.field} (booked {_shown(self.booked)}, received {_shown(self.received)})"


# The terms an idempotency key stands for: (name on the wire, OrderRequest attribute / ORDER_CREATED key).
_TERMS = (
    ("accountId", "account_id"),
    ("symbol", "symbol"),
    ("side", "side"),
    ("type", "type"),
    ("quantity", "quantity"),
    ("price", "price"),
    ("stopPrice", "stop_price"),
    ("timeInForce", "time_in_force"),
    ("strategyId", "strategy_id"),
    ("notes", "notes"),
)
_NUMERIC_TERMS = frozenset({"quantity", "price", "stop_price"})
_SHOWN_MAX = 40


# --------------------------------------------------------------------------- reference data


def reference_of(uow: UnitOfWork) -> ReferenceData:
    """The transaction's accounts and instruments (``uow.reference``), which intake prefetches per batch."""
    return uow.reference


# --------------------------------------------------------------------------- helpers


def _shown(value: object) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 3] + "..."


def _same_number(booked: object, received: object) -> bool:
    if booked is None or received is None:
        return booked is None and received is None
    try:
        # Through str: JSONB read by an engine without the Decimal deserialiser gives float.
        a, b = Decimal(str(booked)), Decimal(str(received))
    except ArithmeticError:
        return str(booked) == str(received)
    if not (a.is_finite() and b.is_finite()):
        return str(a) == str(b)
    return a == b  # numerically: 100 and 100.0 are the same quantity


def _same_text(booked: object, received: object) -> bool:
    # An absent text and an empty one say the same thing; enums compare by their value.
    def norm(value: object) -> str | None:
        text = None if value is None else str(getattr(value, "value", value))
        return text or None

    return norm(booked) == norm(received)


def term_differences(booked: Mapping[str, Any], request: OrderRequest) -> list[TermDifference]:
    """The terms of ``request`` that differ from those an order was created with (its ORDER_CREATED payload).

    An order born REJECTED recorded only the values it could store, so the request is compared in that form.
    """
    born_rejected = str(booked.get("state", "")) == OrderState.REJECTED.value
    differences = []
    for wire, name in _TERMS:
        received = getattr(request, name)
        if name in _NUMERIC_TERMS:
            if born_rejected:
                received = _storable(received)
                if name == "quantity" and received is None:
                    received = _ZERO
            same = _same_number(booked.get(name), received)
        else:
            same = _same_text(booked.get(name), received)
        if not same:
            differences.append(TermDifference(wire, booked.get(name), getattr(request, name)))
    return differences


def check_duplicate(uow: UnitOfWork, existing: Order, request: OrderRequest) -> None:
    """Raise ``ConflictingDuplicate`` unless ``request`` asks for the order ``existing`` was created as."""
    booked = uow.orders.creation_terms(existing.id)
    if booked is None:  # no creation event (written by hand): its current terms are the best record
        booked = {name: getattr(existing, name) for _, name in _TERMS}
    differences = term_differences(booked, request)
    if differences:
        raise ConflictingDuplicate(existing, request.client_order_id or "", differences)


def _headers(user_id: str | None) -> dict[str, str]:
    return {USER_HEADER: user_id} if user_id else {}


def _load(uow: UnitOfWork, order_id: str) -> Order:
    order = uow.orders.get(order_id, for_update=True)
    if order is None:
        raise OrderNotFound(order_id)
    return order


def ask_risk(uow: UnitOfWork, order: Order, user_id: str | None = None, request_id: str | None = None) -> None:
    """Hand the order, at its current version, to the risk gate; with ``request_id``, the new terms of that
    replace request of an order at the venue."""
    body: dict[str, Any] = {"orderId": order.id, "version": order.version}
    if request_id is not None:
        body["requestId"] = request_id
    uow.outbox.add(OMS_EXCHANGE, RISK_CHECK_KEY, "RiskCheck", body, order.id, headers=_headers(user_id))


def _storable(value: Decimal | None) -> Decimal | None:
    """A value that fits DECIMAL(20,8), else None: a REJECTED order records what it can; its reason has
    the value as received."""
    if value is None or not value.is_finite() or abs(value) >= MAX_STORABLE:
        return None
    return value


# --------------------------------------------------------------------------- commands


def submit_order(
    uow: UnitOfWork,
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
    common: dict[str, Any] = {
        "id": new_id(),
        "account_id": request.account_id,
        "symbol": request.symbol,
        "side": Side(request.side),
        "type": OrderType(request.type),
        "time_in_force": TimeInForce(request.time_in_force),
        "strategy_id": request.strategy_id,
        "notes": request.notes,
        "client_order_id": request.client_order_id,
        "now": now,
        "user_id": user_id,
    }
    if violations:
        code, reason = summarize(violations)
        order = Order.create_rejected(
            **common,
            quantity=_storable(request.quantity) or _ZERO,
            price=_storable(request.price),
            stop_price=_storable(request.stop_price),
            code=code,
            reason=reason,
        )
    else:
        assert request.quantity is not None  # the rules require it
        order = Order.create(**common, quantity=request.quantity, price=request.price, stop_price=request.stop_price)
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


def cancel_order(uow: UnitOfWork, order_id: str, *, reason: str | None, user_id: str | None) -> Order:
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
        record_request(
            uow.connection,
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
        uow.outbox.add(
            OMS_EXCHANGE,
            ROUTE_CANCEL_KEY,
            "RouteCancel",
            {"orderId": order.id, "requestId": request_id, "reason": reason},
            order.id,
            headers=_headers(user_id),
        )
        log.info("cancel requested", extra={"request_id": request_id})
    return order


def modify_order(
    uow: UnitOfWork,
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
        record_request(
            uow.connection,
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


__all__ = [
    "ConflictingDuplicate",
    "InvalidOrderTerms",
    "OrderNotFound",
    "OrderRequest",
    "UnknownAccount",
    "TermDifference",
    "ask_risk",
    "cancel_order",
    "check_duplicate",
    "modify_order",
    "reference_of",
    "submit_order",
    "term_differences",
]
