"""Payloads of the events an order records when it is created and when a venue report is applied.

The commands' own payloads are a line each and stay with their commands in ``order.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

from common.domain.enums import OrderState, OrderStatus, TimeInForce
from common.domain.execution import ExecutionReportData
from common.domain.order_data import OrderData
from common.domain.terms import OrderTerms


def with_details(details: Mapping[str, object] | None, payload: dict[str, object]) -> dict[str, object]:
    """An event payload with the caller's details merged in; the command's own fields win a clash."""
    return {**details, **payload} if details else payload


def order_created(terms: OrderTerms, state: OrderState, status: OrderStatus) -> dict[str, object]:
    """ORDER_CREATED: the terms as received, and where the order starts."""
    return {**terms.fields(), "state": state, "status": status}


def execution_report(
    order: OrderData, report: ExecutionReportData, *, cum_applied: bool, flags: Mapping[str, object]
) -> dict[str, object]:
    """The event of an applied report: the report's figures, then the order's as they stand after it;
    ``flags`` (what the report rules noticed) come last."""
    payload: dict[str, object] = {
        "execution_id": report.execution_id,
        "exec_type": report.exec_type,
        "request_id": report.request_id,
        "broker_order_id": report.broker_order_id,
        "last_qty": report.last_qty,
        "last_px": report.last_px,
        "cum_qty": report.cum_qty,
        "leaves_qty": report.leaves_qty,
        "avg_px": report.avg_px,
        "order_qty": report.order_qty,
        "fees": report.fees,
        "venue": report.venue,
        "reason": report.reason,
        "cum_applied": cum_applied,
        "state": order.state,
        "status": order.status,
        "quantity": order.quantity,
        "filled_quantity": order.filled_quantity,
        "average_execution_price": order.average_execution_price,
    }
    if report.exec_ref_id is not None:
        payload["exec_ref_id"] = report.exec_ref_id
    payload.update(flags)
    return payload


def execution_anomaly(report: ExecutionReportData, anomalies: Sequence[str], state: OrderState) -> dict[str, object]:
    """EXECUTION_ANOMALY beside an applied report: what looked wrong in it."""
    return {
        "execution_id": report.execution_id,
        "exec_type": report.exec_type,
        "anomalies": list(anomalies),
        "state": state,
    }


def overfill_detected(execution_id: str, quantity: Decimal, filled_quantity: Decimal) -> dict[str, object]:
    """OVERFILL_DETECTED: the venue's cumulative quantity passed the order's."""
    return {
        "execution_id": execution_id,
        "quantity": quantity,
        "filled_quantity": filled_quantity,
        "excess": filled_quantity - quantity,
    }


def remainder_canceled(time_in_force: TimeInForce, canceled_quantity: Decimal, state: OrderState) -> dict[str, object]:
    """ORDER_CANCELED for the unfilled rest of an IOC/FOK order the venue left nothing working for."""
    return {
        "reason": f"{time_in_force} remainder canceled",
        "at_venue": True,
        "canceled_quantity": canceled_quantity,
        "state": state,
    }
