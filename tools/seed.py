"""``oms seed``: load demo reference data (accounts, instruments). Idempotent."""

from __future__ import annotations

import argparse
from datetime import time
from decimal import Decimal

from sqlalchemy import Connection, create_engine
from sqlalchemy.dialects.postgresql import insert

from common.settings import load_settings
from common.store import tables

DEMO_ACCOUNTS = [
    {
        "id": "ACC-001",
        "name": "Alpha Fund (margin)",
        "account_type": "MARGIN",
        "cash_balance": Decimal("10000000"),
    },
    {
        "id": "ACC-002",
        "name": "Beta Fund (margin)",
        "account_type": "MARGIN",
        "cash_balance": Decimal("5000000"),
    },
    {
        "id": "ACC-003",
        "name": "Gamma Retail (cash)",
        "account_type": "CASH",
        "cash_balance": Decimal("250000"),
    },
]

_US = {"session_open": time(9, 30), "session_close": time(16, 0), "session_timezone": "America/New_York"}

DEMO_INSTRUMENTS = [
    {
        "symbol": "AAPL",
        "name": "Apple Inc.",
        "asset_class": "EQUITY",
        "currency": "USD",
        "tick_size": Decimal("0.01"),
        "lot_size": Decimal("1"),
        "reference_price": Decimal("190.00"),
        **_US,
    },
    {
        "symbol": "MSFT",
        "name": "Microsoft Corp.",
        "asset_class": "EQUITY",
        "currency": "USD",
        "tick_size": Decimal("0.01"),
        "lot_size": Decimal("1"),
        "reference_price": Decimal("410.00"),
        **_US,
    },
    {
        "symbol": "SPY",
        "name": "SPDR S&P 500 ETF",
        "asset_class": "ETF",
        "currency": "USD",
        "tick_size": Decimal("0.01"),
        "lot_size": Decimal("1"),
        "reference_price": Decimal("520.00"),
        **_US,
    },
    {
        "symbol": "VOD",
        "name": "Vodafone Group",
        "asset_class": "EQUITY",
        "currency": "GBP",
        "tick_size": Decimal("0.02"),
        "lot_size": Decimal("100"),
        "reference_price": Decimal("70.00"),
        "session_open": time(8, 0),
        "session_close": time(16, 30),
        "session_timezone": "Europe/London",
    },
    {
        "symbol": "ESZ6",
        "name": "E-mini S&P 500 Dec 2026",
        "asset_class": "FUTURE",
        "currency": "USD",
        "tick_size": Decimal("0.25"),
        "lot_size": Decimal("1"),
        "reference_price": Decimal("5200.00"),
        "settlement_days": 0,
    },
    {
        "symbol": "BTCUSD",
        "name": "Bitcoin / US Dollar",
        "asset_class": "CRYPTO",
        "currency": "USD",
        "tick_size": Decimal("0.01"),
        "lot_size": Decimal("0.0001"),
        "reference_price": Decimal("65000.00"),
        "settlement_days": 0,
    },
    {
        "symbol": "HALT",
        "name": "Halted Corp. (not tradable)",
        "asset_class": "EQUITY",
        "currency": "USD",
        "tick_size": Decimal("0.01"),
        "lot_size": Decimal("1"),
        "reference_price": Decimal("10.00"),
        "tradable": False,
        **_US,
    },
]


def seed_demo(connection: Connection) -> None:
    """Insert the demo accounts and instruments, updating those already there."""
    for account in DEMO_ACCOUNTS:
        values = {"base_currency": "USD", "active": True, **account}
        stmt = insert(tables.accounts).values(**values)
        connection.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=dict(values)))
    for instrument in DEMO_INSTRUMENTS:
        values = {
            "tradable": True,
            "settlement_days": None,
            "session_open": None,
            "session_close": None,
            "session_timezone": None,
            **instrument,
        }
        stmt = insert(tables.instruments).values(**values)
        connection.execute(stmt.on_conflict_do_update(index_elements=["symbol"], set_=dict(values)))


def main(argv: list[str]) -> int:
    """Entry point of ``oms seed``."""
    parser = argparse.ArgumentParser(prog="oms seed", description="load demo accounts and instruments")
    parser.add_argument("--url", default=None, help="database URL (default: OMS_DATABASE_URL)")
    args = parser.parse_args(argv)
    engine = create_engine(args.url or load_settings().infra.database_url)
    with engine.begin() as connection:
        seed_demo(connection)
    engine.dispose()
    print(f"seeded {len(DEMO_ACCOUNTS)} accounts and {len(DEMO_INSTRUMENTS)} instruments")
    return 0
