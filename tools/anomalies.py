"""``oms anomalies``: the execution reports whose figures contradicted themselves or the order.

Each was booked by the one rule (what is booked is the rise of the order's cumulative quantity) and recorded
as an ``EXECUTION_ANOMALY`` event; this lists them, newest first.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from common import jsonutil
from common.settings import load_settings
from common.store.anomalies import recent_anomalies
from common.store.db import make_engine
from tools.figures import number


def describe(row: Mapping[str, Any]) -> str:
    """One line for an anomaly event: the report's anomaly codes, or, for the overfill event that goes with an
    ``overfill`` code, by how much the order is overfilled (the line would otherwise repeat the code)."""
    payload = row["payload"]
    if row["type"] == "OVERFILL_DETECTED":
        what = (
            f"overfill: filled {number(payload.get('filled_quantity'))} of {number(payload.get('quantity'))}"
            f" (excess {number(payload.get('excess'))})"
        )
    else:
        what = ",".join(payload.get("anomalies") or [])
        what += "" if payload.get("applied", True) else "  (not applied)"
    return (
        f"{row['timestamp'].isoformat()}  order {row['order_id']}  {row['account_id']} {row['symbol']}  "
        f"execution {payload.get('execution_id')}  {what}"
    )


def main(argv: list[str]) -> int:
    """Entry point of ``oms anomalies``."""
    parser = argparse.ArgumentParser(prog="oms anomalies", description="list execution report anomalies")
    parser.add_argument("--hours", type=float, default=24.0, help="how far back to look (default 24)")
    parser.add_argument("--order", dest="order_id", help="only this order")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    parser.add_argument("--url", default=None, help="database URL (default: OMS_DATABASE_URL)")
    args = parser.parse_args(argv)
    engine = make_engine(args.url or load_settings().infra.database_url, pool_size=1)
    since = datetime.now(UTC) - timedelta(hours=args.hours)
    try:
        with engine.connect() as connection:
            rows = recent_anomalies(connection, since, args.order_id, args.limit)
    finally:
        engine.dispose()
    for row in rows:
        print(jsonutil.dumps(row) if args.json else describe(row))
    if not rows and not args.json:
        print(f"no anomalies in the last {args.hours:g} h", file=sys.stderr)
    return 0
