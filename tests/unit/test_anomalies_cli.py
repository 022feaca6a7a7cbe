"""``oms anomalies`` prints one line per anomaly event, and the overfill event says by how much."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D
from typing import Any

from tools.anomalies import describe

AT = datetime(2026, 12, 1, 5, 22, tzinfo=UTC)


def _row(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "timestamp": AT,
        "order_id": "o-1",
        "account_id": "ACC-001",
        "symbol": "AAPL",
        "type": kind,
        "payload": payload,
    }


def test_a_report_anomaly_lists_its_codes_and_whether_it_was_applied() -> None:
    applied = describe(
        _row("EXECUTION_ANOMALY", {"execution_id": "x-1", "anomalies": ["cum_backwards", "fees_not_booked"]})
    )
    assert applied.endswith("execution x-1  cum_backwards,fees_not_booked")
    refused = describe(
        _row("EXECUTION_ANOMALY", {"execution_id": "x-2", "anomalies": ["execution_id_reused"], "applied": False})
    )
    assert refused.endswith("execution x-2  execution_id_reused  (not applied)")
    assert refused.startswith("2026-12-01T05:22:00+00:00  order o-1  ACC-001 AAPL")


def test_the_overfill_event_says_by_how_much_instead_of_repeating_the_code() -> None:
    line = describe(
        _row(
            "OVERFILL_DETECTED",
            {"execution_id": "x-3", "quantity": D("10"), "filled_quantity": D("12"), "excess": D("2")},
        )
    )
    assert line.endswith("execution x-3  overfill: filled 12 of 10 (excess 2)")
