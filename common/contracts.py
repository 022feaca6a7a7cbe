"""The message contract, as marshmallow schemas: every body a stage consumes is loaded through one of these, and
the bodies the OMS publishes for others are described (and, in the tests, checked) by the rest.

Each schema belongs to a message kind of the catalogue (common/messages/catalogue.py), from which
docs/messages.md is generated: a field's ``metadata`` holds what the page says of it (``description``, and
``required`` where "yes"/"no" would not say it all).

Bodies are camelCase JSON; loaded dicts use snake_case keys and Decimal numbers.
Unknown fields are ignored, so producers can add fields without breaking consumers.

A body that loads is one the database can store and the handlers can apply: strings hold no NUL (Postgres
text cannot) nor other control characters, numbers fit DECIMAL(20, 8), timestamps convert to UTC, and an
execution report's figures are ones a venue can send (see ``ExecutionReportSchema``). Anything else is
refused here, so the stage dead-letters it at once with the reason instead of failing it until the delivery
limit. Error messages are keyed by the wire (camelCase) field name.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from common.domain import ExecType, OrderState, OrderStatus, OrderType, Side, TimeInForce

__all__ = [
    "MAX_DECIMAL_PLACES",
    "MAX_INTEGER_DIGITS",
    "CancelRequestSchema",
    "ExecutionReportSchema",
    "FillBookedSchema",
    "LatestExecutionSchema",
    "NewOrderRequestSchema",
    "OrderUpdateSchema",
    "PositionUpdateSchema",
    "PriceSchema",
    "ReplaceRequestSchema",
    "RiskCheckSchema",
    "RouteCancelSchema",
    "RouteNewSchema",
    "RouteReplaceSchema",
    "SettlementInstructionSchema",
    "TradeConfirmationSchema",
    "TradeDecisionSchema",
    "ValidationError",
    "decimal_problem",
    "text_problem",
]

# DECIMAL(20, 8), the column type of every quantity, price and amount.
MAX_INTEGER_DIGITS = 12
MAX_DECIMAL_PLACES = 8
# A trade decision's size is the intake's business rule (too large: a REJECTED order saying so); the contract
# only keeps out numbers no rule could even print (1E+999999999).
DECISION_MAX_INTEGER_DIGITS = 20
# A rebate (negative fees on a fill) larger than this share of the notional is not one a venue pays.
MAX_REBATE_RATE = Decimal("0.01")
_ZERO = Decimal(0)
# Control characters free text may carry; identifiers carry none.
_TEXT_WHITESPACE = frozenset("\t\n\r")
_TRADES = frozenset({ExecType.PARTIAL_FILL.value, ExecType.FILL.value})


def text_problem(value: str, *, free_text: bool = False) -> str | None:
    """Why ``value`` cannot be stored and shown as text (None: it can).

    NUL cannot go into Postgres text, a lone surrogate cannot be encoded to UTF-8, and other control characters
    in ids and names only hide what they are; free text may hold tabs and line breaks.
    """
    for ch in value:
        code = ord(ch)
        if code == 0:
            return "Must not contain NUL characters."
        if code < 0x20 or code == 0x7F:
            if free_text and ch in _TEXT_WHITESPACE:
                continue
            return "Must not contain control characters."
        if 0xD800 <= code <= 0xDFFF:
            return "Must be valid Unicode (no lone surrogates)."
    return None


def decimal_problem(
    value: Decimal, *, max_integer_digits: int = MAX_INTEGER_DIGITS, max_places: int = MAX_DECIMAL_PLACES
) -> str | None:
    """Why ``value`` does not fit DECIMAL(integer digits + places, places) (None: it fits).

    Trailing zeros are not precision (1.50000000000 is 1.5). Never rounds: a value the column would round is
    refused, so what is stored is what was sent. Safe for any exponent (no context arithmetic).
    """
    if not value.is_finite():
        return "Must be a finite number."
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    significant = len(digits)
    while significant > 1 and digits[significant - 1] == 0:
        significant -= 1
        exponent += 1
    if significant == 1 and digits[0] == 0:
        return None  # zero, whatever its exponent
    if -exponent > max_places:
        return f"Must have at most {max_places} decimal places."
    integer_digits = significant + exponent  # digits before the point
    if integer_digits > max_integer_digits:
        return f"Must have at most {max_integer_digits} digits before the decimal point."
    return None


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class CamelSchema(Schema):
    """Snake_case attributes, camelCase on the wire."""

    class Meta:
        unknown = EXCLUDE

    def on_bind_field(self, field_name: str, field_obj: fields.Field[Any]) -> None:
        field_obj.data_key = field_obj.data_key or _camel(field_name)


class _Text(fields.String):
    """A string Postgres can store: no NUL, no lone surrogate, no control characters (free text: but tab/CR/LF)."""

    def __init__(self, *, free_text: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.free_text = free_text

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text: str = super()._deserialize(value, attr, data, **kwargs)
        problem = text_problem(text, free_text=self.free_text)
        if problem is not None:
            raise ValidationError(problem)
        return text


class _Amount(fields.Decimal):
    """A JSON number as Decimal that fits DECIMAL(20, 8) (decisions: see DECISION_MAX_INTEGER_DIGITS)."""

    def __init__(self, *, max_integer_digits: int = MAX_INTEGER_DIGITS, **kwargs: Any) -> None:
        # allow_nan=False: NaN/Infinity are not prices.
        super().__init__(allow_nan=False, **kwargs)
        self.max_integer_digits = max_integer_digits

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Decimal:
        number: Decimal = super()._deserialize(value, attr, data, **kwargs)
        problem = decimal_problem(number, max_integer_digits=self.max_integer_digits)
        if problem is not None:
            raise ValidationError(problem)
        return number


class _Timestamp(fields.AwareDateTime):
    """An ISO 8601 instant (naive: UTC) that converts to UTC: handlers compare and store it in UTC."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(default_timezone=UTC, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        moment: datetime = super()._deserialize(value, attr, data, **kwargs)
        try:
            moment.astimezone(UTC)  # 0001-01-01T00:00+01:00 has no UTC instant in Python's range
        except OverflowError as exc:
            raise ValidationError("Not a representable instant.") from exc
        return moment


