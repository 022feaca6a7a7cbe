"""REST request and response schemas (marshmallow): camelCase on the wire, Decimal as exact JSON numbers.

Component names follow the specification (``CreateOrderRequest``, ``UpdateOrderRequest``, ``OrderResponse``,
``ExecutionReport``); fields beyond the specification are additive. Absent values are left out of responses
rather than sent as null, because the specification's schemas do not allow null.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_dump, validate, validates_schema

from common.contracts import decimal_problem
from common.domain.enums import OrderStatus, OrderType, Side, TimeInForce

# DECIMAL(20, 8): twelve integer digits and eight decimals.
MAX_INTEGER_DIGITS = 12
MAX_DECIMALS = 8
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
# OFFSET must stay a sane number; nobody pages a million pages deep.
MAX_PAGE = 1_000_000


def camel(name: str) -> str:
    """snake_case -> camelCase."""
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def plain_decimal(value: Decimal) -> Decimal:
    """The value without trailing zeros and without an exponent (DECIMAL(20,8) reads back as 150.00000000)."""
    normal = value.normalize()
    exponent = normal.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:
        normal = normal.quantize(Decimal(1))
    return normal


class ApiSchema(Schema):
    """Snake_case attributes, camelCase on the wire; unknown fields are ignored, as the specification allows."""

    class Meta:
        unknown = EXCLUDE

    def on_bind_field(self, field_name: str, field_obj: fields.Field[Any]) -> None:
        field_obj.data_key = field_obj.data_key or camel(field_name)


class Text(fields.String):
    """A string that the database can store: valid Unicode without control characters."""

    default_error_messages = {"control": "Must not contain control characters."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text: str = super()._deserialize(value, attr, data, **kwargs)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise self.make_error("invalid_utf8") from exc
        if any(unicodedata.category(ch) == "Cc" and ch not in "\t\n\r" for ch in text):
            raise self.make_error("control")
        return text


class Identifier(Text):
    """An id-like string: no whitespace at the ends, and no AMQP wildcard ('*', '#').

    Subscriptions turn account ids and symbols into routing-key bindings, where a wildcard would widen them.
    """

    default_error_messages = {"identifier": "Must not have spaces at the ends or contain '*' or '#'."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if text != text.strip() or "*" in text or "#" in text:
            raise self.make_error("identifier")
        return text


class Number(fields.Decimal):
    """A JSON number kept as Decimal (never float); fits DECIMAL(20, 8)."""

    default_error_messages = {
        "too_large": f"Must have at most {MAX_INTEGER_DIGITS} digits before the decimal point.",
        "too_precise": f"Must have at most {MAX_DECIMALS} decimal places.",
    }

    def __init__(self, **kwargs: Any) -> None:
        metadata = {"format": "double", **kwargs.pop("metadata", {})}
        super().__init__(allow_nan=False, metadata=metadata, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Decimal:
        if isinstance(value, str):
            # The specification says number; a string is a type error, not a number in disguise.
            raise self.make_error("invalid")
        number: Decimal = super()._deserialize(value, attr, data, **kwargs)
        # Not normalize(): it rounds to the context's 28 digits, and 1.000000000000000000000000000001 would pass.
        problem = decimal_problem(number, max_integer_digits=MAX_INTEGER_DIGITS, max_places=MAX_DECIMALS)
        if problem is not None:
            raise ValidationError(problem)
        return number

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Decimal | None:
        if value is None:
            return None
        return plain_decimal(Decimal(value))


class UtcDateTime(fields.AwareDateTime):
    """An RFC 3339 date-time; one without an offset is taken as UTC."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(default_timezone=UTC, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        moment: datetime = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(UTC)
        except OverflowError as exc:
            raise self.make_error("invalid", input=value, obj_type=self.OBJ_TYPE) from exc


def _one_of(values: type[Any]) -> validate.OneOf:
    return validate.OneOf([v.value for v in values])


# ---- requests -----------------------------------------------------------------------------------------------


