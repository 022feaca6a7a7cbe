"""Between protobuf messages (``trading.order.v1``) and the read model's dicts and the message contract.

The specification's gRPC numbers are doubles: a Decimal goes out as the nearest double, and a double comes
in as the Decimal of its shortest representation (``repr``), so 0.1 arrives as Decimal("0.1").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from common import jsonutil
from proto.gen import order_pb2 as pb

E = TypeVar("E")

_SIDE_PREFIX = "ORDER_SIDE_"
_TYPE_PREFIX = "ORDER_TYPE_"
_STATUS_PREFIX = "ORDER_STATUS_"
_TIF_PREFIX = "TIME_IN_FORCE_"


class MappingError(ValueError):
    """A field of a request that cannot be mapped (an enum value out of range, a missing value)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def decimal_of(value: float) -> Decimal:
    """The Decimal a double stands for (shortest round-trip form)."""
    return Decimal(repr(value))


def optional_decimal(value: float) -> Decimal | None:
    """A proto3 double without presence: 0 means unset."""
    return None if value == 0 else decimal_of(value)


def _double(value: Decimal | None) -> float:
    return float(value) if value is not None else 0.0


def timestamp_of(moment: datetime | str | None) -> Timestamp | None:
    """A protobuf Timestamp of an aware datetime (or its ISO text)."""
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def datetime_of(stamp: Timestamp) -> datetime | None:
    """An aware datetime of a Timestamp; None when unset (zero)."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    moment: datetime = stamp.ToDatetime(tzinfo=UTC)
    return moment


def _enum_name(enum: Any, value: int, prefix: str, field: str, required: bool) -> str | None:
    try:
        name: str = enum.Name(value)
    except ValueError as exc:
        raise MappingError(field, f"{value} is not a known value") from exc
    if name.endswith("_UNSPECIFIED"):
        if required:
            raise MappingError(field, "is required")
        return None
    return name.removeprefix(prefix)


def side_of(value: int) -> str:
    """BUY/SELL from ``OrderSide`` (UNSPECIFIED is an error)."""
    return str(_enum_name(pb.OrderSide, value, _SIDE_PREFIX, "side", True))


def order_type_of(value: int) -> str:
    """MARKET/LIMIT/STOP/STOP_LIMIT from ``OrderType`` (UNSPECIFIED is an error)."""
    return str(_enum_name(pb.OrderType, value, _TYPE_PREFIX, "type", True))


def time_in_force_of(value: int) -> str:
    """DAY/GTC/IOC/FOK from ``TimeInForce`` (UNSPECIFIED means DAY, the REST default)."""
    return _enum_name(pb.TimeInForce, value, _TIF_PREFIX, "timeInForce", False) or "DAY"


def status_of(value: int, field: str = "status") -> str | None:
    """A public status from ``OrderStatus`` (None for UNSPECIFIED)."""
    return _enum_name(pb.OrderStatus, value, _STATUS_PREFIX, field, False)


def _status_pb(status: str) -> pb.OrderStatus:
    value: pb.OrderStatus = pb.OrderStatus.Value(_STATUS_PREFIX + status)
    return value


def create_request_body(request: pb.CreateOrderRequest) -> dict[str, Any]:
    """A CreateOrderRequest as the REST body it corresponds to (camelCase; loaded by the same schema)."""
    body: dict[str, Any] = {
        "accountId": request.account_id,
        "symbol": request.symbol,
        "side": side_of(request.side),
        "type": order_type_of(request.type),
        "quantity": decimal_of(request.quantity),
        "price": optional_decimal(request.price),
        "stopPrice": optional_decimal(request.stop_price),
        "timeInForce": time_in_force_of(request.time_in_force),
    }
    for key, value in (
        ("strategyId", request.strategy_id),
        ("notes", request.notes),
        ("clientOrderId", request.client_order_id),
    ):
        if value:
            body[key] = value
    return body


def _report_pb(report: Mapping[str, Any]) -> pb.ExecutionReport:
    message = pb.ExecutionReport(
        id=report.get("id") or "",
        execution_id=report.get("execution_id") or "",
        quantity=_double(report.get("quantity")),
        price=_double(report.get("price")),
        fees=_double(report.get("fees")),
        venue=report.get("venue") or "",
        exec_type=report.get("exec_type") or "",
        reason=report.get("reason") or "",
    )
    stamp = timestamp_of(report.get("timestamp"))
    if stamp is not None:
        message.timestamp.CopyFrom(stamp)
    for name, key in (("cum_quantity", "cum_qty"), ("leaves_quantity", "leaves_qty"), ("average_price", "avg_px")):
        if report.get(key) is not None:
            setattr(message, name, float(report[key]))
    return message


def order_response(order: Mapping[str, Any]) -> pb.OrderResponse:
    """The read model's order as an ``OrderResponse``."""
    message = pb.OrderResponse(
        id=order["id"],
        account_id=order["account_id"],
        symbol=order["symbol"],
        side=pb.OrderSide.Value(_SIDE_PREFIX + order["side"]),
        type=pb.OrderType.Value(_TYPE_PREFIX + order["type"]),
        status=_status_pb(order["status"]),
        quantity=_double(order["quantity"]),
        filled_quantity=_double(order["filled_quantity"]),
        price=_double(order.get("price")),
        stop_price=_double(order.get("stop_price")),
        average_execution_price=_double(order.get("average_execution_price")),
        time_in_force=pb.TimeInForce.Value(_TIF_PREFIX + order["time_in_force"]),
        strategy_id=order.get("strategy_id") or "",
        broker_order_id=order.get("broker_order_id") or "",
        rejection_reason=order.get("rejection_reason") or "",
        notes=order.get("notes") or "",
        execution_reports=[_report_pb(r) for r in order.get("execution_reports", [])],
        state=order.get("state") or "",
        client_order_id=order.get("client_order_id") or "",
        rejection_code=order.get("rejection_code") or "",
        leaves_quantity=_double(order.get("leaves_quantity")),
        total_fees=_double(order.get("total_fees")),
        version=order.get("version") or 0,
    )
    for name in ("created_at", "updated_at"):
        stamp = timestamp_of(order.get(name))
        if stamp is not None:
            getattr(message, name).CopyFrom(stamp)
    return message


