"""Domain events: what the aggregate records on every change (persisted as ``order_events`` rows)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from common.domain.enums import OrderEventType


@dataclass(frozen=True, slots=True)
class DomainEvent:
    """One audit-trail entry.

    ``payload`` holds JSON-friendly values (str, int, bool, None, lists, dicts); ``Decimal`` is allowed
    because the store renders it without a float round trip. StrEnum members are plain strings.
    """

    type: OrderEventType
    payload: dict[str, object]
    timestamp: datetime
    user_id: str | None = None
