"""Tables of migration 0003 (operations), for SQLAlchemy Core.

Kept apart from ``common/store/tables.py`` (its own ``MetaData``) so that moving them there later is a cut and
paste; the migration stays the source of the schema.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, MetaData, String, Table, Text
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

dlq_replays = Table(
    "dlq_replays",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", String(36), nullable=False),
    Column("action", String(10), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("queue", String(255), nullable=False),
    Column("message_id", String(100), nullable=False),
    Column("message_type", String(100)),
    Column("correlation_id", String(100)),
    Column("reason", Text),
    Column("target_exchange", String(255)),
    Column("target_routing_key", String(255)),
    Column("outcome", String(12), nullable=False),
    Column("detail", Text),
    Column("filters", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

job_runs = Table(
    "job_runs",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("job", String(50), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("outcome", String(10), nullable=False),
    Column("summary", JSONB, nullable=False),
)

order_reconciliations = Table(
    "order_reconciliations",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("order_id", String(36), nullable=False),
    Column("state", String(20), nullable=False),
    Column("action", String(30), nullable=False),
    Column("detail", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
