"""The cancel or replace request an order has sent to the venue and that is still unanswered."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from common.domain.enums import RequestKind


def _decimal_or_none(value: object) -> Decimal | None:
    return None if value is None else Decimal(str(value))


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingRequest:
    """The latest cancel or replace the OMS sent and the venue has not answered yet.

    ``quantity``/``price``/``stop_price`` are the complete new terms of a replace. ``acknowledged`` turns
    true when the venue reports PENDING_CANCEL / PENDING_REPLACE for this request.
    """

    kind: RequestKind
    request_id: str
    requested_at: datetime
    quantity: Decimal | None = None
    price: Decimal | None = None
    stop_price: Decimal | None = None
    reason: str | None = None
    acknowledged: bool = False

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form for the store (Decimal kept; the store renders it)."""
        return {
            "kind": str(self.kind),
            "requestId": self.request_id,
            "requestedAt": self.requested_at.isoformat(),
            "quantity": self.quantity,
            "price": self.price,
            "stopPrice": self.stop_price,
            "reason": self.reason,
            "acknowledged": self.acknowledged,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PendingRequest:
        """Inverse of ``to_dict`` (numbers may come back as str, int, float or Decimal)."""
        requested_at = data["requestedAt"]
        if not isinstance(requested_at, datetime):
            requested_at = datetime.fromisoformat(str(requested_at))
        reason = data.get("reason")
        return cls(
            kind=RequestKind(str(data["kind"])),
            request_id=str(data["requestId"]),
            requested_at=requested_at,
            quantity=_decimal_or_none(data.get("quantity")),
            price=_decimal_or_none(data.get("price")),
            stop_price=_decimal_or_none(data.get("stopPrice")),
            reason=None if reason is None else str(reason),
            acknowledged=bool(data.get("acknowledged", False)),
        )
