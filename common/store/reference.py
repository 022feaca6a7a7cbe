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
        self.reset()

    def reset(self) -> None:
        """Forget what was read (a batch reads each account and instrument once)."""
        self._accounts: dict[str, Account | None] = {}
        self._instruments: dict[str, Instrument | None] = {}

    def account(self, account_id: str) -> Account | None:
        """The account, or None if unknown."""
        if account_id not in self._accounts:
            self._accounts[account_id] = self._load_account(account_id)
        return self._accounts[account_id]

    def instrument(self, symbol: str) -> Instrument | None:
        """The instrument, or None if unknown."""
        if symbol not in self._instruments:
            self._instruments[symbol] = self._load_instrument(symbol)
        return self._instruments[symbol]

    def _load_account(self, account_id: str) -> Account | None:
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

    def _load_instrument(self, symbol: str) -> Instrument | None:
        columns = [c for c in tables.instruments.c if c.name != "created_at"]
        row = self._connection.execute(select(*columns).where(tables.instruments.c.symbol == symbol)).mappings().first()
        return None if row is None else Instrument(**row)
