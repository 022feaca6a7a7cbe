"""UpdateOrderStatus: turn the caller's status and execution report into the public ``ExecutionReport`` body.

The broker integration service reports through gRPC exactly what it would publish on AMQP; the front end
publishes it to ``oms`` / ``execution.report`` and the execution handler applies it like any other report.
What the caller leaves out is derived from the order as it stands: the exec type from the status, and the
cumulative quantity, leaves and average price from the order's fills so far plus this execution.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from marshmallow import ValidationError

from common.contracts import ExecutionReportSchema
from common.domain.enums import ExecType
from common.ids import new_id
from proto.gen import order_pb2 as pb
from services.api import grpc_mapping as mapping
from services.api.errors import Conflict, FieldError, InvalidRequest

_ZERO = Decimal(0)
_PRICE_QUANTUM = Decimal("0.00000001")
_EXEC_TYPE_OF_STATUS = {
    "OPEN": ExecType.NEW,
    "PARTIALLY_FILLED": ExecType.PARTIAL_FILL,
    "FILLED": ExecType.FILL,
    "CANCELED": ExecType.CANCELED,
    "REJECTED": ExecType.REJECTED,
}
_TRADES = frozenset({ExecType.PARTIAL_FILL, ExecType.FILL})
# What a venue may still say about an order that is done: late fills and busts (FIX); nothing else.
_AFTER_TERMINAL = frozenset({ExecType.PARTIAL_FILL, ExecType.FILL, ExecType.TRADE_CANCEL})
_ENDS_ORDER = frozenset({ExecType.CANCELED, ExecType.REJECTED, ExecType.EXPIRED})


def _invalid(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {message}", [FieldError(field, message)])


def _exec_type(request: pb.UpdateOrderStatusRequest) -> ExecType:
    report = request.execution_report
    if report.exec_type:
        try:
            return ExecType(report.exec_type)
        except ValueError as exc:
            raise _invalid("executionReport.execType", f"{report.exec_type!r} is not an exec type") from exc
    try:
        status = mapping.status_of(request.status)
    except mapping.MappingError as exc:
        raise _invalid(exc.field, exc.message) from exc
    if status is None or status not in _EXEC_TYPE_OF_STATUS:
        raise _invalid("status", "must be OPEN, PARTIALLY_FILLED, FILLED, CANCELED or REJECTED (or give execType)")
    return _EXEC_TYPE_OF_STATUS[status]


def _opt(report: pb.ExecutionReport, name: str) -> Decimal | None:
    return mapping.decimal_of(getattr(report, name)) if report.HasField(name) else None


def build_report(order: dict[str, Any], request: pb.UpdateOrderStatusRequest, now: datetime) -> dict[str, Any]:
    """The ``ExecutionReport`` body (camelCase) for ``order``; raises InvalidRequest or Conflict."""
    report = request.execution_report
    exec_type = _exec_type(request)
    if order["state"] in ("FILLED", "CANCELED", "EXPIRED", "REJECTED") and exec_type not in _AFTER_TERMINAL:
        raise Conflict(f"order {order['id']} is {order['state']}: only fills and busts can still be reported")
    last_qty = mapping.decimal_of(report.quantity)
    last_px = mapping.optional_decimal(report.price)
    if exec_type in _TRADES | {ExecType.TRADE_CANCEL} and (last_qty <= _ZERO or last_px is None or last_px <= 0):
        raise _invalid("executionReport", f"a {exec_type} report needs a positive quantity and price")
    if exec_type is ExecType.TRADE_CANCEL and not report.exec_ref_id:
        raise _invalid("executionReport.execRefId", "a TRADE_CANCEL names the execution it busts")
    if exec_type not in _TRADES | {ExecType.TRADE_CANCEL}:
        last_qty, last_px = _ZERO, None

    order_qty = _opt(report, "order_quantity") or order["quantity"]
    filled, average = order["filled_quantity"], order.get("average_execution_price")
    cum_qty = _opt(report, "cum_quantity")
    avg_px = _opt(report, "average_price")
    if cum_qty is None:
        if exec_type in _TRADES:
            cum_qty = filled + last_qty
        elif exec_type is ExecType.TRADE_CANCEL:
            cum_qty = max(filled - last_qty, _ZERO)
        else:
            cum_qty = filled
    if avg_px is None and exec_type in _TRADES and last_px is not None and cum_qty > _ZERO:
        before = filled * average if average is not None else _ZERO
        avg_px = ((before + last_qty * last_px) / cum_qty).quantize(_PRICE_QUANTUM, ROUND_HALF_EVEN)
    elif avg_px is None:
        avg_px = average
    leaves_qty = _opt(report, "leaves_quantity")
    if leaves_qty is None:
        leaves_qty = _ZERO if exec_type in _ENDS_ORDER else max(order_qty - cum_qty, _ZERO)

    timestamp = mapping.datetime_of(report.timestamp) or now.astimezone(UTC)
    body: dict[str, Any] = {
        "executionId": report.execution_id or new_id(),
        "orderId": order["id"],
        "requestId": report.request_id or None,
        "brokerOrderId": report.broker_order_id or order.get("broker_order_id"),
        "execType": exec_type.value,
        "lastQty": last_qty,
        "lastPx": last_px,
        "cumQty": cum_qty,
        "leavesQty": leaves_qty,
        "avgPx": avg_px,
        "orderQty": order_qty,
        "price": _opt(report, "limit_price") or order.get("price"),
        "stopPrice": _opt(report, "stop_price") or order.get("stop_price"),
        "fees": mapping.decimal_of(report.fees),
        "venue": report.venue or None,
        "timestamp": timestamp.isoformat(),
        "reason": report.reason or None,
        "execRefId": report.exec_ref_id or None,
    }
    body = {key: value for key, value in body.items() if value is not None}
    try:
        # The body must be one the execution handler accepts: check it against the public contract.
        ExecutionReportSchema().load(body)
    except ValidationError as exc:
        raise InvalidRequest(
            "the execution report breaks the contract",
            [FieldError(str(k), "; ".join(map(str, v))) for k, v in exc.normalized_messages().items()],
        ) from exc
    return body
