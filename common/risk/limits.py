"""The risk limits: what each one means, how a value is parsed, and how an account inherits the global ones.

Limits live in ``risk_limits`` (one row per account, one global row with a NULL account). A NULL column
inherits: an account's NULL falls back to the global value, and a global NULL switches the rule off.
Pure: no database here (``common.risk.admin`` and the risk gate's store read and write the rows).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from typing import Any

LimitValue = Decimal | int | bool
INHERIT_WORDS = frozenset({"inherit", "none", "null", ""})
# DECIMAL(20, 8) in the table.
_MAX_DECIMAL = Decimal(10) ** 12
_MAX_INT = 2**31 - 1


class InvalidLimit(ValueError):
    """An unknown limit name, or a value the limit cannot take (the message says which)."""


@dataclass(frozen=True)
class LimitSpec:
    """One limit: its name (the column), value type, smallest allowed value and what it bounds."""

    name: str
    kind: type[Decimal] | type[int] | type[bool]
    description: str
    minimum: Decimal = Decimal(0)
    exclusive_minimum: bool = False


LIMIT_SPECS: tuple[LimitSpec, ...] = (
    LimitSpec("max_order_quantity", Decimal, "largest quantity of one order", exclusive_minimum=True),
    LimitSpec("max_order_notional", Decimal, "largest value of one order (quantity x price)", exclusive_minimum=True),
    LimitSpec(
        "price_collar_percent",
        Decimal,
        "how far (in %) a LIMIT or STOP price may be from the reference price",
        exclusive_minimum=True,
    ),
    LimitSpec("max_position_quantity", Decimal, "largest position per symbol, long or short, with open orders"),
    LimitSpec("max_gross_exposure", Decimal, "largest gross exposure of the account (positions and open orders)"),
    LimitSpec("max_open_orders", int, "largest number of open orders of the account"),
    LimitSpec("max_orders_per_second", int, "orders the account may send in any one second"),
    LimitSpec("max_strategy_orders_per_second", int, "orders one strategy may send in any one second"),
    LimitSpec("duplicate_window_seconds", Decimal, "an order equal to an earlier one this close is a duplicate"),
    LimitSpec("enforce_trading_session", bool, "reject orders outside the instrument's trading session"),
)
LIMIT_NAMES: tuple[str, ...] = tuple(spec.name for spec in LIMIT_SPECS)
SPECS_BY_NAME: dict[str, LimitSpec] = {spec.name: spec for spec in LIMIT_SPECS}


@dataclass(frozen=True)
class Limits:
    """The limits in force for one account; None means the rule is off."""

    max_order_quantity: Decimal | None = None
    max_order_notional: Decimal | None = None
    price_collar_percent: Decimal | None = None
    max_position_quantity: Decimal | None = None
    max_gross_exposure: Decimal | None = None
    max_open_orders: int | None = None
    max_orders_per_second: int | None = None
    max_strategy_orders_per_second: int | None = None
    duplicate_window_seconds: Decimal | None = None
    enforce_trading_session: bool | None = None

    def as_dict(self) -> dict[str, LimitValue | None]:
        """Every limit by name (None: off)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def enabled(self) -> dict[str, LimitValue]:
        """The limits that are on (a False switch is off)."""
        return {name: value for name, value in self.as_dict().items() if value is not None and value is not False}


assert tuple(f.name for f in fields(Limits)) == LIMIT_NAMES, "Limits and LIMIT_SPECS must list the same limits"


def resolve(
    global_row: Mapping[str, Any] | None, account_row: Mapping[str, Any] | None
) -> tuple[Limits, dict[str, str]]:
    """The limits in force for an account, and where each came from (``account``, ``global`` or ``off``)."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in LIMIT_NAMES:
        own = account_row.get(name) if account_row is not None else None
        default = global_row.get(name) if global_row is not None else None
        if own is not None:
            values[name], sources[name] = own, "account"
        elif default is not None:
            values[name], sources[name] = default, "global"
        else:
            values[name], sources[name] = None, "off"
    return Limits(**values), sources


def parse_value(name: str, raw: object) -> LimitValue | None:
    """A limit's value from text or JSON; None (or ``inherit``/``null``/``none``) clears it (inherit).

    Raises ``InvalidLimit`` for an unknown name or a value out of range; a float is refused (it is not exact).
    """
    spec = SPECS_BY_NAME.get(name)
    if spec is None:
        raise InvalidLimit(f"unknown limit {name!r}; limits: {', '.join(LIMIT_NAMES)}")
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in INHERIT_WORDS):
        return None
    if spec.kind is bool:
        return _parse_bool(name, raw)
    if isinstance(raw, bool) or isinstance(raw, float):
        raise InvalidLimit(f"{name} takes a number, got {raw!r}")
    try:
        number = Decimal(str(raw).strip()) if not isinstance(raw, Decimal) else raw
    except InvalidOperation as exc:
        raise InvalidLimit(f"{name} takes a number, got {raw!r}") from exc
    if not number.is_finite():
        raise InvalidLimit(f"{name} takes a finite number, got {raw!r}")
    if number < spec.minimum or (spec.exclusive_minimum and number == spec.minimum):
        bound = "greater than" if spec.exclusive_minimum else "at least"
        raise InvalidLimit(f"{name} must be {bound} {spec.minimum}, got {number}")
    if spec.kind is int:
        if number != number.to_integral_value():
            raise InvalidLimit(f"{name} takes a whole number, got {number}")
        if number > _MAX_INT:
            raise InvalidLimit(f"{name} is too large: {number}")
        return int(number)
    exponent = number.normalize().as_tuple().exponent
    if number >= _MAX_DECIMAL or (isinstance(exponent, int) and exponent < -8):
        raise InvalidLimit(f"{name} does not fit DECIMAL(20,8): {number}")
    return number


def _parse_bool(name: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"true", "yes", "on", "1"}:
        return True
    if text in {"false", "no", "off", "0"}:
        return False
    raise InvalidLimit(f"{name} takes true or false, got {raw!r}")


def parse_changes(raw: Mapping[str, object]) -> dict[str, LimitValue | None]:
    """Parse a set of changes (name -> value); every problem is reported at once."""
    parsed: dict[str, LimitValue | None] = {}
    problems: list[str] = []
    for name, value in raw.items():
        try:
            parsed[name] = parse_value(name, value)
        except InvalidLimit as exc:
            problems.append(str(exc))
    if problems:
        raise InvalidLimit("; ".join(problems))
    return parsed
