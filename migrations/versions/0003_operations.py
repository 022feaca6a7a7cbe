"""Operations: the dead-letter replay audit, job runs, reconciliation records, indexes for retention purges.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = """
-- Every message an operator replayed or purged from a dead-letter queue: who, when, which message, where to.
-- An audit record: the retention purge keeps it.
CREATE TABLE dlq_replays (
    id BIGSERIAL PRIMARY KEY,
    run_id VARCHAR(36) NOT NULL,
    action VARCHAR(10) NOT NULL CHECK (action IN ('REPLAY', 'PURGE')),
    actor VARCHAR(100) NOT NULL,
    queue VARCHAR(255) NOT NULL,
    message_id VARCHAR(100) NOT NULL,
    message_type VARCHAR(100),
    correlation_id VARCHAR(100),
    reason TEXT,
    target_exchange VARCHAR(255),
    target_routing_key VARCHAR(255),
    outcome VARCHAR(12) NOT NULL CHECK (outcome IN ('REPLAYED', 'PURGED', 'FAILED')),
    detail TEXT,
    filters JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_dlq_replays_run_id ON dlq_replays(run_id);
CREATE INDEX idx_dlq_replays_message_id ON dlq_replays(message_id);
CREATE INDEX idx_dlq_replays_created_at ON dlq_replays(created_at);

-- One row per background job run (dramatiq actor): what ran, when, how it ended, what it did.
CREATE TABLE job_runs (
    id BIGSERIAL PRIMARY KEY,
    job VARCHAR(50) NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    outcome VARCHAR(10) NOT NULL CHECK (outcome IN ('RUNNING', 'OK', 'FAILED')),
    summary JSONB NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX idx_job_runs_job_started ON job_runs(job, started_at DESC);

-- What the reconciliation job did about an order that made no progress (re-drive, or ask the venue again).
CREATE TABLE order_reconciliations (
    id BIGSERIAL PRIMARY KEY,
    order_id VARCHAR(36) NOT NULL REFERENCES orders(id),
    state VARCHAR(20) NOT NULL,
    action VARCHAR(30) NOT NULL,
    detail JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_order_reconciliations_order ON order_reconciliations(order_id, created_at DESC);

-- The retention purge deletes sent outbox rows and old failure records by age.
CREATE INDEX idx_outbox_sent_at ON outbox(sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX idx_message_failures_last_failed_at ON message_failures(last_failed_at);
"""

DOWNGRADE = """
DROP INDEX IF EXISTS idx_message_failures_last_failed_at;
DROP INDEX IF EXISTS idx_outbox_sent_at;
DROP TABLE IF EXISTS order_reconciliations;
DROP TABLE IF EXISTS job_runs;
DROP TABLE IF EXISTS dlq_replays;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
