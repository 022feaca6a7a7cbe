"""Prometheus metrics shared by every process; ``common.health`` serves them on each process's own port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STAGE_MESSAGES = Counter("oms_stage_messages_total", "Messages a stage finished with, by outcome", ["stage", "outcome"])
STAGE_HANDLING_SECONDS = Histogram(
    "oms_stage_batch_seconds",
    "Time to handle one batch: decode, transaction, publish, ack",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
STAGE_BATCH_SIZE = Histogram(
    "oms_stage_batch_size", "Deliveries per batch", ["stage"], buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500)
)
OUTBOX_PUBLISHED = Counter("oms_outbox_relayed_total", "Outbox rows published by the relay")
OUTBOX_LAG_SECONDS = Gauge("oms_outbox_lag_seconds", "Age of the oldest unsent outbox row")
ORDERS_BY_STATUS = Gauge("oms_orders", "Orders by public status", ["status"])
RISK_REJECTIONS = Counter("oms_risk_rejections_total", "Orders rejected by the risk gate, by rule", ["rule"])
# The risk gate's client of the Risk Analysis Service (services/risk_gate/risk_service.py, docs/risk-service.md).
RISK_SERVICE_BREAKER_STATE = Gauge(
    "oms_risk_service_breaker_state", "Circuit breaker of the Risk Analysis Service: 0 closed, 1 half-open, 2 open"
)
RISK_SERVICE_BREAKER_TRANSITIONS = Counter(
    "oms_risk_service_breaker_transitions_total",
    "State changes of the Risk Analysis Service's circuit breaker",
    ["from_state", "to_state"],
)
RISK_SERVICE_CALLS = Counter(
    "oms_risk_service_calls_total",
    "Batches the risk gate asked the Risk Analysis Service about, by outcome (ok, failed, short_circuited)",
    ["outcome"],
)
RISK_SERVICE_SECONDS = Histogram(
    "oms_risk_service_call_seconds",
    "Time of one batch's call to the Risk Analysis Service, retries included (not when short-circuited)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DEAD_LETTER_DEPTH = Gauge("oms_dead_letter_depth", "Messages waiting in each dead-letter queue", ["queue"])
EXECUTION_ANOMALIES = Counter(
    "oms_execution_anomalies_total",
    "Execution reports whose figures contradicted themselves or the order, by anomaly (see oms anomalies)",
    ["anomaly"],
)
INVARIANT_VIOLATIONS = Gauge(
    "oms_invariant_violations", "Violations found by the last invariant check (oms check), by check", ["check"]
)
INVARIANT_CHECKED_AT = Gauge("oms_invariant_checked_timestamp_seconds", "When the invariant check last completed")
