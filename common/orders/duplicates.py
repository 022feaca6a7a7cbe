"""Idempotency keys: whether a request seen before under a key asks for the order booked under it."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from common.domain import Order, OrderState
from common.orders.errors import ConflictingDuplicate, TermDifference
from common.orders.order_request import OrderRequest, storable
from common.orders.ports import AbstractUnitOfWork

_ZERO = Decimal(0)

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
                received = storable(received)
                if name == "quantity" and received is None:
                    received = _ZERO
            same = _same_number(booked.get(name), received)
        else:
            same = _same_text(booked.get(name), received)
        if not same:
            differences.append(TermDifference(wire, booked.get(name), getattr(request, name)))
    return differences


def check_duplicate(uow: AbstractUnitOfWork, existing: Order, request: OrderRequest) -> None:
    """Raise ``ConflictingDuplicate`` unless ``request`` asks for the order ``existing`` was created as."""
    booked = uow.orders.creation_terms(existing.id)
    if booked is None:  # no creation event (written by hand): its current terms are the best record
        booked = {name: getattr(existing, name) for _, name in _TERMS}
    differences = term_differences(booked, request)
    if differences:
        raise ConflictingDuplicate(existing, request.client_order_id or "", differences)
