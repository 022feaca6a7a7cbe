"""Business rules of an order request: what makes a trade decision or a REST/gRPC order bookable.

Pure functions over plain values: the instrument and account are anything with the attributes of the
``InstrumentRules`` / ``AccountStatus`` protocols (the store's ``Instrument``/``Account`` fit).

Every broken rule is one ``RuleViolation``: a machine-readable ``code``, the request ``field`` it is about
(named as in the public API, camelCase) and a ``message`` a user can read. All rules are checked, so a
caller can report every problem at once.

Rules, beyond the obvious (positive quantity, price per order type):

- A STOP order is a stop-market order: it takes a stop price and no limit price (STOP_LIMIT takes both).
- Prices must be multiples of the instrument's tick size, quantities multiples of its lot size.
- Numbers must fit the store (DECIMAL(20,8): below 10^12).
- Time in force: LIMIT takes any; MARKET takes DAY, GTC, IOC or FOK; STOP and STOP_LIMIT rest at the venue
  until triggered, so immediate-or-cancel and fill-or-kill mean nothing for them: only DAY or GTC.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from common.domain.enums import OrderType, Side, TimeInForce

_ZERO = Decimal(0)
# DECIMAL(20, 8): 12 digits before the point.
MAX_STORABLE = Decimal(10) ** 12

# Field names as the public API spells them, so a 400 response can point at the right one.
FIELD_ACCOUNT = "accountId"
FIELD_SYMBOL = "symbol"
FIELD_SIDE = "side"
FIELD_TYPE = "type"
FIELD_QUANTITY = "quantity"
FIELD_PRICE = "price"
FIELD_STOP_PRICE = "stopPrice"
FIELD_TIME_IN_FORCE = "timeInForce"

_PRICE_TYPES = frozenset({OrderType.LIMIT, OrderType.STOP_LIMIT})
_STOP_TYPES = frozenset({OrderType.STOP, OrderType.STOP_LIMIT})
_ALLOWED_TIME_IN_FORCE: dict[OrderType, frozenset[TimeInForce]] = {
    OrderType.MARKET: frozenset(TimeInForce),
    OrderType.LIMIT: frozenset(TimeInForce),
    OrderType.STOP: frozenset({TimeInForce.DAY, TimeInForce.GTC}),
    OrderType.STOP_LIMIT: frozenset({TimeInForce.DAY, TimeInForce.GTC}),
}


class Code:
    """The violation codes (stable: clients and the audit trail rely on them)."""

    UNKNOWN_ACCOUNT = "UNKNOWN_ACCOUNT"
    ACCOUNT_INACTIVE = "ACCOUNT_INACTIVE"
    UNKNOWN_INSTRUMENT = "UNKNOWN_INSTRUMENT"
    INSTRUMENT_NOT_TRADABLE = "INSTRUMENT_NOT_TRADABLE"
    INVALID_SIDE = "INVALID_SIDE"
    INVALID_ORDER_TYPE = "INVALID_ORDER_TYPE"
    INVALID_TIME_IN_FORCE = "INVALID_TIME_IN_FORCE"
    TIME_IN_FORCE_NOT_ALLOWED = "TIME_IN_FORCE_NOT_ALLOWED"
    QUANTITY_REQUIRED = "QUANTITY_REQUIRED"
    QUANTITY_NOT_POSITIVE = "QUANTITY_NOT_POSITIVE"
    QUANTITY_TOO_LARGE = "QUANTITY_TOO_LARGE"
    QUANTITY_OFF_LOT = "QUANTITY_OFF_LOT"
    PRICE_REQUIRED = "PRICE_REQUIRED"
    PRICE_NOT_ALLOWED = "PRICE_NOT_ALLOWED"
    PRICE_NOT_POSITIVE = "PRICE_NOT_POSITIVE"
    PRICE_TOO_LARGE = "PRICE_TOO_LARGE"
    PRICE_OFF_TICK = "PRICE_OFF_TICK"
    STOP_PRICE_REQUIRED = "STOP_PRICE_REQUIRED"
    STOP_PRICE_NOT_ALLOWED = "STOP_PRICE_NOT_ALLOWED"
    STOP_PRICE_NOT_POSITIVE = "STOP_PRICE_NOT_POSITIVE"
    STOP_PRICE_TOO_LARGE = "STOP_PRICE_TOO_LARGE"
    STOP_PRICE_OFF_TICK = "STOP_PRICE_OFF_TICK"


# The request cannot even be recorded (a value outside the enums): there is no order to book as REJECTED.
UNBOOKABLE_CODES: frozenset[str] = frozenset({Code.INVALID_SIDE, Code.INVALID_ORDER_TYPE, Code.INVALID_TIME_IN_FORCE})


@dataclass(frozen=True, slots=True)
class RuleViolation:
    """One broken rule: a stable code, the request field (camelCase) and a readable message."""

    code: str
    field: str
    message: str


class InstrumentRules(Protocol):
    """What the rules need of an instrument."""

    @property
    def symbol(self) -> str: ...
    @property
    def tick_size(self) -> Decimal: ...
    @property
    def lot_size(self) -> Decimal: ...
    @property
    def tradable(self) -> bool: ...


class AccountStatus(Protocol):
    """What the rules need of an account."""

    @property
    def id(self) -> str: ...
    @property
    def active(self) -> bool: ...


class RequestTerms(Protocol):
    """What the rules need of a request, enums still as text (``common.orders.order_request.OrderRequest`` fits)."""

    @property
    def account_id(self) -> str: ...
    @property
    def symbol(self) -> str: ...
    @property
    def side(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def quantity(self) -> Decimal | None: ...
    @property
    def price(self) -> Decimal | None: ...
    @property
    def stop_price(self) -> Decimal | None: ...
    @property
    def time_in_force(self) -> str: ...


def plain(value: Decimal) -> str:
    """A Decimal as a person writes it: ``0.01`` not ``0.01000000``, ``100`` not ``1E+2``."""
    if not value.is_finite():
        return str(value)
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _enum_value(enum: type[Side] | type[OrderType] | type[TimeInForce], value: str) -> str | None:
    return value if value in {member.value for member in enum} else None


def _is_multiple(value: Decimal, step: Decimal) -> bool:
    # Only called for values under MAX_STORABLE and steps of at least 1e-8: well inside Decimal's precision.
    return value % step == _ZERO


def _check_number(
    value: Decimal, field: str, label: str, codes: tuple[str, str], violations: list[RuleViolation]
) -> bool:
    """Positive, finite and storable; returns whether further checks (tick, lot) make sense."""
    not_positive, too_large = codes
    if not value.is_finite() or value <= _ZERO:
        violations.append(RuleViolation(not_positive, field, f"{label} must be positive, got {plain(value)}"))
        return False
    if value >= MAX_STORABLE:
        violations.append(
            RuleViolation(too_large, field, f"{label} {plain(value)} is too large (limit {plain(MAX_STORABLE)})")
        )
        return False
    return True


def _check_quantity(
    quantity: Decimal | None, instrument: InstrumentRules | None, violations: list[RuleViolation]
) -> None:
    if quantity is None:
        violations.append(RuleViolation(Code.QUANTITY_REQUIRED, FIELD_QUANTITY, "quantity is required"))
        return
    if not _check_number(
        quantity,
        FIELD_QUANTITY,
        "quantity",
        (Code.QUANTITY_NOT_POSITIVE, Code.QUANTITY_TOO_LARGE),
        violations,
    ):
        return
    if instrument is not None and instrument.lot_size > _ZERO and not _is_multiple(quantity, instrument.lot_size):
        violations.append(
            RuleViolation(
                Code.QUANTITY_OFF_LOT,
                FIELD_QUANTITY,
                f"quantity {plain(quantity)} is not a multiple of the lot size {plain(instrument.lot_size)}"
                f" of {instrument.symbol}",
            )
        )


def _check_price(
    value: Decimal | None,
    *,
    order_type: OrderType,
    needed_by: frozenset[OrderType],
    instrument: InstrumentRules | None,
    field: str,
    label: str,
    codes: tuple[str, str, str, str, str],
    violations: list[RuleViolation],
) -> None:
    required, not_allowed, not_positive, too_large, off_tick = codes
    if order_type in needed_by:
        if value is None:
            violations.append(RuleViolation(required, field, f"a {order_type} order needs a {label}"))
            return
    elif value is not None:
        violations.append(RuleViolation(not_allowed, field, f"a {order_type} order takes no {label}"))
        return
    if value is None:
        return
    if not _check_number(value, field, label, (not_positive, too_large), violations):
        return
    if instrument is not None and instrument.tick_size > _ZERO and not _is_multiple(value, instrument.tick_size):
        violations.append(
            RuleViolation(
                off_tick,
                field,
                f"{label} {plain(value)} is not a multiple of the tick size {plain(instrument.tick_size)}"
                f" of {instrument.symbol}",
            )
        )


def validate_terms(
    order_type: OrderType | str,
    quantity: Decimal | None,
    price: Decimal | None,
    stop_price: Decimal | None,
    instrument: InstrumentRules | None,
) -> list[RuleViolation]:
    """Check quantity, price and stop price against the order type and the instrument's tick and lot.

    Used for a new order and for new terms (modify). ``instrument`` None skips the tick and lot checks.
    """
    violations: list[RuleViolation] = []
    _check_quantity(quantity, instrument, violations)
    if _enum_value(OrderType, str(order_type)) is None:
        return violations  # which prices are needed depends on the type; the caller reports the type
    kind = OrderType(order_type)
    _check_price(
        price,
        order_type=kind,
        needed_by=_PRICE_TYPES,
        instrument=instrument,
        field=FIELD_PRICE,
        label="price",
        codes=(
            Code.PRICE_REQUIRED,
            Code.PRICE_NOT_ALLOWED,
            Code.PRICE_NOT_POSITIVE,
            Code.PRICE_TOO_LARGE,
            Code.PRICE_OFF_TICK,
        ),
        violations=violations,
    )
    _check_price(
        stop_price,
        order_type=kind,
        needed_by=_STOP_TYPES,
        instrument=instrument,
        field=FIELD_STOP_PRICE,
        label="stop price",
        codes=(
            Code.STOP_PRICE_REQUIRED,
            Code.STOP_PRICE_NOT_ALLOWED,
            Code.STOP_PRICE_NOT_POSITIVE,
            Code.STOP_PRICE_TOO_LARGE,
            Code.STOP_PRICE_OFF_TICK,
        ),
        violations=violations,
    )
    return violations


def _check_enums(request: RequestTerms, violations: list[RuleViolation]) -> None:
    checks: Sequence[tuple[type[Side] | type[OrderType] | type[TimeInForce], str, str, str]] = (
        (Side, str(request.side), FIELD_SIDE, Code.INVALID_SIDE),
        (OrderType, str(request.type), FIELD_TYPE, Code.INVALID_ORDER_TYPE),
        (TimeInForce, str(request.time_in_force), FIELD_TIME_IN_FORCE, Code.INVALID_TIME_IN_FORCE),
    )
    for enum, value, field, code in checks:
        if _enum_value(enum, value) is None:
            allowed = ", ".join(member.value for member in enum)
            violations.append(RuleViolation(code, field, f"{field} {value!r} is not one of {allowed}"))


def _check_time_in_force(request: RequestTerms, violations: list[RuleViolation]) -> None:
    order_type = _enum_value(OrderType, str(request.type))
    time_in_force = _enum_value(TimeInForce, str(request.time_in_force))
    if order_type is None or time_in_force is None:
        return
    allowed = _ALLOWED_TIME_IN_FORCE[OrderType(order_type)]
    if TimeInForce(time_in_force) not in allowed:
        names = " or ".join(sorted(member.value for member in allowed))
        violations.append(
            RuleViolation(
                Code.TIME_IN_FORCE_NOT_ALLOWED,
                FIELD_TIME_IN_FORCE,
                f"a {order_type} order rests until triggered, so its time in force must be {names},"
                f" not {time_in_force}",
            )
        )


def validate_order(
    request: RequestTerms, instrument: InstrumentRules | None, account: AccountStatus | None
) -> list[RuleViolation]:
    """Every rule a new order breaks (empty when it may be booked NEW); account and instrument first."""
    violations: list[RuleViolation] = []
    if account is None:
        violations.append(
            RuleViolation(Code.UNKNOWN_ACCOUNT, FIELD_ACCOUNT, f"account {request.account_id} does not exist")
        )
    elif not account.active:
        violations.append(RuleViolation(Code.ACCOUNT_INACTIVE, FIELD_ACCOUNT, f"account {account.id} is not active"))
    if instrument is None:
        violations.append(
            RuleViolation(Code.UNKNOWN_INSTRUMENT, FIELD_SYMBOL, f"instrument {request.symbol} is not known")
        )
    elif not instrument.tradable:
        violations.append(
            RuleViolation(Code.INSTRUMENT_NOT_TRADABLE, FIELD_SYMBOL, f"instrument {instrument.symbol} is not tradable")
        )
    _check_enums(request, violations)
    _check_time_in_force(request, violations)
    violations.extend(validate_terms(request.type, request.quantity, request.price, request.stop_price, instrument))
    return violations


def summarize(violations: Sequence[RuleViolation]) -> tuple[str, str]:
    """The rejection code (the first violation's) and reason (every message) to record on the order."""
    if not violations:
        raise ValueError("no violations to summarize")
    return violations[0].code, "; ".join(v.message for v in violations)
