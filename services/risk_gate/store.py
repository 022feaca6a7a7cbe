"""What the rules need, read in one place: one set of queries per batch of orders, under per-account locks.

``prepare_batch`` takes a transaction-scoped advisory lock per account (and per throttled strategy) in a
fixed order, so two gate transactions holding orders of the same account serialise (the order locks alone
would not: they are different orders), and loads for the whole batch: accounts, limits, halts, restricted
symbols, positions (as settlement books them), open orders, unsettled cash, recent orders and prices.
``RiskBatch.input_for`` then builds each order's ``RiskInput``; ``record_approval`` adds an approved order
to the batch's books so the next order of the same account in the batch sees it.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, case, func, or_, select, text

from common.domain import OrderState, Side
from common.store import tables
from common.store.tables import reference_prices, restricted_symbols, risk_limits, trading_halts
from services.risk_gate.limits import Limits, resolve
from services.risk_gate.prices import FeedPrice, PriceSettings, best_price, choose_quote
from services.risk_gate.rules import (
    AccountInfo,
    Halt,
    InstrumentInfo,
    OrderTerms,
    Quote,
    RecentOrder,
    Restriction,
    RiskInput,
    SymbolBook,
    valuation_price,
)

_ZERO = Decimal(0)
_ONE_SECOND = timedelta(seconds=1)

# Orders that still hold exposure: approved by the gate and not finished.
OPEN_STATES: tuple[str, ...] = tuple(
    s.value
    for s in (
        OrderState.APPROVED,
        OrderState.ROUTED,
        OrderState.OPEN,
        OrderState.PARTIALLY_FILLED,
        OrderState.PENDING_CANCEL,
        OrderState.PENDING_REPLACE,
    )
)
# Orders that passed the gate at some time (for the throttles and duplicates): all but NEW and REJECTED.
NOT_PASSED_STATES: tuple[str, ...] = (OrderState.NEW.value, OrderState.REJECTED.value)

_LOCK_SQL = text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) WITH ORDINALITY AS t(k, n)")


def lock_key(kind: str, identifier: str) -> int:
    """A stable 64-bit advisory lock key (the same in every process, unlike ``hash``)."""
    digest = hashlib.blake2b(f"oms.risk:{kind}:{identifier}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_scopes(connection: Connection, kind: str, identifiers: Iterable[str]) -> None:
    """Take advisory locks for this transaction in key order. Every gate transaction locks its accounts
    first and its strategies second, each in key order: one global order, so no deadlock."""
    keys = sorted({lock_key(kind, i) for i in identifiers})
    if keys:
        connection.execute(_LOCK_SQL, {"keys": keys})


@dataclass
class _Book:
    position: Decimal = _ZERO
    open_buy: Decimal = _ZERO
    open_sell: Decimal = _ZERO
    average_cost: Decimal | None = None


@dataclass
class _AccountState:
    books: dict[str, _Book] = field(default_factory=lambda: defaultdict(_Book))
    open_orders: int = 0
    open_buy_cost: Decimal = _ZERO
    unsettled_cash: Decimal = _ZERO
    recent: list[RecentOrder] = field(default_factory=list)


@dataclass
class _Instrument:
    info: InstrumentInfo
    reference_price: Decimal | None


@dataclass
class RiskBatch:
    """Everything the rules need for a batch of orders; ``order_ids`` are the orders it was loaded for."""

    order_ids: frozenset[str]
    price_settings: PriceSettings
    accounts: dict[str, AccountInfo] = field(default_factory=dict)
    limits: dict[str, Limits] = field(default_factory=dict)
    global_limits: Limits = field(default_factory=Limits)
    global_halt: Halt | None = None
    halts: dict[str, Halt] = field(default_factory=dict)
    restrictions: dict[tuple[str | None, str], Restriction] = field(default_factory=dict)
    instruments: dict[str, _Instrument] = field(default_factory=dict)
    feed: dict[str, FeedPrice] = field(default_factory=dict)
    states: dict[str, _AccountState] = field(default_factory=lambda: defaultdict(_AccountState))
    strategy_recent: dict[str, list[RecentOrder]] = field(default_factory=lambda: defaultdict(list))

    def covers(self, order_id: str) -> bool:
        """Whether this batch was loaded (and locked) for the order."""
        return order_id in self.order_ids

    def limits_of(self, account_id: str) -> Limits:
        """The limits in force for the account."""
        return self.limits.get(account_id, self.global_limits)

    def _price_of(self, symbol: str, book: _Book | None = None) -> Decimal | None:
        instrument = self.instruments.get(symbol)
        price = best_price(self.feed.get(symbol), instrument.reference_price if instrument else None)
        if price is None and book is not None:
            price = book.average_cost
        return price

    def quote_for(self, symbol: str, now: datetime) -> tuple[Quote | None, str | None]:
        """The reference price of ``symbol`` now, under the configured staleness and fallback."""
        instrument = self.instruments.get(symbol)
        return choose_quote(
            symbol,
            self.feed.get(symbol),
            instrument.reference_price if instrument else None,
            now,
            self.price_settings,
        )

    def input_for(self, terms: OrderTerms, now: datetime, replacing: OrderTerms | None = None) -> RiskInput:
        """The rules' input for ``terms``. ``replacing``: the order's terms now in force (a replace), whose
        open exposure the new terms take the place of."""
        account_id, symbol = terms.account_id, terms.symbol
        state = self.states[account_id]
        quote, problem = self.quote_for(symbol, now)
        books = {
            s: SymbolBook(b.position, b.open_buy, b.open_sell, self._price_of(s, b))
            for s, b in state.books.items()
            if b.position or b.open_buy or b.open_sell
        }
        open_orders, open_buy_cost = state.open_orders, state.open_buy_cost
        if replacing is not None:
            old = books.get(symbol) or SymbolBook(price=self._price_of(symbol))
            if replacing.side is Side.BUY:
                books[symbol] = SymbolBook(old.position, old.open_buy - replacing.quantity, old.open_sell, old.price)
                open_buy_cost -= replacing.quantity * (valuation_price(replacing, quote) or _ZERO)
            else:
                books[symbol] = SymbolBook(old.position, old.open_buy, old.open_sell - replacing.quantity, old.price)
            open_orders -= 1
        instrument = self.instruments.get(symbol)
        return RiskInput(
            order=terms,
            account=self.accounts.get(account_id),
            instrument=instrument.info if instrument else None,
            limits=self.limits_of(account_id),
            now=now,
            halt=self.halts.get(account_id) or self.global_halt,
            restriction=self.restrictions.get((account_id, symbol)) or self.restrictions.get((None, symbol)),
            quote=quote,
            quote_problem=problem,
            books=books,
            open_orders=open_orders,
            open_buy_cost=open_buy_cost,
            unsettled_cash=state.unsettled_cash,
            recent_account_orders=state.recent,
            recent_strategy_orders=self.strategy_recent.get(terms.strategy_id or "", ()),
        )

    def record_approval(self, terms: OrderTerms, quote: Quote | None) -> None:
        """Count an order approved in this batch, so the batch's later orders see its exposure."""
        state = self.states[terms.account_id]
        book = state.books[terms.symbol]
        if terms.side is Side.BUY:
            book.open_buy += terms.quantity
            state.open_buy_cost += terms.quantity * (valuation_price(terms, quote) or _ZERO)
        else:
            book.open_sell += terms.quantity
        state.open_orders += 1
        recent = RecentOrder(
            terms.id,
            terms.account_id,
            terms.strategy_id,
            terms.symbol,
            terms.side,
            terms.quantity,
            terms.price,
            terms.stop_price,
            terms.created_at,
        )
        state.recent.append(recent)
        if terms.strategy_id is not None:
            self.strategy_recent[terms.strategy_id].append(recent)


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class _OrderMeta:
    account_id: str
    strategy_id: str | None
    symbol: str
    created_at: datetime


