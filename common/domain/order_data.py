"""The fields of an order, as the ``Order`` aggregate holds them and the store keeps them, with what derives
from them. The aggregate (``order.py``) adds the behaviour; the report rules (``reports.py``) and the event
payloads (``payloads.py``) work on these fields alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from common.domain.enums import TERMINAL_STATES, OrderState, OrderStatus, OrderType, Side, TimeInForce, public_status
from common.domain.events import DomainEvent
from common.domain.pending_request import PendingRequest

_ZERO = Decimal(0)


@dataclass(slots=True, kw_only=True)
class OrderData:
    """An order's fields. The first ones after ``id`` are its ``OrderTerms``, under the same names (a
    replace changes ``quantity``, ``price`` and ``stop_price`` later)."""

    id: str
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
    state: OrderState = OrderState.NEW
    filled_quantity: Decimal = _ZERO
    average_execution_price: Decimal | None = None
    fees: Decimal = _ZERO
    broker_order_id: str | None = None
    rejection_reason: str | None = None
    rejection_code: str | None = None
    overfilled: bool = False
    # Filled quantity the venue's cumulative totals added beyond what the reports' own executions said (a
    # report overtaken by a later one, or missed): a late report is matched against it instead of being
    # taken for a contradiction.
    unreported_quantity: Decimal = _ZERO
    pending_request: PendingRequest | None = None
    created_at: datetime
    updated_at: datetime
    version: int = 1
    events: list[DomainEvent] = field(default_factory=list, compare=False, repr=False)

    # ------------------------------------------------------------------ derived

    @property
    def status(self) -> OrderStatus:
        """The spec's public status."""
        return public_status(self.state, self.filled_quantity)

    @property
    def is_terminal(self) -> bool:
        """FILLED, CANCELED, EXPIRED or REJECTED."""
        return self.state in TERMINAL_STATES

    @property
    def leaves_quantity(self) -> Decimal:
        """Quantity still working: 0 when terminal, else max(quantity - filled, 0)."""
        if self.state in TERMINAL_STATES:
            return _ZERO
        leaves = self.quantity - self.filled_quantity
        return leaves if leaves > _ZERO else _ZERO
