"""The scheduled invariant check: ``oms check`` as a job, its findings as metrics (alerted on in ops/alerts.yml)."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine

from common.metrics import INVARIANT_CHECKED_AT, INVARIANT_VIOLATIONS
from common.store.invariants import Limits, check_invariants

log = logging.getLogger(__name__)


def run_invariant_check(engine: Engine, window_hours: float) -> dict[str, Any]:
    """Check what changed in the last ``window_hours``; set the gauges; log what was found at ERROR."""
    report = check_invariants(engine, Limits(window=timedelta(hours=window_hours)))
    counts = report.counts()
    for name, count in counts.items():
        INVARIANT_VIOLATIONS.labels(name).set(count)
    INVARIANT_CHECKED_AT.set(time.time())
    if not report.clean:
        log.error(
            "invariant violated",
            extra={"counts": counts, "first": {k: v[:5] for k, v in report.violations.items() if v}},
        )
    return {"clean": report.clean, "counts": counts}
