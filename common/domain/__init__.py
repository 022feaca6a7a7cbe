"""Pure order domain: enums, order terms, the ``Order`` aggregate, FIX execution-report semantics, events, errors.

Imports nothing but the standard library and ``transitions``.
"""

from common.domain.enums import (
    TERMINAL_STATES,
    ExecType,
    OrderEventType,
    OrderState,
    OrderStatus,
    OrderType,
    RequestKind,
    Side,
    TimeInForce,
    public_status,
)
from common.domain.errors import DomainError, InvalidCommand, InvalidTransition, ReportMismatch
from common.domain.events import DomainEvent
from common.domain.execution import BookedExecution, ExecutionReportData, FillDelta, ReportOutcome
from common.domain.order import Order
from common.domain.pending_request import PendingRequest
from common.domain.terms import OrderTerms, order_terms_problems

__all__ = [
    "TERMINAL_STATES",
    "BookedExecution",
    "DomainError",
    "DomainEvent",
    "ExecType",
    "ExecutionReportData",
    "FillDelta",
    "InvalidCommand",
    "InvalidTransition",
    "Order",
    "OrderEventType",
    "OrderState",
    "OrderStatus",
    "OrderTerms",
    "OrderType",
    "PendingRequest",
    "ReportMismatch",
    "ReportOutcome",
    "RequestKind",
    "Side",
    "TimeInForce",
    "order_terms_problems",
    "public_status",
]
