"""The execution anomalies on record: the audit trail's EXECUTION_ANOMALY and OVERFILL_DETECTED events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

_RECENT = text(
    """
    SELECT e.timestamp, e.order_id, o.account_id, o.symbol, e.type, e.payload
    FROM order_events e JOIN orders o ON o.id = e.order_id
    WHERE e.type IN ('EXECUTION_ANOMALY', 'OVERFILL_DETECTED')
      AND e.timestamp >= :since AND (CAST(:order_id AS VARCHAR) IS NULL OR e.order_id = :order_id)
    ORDER BY e.timestamp DESC, e.sequence DESC
    LIMIT :limit
    """
)


def recent_anomalies(
    connection: Connection, since: datetime, order_id: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Anomaly events since ``since`` (newest first), with the order's account and symbol."""
    rows = connection.execute(_RECENT, {"since": since, "order_id": order_id, "limit": limit}).mappings()
    return [dict(row) for row in rows]
