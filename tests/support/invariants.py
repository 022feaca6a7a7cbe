"""Ending a test that ran the pipeline: the store's invariants must hold once everything in flight has landed."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine

from common.store.invariants import CheckReport, Limits, check_invariants
from tests.support.polling import wait_until

# Nothing is "in flight" once a test is over, but the last hand-overs may still be on their way: poll.
QUIESCENT = Limits(settle=timedelta(0), outbox=timedelta(0), inbox=timedelta(seconds=5), stuck=timedelta(seconds=120))


def assert_invariants_hold(engine: Engine, timeout: float = 60.0) -> CheckReport:
    """Poll ``oms check``'s invariants until clean (or fail with what was violated); returns the clean report."""
    last: list[CheckReport] = []

    def clean() -> bool:
        report = check_invariants(engine, QUIESCENT)
        last[:] = [report]
        return report.clean

    try:
        wait_until(clean, timeout=timeout, interval=0.5, message="the store's invariants")
    except AssertionError as exc:
        report = last[0] if last else None
        detail = {k: v[:5] for k, v in report.violations.items() if v} if report else {}
        raise AssertionError(f"{report.summary() if report else 'no report'}: {detail}") from exc
    return last[0]
