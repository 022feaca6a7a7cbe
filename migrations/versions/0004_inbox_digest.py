"""The inbox keeps a digest of each message's body, so a different message reusing a message id is caught.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Nullable: rows written before this revision have no digest and keep behaving as plain duplicates.
UPGRADE = """
ALTER TABLE inbox ADD COLUMN digest VARCHAR(64);
"""

DOWNGRADE = """
ALTER TABLE inbox DROP COLUMN IF EXISTS digest;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
