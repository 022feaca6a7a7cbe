"""Least privilege: what the workers', the read side's and retention's roles may do, table by table.

The migrations run as the schema's owner (``OMS_DATABASE_URL``), which keeps every right; the processes connect
as narrower roles (tools/infra/postgres.py makes them locally, a deployment makes its own), named by
``OMS_DB_WORKER_ROLE``, ``OMS_DB_READER_ROLE``, ``OMS_DB_RETENTION_ROLE``:

- workers (stages, relay, jobs, venue, API): SELECT, and only the writes each table needs. ``order_events`` is
  INSERT only: Postgres refuses a worker's UPDATE or DELETE of the audit trail. No DDL, no TRUNCATE, nothing on
  ``alembic_version`` or ``purged_order_chains``. The one job that needs the owner's right (refreshing the
  materialized view, which only its owner may) goes through ``refresh_daily_order_statistics()``, a function
  that runs as the owner and does only that.
- read side: SELECT on the OMS's tables and views, nothing else.
- retention: deletes expired operational rows and closed orders' event chains, recording each chain it drops
  in ``purged_order_chains``; it may insert nothing else and update nothing.

A role that does not exist (a bare database, a server whose roles are made elsewhere) is skipped with a
warning: everything then runs as whoever connects, as before. A role made later gets its rights by migrating
down to 0007 and up again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

import logging
from typing import Any

import sqlalchemy as sa
from alembic import op

from common.settings import load_settings

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

# Table -> what the workers may do besides SELECT (an empty string: read only). Every table of the OMS is here;
# a new table gets its line in the migration that makes it.
WORKER_WRITES: dict[str, str] = {
    "accounts": "",
    "instruments": "",
    "orders": "INSERT, UPDATE",
    "order_events": "INSERT",  # the audit trail: appended to, never changed
    "execution_reports": "INSERT, UPDATE",
    "order_requests": "INSERT, UPDATE",
    "inbox": "INSERT",
    "outbox": "INSERT, UPDATE",
    "message_failures": "INSERT, UPDATE",
    "trade_confirmations": "INSERT",
    "settlement_instructions": "INSERT",
    "positions": "INSERT, UPDATE",
    "risk_limits": "INSERT, UPDATE",
    "restricted_symbols": "INSERT, DELETE",
    "trading_halts": "INSERT, DELETE",
    "risk_limit_changes": "INSERT",
    "reference_prices": "INSERT, UPDATE",
    "dlq_replays": "INSERT, UPDATE, DELETE",
    "job_runs": "INSERT, UPDATE",
    "order_reconciliations": "INSERT",
}
VIEWS = ("order_summary", "daily_order_statistics")
# What retention may do: read what it judges by, delete what expired, record the chains it drops.
RETENTION_RIGHTS: dict[str, str] = {
    "orders": "SELECT",
    "order_events": "SELECT, DELETE",
    "inbox": "SELECT, DELETE",
    "outbox": "SELECT, DELETE",
    "message_failures": "SELECT, DELETE",
    "job_runs": "SELECT, DELETE",
    "purged_order_chains": "SELECT, INSERT",
}

REFRESH_FUNCTION = """
CREATE FUNCTION refresh_daily_order_statistics() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    REFRESH MATERIALIZED VIEW CONCURRENTLY public.daily_order_statistics;
END
$$;
REVOKE ALL ON FUNCTION refresh_daily_order_statistics() FROM PUBLIC;
COMMENT ON FUNCTION refresh_daily_order_statistics() IS
    'Refreshes daily_order_statistics as its owner, for the jobs worker''s role (which may not own it)';
"""


def _role(connection: Any, name: str, kind: str) -> str | None:
    if connection.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :name"), {"name": name}).first():
        return name
    log.warning("the %s role %r does not exist: its grants are skipped (everything runs as who connects)", kind, name)
    return None


def _quoted(connection: Any, identifier: str) -> str:
    quoted: str = connection.execute(sa.text("SELECT quote_ident(:name)"), {"name": identifier}).scalar_one()
    return quoted


def _serial_sequences(connection: Any, tables: list[str]) -> list[str]:
    """The sequences of the ``id`` columns of ``tables`` that have one (a worker's INSERT draws from them)."""
    # CASE, not WHERE: pg_get_serial_sequence fails on a table without an id, and only CASE is sure to skip it.
    found = connection.execute(
        sa.text(
            "SELECT s FROM (SELECT CASE WHEN EXISTS (SELECT 1 FROM information_schema.columns AS c "
            "WHERE c.table_schema = 'public' AND c.table_name = t AND c.column_name = 'id') "
            "THEN pg_get_serial_sequence(t, 'id') END AS s FROM unnest(CAST(:tables AS text[])) AS t) AS q "
            "WHERE s IS NOT NULL"
        ),
        {"tables": tables},
    ).scalars()
    return list(found)


def _grants(connection: Any) -> list[str]:
    """The GRANT statements for the roles that exist (identifiers quoted by Postgres)."""
    infra = load_settings().infra
    statements: list[str] = []
    worker = _role(connection, infra.worker_role, "workers'")
    reader = _role(connection, infra.reader_role, "read side's")
    retention = _role(connection, infra.retention_role, "retention's")
    if worker:
        role = _quoted(connection, worker)
        statements.append(f"GRANT USAGE ON SCHEMA public TO {role}")
        for table, writes in WORKER_WRITES.items():
            statements.append(f"GRANT SELECT{', ' + writes if writes else ''} ON {table} TO {role}")
        statements += [f"GRANT SELECT ON {view} TO {role}" for view in VIEWS]
        inserted = [table for table, writes in WORKER_WRITES.items() if "INSERT" in writes]
        statements += [f"GRANT USAGE ON SEQUENCE {s} TO {role}" for s in _serial_sequences(connection, inserted)]
        statements.append(f"GRANT EXECUTE ON FUNCTION refresh_daily_order_statistics() TO {role}")
    if reader:
        role = _quoted(connection, reader)
        statements.append(f"GRANT USAGE ON SCHEMA public TO {role}")
        for table in [*WORKER_WRITES, *VIEWS, "purged_order_chains"]:
            statements.append(f"GRANT SELECT ON {table} TO {role}")
    if retention:
        role = _quoted(connection, retention)
        statements.append(f"GRANT USAGE ON SCHEMA public TO {role}")
        statements += [f"GRANT {rights} ON {table} TO {role}" for table, rights in RETENTION_RIGHTS.items()]
    return statements


def _revokes(connection: Any) -> list[str]:
    infra = load_settings().infra
    statements: list[str] = []
    tables = [*WORKER_WRITES, *VIEWS, "purged_order_chains"]
    roles = ((infra.worker_role, "workers'"), (infra.reader_role, "read side's"), (infra.retention_role, "retention's"))
    for name, kind in roles:
        if _role(connection, name, kind):
            role = _quoted(connection, name)
            statements += [f"REVOKE ALL ON {table} FROM {role}" for table in tables]
            statements += [
                f"REVOKE ALL ON SEQUENCE {s} FROM {role}" for s in _serial_sequences(connection, list(WORKER_WRITES))
            ]
    return statements


def upgrade() -> None:
    op.execute(REFRESH_FUNCTION)
    connection = op.get_bind()
    for statement in _grants(connection):
        op.execute(statement)


def downgrade() -> None:
    connection = op.get_bind()
    for statement in _revokes(connection):
        op.execute(statement)
    op.execute("DROP FUNCTION IF EXISTS refresh_daily_order_statistics()")
