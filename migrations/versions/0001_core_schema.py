"""Core schema: reference data, orders, execution reports, events, requests, inbox/outbox, settlement, views.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE accounts (
    id VARCHAR(36) PRIMARY KEY,
    name VARCHAR(100) NOT NULL,
    account_type VARCHAR(10) NOT NULL DEFAULT 'MARGIN' CHECK (account_type IN ('CASH', 'MARGIN')),
    base_currency VARCHAR(3) NOT NULL DEFAULT 'USD',
    cash_balance DECIMAL(20, 8) NOT NULL DEFAULT 0,
    active BOOLEAN NOT NULL DEFAULT TRUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE instruments (
    symbol VARCHAR(20) PRIMARY KEY,
    name VARCHAR(200) NOT NULL,
    asset_class VARCHAR(20) NOT NULL,
    currency VARCHAR(3) NOT NULL,
    tick_size DECIMAL(20, 8) NOT NULL CHECK (tick_size > 0),
    lot_size DECIMAL(20, 8) NOT NULL CHECK (lot_size > 0),
    tradable BOOLEAN NOT NULL DEFAULT TRUE,
    settlement_days INTEGER CHECK (settlement_days >= 0),
    session_open TIME,
    session_close TIME,
    session_timezone VARCHAR(40),
    reference_price DECIMAL(20, 8),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id VARCHAR(36) PRIMARY KEY,
    account_id VARCHAR(36) NOT NULL,
    symbol VARCHAR(20) NOT NULL,
    side VARCHAR(10) NOT NULL CHECK (side IN ('BUY', 'SELL')),
    type VARCHAR(15) NOT NULL,
    status VARCHAR(20) NOT NULL
        CHECK (status IN ('PENDING', 'OPEN', 'FILLED', 'PARTIALLY_FILLED', 'CANCELED', 'REJECTED')),
    quantity DECIMAL(20, 8) NOT NULL,
    filled_quantity DECIMAL(20, 8) NOT NULL DEFAULT 0,
    price DECIMAL(20, 8),
    stop_price DECIMAL(20, 8),
    average_execution_price DECIMAL(20, 8),
    time_in_force VARCHAR(10) NOT NULL CHECK (time_in_force IN ('DAY', 'GTC', 'IOC', 'FOK')),
    strategy_id VARCHAR(36),
    broker_order_id VARCHAR(100),
    rejection_reason TEXT,
    notes TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    -- Beyond the specification: the finer internal state and what the pipeline needs.
    state VARCHAR(20) NOT NULL,
    client_order_id VARCHAR(100),
    rejection_code VARCHAR(50),
    fees DECIMAL(20, 8) NOT NULL DEFAULT 0,
    overfilled BOOLEAN NOT NULL DEFAULT FALSE,
    pending_request JSONB,
    created_by VARCHAR(100),
    version INTEGER NOT NULL DEFAULT 1,

    CONSTRAINT fk_account FOREIGN KEY (account_id) REFERENCES accounts(id),
    -- A decision that breaks a rule is still booked, as REJECTED with its reason: the rules bind the others.
    CONSTRAINT chk_order_quantity CHECK (quantity > 0 OR status = 'REJECTED'),
    CONSTRAINT chk_order_type CHECK (
        status = 'REJECTED' OR
        (type = 'MARKET' AND price IS NULL) OR
        (type = 'LIMIT' AND price IS NOT NULL) OR
        (type = 'STOP' AND stop_price IS NOT NULL) OR
        (type = 'STOP_LIMIT' AND price IS NOT NULL AND stop_price IS NOT NULL)
    ),
    CONSTRAINT uq_orders_client_order_id UNIQUE (account_id, client_order_id)
);

CREATE INDEX idx_orders_account_id ON orders(account_id);
CREATE INDEX idx_orders_symbol ON orders(symbol);
CREATE INDEX idx_orders_status ON orders(status);
CREATE INDEX idx_orders_created_at ON orders(created_at);
CREATE INDEX idx_orders_working ON orders(state, updated_at)
    WHERE state NOT IN ('FILLED', 'CANCELED', 'EXPIRED', 'REJECTED');

CREATE TABLE execution_reports (
    id VARCHAR(36) PRIMARY KEY,
    order_id VARCHAR(36) NOT NULL,
    execution_id VARCHAR(100) NOT NULL,
    quantity DECIMAL(20, 8) NOT NULL,
    price DECIMAL(20, 8) NOT NULL,
    timestamp TIMESTAMPTZ NOT NULL,
    fees DECIMAL(20, 8) NOT NULL DEFAULT 0,
    venue VARCHAR(50),
    -- Beyond the specification: the whole report, so the audit trail can replay it.
    exec_type VARCHAR(20) NOT NULL,
    request_id VARCHAR(36),
    broker_order_id VARCHAR(100),
    cum_qty DECIMAL(20, 8),
    leaves_qty DECIMAL(20, 8),
    avg_px DECIMAL(20, 8),
    exec_ref_id VARCHAR(100),
    reason TEXT,
    busted BOOLEAN NOT NULL DEFAULT FALSE,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),

    CONSTRAINT fk_order FOREIGN KEY (order_id) REFERENCES orders(id),
    CONSTRAINT uq_execution_reports_execution_id UNIQUE (execution_id)
);

CREATE INDEX idx_execution_reports_order_id ON execution_reports(order_id);
CREATE INDEX idx_execution_reports_timestamp ON execution_reports(timestamp);

CREATE TABLE order_events (
    id VARCHAR(36) PRIMARY KEY,
    order_id VARCHAR(36) NOT NULL,
    type VARCHAR(50) NOT NULL,
    payload JSONB NOT NULL,
    user_id VARCHAR(100),
    timestamp TIMESTAMPTZ NOT NULL,
    correlation_id VARCHAR(100),
    sequence INTEGER NOT NULL,
    message_id VARCHAR(100),

    CONSTRAINT fk_order FOREIGN KEY (order_id) REFERENCES orders(id),
    CONSTRAINT uq_order_events_sequence UNIQUE (order_id, sequence)
);

CREATE INDEX idx_order_events_order_id ON order_events(order_id);
CREATE INDEX idx_order_events_timestamp ON order_events(timestamp);
CREATE INDEX idx_order_events_correlation_id ON order_events(correlation_id);

CREATE TABLE order_requests (
    request_id VARCHAR(36) PRIMARY KEY,
    order_id VARCHAR(36) NOT NULL REFERENCES orders(id),
    kind VARCHAR(10) NOT NULL CHECK (kind IN ('NEW', 'CANCEL', 'REPLACE')),
    terms JSONB NOT NULL DEFAULT '{}'::jsonb,
    status VARCHAR(12) NOT NULL DEFAULT 'PENDING',
    reason TEXT,
    created_by VARCHAR(100),
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_order_requests_order_id ON order_requests(order_id);

CREATE TABLE inbox (
    stage VARCHAR(40) NOT NULL,
    message_id VARCHAR(100) NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (stage, message_id)
);
CREATE INDEX idx_inbox_processed_at ON inbox(processed_at);

CREATE TABLE outbox (
    id BIGSERIAL PRIMARY KEY,
    message_id VARCHAR(100) NOT NULL UNIQUE,
    exchange VARCHAR(100) NOT NULL,
    routing_key VARCHAR(255) NOT NULL,
    type VARCHAR(50) NOT NULL,
    correlation_id VARCHAR(100),
    headers JSONB NOT NULL DEFAULT '{}'::jsonb,
    body TEXT NOT NULL,
    claimed BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at TIMESTAMPTZ
);
CREATE INDEX idx_outbox_unsent ON outbox(created_at) WHERE sent_at IS NULL;

CREATE TABLE message_failures (
    stage VARCHAR(40) NOT NULL,
    message_id VARCHAR(100) NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    last_failed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (stage, message_id)
);

CREATE TABLE trade_confirmations (
    id VARCHAR(36) PRIMARY KEY,
    order_id VARCHAR(36) NOT NULL REFERENCES orders(id),
    execution_id VARCHAR(100) NOT NULL,
    account_id VARCHAR(36) NOT NULL REFERENCES accounts(id),
    symbol VARCHAR(20) NOT NULL,
    side VARCHAR(10) NOT NULL,
    quantity DECIMAL(20, 8) NOT NULL,
    price DECIMAL(20, 8) NOT NULL,
    gross_amount DECIMAL(20, 8) NOT NULL,
    fees DECIMAL(20, 8) NOT NULL,
    net_amount DECIMAL(20, 8) NOT NULL,
    currency VARCHAR(3) NOT NULL,
    venue VARCHAR(50),
    trade_date DATE NOT NULL,
    settlement_date DATE NOT NULL,
    reversal BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT uq_trade_confirmations_execution UNIQUE (execution_id, reversal)
);
CREATE INDEX idx_trade_confirmations_order_id ON trade_confirmations(order_id);

CREATE TABLE settlement_instructions (
    id VARCHAR(36) PRIMARY KEY,
    confirmation_id VARCHAR(36) NOT NULL UNIQUE REFERENCES trade_confirmations(id),
    order_id VARCHAR(36) NOT NULL REFERENCES orders(id),
    account_id VARCHAR(36) NOT NULL REFERENCES accounts(id),
    symbol VARCHAR(20) NOT NULL,
    securities_direction VARCHAR(8) NOT NULL CHECK (securities_direction IN ('RECEIVE', 'DELIVER')),
    quantity DECIMAL(20, 8) NOT NULL,
    cash_amount DECIMAL(20, 8) NOT NULL,
    currency VARCHAR(3) NOT NULL,
    settlement_date DATE NOT NULL,
    status VARCHAR(12) NOT NULL DEFAULT 'PENDING',
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_settlement_instructions_order_id ON settlement_instructions(order_id);

CREATE TABLE positions (
    account_id VARCHAR(36) NOT NULL REFERENCES accounts(id),
    symbol VARCHAR(20) NOT NULL,
    quantity DECIMAL(20, 8) NOT NULL DEFAULT 0,
    average_cost DECIMAL(20, 8) NOT NULL DEFAULT 0,
    realized_pnl DECIMAL(20, 8) NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (account_id, symbol)
);

-- Read model. Instruments are LEFT JOINed so an order rejected for an unknown symbol stays visible.
CREATE VIEW order_summary AS
SELECT
    o.id,
    o.account_id,
    o.symbol,
    o.side,
    o.type,
    o.status,
    o.quantity,
    o.filled_quantity,
    o.price,
    o.stop_price,
    o.average_execution_price,
    o.time_in_force,
    o.strategy_id,
    o.broker_order_id,
    o.created_at,
    o.updated_at,
    a.name AS account_name,
    i.name AS instrument_name,
    i.asset_class,
    i.currency,
    (CASE
        WHEN o.side = 'BUY' THEN o.filled_quantity * o.average_execution_price
        ELSE -o.filled_quantity * o.average_execution_price
    END) AS notional_value,
    (SELECT SUM(fees) FROM execution_reports WHERE order_id = o.id) AS total_fees,
    o.rejection_reason,
    o.rejection_code,
    o.notes,
    o.state,
    o.client_order_id,
    o.overfilled,
    o.pending_request,
    o.version
FROM
    orders o
JOIN
    accounts a ON o.account_id = a.id
LEFT JOIN
    instruments i ON o.symbol = i.symbol;

CREATE MATERIALIZED VIEW daily_order_statistics AS
SELECT
    DATE_TRUNC('day', created_at AT TIME ZONE 'UTC') AS trade_date,
    account_id,
    COUNT(*) AS total_orders,
    SUM(CASE WHEN status = 'FILLED' THEN 1 ELSE 0 END) AS filled_orders,
    SUM(CASE WHEN status = 'CANCELED' THEN 1 ELSE 0 END) AS canceled_orders,
    SUM(CASE WHEN status = 'REJECTED' THEN 1 ELSE 0 END) AS rejected_orders,
    SUM(CASE WHEN side = 'BUY' AND status = 'FILLED'
        THEN filled_quantity * average_execution_price ELSE 0 END) AS buy_notional,
    SUM(CASE WHEN side = 'SELL' AND status = 'FILLED'
        THEN filled_quantity * average_execution_price ELSE 0 END) AS sell_notional
FROM
    orders
GROUP BY
    DATE_TRUNC('day', created_at AT TIME ZONE 'UTC'), account_id;

CREATE UNIQUE INDEX idx_daily_order_statistics_date_account ON daily_order_statistics(trade_date, account_id);
"""

DOWNGRADE = """
DROP MATERIALIZED VIEW IF EXISTS daily_order_statistics;
DROP VIEW IF EXISTS order_summary;
DROP TABLE IF EXISTS positions;
DROP TABLE IF EXISTS settlement_instructions;
DROP TABLE IF EXISTS trade_confirmations;
DROP TABLE IF EXISTS message_failures;
DROP TABLE IF EXISTS outbox;
DROP TABLE IF EXISTS inbox;
DROP TABLE IF EXISTS order_requests;
DROP TABLE IF EXISTS order_events;
DROP TABLE IF EXISTS execution_reports;
DROP TABLE IF EXISTS orders;
DROP TABLE IF EXISTS instruments;
DROP TABLE IF EXISTS accounts;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
