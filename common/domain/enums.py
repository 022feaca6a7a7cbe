"""Enumerations of the order domain and the mapping from internal state to public status."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class OrderType(StrEnum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"
    STOP = "STOP"
    STOP_LIMIT = "STOP_LIMIT"


class TimeInForce(StrEnum):
    DAY = "DAY"
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"


class OrderStatus(StrEnum):
    """The spec's six public statuses (column ``orders.status``); never extended."""

    PENDING = "PENDING"
    OPEN = "OPEN"
    FILLED = "FILLED"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"


class OrderState(StrEnum):
    """The finer internal state (column ``orders.state``)."""

    NEW = "NEW"
    APPROVED = "APPROVED"
    ROUTED = "ROUTED"
    OPEN = "OPEN"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    PENDING_CANCEL = "PENDING_CANCEL"
    PENDING_REPLACE = "PENDING_REPLACE"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    EXPIRED = "EXPIRED"
    REJECTED = "REJECTED"


class ExecType(StrEnum):
    """What an execution report says happened (the public contract's ``execType``)."""

    NEW = "NEW"
    PARTIAL_FILL = "PARTIAL_FILL"
    FILL = "FILL"
    PENDING_CANCEL = "PENDING_CANCEL"
    CANCELED = "CANCELED"
    PENDING_REPLACE = "PENDING_REPLACE"
    REPLACED = "REPLACED"
    CANCEL_REJECTED = "CANCEL_REJECTED"
    REPLACE_REJECTED = "REPLACE_REJECTED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    TRADE_CANCEL = "TRADE_CANCEL"


class OrderEventType(StrEnum):
    """Types of ``order_events`` rows (the audit trail)."""

    ORDER_CREATED = "ORDER_CREATED"
    ORDER_MODIFIED = "ORDER_MODIFIED"
    RISK_APPROVED = "RISK_APPROVED"
    ORDER_REJECTED = "ORDER_REJECTED"
    ORDER_ROUTED = "ORDER_ROUTED"
    ORDER_ACKNOWLEDGED = "ORDER_ACKNOWLEDGED"
    ORDER_PARTIALLY_FILLED = "ORDER_PARTIALLY_FILLED"
    ORDER_FILLED = "ORDER_FILLED"
    CANCEL_REQUESTED = "CANCEL_REQUESTED"
    CANCEL_PENDING = "CANCEL_PENDING"
    ORDER_CANCELED = "ORDER_CANCELED"
    CANCEL_REJECTED = "CANCEL_REJECTED"
    REPLACE_REQUESTED = "REPLACE_REQUESTED"
    REPLACE_PENDING = "REPLACE_PENDING"
    ORDER_REPLACED = "ORDER_REPLACED"
    REPLACE_REJECTED = "REPLACE_REJECTED"
    ORDER_EXPIRED = "ORDER_EXPIRED"
    TRADE_BUSTED = "TRADE_BUSTED"
    OVERFILL_DETECTED = "OVERFILL_DETECTED"
    EXECUTION_ANOMALY = "EXECUTION_ANOMALY"


class RequestKind(StrEnum):
    """Kind of an OMS request outstanding at the venue."""

    CANCEL = "CANCEL"
    REPLACE = "REPLACE"


TERMINAL_STATES: frozenset[OrderState] = frozenset(
    {OrderState.FILLED, OrderState.CANCELED, OrderState.EXPIRED, OrderState.REJECTED}
)

_FIXED_STATUS: dict[OrderState, OrderStatus] = {
    OrderState.NEW: OrderStatus.PENDING,
    OrderState.APPROVED: OrderStatus.PENDING,
    OrderState.ROUTED: OrderStatus.PENDING,
    OrderState.OPEN: OrderStatus.OPEN,
    OrderState.PARTIALLY_FILLED: OrderStatus.PARTIALLY_FILLED,
    OrderState.FILLED: OrderStatus.FILLED,
    OrderState.CANCELED: OrderStatus.CANCELED,
    OrderState.EXPIRED: OrderStatus.CANCELED,
    OrderState.REJECTED: OrderStatus.REJECTED,
}
_ZERO = Decimal(0)


def public_status(state: OrderState, filled_quantity: Decimal) -> OrderStatus:
    """Map an internal state to the spec's public status (table in docs/design.md)."""
    fixed = _FIXED_STATUS.get(state)
    if fixed is not None:
        return fixed
    # PENDING_CANCEL / PENDING_REPLACE: the order still works at the venue until it answers.
    return OrderStatus.PARTIALLY_FILLED if filled_quantity > _ZERO else OrderStatus.OPEN