def _doc(description: str, required: str | None) -> dict[str, str]:
    """A field's metadata for docs/messages.md: what it is, and when it is required where that depends."""
    metadata = {"description": description} if description else {}
    if required is not None:
        metadata["required"] = required
    return metadata


def _decimal(
    required: bool = False, allow_none: bool = True, doc: str = "", required_when: str | None = None, **kwargs: Any
) -> _Amount:
    return _Amount(
        required=required, allow_none=allow_none and not required, metadata=_doc(doc, required_when), **kwargs
    )


def _id(required: bool = True, max_length: int = 100, doc: str = "", required_when: str | None = None) -> _Text:
    return _Text(
        required=required,
        allow_none=not required,
        validate=validate.Length(min=1, max=max_length),
        metadata=_doc(doc, required_when),
    )


def _free_text(max_length: int | None = None, doc: str = "") -> _Text:
    return _Text(
        free_text=True,
        allow_none=True,
        validate=validate.Length(max=max_length) if max_length else None,
        metadata=_doc(doc, None),
    )


def _enum(values: type[Any], required: bool = True, doc: str = "", required_when: str | None = None) -> fields.String:
    return fields.String(
        required=required,
        allow_none=not required,
        validate=validate.OneOf([v.value for v in values]),
        metadata=_doc(doc, required_when),
    )


def _timestamp(required: bool = True, doc: str = "") -> _Timestamp:
    return _Timestamp(required=required, allow_none=not required, metadata=_doc(doc, None))


def _flag(doc: str = "") -> fields.Boolean:
    return fields.Boolean(required=True, metadata=_doc(doc, None))


def _plain(value: Decimal) -> str:
    # Bounds here come from DECIMAL(20, 8) figures, well inside the context's precision.
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


