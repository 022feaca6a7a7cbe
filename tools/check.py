"""``oms check``: the invariants that prove nothing was lost, doubled or left behind (common/store/invariants.py).

Prints one line per check that found something (with the first offenders), then the summary line; exits 1
when any invariant is violated, so scripts and tests can run it as a gate.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from common import jsonutil
from common.settings import load_settings
from common.store.db import make_engine
from common.store.invariants import Limits, check_invariants


def main(argv: list[str]) -> int:
    """Entry point of ``oms check``."""
    parser = argparse.ArgumentParser(prog="oms check", description="check the store's invariants")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds an order may be in flight (60)")
    parser.add_argument("--outbox", type=float, default=60.0, help="seconds an outbox row may stay unsent (60)")
    parser.add_argument("--inbox", type=float, default=60.0, help="seconds a hand-over may stay untaken (60)")
    parser.add_argument("--stuck", type=float, default=300.0, help="seconds in a transient state (300)")
    parser.add_argument("--hours", type=float, default=None, help="only what changed in the last N hours")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--url", default=None, help="database URL (default: OMS_DATABASE_URL)")
    args = parser.parse_args(argv)
    limits = Limits(
        settle=timedelta(seconds=args.settle),
        outbox=timedelta(seconds=args.outbox),
        inbox=timedelta(seconds=args.inbox),
        stuck=timedelta(seconds=args.stuck),
        **({"window": timedelta(hours=args.hours)} if args.hours is not None else {}),
    )
    engine = make_engine(args.url or load_settings().infra.database_url, pool_size=1)
    try:
        report = check_invariants(engine, limits)
    finally:
        engine.dispose()
    if args.json:
        print(jsonutil.dumps({"clean": report.clean, "counts": report.counts(), "violations": report.violations}))
    else:
        for name, rows in report.violations.items():
            for row in rows[:10]:
                print(f"{name}: {jsonutil.dumps(row)}")
        print(report.summary())
    return 0 if report.clean else 1