def _order_metas(connection: Connection, order_ids: Collection[str]) -> dict[str, _OrderMeta]:
    o = tables.orders.c
    rows = connection.execute(
        select(o.id, o.account_id, o.strategy_id, o.symbol, o.created_at).where(o.id.in_(list(order_ids)))
    )
    return {r.id: _OrderMeta(r.account_id, r.strategy_id, r.symbol, r.created_at) for r in rows}


def load_limits(connection: Connection, account_ids: Collection[str]) -> tuple[Limits, dict[str, Limits]]:
    """The global limits and those in force for each account."""
    c = risk_limits.c
    rows = connection.execute(
        select(risk_limits).where(or_(c.account_id.is_(None), c.account_id.in_(list(account_ids))))
    ).mappings()
    by_scope: dict[str | None, Mapping[str, Any]] = {r["account_id"]: dict(r) for r in rows}
    global_row = by_scope.get(None)
    global_limits, _ = resolve(global_row, None)
    return global_limits, {a: resolve(global_row, by_scope.get(a))[0] for a in account_ids}


def prepare_batch(
    connection: Connection, order_ids: Collection[str], now: datetime, price_settings: PriceSettings
) -> RiskBatch:
    """Lock the batch's accounts and load what the rules need for its orders (see the module docstring)."""
    metas = _order_metas(connection, order_ids)
    batch = RiskBatch(order_ids=frozenset(order_ids), price_settings=price_settings)
    account_ids = sorted({m.account_id for m in metas.values()})
    if not account_ids:
        return batch
    lock_scopes(connection, "account", account_ids)
    # Everything below is read after the locks: another gate transaction's approvals are committed by now.
    batch.global_limits, batch.limits = load_limits(connection, account_ids)
    throttled = {
        m.strategy_id
        for m in metas.values()
        if m.strategy_id is not None and batch.limits[m.account_id].max_strategy_orders_per_second is not None
    }
    lock_scopes(connection, "strategy", throttled)
    _load_accounts(connection, batch, account_ids)
    _load_halts(connection, batch, account_ids)
    symbols = {m.symbol for m in metas.values()}
    _load_restrictions(connection, batch, account_ids, symbols)
    symbols |= _load_positions(connection, batch, account_ids)
    market_buys = _load_open_orders(connection, batch, account_ids)
    symbols |= {symbol for by_symbol in batch.states.values() for symbol in by_symbol.books}
    _load_prices(connection, batch, symbols)
    _price_open_market_buys(batch, market_buys, now)
    _load_unsettled_cash(connection, batch)
    _load_recent(connection, batch, metas, throttled)
    return batch


