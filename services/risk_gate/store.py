"""What the rules need, read in one place: two statements per batch of orders, under per-account locks.

``prepare_batch`` takes a transaction-scoped advisory lock per account (and per throttled strategy) in a
fixed order, so two gate transactions holding orders of the same account serialise (the order locks alone
would not: they are different orders), and loads for the whole batch: accounts, limits, halts, restricted
symbols, positions (as settlement books them), open orders, unsettled cash, recent orders and prices.
The first statement takes the account locks and reads the limits; the second, run once the locks are held
(with the strategy locks, if a throttle needs them, in between), reads everything else. Both are built once
and are the same text whatever the batch, so their cost per batch does not grow with its size, and nothing is
cached between batches: a limit, halt or restriction changed by an operator applies to the next batch.
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
from functools import lru_cache
from typing import Any, Protocol

from sqlalchemy import Connection, text

from common.domain import OrderState, Side
from common.orders.ports import BufferedRepository, RepositorySlot
from common.risk.controls import Halt, Restriction
from common.risk.limits import Limits, LimitValue, resolve
from common.store import hot_sql
from common.store.uow import UnitOfWork
from services.risk_gate.prices import FeedPrice, PriceSettings, best_price, choose_quote
from services.risk_gate.rules import (
    AccountInfo,
    InstrumentInfo,
    OrderTerms,
    Quote,
    RecentOrder,
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

_LOCK_SQL = hot_sql.hot(
    text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) WITH ORDINALITY AS t(k, n)")
)


@lru_cache(maxsize=65536)
def lock_key(kind: str, identifier: str) -> int:
    """A stable 64-bit advisory lock key (the same in every process, unlike ``hash``)."""
    digest = hashlib.blake2b(f"oms.risk:{kind}:{identifier}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_scopes(connection: Connection, kind: str, identifiers: Iterable[str]) -> None:
    """Take advisory locks for this transaction in key order. Every gate transaction locks its accounts
    first and its strategies second, each in key order: one global order, so no deadlock."""
    keys = sorted({lock_key(kind, i) for i in identifiers})
    if keys:
        hot_sql.execute(connection, _LOCK_SQL, {"keys": keys})


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
    _enabled: dict[str, dict[str, LimitValue]] = field(default_factory=dict, repr=False)

    def covers(self, order_id: str) -> bool:
        """Whether this batch was loaded (and locked) for the order."""
        return order_id in self.order_ids

    def limits_of(self, account_id: str) -> Limits:
        """The limits in force for the account."""
        return self.limits.get(account_id, self.global_limits)

    def enabled_limits_of(self, account_id: str) -> dict[str, LimitValue]:
        """The limits that are on for the account, as an approval records them (a copy of its own)."""
        enabled = self._enabled.get(account_id)
        if enabled is None:
            enabled = self._enabled[account_id] = self.limits_of(account_id).enabled()
        return dict(enabled)

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


@dataclass(frozen=True, slots=True)
class OrderMeta:
    """What the loading needs of an order of the batch (none of it changes once the order exists)."""

    account_id: str
    strategy_id: str | None
    symbol: str
    created_at: datetime


# Statements built once (plain SQL, parameterised, one text per statement whatever the batch: psycopg prepares
# them on the server after a few runs). Arrays, never IN lists, so a batch of any size is the same statement.


def _statement(sql: str) -> hot_sql.HotStatement:
    """A hot statement (``common.store.hot_sql``) on one line: psycopg caches its parsing of statements up to
    4 KB, and ``_LOAD`` fits once its indentation is gone."""
    return hot_sql.hot(text(" ".join(sql.split())))


# The account locks, then the limits. One statement: the locks are taken before the limits are read (the outer
# side of the join is evaluated first and always), and the limits need not be read after the locks: they are
# not what the locks guard, and a change committed meanwhile applies to the next batch.
# It also switches the rest of the transaction to generic plans (``SET LOCAL plan_cache_mode``): ``_LOAD`` costs
# Postgres about twice as much to plan as to run, and with batch-sized arrays as parameters it would otherwise be
# planned again at every batch. Every statement after it in the gate's transaction looks rows up by key, where a
# generic plan is the plan; the setting ends with the transaction.
_LOCK_ACCOUNTS_AND_LIMITS = _statement(
    """
    WITH locked AS MATERIALIZED (
        SELECT count(pg_advisory_xact_lock(t.k)) AS n,
            set_config('plan_cache_mode', 'force_generic_plan', true) AS plan_cache_mode
        FROM unnest(CAST(:keys AS bigint[])) WITH ORDINALITY AS t(k, i)
    )
    SELECT r.*
    FROM locked
    LEFT JOIN risk_limits AS r
        ON r.account_id IS NULL OR r.account_id = ANY(CAST(:account_ids AS varchar[]))
    """
)

# Everything else the rules read, in one statement run after the locks (so it sees every approval committed by
# a gate transaction that held them): one row per fact, ``kind`` says which and which columns it uses.
#   A account       account_id, s1 account_type, b1 active, n1 cash_balance
#   H halt          account_id (NULL: global), s1 reason, s2 halted_by, ts since
#   R restriction   account_id (NULL: global), symbol, s1 reason
#   P position      account_id, symbol, n1 quantity, n2 average_cost
#   O open orders   account_id, symbol, s1 side, i1 orders, n1 leaves, n2 priced cost, n3 market leaves
#   I instrument    symbol, b1 tradable, t1 session_open, t2 session_close, s1 session_timezone, n1 reference
#   F feed price    symbol, n1 price, ts as_of, s1 source
#   C unsettled     account_id, n1 cash
#   X / Y recent    (account / strategy window) account_id, symbol, s1 id, s2 strategy_id, s3 side,
#                   n1 quantity, n2 price, n3 stop_price, ts created_at
# The unsettled cash (C) is a subquery per CASH account of the batch: a margin account's pending instructions,
# however many, are never read.
# open_orders repeats the final states literally: so the planner can prove the partial index of working orders
# (idx_orders_working_account) applies and read an account's open orders, not every order it ever had.
_LOAD = _statement(
    """
    WITH pos AS (
        SELECT p.account_id, p.symbol, p.quantity, p.average_cost
        FROM positions AS p
        WHERE p.account_id = ANY(CAST(:account_ids AS varchar[])) AND p.quantity <> 0
    ),
    open_orders AS (
        SELECT o.account_id, o.symbol, o.side, count(*) AS orders,
            coalesce(sum(greatest(o.quantity - o.filled_quantity, 0)), 0) AS leaves,
            coalesce(sum(CASE WHEN coalesce(o.price, o.stop_price) IS NOT NULL
                THEN greatest(o.quantity - o.filled_quantity, 0) * coalesce(o.price, o.stop_price) END), 0)
                AS priced_cost,
            coalesce(sum(CASE WHEN coalesce(o.price, o.stop_price) IS NULL
                THEN greatest(o.quantity - o.filled_quantity, 0) END), 0) AS market_leaves
        FROM orders AS o
        WHERE o.account_id = ANY(CAST(:account_ids AS varchar[])) AND o.state = ANY(CAST(:open_states AS varchar[]))
            AND o.state NOT IN ('FILLED', 'CANCELED', 'EXPIRED', 'REJECTED')
        GROUP BY o.account_id, o.symbol, o.side
    ),
    wanted AS (
        SELECT unnest(CAST(:symbols AS varchar[])) AS symbol
        UNION SELECT symbol FROM pos
        UNION SELECT symbol FROM open_orders
    )
    SELECT 'A' AS kind, CAST(a.id AS varchar) AS account_id, CAST(NULL AS varchar) AS symbol,
        CAST(a.account_type AS varchar) AS s1, CAST(NULL AS varchar) AS s2, CAST(NULL AS varchar) AS s3,
        CAST(a.cash_balance AS numeric) AS n1, CAST(NULL AS numeric) AS n2, CAST(NULL AS numeric) AS n3,
        CAST(NULL AS bigint) AS i1, a.active AS b1, CAST(NULL AS timestamptz) AS ts,
        CAST(NULL AS time) AS t1, CAST(NULL AS time) AS t2
    FROM accounts AS a
    WHERE a.id = ANY(CAST(:account_ids AS varchar[]))
    UNION ALL
    SELECT 'H', h.account_id, NULL, h.reason, h.halted_by, NULL, NULL, NULL, NULL, NULL, NULL, h.since, NULL, NULL
    FROM trading_halts AS h
    WHERE h.account_id IS NULL OR h.account_id = ANY(CAST(:account_ids AS varchar[]))
    UNION ALL
    SELECT 'R', r.account_id, r.symbol, r.reason, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
    FROM restricted_symbols AS r
    WHERE r.symbol = ANY(CAST(:symbols AS varchar[]))
        AND (r.account_id IS NULL OR r.account_id = ANY(CAST(:account_ids AS varchar[])))
    UNION ALL
    SELECT 'P', pos.account_id, pos.symbol, NULL, NULL, NULL, pos.quantity, pos.average_cost, NULL, NULL, NULL,
        NULL, NULL, NULL
    FROM pos
    UNION ALL
    SELECT 'O', oo.account_id, oo.symbol, oo.side, NULL, NULL, oo.leaves, oo.priced_cost, oo.market_leaves,
        oo.orders, NULL, NULL, NULL, NULL
    FROM open_orders AS oo
    UNION ALL
    SELECT 'I', NULL, i.symbol, i.session_timezone, NULL, NULL, i.reference_price, NULL, NULL, NULL, i.tradable,
        NULL, i.session_open, i.session_close
    FROM instruments AS i
    WHERE i.symbol IN (SELECT symbol FROM wanted)
    UNION ALL
    SELECT 'F', NULL, f.symbol, f.source, NULL, NULL, f.price, NULL, NULL, NULL, NULL, f.as_of, NULL, NULL
    FROM reference_prices AS f
    WHERE f.symbol IN (SELECT symbol FROM wanted)
    UNION ALL
    SELECT 'C', ca.id, NULL, NULL, NULL, NULL,
        (SELECT sum(s.cash_amount) FROM settlement_instructions AS s
            WHERE s.account_id = ca.id AND s.status = 'PENDING'),
        NULL, NULL, NULL, NULL, NULL, NULL, NULL
    FROM accounts AS ca
    WHERE ca.id = ANY(CAST(:account_ids AS varchar[])) AND ca.account_type = 'CASH'
    UNION ALL
    SELECT 'X', o.account_id, o.symbol, o.id, o.strategy_id, o.side, o.quantity, o.price, o.stop_price, NULL, NULL,
        o.created_at, NULL, NULL
    FROM orders AS o
    WHERE o.account_id = ANY(CAST(:recent_accounts AS varchar[]))
        AND o.created_at >= CAST(:recent_since AS timestamptz) AND o.created_at <= CAST(:recent_until AS timestamptz)
        AND o.state <> ALL(CAST(:not_passed AS varchar[]))
    UNION ALL
    SELECT 'Y', o.account_id, o.symbol, o.id, o.strategy_id, o.side, o.quantity, o.price, o.stop_price, NULL, NULL,
        o.created_at, NULL, NULL
    FROM orders AS o
    WHERE o.strategy_id = ANY(CAST(:strategies AS varchar[]))
        AND o.created_at >= CAST(:strategy_since AS timestamptz)
        AND o.created_at <= CAST(:strategy_until AS timestamptz)
        AND o.state <> ALL(CAST(:not_passed AS varchar[]))
    """
)

_OPEN_STATES = list(OPEN_STATES)
_NOT_PASSED = list(NOT_PASSED_STATES)


def resolve_limits(rows: Iterable[Mapping[str, Any]], account_ids: Collection[str]) -> tuple[Limits, dict[str, Limits]]:
    """The global limits and those in force for each account, from the ``risk_limits`` rows of their scopes."""
    by_scope: dict[str | None, Mapping[str, Any]] = {r["account_id"]: r for r in rows}
    global_row = by_scope.get(None)
    global_limits, _ = resolve(global_row, None)
    return global_limits, {a: resolve(global_row, by_scope.get(a))[0] for a in account_ids}


def prepare_batch(
    connection: Connection, metas: Mapping[str, OrderMeta], now: datetime, price_settings: PriceSettings
) -> RiskBatch:
    """Lock the batch's accounts and load what the rules need for its orders (see the module docstring).

    Two statements whatever the batch (three when a strategy throttle is on): the account locks with the
    limits, then (after the strategy locks) everything else.
    """
    batch = RiskBatch(order_ids=frozenset(metas), price_settings=price_settings)
    account_ids = sorted({m.account_id for m in metas.values()})
    if not account_ids:
        return batch
    keys = sorted({lock_key("account", a) for a in account_ids})
    rows = hot_sql.mappings(connection, _LOCK_ACCOUNTS_AND_LIMITS, {"keys": keys, "account_ids": account_ids})
    batch.global_limits, batch.limits = resolve_limits((r for r in rows if r["id"] is not None), account_ids)
    throttled = {
        m.strategy_id
        for m in metas.values()
        if m.strategy_id is not None and batch.limits[m.account_id].max_strategy_orders_per_second is not None
    }
    lock_scopes(connection, "strategy", throttled)
    # Everything below is read after the locks: another gate transaction's approvals are committed by now.
    symbols = sorted({m.symbol for m in metas.values()})
    params: dict[str, Any] = {
        "account_ids": account_ids,
        "symbols": symbols,
        "open_states": _OPEN_STATES,
        "not_passed": _NOT_PASSED,
        **_recent_windows(batch, metas, throttled),
    }
    fill_batch(batch, hot_sql.rows(connection, _LOAD, params), now)
    return batch


def fill_batch(batch: RiskBatch, rows: Iterable[Any], now: datetime) -> None:
    """Put the facts the rules read (``_LOAD``'s rows, one per fact: see the table above it) into the batch, and
    cost the open MARKET buys once the prices are in. The in-memory risk store of the tests builds the same rows."""
    _price_open_market_buys(batch, _fill(batch, rows), now)


def _recent_windows(batch: RiskBatch, metas: Mapping[str, OrderMeta], strategies: set[str]) -> dict[str, Any]:
    """Orders that passed the gate around the batch's orders' submission times: only what the throttles and
    the duplicate window can look at (empty windows when no such rule is on)."""
    spans: dict[str, timedelta] = {}
    for account_id, limits in batch.limits.items():
        window = limits.duplicate_window_seconds or _ZERO
        if limits.max_orders_per_second is not None:
            window = max(window, Decimal(1))
        if window > 0:
            spans[account_id] = timedelta(seconds=float(window))
    windows: dict[str, Any] = {
        "recent_accounts": [],
        "recent_since": None,
        "recent_until": None,
        "strategies": [],
        "strategy_since": None,
        "strategy_until": None,
    }
    if spans:
        created = [m.created_at for m in metas.values() if m.account_id in spans]
        span = max(spans.values())
        windows["recent_accounts"] = sorted(spans)
        windows["recent_since"], windows["recent_until"] = min(created) - span, max(created) + span
    if strategies:
        created = [m.created_at for m in metas.values() if m.strategy_id in strategies]
        windows["strategies"] = sorted(strategies)
        windows["strategy_since"], windows["strategy_until"] = min(created) - _ONE_SECOND, max(created) + _ONE_SECOND
    return windows


def _recent(
    account_id: str, symbol: str, s1: str, s2: str | None, s3: str, n1: Any, n2: Any, n3: Any, ts: Any
) -> RecentOrder:
    return RecentOrder(s1, account_id, s2, symbol, Side(s3), n1, n2, n3, ts)


def _fill(batch: RiskBatch, rows: Iterable[Any]) -> dict[tuple[str, str], Decimal]:
    """Put the rows of ``_LOAD`` into the batch; returns the leaves of open MARKET buys per account and symbol,
    which have no price of their own and are costed at the reference price once prices are known."""
    market_buys: dict[tuple[str, str], Decimal] = {}
    states = batch.states
    for kind, account_id, symbol, s1, s2, s3, n1, n2, n3, i1, b1, ts, t1, t2 in rows:
        if kind == "O":
            state = states[account_id]
            book = state.books[symbol]
            state.open_orders += i1
            if s1 == Side.BUY.value:
                book.open_buy += n1
                state.open_buy_cost += n2
                if n3:
                    market_buys[(account_id, symbol)] = n3
            else:
                book.open_sell += n1
        elif kind == "X":
            states[account_id].recent.append(_recent(account_id, symbol, s1, s2, s3, n1, n2, n3, ts))
        elif kind == "Y":
            batch.strategy_recent[s2 or ""].append(_recent(account_id, symbol, s1, s2, s3, n1, n2, n3, ts))
        elif kind == "P":
            book = states[account_id].books[symbol]
            book.position, book.average_cost = n1, n2
        elif kind == "I":
            batch.instruments[symbol] = _Instrument(InstrumentInfo(symbol, b1, t1, t2, s1), n1)
        elif kind == "F":
            batch.feed[symbol] = FeedPrice(symbol, n1, ts, s1)
        elif kind == "A":
            batch.accounts[account_id] = AccountInfo(account_id, s1, b1, n1)
        elif kind == "H":
            halt = Halt(account_id, s1, s2, ts)
            if account_id is None:
                batch.global_halt = halt
            else:
                batch.halts[account_id] = halt
        elif kind == "R":
            batch.restrictions[(account_id, symbol)] = Restriction(account_id, symbol, s1)
        elif kind == "C":
            states[account_id].unsettled_cash = n1 or _ZERO
    # The throttles and the duplicate rule read the recent orders in submission order.
    for state in states.values():
        state.recent.sort(key=_created_at)
    for recent in batch.strategy_recent.values():
        recent.sort(key=_created_at)
    return market_buys


def _created_at(order: RecentOrder) -> datetime:
    return order.created_at


def _price_open_market_buys(batch: RiskBatch, market_buys: Mapping[tuple[str, str], Decimal], now: datetime) -> None:
    """Open MARKET buys cost their leaves at the reference price (what buying power counts)."""
    for (account_id, symbol), leaves in market_buys.items():
        quote, _ = batch.quote_for(symbol, now)
        price = quote.price if quote is not None else batch._price_of(symbol)
        batch.states[account_id].open_buy_cost += leaves * (price or _ZERO)


# --------------------------------------------------------------------------- the port and its Postgres side


class RiskStore(BufferedRepository, Protocol):
    """The risk gate's reads of one transaction (a port: ``uow.repository(RISK_STORE)``), read only.

    ``prepared`` is the batch the stage's ``prepare`` hook loaded for the transaction's checks; forgotten at
    commit and rollback, when its locks are gone and what it read may be out of date.
    """

    prepared: RiskBatch | None

    def load(self, metas: Mapping[str, OrderMeta], now: datetime, price_settings: PriceSettings) -> RiskBatch:
        """Lock the orders' accounts and load what the rules need for them (see the module docstring)."""
        ...


class PostgresRiskStore:
    """``RiskStore`` on the Postgres unit of work: ``prepare_batch`` on its connection, which first writes what
    the transaction buffered, so a batch loaded after approvals of the same transaction counts them."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
        self.prepared: RiskBatch | None = None

    def load(self, metas: Mapping[str, OrderMeta], now: datetime, price_settings: PriceSettings) -> RiskBatch:
        """Lock the orders' accounts and load what the rules need for them (two or three statements)."""
        return prepare_batch(self._uow.connection, metas, now, price_settings)

    def flush(self) -> None:
        """Nothing to write: the gate's writes go through the orders, requests and outbox."""

    def reset(self) -> None:
        """Forget the prepared batch."""
        self.prepared = None


RISK_STORE: RepositorySlot[RiskStore] = RepositorySlot("risk_gate", PostgresRiskStore)


__all__ = [
    "OPEN_STATES",
    "RISK_STORE",
    "OrderMeta",
    "PostgresRiskStore",
    "RiskBatch",
    "RiskStore",
    "fill_batch",
    "lock_key",
    "lock_scopes",
    "prepare_batch",
    "resolve_limits",
]
