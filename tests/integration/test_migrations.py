"""The schema: migrations go down and up again, and the order-type rule holds in the database itself."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from tools import migrate
from tools.infra import InfraUrls
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


@pytest.fixture
def empty_database_url(infra_urls: InfraUrls) -> Iterator[str]:
    """A database of its own that no migration has touched, dropped at the end."""
    from tools import infra

    name = f"oms_migrate_{uuid.uuid4().hex[:8]}"
    url = infra.create_database(name, infra_urls.database_url)
    try:
        yield url
    finally:
        infra.drop_database(name, infra_urls.database_url)


def test_status_and_history_follow_a_fresh_database_up_to_head(
    empty_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = empty_database_url
    every = [s.revision for s in reversed(list(migrate.scripts().walk_revisions()))]
    head = every[-1]
    assert len(every) >= 3

    fresh = migrate.status(url)
    assert fresh.current == () and fresh.heads == (head,) and not fresh.up_to_date
    assert [s.revision for s in fresh.pending] == every  # all of them, oldest first
    assert migrate.main(["status", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "current   none (no migration applied)" in out
    assert f"pending   {len(every)} " in out
    assert "***" in out and ":oms@" not in out  # the password is not printed

    middle = every[1]
    migrate.upgrade(url, middle)
    halfway = migrate.status(url)
    assert halfway.current == (middle,)
    assert [s.revision for s in halfway.pending] == every[2:]
    assert migrate.main(["history", "--url", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] if line.startswith("*") else line.split()[0] for line in lines] == every
    marked = [line for line in lines if line.startswith("*")]
    assert len(marked) == 1 and marked[0].startswith(f"* {middle}  ") and "(current)" in marked[0]
    assert lines[-1].endswith("(head, pending)")
    for script, line in zip(reversed(list(migrate.scripts().walk_revisions())), lines, strict=True):
        assert " ".join((script.doc or "").split()) in line  # each with its message

    migrate.main(["up", "--url", url])
    done = migrate.status(url)
    assert done.current == (head,) and done.up_to_date
    assert migrate.main(["status", "--url", url]) == 0
    assert "pending   none: up to date" in capsys.readouterr().out
    migrate.main(["history", "--url", url])
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"* {head}  ")