class TradeDecisionSchema(CamelSchema):
    """A trade decision from the strategy service: CreateOrderRequest fields plus ``decisionId``.

    Only the shape is checked here (a body of the wrong shape is dead-lettered); business rules
    (positive quantity, price per order type, tick and lot, known instrument, too large to store) are the
    intake's, and a decision that breaks one becomes a REJECTED order with the reason. A number with more than
    8 decimal places is the wrong shape: the column would round it, and the order would not be what was sent.
    """

    decision_id = _id(doc="the idempotency key: the same decision twice makes one order")
    account_id = _id(max_length=36, doc="must exist, else the message is dead-lettered (`unknown account`)")
    symbol = _id(max_length=20, doc="an unknown or untradable instrument books a REJECTED order")
    side = _enum(Side)
    type = _enum(OrderType)
    quantity = _decimal(
        required=True,
        max_integer_digits=DECISION_MAX_INTEGER_DIGITS,
        doc="positive, a multiple of the instrument's lot size",
    )
    price = _decimal(
        max_integer_digits=DECISION_MAX_INTEGER_DIGITS,
        doc="absent for MARKET; a multiple of the tick size",
        required_when="LIMIT, STOP_LIMIT",
    )
    stop_price = _decimal(
        max_integer_digits=DECISION_MAX_INTEGER_DIGITS,
        doc="a multiple of the tick size",
        required_when="STOP, STOP_LIMIT",
    )
    time_in_force = _enum(TimeInForce, required=False, required_when="no (DAY)")
    strategy_id = _Text(allow_none=True, validate=validate.Length(max=36))
    notes = _free_text(max_length=2000)


class ExecutionReportSchema(CamelSchema):
    """An execution report from the broker integration service (or the simulated venue).

    Beyond the shape, the figures must be ones a venue can send (FIX allows zero only where nothing traded):

    - quantities (lastQty, cumQty, leavesQty, orderQty) are not negative;
    - price and stopPrice, when present, are positive; lastPx and avgPx are not negative, and avgPx is
      positive once cumQty is (FIX sends AvgPx 0 before the first fill);
    - a PARTIAL_FILL, FILL or TRADE_CANCEL has a positive lastQty and lastPx, and a TRADE_CANCEL names the
      execution it busts (execRefId; whether that execution exists is the execution handler's check);
    - fees, with N = lastQty × lastPx: on a fill from −1% of N (a rebate) to N; on a bust, which refunds the
      busted fill's fees (negative, as ``Order.apply_report`` adds them), from −N to 1% of N; on a report
      without a trade, 0 or absent.
    """

    execution_id = _id(doc="unique per report; a report seen before is ignored")
    order_id = _id(max_length=36, doc="the OMS order id; an unknown one is dead-lettered (`unknown order`)")
    request_id = _id(required=False, max_length=36, doc="the cancel or replace request it answers")
    broker_order_id = _id(required=False)
    exec_type = _enum(ExecType)
    last_qty = _decimal(doc="this execution's quantity", required_when="fills")
    last_px = _decimal(doc="this execution's price", required_when="fills")
    cum_qty = _decimal(required=True, doc="the venue's cumulative quantity")
    leaves_qty = _decimal(required=True, doc="the venue's remaining quantity")
    avg_px = _decimal(doc="the venue's average price over `cumQty`")
    order_qty = _decimal(doc="the quantity now in force (after a REPLACED)")
    price = _decimal(doc="the limit price now in force")
    stop_price = _decimal(doc="the stop price now in force")
    fees = _decimal(doc="fees of this execution")
    venue = _Text(allow_none=True, validate=validate.Length(max=50))
    timestamp = _timestamp()
    reason = _free_text(doc="for rejects and cancels")
    exec_ref_id = _id(required=False, doc="the execution a bust reverses", required_when="TRADE_CANCEL")

    @validates_schema
    def _figures_a_venue_can_send(self, data: dict[str, Any], **kwargs: Any) -> None:
        errors: dict[str, list[str]] = {}

        def refuse(name: str, message: str) -> None:
            errors.setdefault(_camel(name), []).append(message)

        for name in ("last_qty", "cum_qty", "leaves_qty", "order_qty", "last_px", "avg_px"):
            value = data.get(name)
            if value is not None and value < _ZERO:
                refuse(name, "Must not be negative.")
        for name in ("price", "stop_price"):
            value = data.get(name)
            if value is not None and value <= _ZERO:
                refuse(name, "Must be positive.")
        avg_px, cum_qty = data.get("avg_px"), data.get("cum_qty")
        if avg_px is not None and avg_px == _ZERO and cum_qty is not None and cum_qty > _ZERO:
            refuse("avg_px", "Must be positive once cumQty is positive.")

        exec_type = data.get("exec_type")
        trade, bust = exec_type in _TRADES, exec_type == ExecType.TRADE_CANCEL.value
        last_qty, last_px, fees = data.get("last_qty"), data.get("last_px"), data.get("fees")
        if trade or bust:
            if last_qty is None or last_qty == _ZERO:  # a negative one is refused above
                refuse("last_qty", f"A {exec_type} needs a positive lastQty.")
            if last_px is None or last_px == _ZERO:  # a negative one is refused above
                refuse("last_px", f"A {exec_type} needs a positive lastPx.")
        if bust and not data.get("exec_ref_id"):
            refuse("exec_ref_id", "A TRADE_CANCEL must name the execution it busts.")
        if fees is not None and fees != _ZERO:
            if not (trade or bust):
                refuse("fees", f"A {exec_type} report has no trade: fees must be 0 or absent.")
            elif last_qty is not None and last_px is not None and last_qty > _ZERO and last_px > _ZERO:
                notional = last_qty * last_px
                rebate = notional * MAX_REBATE_RATE
                low, high = (_ZERO - rebate, notional) if trade else (_ZERO - notional, rebate)
                if not low <= fees <= high:
                    refuse(
                        "fees",
                        f"Must be between {_plain(low)} and {_plain(high)} on a {exec_type} of lastQty × lastPx"
                        f" = {_plain(notional)}.",
                    )
        if errors:
            raise ValidationError(errors)


