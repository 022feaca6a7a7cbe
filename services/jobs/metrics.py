"""Metrics of the background jobs (the shared ones, orders by status and dead-letter depth, are in common)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOB_RUNS = Counter("oms_job_runs_total", "Background job runs, by job and outcome", ["job", "outcome"])
JOB_SECONDS = Histogram(
    "oms_job_seconds",
    "Time one background job run took",
    ["job"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
JOB_LAST_SUCCESS = Gauge("oms_job_last_success_timestamp_seconds", "When each job last succeeded", ["job"])
JOBS_ENQUEUED = Counter("oms_jobs_enqueued_total", "Jobs the scheduler enqueued, by job", ["job"])
ORDERS_EXPIRED = Counter("oms_day_orders_expired_total", "DAY orders ended at the session close, by how", ["how"])
ORDERS_RECONCILED = Counter("oms_orders_reconciled_total", "Stuck orders re-driven or re-asked, by action", ["action"])
