"""Reference data: accounts and instruments, read within the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time
from decimal import Decimal

from sqlalchemy import Connection, select

from common.store import tables


@dataclass(frozen=True)
class Account:
    """A trading account."""

    id: str
    name: str
    account_type: str
    base_currency: str
    cash_balance: Decimal
    active: bool


@dataclass(frozen=True)
class Instrument:
    """A tradable instrument with its tick, lot and session."""

    symbol: str
    name: str
    asset_class: str
    currency: str
    tick_size: Decimal
    lot_size: Decimal
    tradable: bool
    settlement_days: int | None
    session_open: time | None
    session_close: time | None
    session_timezone: str | None
    reference_price: Decimal | None


class ReferenceData:
    """Looks up accounts and instruments."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def account(self, account_id: str) -> Account | None:
        """The account, or None if unknown."""
        row = (
            self._connection.execute(
                select(
                    tables.accounts.c.id,
                    tables.accounts.c.name,
                    tables.accounts.c.account_type,
                    tables.accounts.c.base_currency,
                    tables.accounts.c.cash_balance,
                    tables.accounts.c.active,
                ).where(tables.accounts.c.id == account_id)
            )
            .mappings()
            .first()
        )
        return None if row is None else Account(**row)

    def instrument(self, symbol: str) -> Instrument | None:
        """The instrument, or None if unknown."""
        columns = [c for c in tables.instruments.c if c.name != "created_at"]
        row = self._connection.execute(select(*columns).where(tables.instruments.c.symbol == symbol)).mappings().first()
        return None if row is None else Instrument(**row)
