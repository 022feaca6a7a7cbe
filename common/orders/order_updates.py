"""When an order's subscribers hear of a change: the rule both stores keep (Postgres and the tests' fake)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from common.domain import Order

# What subscribers see change (status, filled and ordered quantity), then the internal state.
PublicView = tuple[str, Decimal, Decimal, str]


def public_view(order: Order) -> PublicView:
    """The order as its subscribers see it, with its internal state last."""
    return (order.status.value, order.filled_quantity, order.quantity, order.state.value)


def announces(before: PublicView | None, after: PublicView, latest_execution: Mapping[str, Any] | None) -> bool:
    """Whether a save owes subscribers an order update.

    Subscribers are told of public changes only: a new order, a new status, or a fill (the filled quantity moves,
    or an execution is booked). The finer internal steps (APPROVED, ROUTED, PENDING_CANCEL...) are in the events;
    announcing each would cost a message per step and nobody outside asked for them.
    """
    return before is None or before[:3] != after[:3] or latest_execution is not None
