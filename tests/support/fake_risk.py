"""The risk gate's store (``services.risk_gate.store.RiskStore``) in memory, on a ``FakeStore``.

It stands for the two statements of ``prepare_batch``: it builds the same fact rows (one per account, limit row,
halt, restriction, position, group of open orders, instrument, feed price, unsettled cash and recent order; see
``_LOAD``) from the store and from ``FakeRiskTables``, and hands them to ``fill_batch``, which builds the batch
as it does for Postgres. The orders it counts are those the unit of work sees (its own approvals included).
Limits inherit as ``risk_limits`` rows do: an account's row over the global row (account None).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from common.risk.controls import Halt, Restriction
from services.risk_gate.prices import FeedPrice, PriceSettings
from services.risk_gate.store import (
    NOT_PASSED_STATES,
    OPEN_STATES,
    RISK_STORE,
    OrderMeta,
    RiskBatch,
    fill_batch,
    resolve_limits,
)
from tests.support.fake_store import FakeStore, FakeUnitOfWork

_ZERO = Decimal(0)
Row = tuple[Any, ...]


def _default_limits() -> dict[str | None, dict[str, Any]]:
    # The global row migration 0002 writes.
    return {None: {"account_id": None, "max_order_quantity": Decimal(1000000), "max_order_notional": Decimal(50000000)}}


@dataclass
class FakeRiskTables:
    """What operations set for the gate: ``risk_limits`` rows by account (None: the global row), halts,
    restricted symbols, and the feed's latest prices."""

    limits: dict[str | None, dict[str, Any]] = field(default_factory=_default_limits)
    halts: list[Halt] = field(default_factory=list)
    restrictions: list[Restriction] = field(default_factory=list)
    feed: dict[str, FeedPrice] = field(default_factory=dict)

    def set_limits(self, account_id: str | None, **values: Any) -> None:
        """Set limits of an account (or the global ones), as ``oms risk set`` does."""
        row = self.limits.setdefault(account_id, {"account_id": account_id})
        row.update(values)


class FakeRiskStore:
    """``RiskStore`` on a fake unit of work."""

    def __init__(self, uow: FakeUnitOfWork, tables: FakeRiskTables) -> None:
        self._uow = uow
        self._tables = tables
        self.prepared: RiskBatch | None = None

    def load(self, metas: Mapping[str, OrderMeta], now: datetime, price_settings: PriceSettings) -> RiskBatch:
        """What the rules need for these orders, from the store and the tables."""
        batch = RiskBatch(order_ids=frozenset(metas), price_settings=price_settings)
        account_ids = sorted({m.account_id for m in metas.values()})
        if not account_ids:
            return batch
        rows = [r for r in self._tables.limits.values() if r["account_id"] is None or r["account_id"] in account_ids]
        batch.global_limits, batch.limits = resolve_limits(rows, account_ids)
        symbols = {m.symbol for m in metas.values()}
        strategies = {m.strategy_id for m in metas.values() if m.strategy_id is not None}
        fill_batch(batch, list(self._facts(set(account_ids), symbols, strategies)), now)
        return batch

    def _facts(self, accounts: set[str], symbols: set[str], strategies: set[str]) -> Iterator[Row]:
        """``_LOAD``'s rows: (kind, account_id, symbol, s1, s2, s3, n1, n2, n3, i1, b1, ts, t1, t2)."""
        store: FakeStore = self._uow.store
        orders = self._uow.orders.visible()
        wanted = set(symbols)
        for (account_id, symbol), position in store.positions.items():
            if account_id in accounts and position.quantity != _ZERO:
                wanted.add(symbol)
                yield _row("P", account_id, symbol, n1=position.quantity, n2=position.average_cost)
        groups: dict[tuple[str, str, str], list[Any]] = defaultdict(lambda: [0, _ZERO, _ZERO, _ZERO])
        for order in orders:
            if order.account_id in accounts and order.state.value in OPEN_STATES:
                wanted.add(order.symbol)
                group = groups[(order.account_id, order.symbol, order.side.value)]
                leaves = max(order.quantity - order.filled_quantity, _ZERO)
                priced = order.price if order.price is not None else order.stop_price
                group[0] += 1
                group[1] += leaves
                if priced is not None:
                    group[2] += leaves * priced
                else:
                    group[3] += leaves
        for (account_id, symbol, side), (count, leaves, cost, market) in groups.items():
            yield _row("O", account_id, symbol, s1=side, n1=leaves, n2=cost, n3=market, i1=count)
        for account_id in sorted(accounts):
            account = store.accounts.get(account_id)
            if account is not None:
                yield _row("A", account_id, s1=account.account_type, n1=account.cash_balance, b1=account.active)
                if account.account_type == "CASH":
                    pending = [
                        i["cash_amount"]
                        for i in store.instructions
                        if i["account_id"] == account_id and i["status"] == "PENDING"
                    ]
                    yield _row("C", account_id, n1=sum(pending, _ZERO) if pending else None)
        for halt in self._tables.halts:
            if halt.account_id is None or halt.account_id in accounts:
                yield _row("H", halt.account_id, s1=halt.reason, s2=halt.halted_by, ts=halt.since)
        for restriction in self._tables.restrictions:
            if restriction.symbol in symbols and (restriction.account_id is None or restriction.account_id in accounts):
                yield _row("R", restriction.account_id, restriction.symbol, s1=restriction.reason)
        for symbol in sorted(wanted):
            instrument = store.instruments.get(symbol)
            if instrument is not None:
                yield _row(
                    "I",
                    symbol=symbol,
                    s1=instrument.session_timezone,
                    n1=instrument.reference_price,
                    b1=instrument.tradable,
                    t1=instrument.session_open,
                    t2=instrument.session_close,
                )
            feed = self._tables.feed.get(symbol)
            if feed is not None:
                yield _row("F", symbol=symbol, s1=feed.source, n1=feed.price, ts=feed.as_of)
        # Every order that passed the gate: the rules look at the windows themselves.
        for order in orders:
            if order.state.value in NOT_PASSED_STATES:
                continue
            recent = (order.id, order.strategy_id, order.side.value, order.quantity, order.price, order.stop_price)
            s1, s2, s3, n1, n2, n3 = recent
            if order.account_id in accounts:
                yield _row("X", order.account_id, order.symbol, s1, s2, s3, n1, n2, n3, ts=order.created_at)
            if order.strategy_id in strategies:
                yield _row("Y", order.account_id, order.symbol, s1, s2, s3, n1, n2, n3, ts=order.created_at)

    def flush(self) -> None:
        """Read only."""

    def reset(self) -> None:
        """Forget the prepared batch."""
        self.prepared = None


def _row(
    kind: str,
    account_id: str | None = None,
    symbol: str | None = None,
    s1: Any = None,
    s2: Any = None,
    s3: Any = None,
    n1: Any = None,
    n2: Any = None,
    n3: Any = None,
    *,
    i1: Any = None,
    b1: Any = None,
    ts: Any = None,
    t1: Any = None,
    t2: Any = None,
) -> Row:
    return (kind, account_id, symbol, s1, s2, s3, n1, n2, n3, i1, b1, ts, t1, t2)


def provide_risk_store(store: FakeStore, tables: FakeRiskTables | None = None) -> FakeRiskTables:
    """Give ``store``'s units of work an in-memory risk store; returns its tables, for the test to set."""
    tables = tables or FakeRiskTables()
    store.provide(RISK_STORE, lambda uow: FakeRiskStore(uow, tables))
    return tables
