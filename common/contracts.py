"""The message contract, as marshmallow schemas: every body a stage consumes is loaded through one of these.

Bodies are camelCase JSON (see docs/messages.md); loaded dicts use snake_case keys and Decimal numbers.
Unknown fields are ignored, so producers can add fields without breaking consumers.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from common.domain import ExecType, OrderType, Side, TimeInForce

__all__ = [
    "CancelRequestSchema",
    "ExecutionReportSchema",
    "FillBookedSchema",
    "NewOrderRequestSchema",
    "ReplaceRequestSchema",
    "RiskCheckSchema",
    "RouteCancelSchema",
    "RouteNewSchema",
    "RouteReplaceSchema",
    "TradeDecisionSchema",
    "ValidationError",
]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class CamelSchema(Schema):
    """Snake_case attributes, camelCase on the wire."""

    class Meta:
        unknown = EXCLUDE

    def on_bind_field(self, field_name: str, field_obj: fields.Field[Any]) -> None:
        field_obj.data_key = field_obj.data_key or _camel(field_name)


def _decimal(required: bool = False, allow_none: bool = True) -> fields.Decimal:
    # allow_nan=False: NaN/Infinity are not prices.
    return fields.Decimal(required=required, allow_none=allow_none and not required, allow_nan=False)


def _id(required: bool = True, max_length: int = 100) -> fields.String:
    return fields.String(required=required, allow_none=not required, validate=validate.Length(min=1, max=max_length))


def _enum(values: type[Any], required: bool = True) -> fields.String:
    return fields.String(required=required, allow_none=not required, validate=validate.OneOf([v.value for v in values]))


class TradeDecisionSchema(CamelSchema):
    """A trade decision from the strategy service: CreateOrderRequest fields plus ``decisionId``.

    Only the shape is checked here (a body of the wrong shape is dead-lettered); business rules
    (positive quantity, price per order type, tick and lot, known instrument) are the intake's, and a
    decision that breaks one becomes a REJECTED order with the reason.
    """

    decision_id = _id()
    account_id = _id(max_length=36)
    symbol = _id(max_length=20)
    side = _enum(Side)
    type = _enum(OrderType)
    quantity = _decimal(required=True)
    price = _decimal()
    stop_price = _decimal()
    time_in_force = _enum(TimeInForce, required=False)
    strategy_id = fields.String(allow_none=True, validate=validate.Length(max=36))
    notes = fields.String(allow_none=True, validate=validate.Length(max=2000))


class ExecutionReportSchema(CamelSchema):
    """An execution report from the broker integration service (or the simulated venue)."""

    execution_id = _id()
    order_id = _id(max_length=36)
    request_id = _id(required=False, max_length=36)
    broker_order_id = _id(required=False)
    exec_type = _enum(ExecType)
    last_qty = _decimal()
    last_px = _decimal()
    cum_qty = _decimal(required=True)
    leaves_qty = _decimal(required=True)
    avg_px = _decimal()
    order_qty = _decimal()
    price = _decimal()
    stop_price = _decimal()
    fees = _decimal()
    venue = fields.String(allow_none=True, validate=validate.Length(max=50))
    timestamp = fields.AwareDateTime(required=True, default_timezone=UTC)
    reason = fields.String(allow_none=True)
    exec_ref_id = _id(required=False)


class RiskCheckSchema(CamelSchema):
    """Intake (or a modify) asks the risk gate to check an order at a given version; with ``requestId``, the
    new terms of that replace request of an order at the venue."""

    order_id = _id(max_length=36)
    version = fields.Integer(required=True, strict=True)
    request_id = _id(required=False, max_length=36)


class RouteNewSchema(CamelSchema):
    """The risk gate hands an approved order to the router."""

    order_id = _id(max_length=36)


class RouteCancelSchema(CamelSchema):
    """The front end asks the router to cancel a working order."""

    order_id = _id(max_length=36)
    request_id = _id(max_length=36)
    reason = fields.String(allow_none=True)


class RouteReplaceSchema(CamelSchema):
    """The front end asks the router to replace a working order (new terms are in the order's request)."""

    order_id = _id(max_length=36)
    request_id = _id(max_length=36)


class FillBookedSchema(CamelSchema):
    """The execution handler hands one execution (or its reversal) to settlement."""

    order_id = _id(max_length=36)
    execution_id = _id()
    account_id = _id(max_length=36)
    symbol = _id(max_length=20)
    side = _enum(Side)
    quantity = _decimal(required=True)
    price = _decimal(required=True)
    fees = _decimal(required=True)
    venue = fields.String(allow_none=True)
    timestamp = fields.AwareDateTime(required=True, default_timezone=UTC)
    reversal = fields.Boolean(required=True)


class NewOrderRequestSchema(CamelSchema):
    """OMS -> broker integration: a new order (``orders.new``)."""

    order_id = _id(max_length=36)
    request_id = _id(max_length=36)
    account_id = _id(max_length=36)
    symbol = _id(max_length=20)
    side = _enum(Side)
    type = _enum(OrderType)
    quantity = _decimal(required=True)
    price = _decimal()
    stop_price = _decimal()
    time_in_force = _enum(TimeInForce)


class CancelRequestSchema(NewOrderRequestSchema):
    """OMS -> broker integration: cancel the order named by ``orderId`` (``orders.cancel``)."""


class ReplaceRequestSchema(NewOrderRequestSchema):
    """OMS -> broker integration: replace the order's terms with these (``orders.replace``)."""
