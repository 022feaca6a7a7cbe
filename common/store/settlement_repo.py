"""Settlement's tables: trade confirmations, settlement instructions and positions (caller's transaction)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, exists, select, update
from sqlalchemy.dialects.postgresql import insert

from common.store import tables

_ZERO = Decimal(0)


@dataclass(frozen=True)
class Position:
    """An account's holding of a symbol: signed quantity (negative = short), average cost, realized P&L."""

    quantity: Decimal = _ZERO
    average_cost: Decimal = _ZERO
    realized_pnl: Decimal = _ZERO


@dataclass(frozen=True)
class BookedTrade:
    """What a confirmation says about the position: who bought or sold how much at what price."""

    execution_id: str
    side: str
    quantity: Decimal
    price: Decimal


@dataclass(frozen=True)
class Confirmation:
    """A stored trade confirmation (the fields settlement needs to reverse it)."""

    id: str
    execution_id: str
    side: str
    quantity: Decimal
    price: Decimal
    fees: Decimal
    trade_date: date
    settlement_date: date


class SettlementRepository:
    """Reads and writes settlement rows through one connection."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def add_confirmation(self, values: Mapping[str, Any]) -> bool:
        """Insert a trade confirmation; False when one for (execution_id, reversal) exists (a duplicate)."""
        stmt = (
            insert(tables.trade_confirmations)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["execution_id", "reversal"])
            .returning(tables.trade_confirmations.c.id)
        )
        return self._connection.execute(stmt).first() is not None

    def confirmation(self, execution_id: str, reversal: bool) -> Confirmation | None:
        """The confirmation of an execution (or of its reversal), if booked."""
        c = tables.trade_confirmations.c
        row = (
            self._connection.execute(
                select(
                    c.id, c.execution_id, c.side, c.quantity, c.price, c.fees, c.trade_date, c.settlement_date
                ).where(c.execution_id == execution_id, c.reversal == reversal)
            )
            .mappings()
            .first()
        )
        return None if row is None else Confirmation(**row)

    def add_instruction(self, values: Mapping[str, Any]) -> None:
        """Insert a settlement instruction."""
        self._connection.execute(insert(tables.settlement_instructions).values(**values))

    def lock_position(self, account_id: str, symbol: str, now: datetime) -> Position:
        """Lock the position row (creating a flat one first), so its writers queue behind each other."""
        self._connection.execute(
            insert(tables.positions)
            .values(
                account_id=account_id,
                symbol=symbol,
                quantity=_ZERO,
                average_cost=_ZERO,
                realized_pnl=_ZERO,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["account_id", "symbol"])
        )
        p = tables.positions.c
        row = (
            self._connection.execute(
                select(p.quantity, p.average_cost, p.realized_pnl)
                .where(p.account_id == account_id, p.symbol == symbol)
                .with_for_update()
            )
            .mappings()
            .one()
        )
        return Position(**row)

    def save_position(self, account_id: str, symbol: str, position: Position, now: datetime) -> None:
        """Write a position locked with ``lock_position``."""
        p = tables.positions.c
        self._connection.execute(
            update(tables.positions)
            .where(p.account_id == account_id, p.symbol == symbol)
            .values(
                quantity=position.quantity,
                average_cost=position.average_cost,
                realized_pnl=position.realized_pnl,
                updated_at=now,
            )
        )

    def standing_trades(self, account_id: str, symbol: str) -> list[BookedTrade]:
        """The account's confirmed trades in the symbol that no reversal undid, in booking order."""
        c = tables.trade_confirmations.c
        reversal = tables.trade_confirmations.alias("reversal")
        undone = exists().where(and_(reversal.c.execution_id == c.execution_id, reversal.c.reversal.is_(True)))
        rows = self._connection.execute(
            select(c.execution_id, c.side, c.quantity, c.price)
            .where(c.account_id == account_id, c.symbol == symbol, c.reversal.is_(False), ~undone)
            .order_by(c.created_at, c.id)
        ).mappings()
        return [BookedTrade(**row) for row in rows]