def _load_accounts(connection: Connection, batch: RiskBatch, account_ids: list[str]) -> None:
    a = tables.accounts.c
    rows = connection.execute(
        select(a.id, a.account_type, a.active, a.cash_balance).where(a.id.in_(account_ids))
    ).mappings()
    batch.accounts = {r["id"]: AccountInfo(**r) for r in rows}


def _load_halts(connection: Connection, batch: RiskBatch, account_ids: list[str]) -> None:
    h = trading_halts.c
    rows = connection.execute(
        select(h.account_id, h.reason, h.halted_by, h.since).where(
            or_(h.account_id.is_(None), h.account_id.in_(account_ids))
        )
    ).mappings()
    for r in rows:
        halt = Halt(**r)
        if halt.account_id is None:
            batch.global_halt = halt
        else:
            batch.halts[halt.account_id] = halt


def _load_restrictions(connection: Connection, batch: RiskBatch, account_ids: list[str], symbols: set[str]) -> None:
    r = restricted_symbols.c
    rows = connection.execute(
        select(r.account_id, r.symbol, r.reason).where(
            r.symbol.in_(sorted(symbols)), or_(r.account_id.is_(None), r.account_id.in_(account_ids))
        )
    ).mappings()
    batch.restrictions = {(row["account_id"], row["symbol"]): Restriction(**row) for row in rows}


def _load_positions(connection: Connection, batch: RiskBatch, account_ids: list[str]) -> set[str]:
    p = tables.positions.c
    rows = connection.execute(
        select(p.account_id, p.symbol, p.quantity, p.average_cost).where(p.account_id.in_(account_ids), p.quantity != 0)
    )
    symbols: set[str] = set()
    for row in rows:
        book = batch.states[row.account_id].books[row.symbol]
        book.position, book.average_cost = row.quantity, row.average_cost
        symbols.add(row.symbol)
    return symbols


_LEAVES = tables.orders.c.quantity - tables.orders.c.filled_quantity


def _load_open_orders(
    connection: Connection, batch: RiskBatch, account_ids: list[str]
) -> dict[tuple[str, str], Decimal]:
    """Open orders per account, symbol and side; returns the leaves of open MARKET buys, which have no price
    of their own and are costed at the reference price once prices are loaded."""
    o = tables.orders.c
    priced = func.coalesce(o.price, o.stop_price)
    leaves = func.greatest(_LEAVES, 0)
    rows = connection.execute(
        select(
            o.account_id,
            o.symbol,
            o.side,
            func.count().label("orders"),
            func.coalesce(func.sum(leaves), 0).label("leaves"),
            func.coalesce(func.sum(case((priced.is_not(None), leaves * priced))), 0).label("priced_cost"),
            func.coalesce(func.sum(case((priced.is_(None), leaves))), 0).label("market_leaves"),
        )
        .where(o.account_id.in_(account_ids), o.state.in_(OPEN_STATES))
        .group_by(o.account_id, o.symbol, o.side)
    )
    market_buys: dict[tuple[str, str], Decimal] = {}
    for row in rows:
        state = batch.states[row.account_id]
        book = state.books[row.symbol]
        state.open_orders += row.orders
        if row.side == Side.BUY.value:
            book.open_buy += row.leaves
            state.open_buy_cost += row.priced_cost
            if row.market_leaves:
                market_buys[(row.account_id, row.symbol)] = row.market_leaves
        else:
            book.open_sell += row.leaves
    return market_buys


