"""Indexes that keep the pipeline's per-order cost flat as history grows.

- ``orders(account_id)`` of working orders only: the risk gate sums an account's open exposure per batch; the
  plain account index would walk every order the account ever had.
- ``settlement_instructions(account_id)`` of PENDING ones: the risk gate's unsettled cash of an account.
- Two indexes less to maintain on every write of an order and of its events, each the leading column of
  another index: ``orders(account_id)`` (in ``(account_id, created_at)`` and ``(account_id, client_order_id)``)
  and ``order_events(order_id)`` (in the unique ``(order_id, sequence)``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE INDEX idx_orders_working_account ON orders(account_id)
    WHERE state NOT IN ('FILLED', 'CANCELED', 'EXPIRED', 'REJECTED');
CREATE INDEX idx_settlement_instructions_pending_account ON settlement_instructions(account_id)
    WHERE status = 'PENDING';
DROP INDEX IF EXISTS idx_orders_account_id;
DROP INDEX IF EXISTS idx_order_events_order_id;
"""

DOWNGRADE = """
CREATE INDEX IF NOT EXISTS idx_order_events_order_id ON order_events(order_id);
CREATE INDEX IF NOT EXISTS idx_orders_account_id ON orders(account_id);
DROP INDEX IF EXISTS idx_settlement_instructions_pending_account;
DROP INDEX IF EXISTS idx_orders_working_account;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
