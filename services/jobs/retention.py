"""Retention: delete operational records past ``OMS_RETENTION_DAYS``; keep every record compliance needs.

Deleted when older than the retention:
- ``inbox`` rows (a message id seen that long ago will not come back: the broker holds no message that long),
- ``outbox`` rows already sent (unsent rows are never deleted: the relay still owes them to the broker),
- ``message_failures`` (the last error of messages that failed; the dead-letter tool reads them),
- ``job_runs``.

Kept for good (the audit trail; a separate archive process, not this job, may move them off):
orders, ``order_events``, ``execution_reports``, ``order_requests``, trade confirmations, settlement
instructions, positions, ``dlq_replays`` and ``order_reconciliations``.

Rows go in batches, each its own short transaction, so a large backlog never holds long locks.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

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


def purge_retention(
    engine: Engine, retention_days: int, now: datetime | None = None, batch: int = 5000
) -> dict[str, int]:
    """Delete what is past the retention (see the module doc); returns the rows deleted per table."""
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
    return deleted