class CreateOrderRequestSchema(ApiSchema):
    """A new order (the specification's CreateOrderRequest, plus an optional clientOrderId)."""

    account_id = Identifier(
        required=True, validate=validate.Length(1, 36), metadata={"description": "Account identifier"}
    )
    symbol = Identifier(required=True, validate=validate.Length(1, 20), metadata={"description": "Instrument symbol"})
    side = fields.String(required=True, validate=_one_of(Side), metadata={"description": "Order side"})
    type = fields.String(required=True, validate=_one_of(OrderType), metadata={"description": "Order type"})
    quantity = Number(required=True, metadata={"description": "Order quantity"})
    price = Number(allow_none=True, metadata={"description": "Limit price (required for LIMIT and STOP_LIMIT orders)"})
    stop_price = Number(
        allow_none=True, metadata={"description": "Stop price (required for STOP and STOP_LIMIT orders)"}
    )
    time_in_force = fields.String(
        load_default=TimeInForce.DAY.value, validate=_one_of(TimeInForce), metadata={"description": "Time in force"}
    )
    strategy_id = Text(
        allow_none=True,
        validate=validate.Length(max=36),
        metadata={"description": "ID of the strategy that generated this order"},
    )
    notes = Text(
        allow_none=True, validate=validate.Length(max=2000), metadata={"description": "Additional notes or comments"}
    )
    client_order_id = Text(
        allow_none=True,
        validate=validate.Length(1, 100),
        metadata={
            "description": "The caller's own id for the order, unique per account: the idempotency key "
            "(same as the Idempotency-Key header; if both are given they must match)"
        },
    )


