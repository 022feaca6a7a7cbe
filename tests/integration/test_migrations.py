"""The schema: migrations go down and up again, and the order-type rule holds in the database itself."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from tools import migrate
from tools.seed import seed_demo

pytestmark = pytest.mark.integration

EXPECTED_TABLES = {
    "accounts",
    "instruments",
    "orders",
    "execution_reports",
    "order_events",
    "order_requests",
    "inbox",
    "outbox",
    "message_failures",
    "trade_confirmations",
    "settlement_instructions",
    "positions",
}


def _order_row(**overrides: object) -> dict[str, object]:
    now = datetime.now(UTC)
    row: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "account_id": "ACC-001",
        "symbol": "AAPL",
        "side": "BUY",
        "type": "LIMIT",
        "status": "PENDING",
        "state": "NEW",
        "quantity": 10,
        "price": 100,
        "stop_price": None,
        "tif": "DAY",
        "now": now,
    }
    row.update(overrides)
    return row


INSERT_ORDER = text(
    "INSERT INTO orders (id, account_id, symbol, side, type, status, state, quantity, price, stop_price, "
    "time_in_force, created_at, updated_at) VALUES (:id, :account_id, :symbol, :side, :type, :status, :state, "
    ":quantity, :price, :stop_price, :tif, :now, :now)"
)


def test_downgrade_to_base_and_upgrade_again(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        migrate.downgrade(database_url, "base")
        assert EXPECTED_TABLES.isdisjoint(inspect(engine).get_table_names())
        migrate.upgrade(database_url, "head")
        inspector = inspect(engine)
        assert EXPECTED_TABLES <= set(inspector.get_table_names())
        assert "order_summary" in inspector.get_view_names()
        assert "daily_order_statistics" in inspector.get_materialized_view_names()
        with engine.connect() as connection:
            version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        assert version is not None
    finally:
        engine.dispose()


def test_check_constraint_rejects_limit_order_without_price(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            seed_demo(connection)
        with pytest.raises(IntegrityError, match="chk_order_type"), engine.begin() as connection:
            connection.execute(INSERT_ORDER, _order_row(price=None))
        with pytest.raises(IntegrityError, match="chk_order_type"), engine.begin() as connection:
            connection.execute(INSERT_ORDER, _order_row(type="MARKET", price=100))
        with pytest.raises(IntegrityError, match="chk_order_type"), engine.begin() as connection:
            connection.execute(INSERT_ORDER, _order_row(type="STOP_LIMIT", stop_price=None))
        with pytest.raises(IntegrityError, match="chk_order_quantity"), engine.begin() as connection:
            connection.execute(INSERT_ORDER, _order_row(quantity=0))
        with engine.begin() as connection:
            connection.execute(INSERT_ORDER, _order_row())
            # A decision that broke the rule is still booked, as REJECTED with its reason.
            connection.execute(INSERT_ORDER, _order_row(price=None, status="REJECTED", state="REJECTED"))
            connection.execute(INSERT_ORDER, _order_row(type="STOP", price=None, stop_price=95))
    finally:
        engine.dispose()


def test_read_model_views_answer(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            seed_demo(connection)
            row = _order_row(status="FILLED", state="FILLED")
            connection.execute(INSERT_ORDER, row)
            connection.execute(
                text("UPDATE orders SET filled_quantity = 10, average_execution_price = 100 WHERE id = :id"),
                {"id": row["id"]},
            )
            summary = connection.execute(
                text("SELECT account_name, instrument_name, notional_value FROM order_summary WHERE id = :id"),
                {"id": row["id"]},
            ).one()
            assert summary.account_name.startswith("Alpha")
            assert summary.instrument_name == "Apple Inc."
            assert summary.notional_value == 1000
            connection.execute(text("REFRESH MATERIALIZED VIEW daily_order_statistics"))
            stats = connection.execute(
                text(
                    "SELECT sum(filled_orders), sum(buy_notional) FROM daily_order_statistics "
                    "WHERE account_id = 'ACC-001'"
                )
            ).one()
            assert stats[0] >= 1 and stats[1] >= 1000
    finally:
        engine.dispose()
