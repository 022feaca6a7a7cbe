"""One rule for what a fill books: execution reports keep what they reported beside what they booked.

- ``execution_reports.quantity``/``price``/``fees`` are what the report booked (the rise of the order's
  cumulative quantity, negative for a bust); ``last_qty``/``last_px`` what the report itself said.
- ``execution_reports.unreported_delta`` and ``orders.unreported_quantity``: cumulative quantity booked
  ahead of the report that carried it (a report overtaken by a later one), matched when the late one comes.
- A partial index for the anomaly listing (``oms anomalies``) and the invariant checker.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE orders ADD COLUMN unreported_quantity DECIMAL(20,8) NOT NULL DEFAULT 0;
ALTER TABLE execution_reports ADD COLUMN last_qty DECIMAL(20,8);
ALTER TABLE execution_reports ADD COLUMN last_px DECIMAL(20,8);
ALTER TABLE execution_reports ADD COLUMN unreported_delta DECIMAL(20,8) NOT NULL DEFAULT 0;
-- Rows written before this revision booked what they reported.
UPDATE execution_reports SET last_qty = abs(quantity), last_px = NULLIF(price, 0);
CREATE INDEX idx_order_events_anomalies ON order_events(timestamp)
    WHERE type IN ('EXECUTION_ANOMALY', 'OVERFILL_DETECTED');
"""

DOWNGRADE = """
DROP INDEX IF EXISTS idx_order_events_anomalies;
ALTER TABLE execution_reports DROP COLUMN unreported_delta;
ALTER TABLE execution_reports DROP COLUMN last_px;
ALTER TABLE execution_reports DROP COLUMN last_qty;
ALTER TABLE orders DROP COLUMN unreported_quantity;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
