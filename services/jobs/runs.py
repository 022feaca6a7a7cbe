"""Recording job runs: a ``job_runs`` row per run, the job metrics, and a log line with the summary."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, update

from common.logging import log_context
from common.store.tables import job_runs
from services.jobs.metrics import JOB_LAST_SUCCESS, JOB_RUNS, JOB_SECONDS

log = logging.getLogger(__name__)

Summary = Mapping[str, Any]


def _start(engine: Engine, job: str) -> int | None:
    try:
        with engine.begin() as connection:
            run_id: int = connection.execute(
                insert(job_runs)
                .values(job=job, started_at=datetime.now(UTC), outcome="RUNNING", summary={})
                .returning(job_runs.c.id)
            ).scalar_one()
            return run_id
    except Exception as exc:  # the job itself will meet the same database and fail with the real error
        log.warning("could not record the job run", extra={"job": job, "error": repr(exc)})
        return None


def _finish(engine: Engine, run_id: int | None, outcome: str, summary: Summary) -> None:
    if run_id is None:
        return
    try:
        with engine.begin() as connection:
            connection.execute(
                update(job_runs)
                .where(job_runs.c.id == run_id)
                .values(finished_at=datetime.now(UTC), outcome=outcome, summary=dict(summary))
            )
    except Exception as exc:
        log.warning("could not record the job's end", extra={"run_id": run_id, "error": repr(exc)})


def run_job(engine: Engine, job: str, work: Callable[[], Summary]) -> dict[str, Any]:
    """Run ``work`` as job ``job``: recorded in ``job_runs``, timed, counted; exceptions propagate (retries)."""
    with log_context(job=job):
        run_id = _start(engine, job)
        started = time.perf_counter()
        try:
            summary = dict(work())
        except Exception as exc:
            JOB_RUNS.labels(job, "failed").inc()
            _finish(engine, run_id, "FAILED", {"error": f"{type(exc).__name__}: {exc}"[:2000]})
            log.exception("job failed")
            raise
        finally:
            JOB_SECONDS.labels(job).observe(time.perf_counter() - started)
        JOB_RUNS.labels(job, "ok").inc()
        JOB_LAST_SUCCESS.labels(job).set_to_current_time()
        _finish(engine, run_id, "OK", summary)
        log.info("job done", extra={"summary": summary})
        return summary
