"""Risk gate: limits per account with global defaults, restricted symbols, trading halts, their audit trail,
and the reference prices the checks value orders at.

A NULL ``account_id`` is the global scope (``NULLS NOT DISTINCT``: one global row). A NULL limit column
inherits: an account's NULL falls back to the global value, a global NULL switches the rule off.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE risk_limits (
    id BIGSERIAL PRIMARY KEY,
    account_id VARCHAR(36) REFERENCES accounts(id),
    max_order_quantity DECIMAL(20, 8) CHECK (max_order_quantity > 0),
    max_order_notional DECIMAL(20, 8) CHECK (max_order_notional > 0),
    price_collar_percent DECIMAL(9, 4) CHECK (price_collar_percent > 0),
    max_position_quantity DECIMAL(20, 8) CHECK (max_position_quantity >= 0),
    max_gross_exposure DECIMAL(20, 8) CHECK (max_gross_exposure >= 0),
    max_open_orders INTEGER CHECK (max_open_orders >= 0),
    max_orders_per_second INTEGER CHECK (max_orders_per_second >= 0),
    max_strategy_orders_per_second INTEGER CHECK (max_strategy_orders_per_second >= 0),
    duplicate_window_seconds DECIMAL(10, 3) CHECK (duplicate_window_seconds >= 0),
    enforce_trading_session BOOLEAN,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_by VARCHAR(100),
    CONSTRAINT uq_risk_limits_account UNIQUE NULLS NOT DISTINCT (account_id)
);

-- The global defaults: the per-order limits the basic gate had; every other rule is off until operations
-- sets it (oms risk set / PUT /risk/limits).
INSERT INTO risk_limits (account_id, max_order_quantity, max_order_notional, updated_by)
VALUES (NULL, 1000000, 50000000, 'migration 0002');

CREATE TABLE restricted_symbols (
    id BIGSERIAL PRIMARY KEY,
    account_id VARCHAR(36) REFERENCES accounts(id),
    symbol VARCHAR(20) NOT NULL,
    reason TEXT,
    created_by VARCHAR(100),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT uq_restricted_symbols UNIQUE NULLS NOT DISTINCT (account_id, symbol)
);

CREATE TABLE trading_halts (
    id BIGSERIAL PRIMARY KEY,
    account_id VARCHAR(36) REFERENCES accounts(id),
    reason TEXT NOT NULL,
    halted_by VARCHAR(100),
    since TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT uq_trading_halts_account UNIQUE NULLS NOT DISTINCT (account_id)
);

CREATE TABLE risk_limit_changes (
    id BIGSERIAL PRIMARY KEY,
    changed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    changed_by VARCHAR(100),
    account_id VARCHAR(36),
    kind VARCHAR(20) NOT NULL CHECK (kind IN ('LIMIT', 'RESTRICTION', 'HALT')),
    item VARCHAR(50) NOT NULL,
    old_value JSONB,
    new_value JSONB,
    reason TEXT
);
CREATE INDEX idx_risk_limit_changes_account ON risk_limit_changes(account_id, changed_at);

CREATE TABLE reference_prices (
    symbol VARCHAR(20) PRIMARY KEY,
    price DECIMAL(20, 8) NOT NULL CHECK (price > 0),
    source VARCHAR(40) NOT NULL,
    as_of TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ NOT NULL
);

-- The gate's look-back queries: an account's recent orders (throttle, duplicates), a strategy's recent orders.
CREATE INDEX idx_orders_account_created ON orders(account_id, created_at);
CREATE INDEX idx_orders_strategy_created ON orders(strategy_id, created_at) WHERE strategy_id IS NOT NULL;
"""

DOWNGRADE = """
DROP INDEX IF EXISTS idx_orders_strategy_created;
DROP INDEX IF EXISTS idx_orders_account_created;
DROP TABLE IF EXISTS reference_prices;
DROP TABLE IF EXISTS risk_limit_changes;
DROP TABLE IF EXISTS trading_halts;
DROP TABLE IF EXISTS restricted_symbols;
DROP TABLE IF EXISTS risk_limits;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
