"""SQLAlchemy Core tables of the risk gate (migration 0002), on the shared metadata.

They belong beside the others in ``common.store.tables``; until that shared module takes them they live here,
on a metadata of their own so that the move cannot define a table twice.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Integer, MetaData, Numeric, String, Table, Text
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()


def _decimal(name: str, precision: int = 20, scale: int = 8) -> Column[object]:
    return Column(name, Numeric(precision, scale, asdecimal=True))


def _ts(name: str) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=False)


risk_limits = Table(
    "risk_limits",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("account_id", String(36)),
    _decimal("max_order_quantity"),
    _decimal("max_order_notional"),
    _decimal("price_collar_percent", 9, 4),
    _decimal("max_position_quantity"),
    _decimal("max_gross_exposure"),
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
    _decimal("price"),
    Column("source", String(40), nullable=False),
    _ts("as_of"),
    _ts("received_at"),
)