class UpdateOrderRequestSchema(ApiSchema):
    """Cancel or modify an order (the specification's UpdateOrderRequest)."""

    action = fields.String(
        required=True,
        validate=validate.OneOf(["CANCEL", "MODIFY"]),
        metadata={"description": "Action to perform on the order"},
    )
    price = Number(allow_none=True, metadata={"description": "New limit price (for MODIFY action)"})
    quantity = Number(allow_none=True, metadata={"description": "New quantity (for MODIFY action)"})
    stop_price = Number(allow_none=True, metadata={"description": "New stop price (for MODIFY action)"})
    notes = Text(
        allow_none=True,
        validate=validate.Length(max=2000),
        metadata={"description": "Additional notes or comments (for CANCEL: the reason)"},
    )

    @validates_schema
    def _modify_changes_something(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("action") == "MODIFY" and all(
            data.get(key) is None for key in ("price", "quantity", "stop_price", "notes")
        ):
            raise ValidationError("MODIFY needs at least one of quantity, price, stopPrice or notes.", "action")


class OrderListArgsSchema(ApiSchema):
    """Filters and paging of GET /orders."""

    status = fields.String(validate=_one_of(OrderStatus))
    account_id = Identifier(validate=validate.Length(1, 36))
    symbol = Identifier(validate=validate.Length(1, 20))
    from_date = UtcDateTime(metadata={"description": "Orders created at or after this instant"})
    to_date = UtcDateTime(metadata={"description": "Orders created before this instant (exclusive)"})
    page = fields.Integer(
        load_default=0, validate=validate.Range(min=0, max=MAX_PAGE), metadata={"description": "Page, from 0"}
    )
    size = fields.Integer(
        load_default=DEFAULT_PAGE_SIZE,
        validate=validate.Range(min=1, max=MAX_PAGE_SIZE),
        metadata={"description": f"Orders per page, 1 to {MAX_PAGE_SIZE}"},
    )

    @validates_schema
    def _dates_in_order(self, data: dict[str, Any], **kwargs: Any) -> None:
        start, end = data.get("from_date"), data.get("to_date")
        if start is not None and end is not None and start > end:
            raise ValidationError("fromDate must not be after toDate.", "fromDate")


class IdempotencyHeaderSchema(Schema):
    """The optional ``Idempotency-Key`` header of POST /orders."""

    class Meta:
        unknown = EXCLUDE

    idempotency_key = Text(
        data_key="Idempotency-Key",
        validate=validate.Length(1, 100),
        metadata={
            "description": "Makes the submission idempotent: the same key (per account) always returns the "
            "same order, never a second one. Stored as the order's clientOrderId."
        },
    )


# ---- responses ----------------------------------------------------------------------------------------------


class _DropNone(ApiSchema):
    @post_dump
    def _drop_none(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {key: value for key, value in data.items() if value is not None}


class ExecutionReportSchema(_DropNone):
    """One execution report received for the order (the specification's ExecutionReport, plus its details)."""

    id = fields.String(metadata={"description": "Execution report ID"})
    execution_id = fields.String(metadata={"description": "Execution ID"})
    quantity = Number(metadata={"description": "Executed quantity (negative for a busted fill's reversal)"})
    price = Number(metadata={"description": "Execution price"})
    timestamp = fields.DateTime(metadata={"description": "Execution timestamp"})
    fees = Number(metadata={"description": "Execution fees"})
    venue = fields.String(metadata={"description": "Execution venue"})
    exec_type = fields.String(metadata={"description": "What the report says happened (FIX ExecType)"})
    cum_qty = Number(metadata={"description": "Cumulative filled quantity the report states"})
    leaves_qty = Number(metadata={"description": "Quantity still working the report states"})
    avg_px = Number(metadata={"description": "Average price the report states"})
    reason = fields.String(metadata={"description": "Reason given by the venue, if any"})
    busted = fields.Boolean(metadata={"description": "True when this fill was later busted"})


class OrderResponseSchema(_DropNone):
    """An order as the read model shows it (the specification's OrderResponse, plus finer detail)."""

    id = fields.String(metadata={"description": "Order ID"})
    account_id = fields.String(metadata={"description": "Account identifier"})
    symbol = fields.String(metadata={"description": "Instrument symbol"})
    side = fields.String(validate=_one_of(Side), metadata={"description": "Order side"})
    type = fields.String(validate=_one_of(OrderType), metadata={"description": "Order type"})
    status = fields.String(validate=_one_of(OrderStatus), metadata={"description": "Order status"})
    quantity = Number(metadata={"description": "Order quantity"})
    filled_quantity = Number(metadata={"description": "Filled quantity"})
    price = Number(metadata={"description": "Limit price"})
    stop_price = Number(metadata={"description": "Stop price"})
    average_execution_price = Number(metadata={"description": "Average execution price"})
    time_in_force = fields.String(validate=_one_of(TimeInForce), metadata={"description": "Time in force"})
    strategy_id = fields.String(metadata={"description": "ID of the strategy that generated this order"})
    broker_order_id = fields.String(metadata={"description": "Broker's order ID"})
    rejection_reason = fields.String(metadata={"description": "Reason for rejection (if status is REJECTED)"})
    notes = fields.String(metadata={"description": "Additional notes or comments"})
    created_at = fields.DateTime(metadata={"description": "Order creation timestamp"})
    updated_at = fields.DateTime(metadata={"description": "Last update timestamp"})
    execution_reports = fields.List(fields.Nested(ExecutionReportSchema), dump_default=list)
    # Beyond the specification.
    state = fields.String(
        metadata={
            "description": "Finer internal state: NEW, APPROVED, ROUTED, OPEN, PARTIALLY_FILLED, PENDING_CANCEL, "
            "PENDING_REPLACE, FILLED, CANCELED, EXPIRED, REJECTED"
        }
    )
    client_order_id = fields.String(metadata={"description": "The caller's idempotency key, if one was given"})
    rejection_code = fields.String(metadata={"description": "Machine-readable rejection rule"})
    leaves_quantity = Number(metadata={"description": "Quantity still working (0 once the order is done)"})
    total_fees = Number(metadata={"description": "Fees of every execution so far"})
    notional_value = Number(metadata={"description": "Filled quantity times average price (negative for SELL)"})
    account_name = fields.String(metadata={"description": "Account name"})
    instrument_name = fields.String(metadata={"description": "Instrument name"})
    asset_class = fields.String(metadata={"description": "Instrument asset class"})
    currency = fields.String(metadata={"description": "Instrument currency"})
    overfilled = fields.Boolean(metadata={"description": "True when the venue filled more than was ordered"})
    version = fields.Integer(metadata={"description": "Increases with every change of the order"})


class OrderPageSchema(ApiSchema):
    """One page of orders."""

    content = fields.List(fields.Nested(OrderResponseSchema))
    page = fields.Integer()
    size = fields.Integer()
    total_elements = fields.Integer()
    total_pages = fields.Integer()


class FieldErrorSchema(ApiSchema):
    """One invalid field."""

    field = fields.String()
    message = fields.String()


# Beyond the specification, in every error body: no enum in the document, so that a client generated from it
# keeps working when a code is added; the README's table lists them.
_CODE_DESCRIPTION = (
    "Stable, machine-readable error code (the message is for people and may change): VALIDATION_FAILED, "
    "MALFORMED_JSON, UNAUTHENTICATED, FORBIDDEN, NOT_FOUND, METHOD_NOT_ALLOWED, ORDER_STATE_CONFLICT, "
    "IDEMPOTENCY_KEY_REUSED, SERVICE_UNAVAILABLE, BAD_REQUEST, INTERNAL"
)


class ValidationErrorsSchema(ApiSchema):
    """The specification's BadRequest body, plus its code."""

    message = fields.String()
    errors = fields.List(fields.Nested(FieldErrorSchema))
    code = fields.String(metadata={"description": _CODE_DESCRIPTION, "example": "VALIDATION_FAILED"})


class MessageSchema(ApiSchema):
    """An error with a message only (401, 403, 404, 405, 409, 500, 503), plus its code."""

    message = fields.String(metadata={"example": "Authentication required"})
    code = fields.String(metadata={"description": _CODE_DESCRIPTION, "example": "UNAUTHENTICATED"})


class HealthSchema(ApiSchema):
    """Liveness or readiness."""

    status = fields.String(validate=validate.OneOf(["UP", "DOWN"]))
    checks = fields.Dict(keys=fields.String(), values=fields.String())