def _number(value: Any) -> float:
    return float(Decimal(str(value))) if value is not None else 0.0


def order_update(body: Mapping[str, Any]) -> pb.OrderUpdate:
    """An ``OrderUpdate`` message body (camelCase, as ``order_update_body`` writes it) as protobuf."""
    message = pb.OrderUpdate(
        order_id=body["orderId"],
        status=_status_pb(body["status"]),
        filled_quantity=_number(body.get("filledQuantity")),
        average_execution_price=_number(body.get("averageExecutionPrice")),
        account_id=body.get("accountId") or "",
        symbol=body.get("symbol") or "",
        state=body.get("state") or "",
        quantity=_number(body.get("quantity")),
        leaves_quantity=_number(body.get("leavesQuantity")),
        version=int(body.get("version") or 0),
    )
    stamp = timestamp_of(body.get("timestamp"))
    if stamp is not None:
        message.timestamp.CopyFrom(stamp)
    latest = body.get("latestExecution")
    if isinstance(latest, Mapping):
        message.latest_execution.CopyFrom(
            _report_pb(
                {
                    "id": latest.get("id"),
                    "execution_id": latest.get("executionId"),
                    "quantity": _decimal_or_none(latest.get("quantity")),
                    "price": _decimal_or_none(latest.get("price")),
                    "timestamp": latest.get("timestamp"),
                    "fees": _decimal_or_none(latest.get("fees")),
                    "venue": latest.get("venue"),
                }
            )
        )
    return message


def _decimal_or_none(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def order_events_response(order_id: str, events: Sequence[Mapping[str, Any]]) -> pb.GetOrderEventsResponse:
    """An order's events (``services.api.order_events`` rows) as a ``GetOrderEventsResponse``.

    The payload travels as JSON text so its decimal figures stay exact (a Struct holds doubles).
    """
    message = pb.GetOrderEventsResponse(order_id=order_id)
    for event in events:
        item = message.events.add(
            sequence=event["sequence"],
            type=event["type"],
            user_id=event.get("user_id") or "",
            correlation_id=event.get("correlation_id") or "",
            message_id=event.get("message_id") or "",
            payload_json=jsonutil.dumps(event.get("payload") or {}),
        )
        stamp = timestamp_of(event.get("timestamp"))
        if stamp is not None:
            item.timestamp.CopyFrom(stamp)
    return message
