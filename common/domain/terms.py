"""An order's terms: what was asked for, as one value, and the rules they must keep."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from common.domain.enums import OrderType, Side, TimeInForce

_ZERO = Decimal(0)


def order_terms_problems(
    type: OrderType, quantity: Decimal, price: Decimal | None, stop_price: Decimal | None
) -> list[str]:
    """Return what is wrong with an order's terms (empty when valid); mirrors the orders table checks."""
    problems: list[str] = []
    if not quantity.is_finite() or quantity <= _ZERO:
        problems.append("quantity must be positive")
    if price is not None and (not price.is_finite() or price <= _ZERO):
        problems.append("price must be positive")
    if stop_price is not None and (not stop_price.is_finite() or stop_price <= _ZERO):
        problems.append("stopPrice must be positive")
    if type is OrderType.MARKET and price is not None:
        problems.append("a MARKET order takes no price")
    if type in (OrderType.LIMIT, OrderType.STOP_LIMIT) and price is None:
        problems.append(f"a {type} order needs a price")
    if type in (OrderType.STOP, OrderType.STOP_LIMIT) and stop_price is None:
        problems.append(f"a {type} order needs a stopPrice")
    return problems


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderTerms:
    """The terms an order is created with, as received.

    The ``Order`` aggregate keeps them as its own fields (of the same names) because a replace changes
    ``quantity``, ``price`` and ``stop_price`` later; this value is what creates it.
    """

    account_id: str
    symbol: str
    side: Side
    type: OrderType
    quantity: Decimal
    price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: TimeInForce = TimeInForce.DAY
    strategy_id: str | None = None
    notes: str | None = None
    client_order_id: str | None = None

    def problems(self) -> list[str]:
        """What breaks the rules in these terms (empty when valid); see ``order_terms_problems``."""
        return order_terms_problems(self.type, self.quantity, self.price, self.stop_price)

    def fields(self) -> dict[str, Any]:
        """The terms by field name, in declaration order (the names of the aggregate's fields too)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
