"""What a create asks for (``OrderRequest``), and which of its values an order row can store."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from common.domain.validation import MAX_STORABLE


@dataclass(frozen=True)
class OrderRequest:
    """What a REST/gRPC create or a trade decision asks for (values as received; the rules check them)."""

    account_id: str
    symbol: str
    side: str
    type: str
    quantity: Decimal | None
    price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: str = "DAY"
    strategy_id: str | None = None
    notes: str | None = None
    client_order_id: str | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any], client_order_id: str | None) -> OrderRequest:
        """From a schema-loaded ``CreateOrderRequest`` or ``TradeDecision`` (snake_case keys, Decimal numbers)."""
        return cls(
            account_id=body["account_id"],
            symbol=body["symbol"],
            side=body["side"],
            type=body["type"],
            quantity=body["quantity"],
            price=body.get("price"),
            stop_price=body.get("stop_price"),
            time_in_force=body.get("time_in_force") or "DAY",
            strategy_id=body.get("strategy_id"),
            notes=body.get("notes"),
            client_order_id=client_order_id,
        )


def storable(value: Decimal | None) -> Decimal | None:
    """A value that fits DECIMAL(20,8), else None: a REJECTED order records what it can; its reason has
    the value as received."""
    if value is None or not value.is_finite() or abs(value) >= MAX_STORABLE:
        return None
    return value