class RiskCheckSchema(CamelSchema):
    """Intake (or a modify) asks the risk gate to check an order at a given version; with ``requestId``, the
    new terms of that replace request of an order at the venue."""

    order_id = _id(max_length=36)
    version = fields.Integer(
        required=True,
        strict=True,
        validate=validate.Range(min=0, max=2**31 - 1),
        metadata=_doc("the order's version the check is for (a check of an older version is ignored)", None),
    )
    request_id = _id(required=False, max_length=36, doc="a replace of an order at the venue, checked on its new terms")


class RouteNewSchema(CamelSchema):
    """The risk gate hands an approved order to the router."""

    order_id = _id(max_length=36)


class RouteCancelSchema(CamelSchema):
    """The front end asks the router to cancel a working order."""

    order_id = _id(max_length=36)
    request_id = _id(max_length=36, doc="the cancel request recorded by the order commands")
    reason = _free_text(doc="no longer sent (the reason is in the request row, encrypted at rest); accepted")


class RouteReplaceSchema(CamelSchema):
    """The risk gate hands the router a replace whose new terms passed (they are in the order's request)."""

    order_id = _id(max_length=36)
    request_id = _id(max_length=36, doc="the replace request recorded by the order commands")


class FillBookedSchema(CamelSchema):
    """The execution handler hands one execution (or its reversal) to settlement: a positive quantity and
    price (a reversal carries the busted execution's own terms, see services/execution_handler)."""

    order_id = _id(max_length=36)
    execution_id = _id(doc="the execution booked; for a reversal, the busted execution (not the TRADE_CANCEL)")
    account_id = _id(max_length=36)
    symbol = _id(max_length=20)
    side = _enum(Side)
    quantity = _decimal(required=True, doc="positive, the execution's own")
    price = _decimal(required=True, doc="positive, the execution's own")
    fees = _decimal(required=True, doc="the execution's own")
    venue = _Text(allow_none=True, validate=validate.Length(max=50))
    timestamp = _timestamp()
    reversal = _flag(doc='true: "undo execution `executionId`"')

    @validates_schema
    def _a_real_execution(self, data: dict[str, Any], **kwargs: Any) -> None:
        errors = {
            _camel(name): ["Must be positive."]
            for name in ("quantity", "price")
            if data.get(name) is not None and data[name] <= _ZERO
        }
        if errors:
            raise ValidationError(errors)


class NewOrderRequestSchema(CamelSchema):
    """OMS -> broker integration: a new order (``orders.new``)."""

    order_id = _id(max_length=36)
    request_id = _id(max_length=36, doc="unique per request; a cancel or replace carries its own")
    account_id = _id(max_length=36)
    symbol = _id(max_length=20)
    side = _enum(Side)
    type = _enum(OrderType)
    quantity = _decimal(required=True, doc="for a replace, the new terms")
    price = _decimal()
    stop_price = _decimal()
    time_in_force = _enum(TimeInForce)


class CancelRequestSchema(NewOrderRequestSchema):
    """OMS -> broker integration: cancel the order named by ``orderId`` (``orders.cancel``)."""


class ReplaceRequestSchema(NewOrderRequestSchema):
    """OMS -> broker integration: replace the order's terms with these (``orders.replace``)."""


