"""Retention: delete operational records past ``OMS_RETENTION_DAYS``; keep every record compliance needs.

Deleted when older than the retention:
- ``inbox`` rows (a message id seen that long ago will not come back: the broker holds no message that long),
- ``outbox`` rows already sent (unsent rows are never deleted: the relay still owes them to the broker),
- ``message_failures`` (the last error of messages that failed; the dead-letter tool reads them),
- ``job_runs``.

Kept for good (the audit trail; a separate archive process, not this job, may move them off):
orders, ``execution_reports``, ``order_requests``, trade confirmations, settlement instructions, positions,
``dlq_replays`` and ``order_reconciliations``; and ``order_events`` unless ``OMS_ORDER_EVENTS_RETENTION_DAYS``
says otherwise (0, the default: for good).

With ``OMS_ORDER_EVENTS_RETENTION_DAYS`` set, the whole event chain of a closed order (FILLED, CANCELED, EXPIRED,
REJECTED) not changed for that long is deleted, and the same statement records it in ``purged_order_chains``:
the order, the last sequence dropped and its hash (the order's chain head, which stays on the order), the
period and the cutoff, when and by whom. ``./oms audit verify`` accepts a chain gone only with that record. An
event written after the purge (a late correction of a closed order) continues the chain from the recorded hash,
and is kept: an order's chain is purged once.

Who may run this: the workers' role may not delete ``order_events`` (migration 0008), so the job connects
with ``OMS_RETENTION_DATABASE_URL``: the retention role, which may delete the expired rows and event chains and
insert the records, and neither update nor insert anything else (default: ``OMS_DATABASE_URL``).

Rows go in batches, each its own short transaction, so a large backlog never holds long locks.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

from common.domain import TERMINAL_STATES

# Table -> statement deleting one batch of its expired rows (constants; only the values are bound).
_PURGES = {
    "inbox": text("DELETE FROM inbox WHERE ctid IN (SELECT ctid FROM inbox WHERE processed_at < :cutoff LIMIT :batch)"),
    "outbox": text(
        "DELETE FROM outbox WHERE ctid IN "
        "(SELECT ctid FROM outbox WHERE sent_at IS NOT NULL AND sent_at < :cutoff LIMIT :batch)"
    ),
    "message_failures": text(
        "DELETE FROM message_failures WHERE ctid IN "
        "(SELECT ctid FROM message_failures WHERE last_failed_at < :cutoff LIMIT :batch)"
    ),
    "job_runs": text(
        "DELETE FROM job_runs WHERE ctid IN "
        "(SELECT ctid FROM job_runs WHERE finished_at IS NOT NULL AND finished_at < :cutoff LIMIT :batch)"
    ),
}


# One batch of closed orders' chains: pick the orders, record each chain's last sequence and hash, delete the
# events up to it, all in one statement (one snapshot: an event committed meanwhile is neither recorded nor
# deleted, and continues the chain from the recorded hash).
_PURGE_CHAINS = text(
    """
WITH candidates AS (
    SELECT o.id FROM orders AS o
    WHERE o.state = ANY(CAST(:closed AS varchar[])) AND o.updated_at < :cutoff
      AND EXISTS (SELECT 1 FROM order_events AS e WHERE e.order_id = o.id)
      AND NOT EXISTS (SELECT 1 FROM purged_order_chains AS p WHERE p.order_id = o.id)
    ORDER BY o.id
    LIMIT :batch
), last AS (
    SELECT DISTINCT ON (e.order_id) e.order_id, e.sequence, e.hash
    FROM order_events AS e JOIN candidates AS c ON c.id = e.order_id
    ORDER BY e.order_id, e.sequence DESC
), recorded AS (
    INSERT INTO purged_order_chains (order_id, last_sequence, last_event_hash, retention_days, cutoff)
    SELECT order_id, sequence, hash, :days, :cutoff FROM last
    RETURNING order_id, last_sequence
), deleted AS (
    DELETE FROM order_events AS e USING recorded AS r
    WHERE e.order_id = r.order_id AND e.sequence <= r.last_sequence
    RETURNING e.order_id
)
SELECT (SELECT count(*) FROM recorded) AS orders, (SELECT count(*) FROM deleted) AS events
"""
)
_CLOSED = sorted(state.value for state in TERMINAL_STATES)


def purge_order_chains(
    engine: Engine, retention_days: int, now: datetime | None = None, batch: int = 1000
) -> dict[str, int]:
    """Delete the event chains of closed orders unchanged for ``retention_days``, recording each (see the
    module doc); returns the orders and events dropped."""
    if retention_days < 1:
        raise ValueError("the event retention must be at least one day")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    totals = {"orders": 0, "events": 0}
    while True:
        with engine.begin() as connection:
            orders, events = connection.execute(
                _PURGE_CHAINS, {"closed": _CLOSED, "cutoff": cutoff, "batch": batch, "days": retention_days}
            ).one()
        totals["orders"] += orders
        totals["events"] += events
        if orders < batch:
            return totals


def purge_retention(
    engine: Engine,
    retention_days: int,
    now: datetime | None = None,
    batch: int = 5000,
    *,
    order_events_days: int = 0,
) -> dict[str, int]:
    """Delete what is past the retention (see the module doc); returns the rows deleted per table, and with
    ``order_events_days`` (0: keep them) the closed orders whose chains went and their events."""
    if retention_days < 1:
        raise ValueError("the retention must be at least one day")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    deleted: dict[str, int] = {}
    for table, statement in _PURGES.items():
        total = 0
        while True:
            with engine.begin() as connection:
                count = connection.execute(statement, {"cutoff": cutoff, "batch": batch}).rowcount
            total += count
            if count < batch:
                break
        deleted[table] = total
    if order_events_days:
        chains = purge_order_chains(engine, order_events_days, now)
        deleted["order_event_chains"] = chains["orders"]
        deleted["order_events"] = chains["events"]
    return deleted
