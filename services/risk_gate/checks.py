"""Pre-trade risk checks: small functions ``(context) -> RuleViolation | None``, run in order.

A new rule is one more function appended to ``CHECKS``. Every check sees the same ``RiskContext``: the
order, its account and instrument (read in the gate's transaction) and the configured limits.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from common.domain import Order
from common.domain.validation import RuleViolation, plain
from common.store.reference import Account, Instrument

DEFAULT_MAX_ORDER_QUANTITY = Decimal("1000000")
DEFAULT_MAX_NOTIONAL = Decimal("50000000")


class RiskCode:
    """Rejection codes of the risk gate."""

    UNKNOWN_ACCOUNT = "UNKNOWN_ACCOUNT"
    ACCOUNT_INACTIVE = "ACCOUNT_INACTIVE"
    MAX_ORDER_QUANTITY_EXCEEDED = "MAX_ORDER_QUANTITY_EXCEEDED"
    MAX_NOTIONAL_EXCEEDED = "MAX_NOTIONAL_EXCEEDED"
    NOTIONAL_UNKNOWN = "NOTIONAL_UNKNOWN"


@dataclass(frozen=True)
class RiskLimits:
    """Per-order limits (in units of the instrument and of its currency)."""

    max_order_quantity: Decimal = DEFAULT_MAX_ORDER_QUANTITY
    max_notional: Decimal = DEFAULT_MAX_NOTIONAL

    @classmethod
    def from_env(cls) -> RiskLimits:
        """Limits from ``OMS_RISK_MAX_ORDER_QTY`` and ``OMS_RISK_MAX_NOTIONAL`` (defaults otherwise)."""
        return cls(
            max_order_quantity=Decimal(os.environ.get("OMS_RISK_MAX_ORDER_QTY", str(DEFAULT_MAX_ORDER_QUANTITY))),
            max_notional=Decimal(os.environ.get("OMS_RISK_MAX_NOTIONAL", str(DEFAULT_MAX_NOTIONAL))),
        )


@dataclass(frozen=True)
class RiskContext:
    """What a check may look at."""

    order: Order
    account: Account | None
    instrument: Instrument | None
    limits: RiskLimits


RiskCheck = Callable[[RiskContext], RuleViolation | None]


def valuation_price(order: Order, instrument: Instrument | None) -> Decimal | None:
    """The price the order is valued at: its limit price, else its stop price (a stop-market order trades
    near it), else the instrument's reference price (a MARKET order)."""
    if order.price is not None:
        return order.price
    if order.stop_price is not None:
        return order.stop_price
    return instrument.reference_price if instrument is not None else None


def account_active(ctx: RiskContext) -> RuleViolation | None:
    """The account exists and is active (it may have been closed since intake)."""
    if ctx.account is None:
        return RuleViolation(RiskCode.UNKNOWN_ACCOUNT, "accountId", f"account {ctx.order.account_id} does not exist")
    if not ctx.account.active:
        return RuleViolation(RiskCode.ACCOUNT_INACTIVE, "accountId", f"account {ctx.account.id} is not active")
    return None


def max_order_quantity(ctx: RiskContext) -> RuleViolation | None:
    """The order's quantity is at most the per-order limit."""
    limit = ctx.limits.max_order_quantity
    if ctx.order.quantity > limit:
        return RuleViolation(
            RiskCode.MAX_ORDER_QUANTITY_EXCEEDED,
            "quantity",
            f"quantity {plain(ctx.order.quantity)} exceeds the maximum order quantity {plain(limit)}",
        )
    return None


def max_notional(ctx: RiskContext) -> RuleViolation | None:
    """Quantity times the valuation price is at most the per-order notional limit."""
    price = valuation_price(ctx.order, ctx.instrument)
    if price is None:
        return RuleViolation(
            RiskCode.NOTIONAL_UNKNOWN,
            "price",
            f"cannot value the {ctx.order.type} order: {ctx.order.symbol} has no reference price",
        )
    notional = ctx.order.quantity * price
    limit = ctx.limits.max_notional
    if notional > limit:
        return RuleViolation(
            RiskCode.MAX_NOTIONAL_EXCEEDED,
            "quantity",
            f"notional {plain(notional)} ({plain(ctx.order.quantity)} at {plain(price)}) exceeds the maximum"
            f" order notional {plain(limit)}",
        )
    return None


CHECKS: tuple[RiskCheck, ...] = (account_active, max_order_quantity, max_notional)


@dataclass(frozen=True)
class RiskResult:
    """The checks that ran (by name) and the first violation, if any (checks stop there)."""

    checks: list[str]
    violation: RuleViolation | None

    @property
    def approved(self) -> bool:
        return self.violation is None


def run_checks(ctx: RiskContext, checks: Sequence[RiskCheck] = CHECKS) -> RiskResult:
    """Run the checks in order; stop at the first violation."""
    ran: list[str] = []
    for check in checks:
        ran.append(check.__name__)
        violation = check(ctx)
        if violation is not None:
            return RiskResult(ran, violation)
    return RiskResult(ran, None)