def _price_open_market_buys(batch: RiskBatch, market_buys: Mapping[tuple[str, str], Decimal], now: datetime) -> None:
    """Open MARKET buys cost their leaves at the reference price (what buying power counts)."""
    for (account_id, symbol), leaves in market_buys.items():
        quote, _ = batch.quote_for(symbol, now)
        price = quote.price if quote is not None else batch._price_of(symbol)
        batch.states[account_id].open_buy_cost += leaves * (price or _ZERO)


def _load_unsettled_cash(connection: Connection, batch: RiskBatch) -> None:
    cash_accounts = [a for a, info in batch.accounts.items() if info.is_cash]
    if not cash_accounts:
        return
    i = tables.settlement_instructions.c
    rows = connection.execute(
        select(i.account_id, func.sum(i.cash_amount).label("cash"))
        .where(i.account_id.in_(cash_accounts), i.status == "PENDING")
        .group_by(i.account_id)
    )
    for row in rows:
        batch.states[row.account_id].unsettled_cash = row.cash or _ZERO


def _load_prices(connection: Connection, batch: RiskBatch, symbols: set[str]) -> None:
    wanted = sorted(symbols)
    i = tables.instruments.c
    for row in connection.execute(
        select(i.symbol, i.tradable, i.session_open, i.session_close, i.session_timezone, i.reference_price).where(
            i.symbol.in_(wanted)
        )
    ):
        info = InstrumentInfo(row.symbol, row.tradable, row.session_open, row.session_close, row.session_timezone)
        batch.instruments[row.symbol] = _Instrument(info, row.reference_price)
    p = reference_prices.c
    for quote in connection.execute(select(p.symbol, p.price, p.as_of, p.source).where(p.symbol.in_(wanted))):
        batch.feed[quote.symbol] = FeedPrice(quote.symbol, quote.price, quote.as_of, quote.source)


def _recent_orders(connection: Connection, condition: Any, since: datetime, until: datetime) -> list[RecentOrder]:
    o = tables.orders.c
    rows = connection.execute(
        select(o.id, o.account_id, o.strategy_id, o.symbol, o.side, o.quantity, o.price, o.stop_price, o.created_at)
        .where(condition, o.created_at >= since, o.created_at <= until, o.state.not_in(NOT_PASSED_STATES))
        .order_by(o.created_at)
    )
    return [
        RecentOrder(
            r.id, r.account_id, r.strategy_id, r.symbol, Side(r.side), r.quantity, r.price, r.stop_price, r.created_at
        )
        for r in rows
    ]


def _load_recent(
    connection: Connection, batch: RiskBatch, metas: Mapping[str, _OrderMeta], strategies: set[str]
) -> None:
    """Orders that passed the gate around the batch's orders' submission times: only what the throttles and
    the duplicate window can look at."""
    o = tables.orders.c
    spans: dict[str, timedelta] = {}
    for account_id, limits in batch.limits.items():
        window = limits.duplicate_window_seconds or _ZERO
        if limits.max_orders_per_second is not None:
            window = max(window, Decimal(1))
        if window > 0:
            spans[account_id] = timedelta(seconds=float(window))
    if spans:
        created = [m.created_at for m in metas.values() if m.account_id in spans]
        span = max(spans.values())
        for order in _recent_orders(
            connection, o.account_id.in_(sorted(spans)), min(created) - span, max(created) + span
        ):
            batch.states[order.account_id].recent.append(order)
    if strategies:
        created = [m.created_at for m in metas.values() if m.strategy_id in strategies]
        condition = o.strategy_id.in_(sorted(strategies))
        for order in _recent_orders(connection, condition, min(created) - _ONE_SECOND, max(created) + _ONE_SECOND):
            batch.strategy_recent[order.strategy_id or ""].append(order)


__all__ = ["OPEN_STATES", "RiskBatch", "load_limits", "lock_key", "lock_scopes", "prepare_batch"]
