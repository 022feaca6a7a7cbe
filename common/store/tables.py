"""SQLAlchemy Core tables, mirroring the Alembic migrations (which stay the source of the schema)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    Time,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()


def _money(name: str, nullable: bool = True) -> Column[object]:
    # asdecimal keeps Decimal end to end; 20,8 is the specification's DECIMAL(20, 8).
    return Column(name, Numeric(20, 8, asdecimal=True), nullable=nullable)


def _decimal(name: str, precision: int, scale: int) -> Column[object]:
    # Columns narrower than money (a percentage, seconds); nullable: NULL means inherit.
    return Column(name, Numeric(precision, scale, asdecimal=True))


def _ts(name: str, nullable: bool = False) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


accounts = Table(
    "accounts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("account_type", String(10), nullable=False),
    Column("base_currency", String(3), nullable=False),
    _money("cash_balance", nullable=False),
    Column("active", Boolean, nullable=False),
    _ts("created_at"),
)

instruments = Table(
    "instruments",
    metadata,
    Column("symbol", String(20), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("asset_class", String(20), nullable=False),
    Column("currency", String(3), nullable=False),
    _money("tick_size", nullable=False),
    _money("lot_size", nullable=False),
    Column("tradable", Boolean, nullable=False),
    Column("settlement_days", Integer),
    Column("session_open", Time),
    Column("session_close", Time),
    Column("session_timezone", String(40)),
    _money("reference_price"),
    _ts("created_at"),
)

orders = Table(
    "orders",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("account_id", String(36), nullable=False),
    Column("symbol", String(20), nullable=False),
    Column("side", String(10), nullable=False),
    Column("type", String(15), nullable=False),
    Column("status", String(20), nullable=False),
    _money("quantity", nullable=False),
    _money("filled_quantity", nullable=False),
    _money("price"),
    _money("stop_price"),
    _money("average_execution_price"),
    Column("time_in_force", String(10), nullable=False),
    Column("strategy_id", String(36)),
    Column("broker_order_id", String(100)),
    Column("rejection_reason", Text),
    Column("notes", Text),
    _ts("created_at"),
    _ts("updated_at"),
    Column("state", String(20), nullable=False),
    Column("client_order_id", String(100)),
    Column("rejection_code", String(50)),
    _money("fees", nullable=False),
    Column("overfilled", Boolean, nullable=False),
    _money("unreported_quantity", nullable=False),
    Column("pending_request", JSONB),
    Column("created_by", String(100)),
    Column("version", Integer, nullable=False),
    # The hash of the order's last event (common/store/event_chain.py); NULL while it has none.
    Column("last_event_hash", LargeBinary),
)

execution_reports = Table(
    "execution_reports",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("order_id", String(36), nullable=False),
    Column("execution_id", String(100), nullable=False),
    _money("quantity", nullable=False),
    _money("price", nullable=False),
    _ts("timestamp"),
    _money("fees", nullable=False),
    Column("venue", String(50)),
    Column("exec_type", String(20), nullable=False),
    Column("request_id", String(36)),
    Column("broker_order_id", String(100)),
    _money("cum_qty"),
    _money("leaves_qty"),
    _money("avg_px"),
    Column("exec_ref_id", String(100)),
    Column("reason", Text),
    Column("busted", Boolean, nullable=False),
    _ts("received_at"),
    _money("last_qty"),
    _money("last_px"),
    _money("unreported_delta", nullable=False),
)

order_events = Table(
    "order_events",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("order_id", String(36), nullable=False),
    Column("type", String(50), nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("user_id", String(100)),
    _ts("timestamp"),
    Column("correlation_id", String(100)),
    Column("sequence", Integer, nullable=False),
    Column("message_id", String(100)),
    # The hash chain (migration 0007): the previous event's hash, and this row's over it and its fields.
    Column("prev_hash", LargeBinary, nullable=False),
    Column("hash", LargeBinary, nullable=False),
)

# What retention dropped of an order's chain (migration 0007): one row per order whose events it deleted.
purged_order_chains = Table(
    "purged_order_chains",
    metadata,
    Column("order_id", String(36), primary_key=True),
    Column("last_sequence", Integer, nullable=False),
    Column("last_event_hash", LargeBinary, nullable=False),
    Column("retention_days", Integer, nullable=False),
    _ts("cutoff"),
    _ts("purged_at"),
    Column("purged_by", String(100), nullable=False),
)

order_requests = Table(
    "order_requests",
    metadata,
    Column("request_id", String(36), primary_key=True),
    Column("order_id", String(36), nullable=False),
    Column("kind", String(10), nullable=False),
    Column("terms", JSONB, nullable=False),
    Column("status", String(12), nullable=False),
    Column("reason", Text),
    Column("created_by", String(100)),
    _ts("created_at"),
    _ts("updated_at"),
)

inbox = Table(
    "inbox",
    metadata,
    Column("stage", String(40), primary_key=True),
    Column("message_id", String(100), primary_key=True),
    _ts("processed_at"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("message_id", String(100), nullable=False),
    Column("exchange", String(100), nullable=False),
    Column("routing_key", String(255), nullable=False),
    Column("type", String(50), nullable=False),
    Column("correlation_id", String(100)),
    Column("headers", JSONB, nullable=False),
    Column("body", Text, nullable=False),
    Column("claimed", Boolean, nullable=False),
    _ts("created_at"),
    _ts("sent_at", nullable=True),
)

message_failures = Table(
    "message_failures",
    metadata,
    Column("stage", String(40), primary_key=True),
    Column("message_id", String(100), primary_key=True),
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    _ts("last_failed_at"),
)

trade_confirmations = Table(
    "trade_confirmations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("order_id", String(36), nullable=False),
    Column("execution_id", String(100), nullable=False),
    Column("account_id", String(36), nullable=False),
    Column("symbol", String(20), nullable=False),
    Column("side", String(10), nullable=False),
    _money("quantity", nullable=False),
    _money("price", nullable=False),
    _money("gross_amount", nullable=False),
    _money("fees", nullable=False),
    _money("net_amount", nullable=False),
    Column("currency", String(3), nullable=False),
    Column("venue", String(50)),
    Column("trade_date", Date, nullable=False),
    Column("settlement_date", Date, nullable=False),
    Column("reversal", Boolean, nullable=False),
    _ts("created_at"),
)

settlement_instructions = Table(
    "settlement_instructions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("confirmation_id", String(36), nullable=False),
    Column("order_id", String(36), nullable=False),
    Column("account_id", String(36), nullable=False),
    Column("symbol", String(20), nullable=False),
    Column("securities_direction", String(8), nullable=False),
    _money("quantity", nullable=False),
    _money("cash_amount", nullable=False),
    Column("currency", String(3), nullable=False),
    Column("settlement_date", Date, nullable=False),
    Column("status", String(12), nullable=False),
    _ts("created_at"),
)

positions = Table(
    "positions",
    metadata,
    Column("account_id", String(36), primary_key=True),
    Column("symbol", String(20), primary_key=True),
    _money("quantity", nullable=False),
    _money("average_cost", nullable=False),
    _money("realized_pnl", nullable=False),
    _ts("updated_at"),
)

# ---- risk gate (migration 0002) ----------------------------------------------------------------------------
# A NULL account_id is the global scope; a NULL limit inherits the global value (globally: the rule is off).

risk_limits = Table(
    "risk_limits",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("account_id", String(36)),
    _money("max_order_quantity"),
    _money("max_order_notional"),
    _decimal("price_collar_percent", 9, 4),
    _money("max_position_quantity"),
    _money("max_gross_exposure"),
    Column("max_open_orders", Integer),
    Column("max_orders_per_second", Integer),
    Column("max_strategy_orders_per_second", Integer),
    _decimal("duplicate_window_seconds", 10, 3),
    Column("enforce_trading_session", Boolean),
    _ts("updated_at"),
    Column("updated_by", String(100)),
)

restricted_symbols = Table(
    "restricted_symbols",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("account_id", String(36)),
    Column("symbol", String(20), nullable=False),
    Column("reason", Text),
    Column("created_by", String(100)),
    _ts("created_at"),
)

trading_halts = Table(
    "trading_halts",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("account_id", String(36)),
    Column("reason", Text, nullable=False),
    Column("halted_by", String(100)),
    _ts("since"),
)

risk_limit_changes = Table(
    "risk_limit_changes",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    _ts("changed_at"),
    Column("changed_by", String(100)),
    Column("account_id", String(36)),
    Column("kind", String(20), nullable=False),
    Column("item", String(50), nullable=False),
    Column("old_value", JSONB),
    Column("new_value", JSONB),
    Column("reason", Text),
)

reference_prices = Table(
    "reference_prices",
    metadata,
    Column("symbol", String(20), primary_key=True),
    _money("price"),
    Column("source", String(40), nullable=False),
    _ts("as_of"),
    _ts("received_at"),
)

# The read model (a view): queried, never written.
order_summary = Table(
    "order_summary",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("account_id", String(36)),
    Column("symbol", String(20)),
    Column("side", String(10)),
    Column("type", String(15)),
    Column("status", String(20)),
    _money("quantity"),
    _money("filled_quantity"),
    _money("price"),
    _money("stop_price"),
    _money("average_execution_price"),
    Column("time_in_force", String(10)),
    Column("strategy_id", String(36)),
    Column("broker_order_id", String(100)),
    _ts("created_at"),
    _ts("updated_at"),
    Column("account_name", String(100)),
    Column("instrument_name", String(200)),
    Column("asset_class", String(20)),
    Column("currency", String(3)),
    _money("notional_value"),
    _money("total_fees"),
    Column("rejection_reason", Text),
    Column("rejection_code", String(50)),
    Column("notes", Text),
    Column("state", String(20)),
    Column("client_order_id", String(100)),
    Column("overfilled", Boolean),
    Column("pending_request", JSONB),
    Column("version", Integer),
)

# Operations (migration 0003): dead-letter replay audit, job runs, reconciliations.
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