# --------------------------------------------------------------------------- published for others
# Nobody in the OMS consumes these with a schema; they say what the OMS promises its subscribers, and the tests
# check the bodies the catalogue's builders make against them.


class LatestExecutionSchema(CamelSchema):
    """The specification's ``ExecutionReport`` inside an ``OrderUpdate``: the execution that caused it."""

    id = _id(max_length=36, doc="the OMS's id of the execution record")
    execution_id = _id()
    quantity = _decimal(required=True, doc="negative for a bust")
    price = _decimal(required=True)
    timestamp = _timestamp()
    fees = _decimal(required=True)
    venue = _Text(allow_none=True, validate=validate.Length(max=50))


class OrderUpdateSchema(CamelSchema):
    """The specification's ``OrderUpdate``, plus the account, symbol and finer state (``oms.order_updates``)."""

    order_id = _id(max_length=36)
    status = _enum(OrderStatus)
    filled_quantity = _decimal(required=True)
    average_execution_price = _decimal(doc="null before the first fill")
    timestamp = _timestamp()
    latest_execution = fields.Nested(
        LatestExecutionSchema,
        allow_none=True,
        metadata=_doc("the execution that caused this update", "after an execution"),
    )
    account_id = _id(max_length=36)
    symbol = _id(max_length=20)
    state = _enum(OrderState, doc="the finer internal state: PENDING_CANCEL, PENDING_REPLACE, EXPIRED...")
    quantity = _decimal(required=True, doc="the ordered quantity now in force")
    leaves_quantity = _decimal(required=True)
    version = fields.Integer(
        required=True,
        strict=True,
        metadata=_doc("increases with every change of the order; use it to drop stale updates", None),
    )


class TradeConfirmationSchema(CamelSchema):
    """A trade confirmation, as the retired ``trades.confirmation`` carried it."""

    confirmation_id = _id(max_length=36)
    order_id = _id(max_length=36)
    execution_id = _id()
    account_id = _id(max_length=36)
    symbol = _id(max_length=20)
    side = _enum(Side)
    quantity = _decimal(required=True)
    price = _decimal(required=True)
    gross_amount = _decimal(required=True, doc="quantity × price")
    fees = _decimal(required=True)
    net_amount = _decimal(required=True, doc="gross + fees for a BUY, gross − fees for a SELL")
    currency = _id(max_length=3)
    venue = _Text(allow_none=True, validate=validate.Length(max=50))
    trade_date = fields.Date(required=True)
    settlement_date = fields.Date(required=True)
    reversal = _flag()


class SettlementInstructionSchema(CamelSchema):
    """A settlement instruction, as the retired ``settlement.instruction`` carried it."""

    instruction_id = _id(max_length=36)
    confirmation_id = _id(max_length=36)
    order_id = _id(max_length=36)
    execution_id = _id()
    account_id = _id(max_length=36)
    symbol = _id(max_length=20)
    securities_direction = fields.String(required=True, validate=validate.OneOf(["RECEIVE", "DELIVER"]))
    quantity = _decimal(required=True)
    cash_direction = fields.String(required=True, validate=validate.OneOf(["PAY", "RECEIVE"]))
    cash_amount = _decimal(required=True, doc="signed from the account's side: negative, the account pays")
    currency = _id(max_length=3)
    settlement_date = fields.Date(required=True)
    status = _id(max_length=20)
    reversal = _flag()


class PositionUpdateSchema(CamelSchema):
    """One per execution booked (and per reversal of a busted one), to the portfolio service."""

    order_id = _id(max_length=36)
    execution_id = _id()
    account_id = _id(max_length=36)
    symbol = _id(max_length=20)
    quantity = _decimal(required=True, doc="the new position (negative: short)")
    delta = _decimal(required=True, doc="the change this execution made")
    average_cost = _decimal(required=True)
    realized_pnl = _decimal(required=True)
    timestamp = _timestamp()
    reversal = _flag()
    confirmation = fields.Nested(TradeConfirmationSchema, required=True, metadata=_doc("the trade confirmation", None))
    instruction = fields.Nested(
        SettlementInstructionSchema, required=True, metadata=_doc("the settlement instruction", None)
    )


class PriceSchema(CamelSchema):
    """A market data price (``marketdata``); the risk gate keeps the latest per symbol as its reference price."""

    symbol = _id(max_length=20)
    price = _decimal(required=True, doc="positive")
    timestamp = _timestamp()
