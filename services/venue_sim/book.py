"""The simulated venue's order book: accepting, matching, cancelling and replacing orders. Pure: no I/O.

Liquidity is unlimited at the reference price, so an order trades whenever it is marketable:
- MARKET trades at the reference price; LIMIT when marketable (buy limit >= price, sell limit <= price), at
  the reference price, which is then the limit or better; otherwise it rests and is tried again on each tick.
- STOP triggers when the price reaches the stop (buy: price >= stop, sell: price <= stop) and then works as
  MARKET; STOP_LIMIT works as a LIMIT at its limit price once triggered.
- ``partial_fills = n`` splits an order into n slices (whole lots, the last one takes the remainder) and only
  one slice trades per matching opportunity (arrival, then each tick), so partially filled orders stay
  visible for a few ticks and cancels can race fills.
- IOC gets one matching opportunity once active (at arrival, or when its stop triggers): what trades then
  trades, the rest is canceled. FOK trades its whole quantity in one execution or is canceled, never partly.
- DAY and GTC orders rest until filled, canceled or replaced: expiring DAY orders is the OMS's job.

Every method returns the execution reports it produced, in the order they happened; ``take_changed`` names
the orders changed since it was last called (what the venue journals), and ``restore`` takes working orders
back from such a journal.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from typing import Any

from common.domain.enums import ExecType, OrderType, Side, TimeInForce
from common.ids import new_id
from services.venue_sim.prices import Market, floor_to_lot

VENUE = "SIM"
_ZERO = Decimal(0)
_CENT = Decimal("0.01")
_PRICE_QUANTUM = Decimal("0.00000001")  # DECIMAL(20,8)
_STOP_TYPES = frozenset({OrderType.STOP, OrderType.STOP_LIMIT})
_LIMIT_TYPES = frozenset({OrderType.LIMIT, OrderType.STOP_LIMIT})


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerRequest:
    """A new, cancel or replace request from the OMS (the schema-loaded body, snake_case)."""

    order_id: str
    request_id: str
    account_id: str
    symbol: str
    side: Side
    type: OrderType
    quantity: Decimal
    price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: TimeInForce = TimeInForce.DAY

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> BrokerRequest:
        """Build from a body loaded by ``NewOrderRequestSchema`` (or the cancel/replace schemas)."""
        return cls(
            order_id=body["order_id"],
            request_id=body["request_id"],
            account_id=body["account_id"],
            symbol=body["symbol"],
            side=Side(body["side"]),
            type=OrderType(body["type"]),
            quantity=body["quantity"],
            price=body.get("price"),
            stop_price=body.get("stop_price"),
            time_in_force=TimeInForce(body["time_in_force"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """One execution report (the public contract's ``ExecutionReport``)."""

    execution_id: str
    order_id: str
    request_id: str | None
    broker_order_id: str | None
    exec_type: ExecType
    last_qty: Decimal
    last_px: Decimal | None
    cum_qty: Decimal
    leaves_qty: Decimal
    avg_px: Decimal | None
    order_qty: Decimal
    price: Decimal | None
    stop_price: Decimal | None
    fees: Decimal
    timestamp: datetime
    reason: str | None = None
    venue: str = VENUE

    def to_body(self) -> dict[str, Any]:
        """The camelCase JSON body of the contract."""
        return {
            "executionId": self.execution_id,
            "orderId": self.order_id,
            "requestId": self.request_id,
            "brokerOrderId": self.broker_order_id,
            "execType": self.exec_type.value,
            "lastQty": self.last_qty,
            "lastPx": self.last_px,
            "cumQty": self.cum_qty,
            "leavesQty": self.leaves_qty,
            "avgPx": self.avg_px,
            "orderQty": self.order_qty,
            "price": self.price,
            "stopPrice": self.stop_price,
            "fees": self.fees,
            "venue": self.venue,
            "timestamp": self.timestamp,
            "reason": self.reason,
        }


@dataclass(slots=True)
class SimOrder:
    """An order as the venue holds it."""

    order_id: str
    request_id: str
    broker_order_id: str
    account_id: str
    symbol: str
    side: Side
    type: OrderType
    time_in_force: TimeInForce
    quantity: Decimal
    price: Decimal | None
    stop_price: Decimal | None
    sequence: int = 0  # arrival order: time priority among orders due on the same tick
    cum_qty: Decimal = _ZERO
    notional: Decimal = _ZERO
    triggered: bool = False
    done: bool = False
    epoch: int = 0  # bumped whenever the order is re-indexed; older index entries are then stale

    @property
    def leaves_qty(self) -> Decimal:
        return _ZERO if self.done else max(self.quantity - self.cum_qty, _ZERO)

    @property
    def avg_px(self) -> Decimal | None:
        if self.cum_qty == _ZERO:
            return None
        return (self.notional / self.cum_qty).quantize(_PRICE_QUANTUM, ROUND_HALF_EVEN)

    @property
    def active(self) -> bool:
        """Trading (a stop order only once triggered)."""
        return self.type not in _STOP_TYPES or self.triggered


@dataclass(frozen=True)
class BookRules:
    """The venue's configurable behaviour."""

    partial_fills: int = 1
    reject_symbols: frozenset[str] = frozenset()
    max_qty: Decimal | None = None
    fee_rate: Decimal = Decimal("0.0005")
    # Finished orders are remembered (to answer "too late to cancel") up to this many, oldest forgotten first.
    finished_memory: int = 100_000


def _new_execution_id() -> str:
    return new_id()


# A heap entry: (sort key, arrival sequence, epoch, order). The sequence is unique, so orders never compare.
_Entry = tuple[Decimal, int, int, SimOrder]


@dataclass
class _SymbolBook:
    """One symbol's working orders, indexed so a tick touches only the orders that may trade.

    Heaps with lazy deletion: an entry is live while its order is working and the epochs match.
    """

    working: dict[str, SimOrder] = field(default_factory=dict)
    bids: list[_Entry] = field(default_factory=list)  # buy limits, key -limit (highest first)
    asks: list[_Entry] = field(default_factory=list)  # sell limits, key limit (lowest first)
    buy_stops: list[_Entry] = field(default_factory=list)  # key stop (lowest first: price >= stop)
    sell_stops: list[_Entry] = field(default_factory=list)  # key -stop (highest first: price <= stop)
    markets: dict[str, SimOrder] = field(default_factory=dict)  # active MARKET orders with slices to go

    def entries(self) -> int:
        return len(self.bids) + len(self.asks) + len(self.buy_stops) + len(self.sell_stops)


def _pop_due(heap: list[_Entry], bound: Decimal, into: list[SimOrder]) -> None:
    """Take the live orders whose key is at or below ``bound``."""
    while heap and heap[0][0] <= bound:
        _, _, epoch, order = heapq.heappop(heap)
        if not order.done and order.epoch == epoch:
            into.append(order)


def _is_live(entry: _Entry) -> bool:
    return not entry[3].done and entry[3].epoch == entry[2]


@dataclass
class Book:
    """Every order the venue knows, and the rules that match them against the market's prices."""

    market: Market
    rules: BookRules = field(default_factory=BookRules)
    new_id: Callable[[], str] = _new_execution_id
    working: dict[str, SimOrder] = field(default_factory=dict)
    finished: OrderedDict[str, SimOrder] = field(default_factory=OrderedDict)
    _sequence: int = 0
    _symbols: dict[str, _SymbolBook] = field(default_factory=dict)
    _changed: dict[str, SimOrder] = field(default_factory=dict)

    def order(self, order_id: str) -> SimOrder | None:
        """The order, working or finished (while remembered)."""
        return self.working.get(order_id) or self.finished.get(order_id)

    @property
    def sequence(self) -> int:
        """The last arrival sequence handed out (broker order ids are numbered by it)."""
        return self._sequence

    def take_changed(self) -> list[SimOrder]:
        """The orders changed since the last call (accepted, traded, triggered, replaced, finished)."""
        changed = list(self._changed.values())
        self._changed.clear()
        return changed

    def restore(self, orders: Iterable[SimOrder], sequence: int = 0) -> None:
        """Take back working orders (from the venue's journal), filed exactly as ``new_order`` files them;
        new orders are numbered after both them and ``sequence``, so no broker order id is handed out twice."""
        for order in sorted(orders, key=lambda o: o.sequence):
            self._sequence = max(self._sequence, order.sequence)
            if order.done or order.order_id in self.working:
                continue
            self.working[order.order_id] = order
            self._symbol(order.symbol).working[order.order_id] = order
            self._index(order)
        self._sequence = max(self._sequence, sequence)

    # --- requests ----------------------------------------------------------------------------------

    def new_order(self, request: BrokerRequest, now: datetime) -> list[Report]:
        """Accept (NEW, then whatever trades at once) or reject a new order.

        A second request for an order id the venue already knows is a duplicate and produces nothing.
        """
        if self.order(request.order_id) is not None:
            return []
        reason = self._rejection(request)
        if reason is not None:
            return [self._refused(request, ExecType.REJECTED, reason, now)]
        self._sequence += 1
        order = SimOrder(
            order_id=request.order_id,
            request_id=request.request_id,
            broker_order_id=f"SIM-{self._sequence}",
            account_id=request.account_id,
            symbol=request.symbol,
            side=request.side,
            type=request.type,
            time_in_force=request.time_in_force,
            quantity=request.quantity,
            price=request.price if request.type in _LIMIT_TYPES else None,
            stop_price=request.stop_price if request.type in _STOP_TYPES else None,
            sequence=self._sequence,
        )
        self.working[order.order_id] = order
        self._symbol(order.symbol).working[order.order_id] = order
        self._changed[order.order_id] = order
        reports = [self._report(order, ExecType.NEW, order.request_id, now)]
        self._match(order, now, reports)
        return reports

    def cancel(self, request: BrokerRequest, now: datetime) -> list[Report]:
        """PENDING_CANCEL then CANCELED, or CANCEL_REJECTED when the order is unknown or finished."""
        order = self.working.get(request.order_id)
        if order is None:
            reason = "too late to cancel" if request.order_id in self.finished else "unknown order"
            return [self._request_rejected(request, ExecType.CANCEL_REJECTED, reason, now)]
        pending = self._report(order, ExecType.PENDING_CANCEL, request.request_id, now)
        self._finish(order)
        return [pending, self._report(order, ExecType.CANCELED, request.request_id, now)]

    def replace(self, request: BrokerRequest, now: datetime) -> list[Report]:
        """PENDING_REPLACE then REPLACED with the new terms (and what then trades), or REPLACE_REJECTED."""
        order = self.working.get(request.order_id)
        if order is None:
            reason = "too late to replace" if request.order_id in self.finished else "unknown order"
            return [self._request_rejected(request, ExecType.REPLACE_REJECTED, reason, now)]
        refusal = self._replace_rejection(order, request)
        if refusal is not None:
            return [self._request_rejected(request, ExecType.REPLACE_REJECTED, refusal, now, order)]
        reports = [self._report(order, ExecType.PENDING_REPLACE, request.request_id, now)]
        # The terms check above made sure the limit and stop prices the order type needs are there.
        if order.type in _LIMIT_TYPES and request.price is not None:
            order.price = request.price
        if order.type in _STOP_TYPES and request.stop_price is not None:
            order.stop_price = request.stop_price
        if request.quantity <= order.cum_qty:
            # FIX D11/D12: replacing to at or below the executed quantity amends the order to it: filled.
            order.quantity = order.cum_qty
            self._finish(order)
            reports.append(self._report(order, ExecType.REPLACED, request.request_id, now))
            return reports
        order.quantity = request.quantity
        reports.append(self._report(order, ExecType.REPLACED, request.request_id, now))
        self._match(order, now, reports)
        return reports

    def on_tick(self, now: datetime) -> list[Report]:
        """Try the working orders the current prices reach (stops trigger, limits trade, slices go on)."""
        reports: list[Report] = []
        for symbol, book in self._symbols.items():
            if not book.working:
                if book.entries():
                    self._compact(book)  # every entry is stale
                continue
            price = self.market.price(symbol)
            due: list[SimOrder] = list(book.markets.values())
            book.markets.clear()
            # Keys are signed so that "due" is always "key <= bound" (see _SymbolBook).
            _pop_due(book.buy_stops, price, due)  # stop <= price
            _pop_due(book.sell_stops, -price, due)  # stop >= price
            _pop_due(book.bids, -price, due)  # limit >= price
            _pop_due(book.asks, price, due)  # limit <= price
            # Each order is due once per tick (one live entry each), in arrival order.
            for order in sorted(due, key=lambda o: o.sequence):
                self._match(order, now, reports)
            if book.entries() > 2 * len(book.working) + 64:
                self._compact(book)
        return reports

    # --- matching ----------------------------------------------------------------------------------

    def _match(self, order: SimOrder, now: datetime, reports: list[Report]) -> None:
        """One matching opportunity for the order at the current price."""
        price = self.market.price(order.symbol)
        if not order.active:
            if order.stop_price is None or not _stop_reached(order.side, order.stop_price, price):
                self._index(order)
                return
            order.triggered = True
            self._changed[order.order_id] = order  # a triggered stop limit may rest without a report
        if order.type in _LIMIT_TYPES:
            assert order.price is not None  # a limit order without a limit is rejected on arrival
            marketable = order.price >= price if order.side is Side.BUY else order.price <= price
        else:
            marketable = True
        if marketable:
            self._fill(order, self._fill_quantity(order), price, now, reports)
        if not order.done and order.time_in_force in (TimeInForce.IOC, TimeInForce.FOK):
            self._finish(order)
            reports.append(self._report(order, ExecType.CANCELED, order.request_id, now))
        if not order.done:
            self._index(order)

    def _fill_quantity(self, order: SimOrder) -> Decimal:
        leaves = order.leaves_qty
        if order.time_in_force is TimeInForce.FOK or self.rules.partial_fills <= 1:
            return leaves
        lot = self.market.lot_size(order.symbol)
        slice_qty = max(floor_to_lot(order.quantity / self.rules.partial_fills, lot), lot)
        # Never leave a sliver smaller than a slice: the last slice takes the remainder.
        return leaves if leaves < 2 * slice_qty else slice_qty

    def _fill(self, order: SimOrder, quantity: Decimal, price: Decimal, now: datetime, reports: list[Report]) -> None:
        order.cum_qty += quantity
        order.notional += quantity * price
        if order.cum_qty >= order.quantity:
            self._finish(order)
        fees = (quantity * price * self.rules.fee_rate).quantize(_CENT, ROUND_HALF_UP)
        exec_type = ExecType.FILL if order.done else ExecType.PARTIAL_FILL
        reports.append(
            self._report(order, exec_type, order.request_id, now, last_qty=quantity, last_px=price, fees=fees)
        )

    def _symbol(self, symbol: str) -> _SymbolBook:
        book = self._symbols.get(symbol)
        if book is None:
            book = self._symbols[symbol] = _SymbolBook()
        return book

    def _index(self, order: SimOrder) -> None:
        """File a working order where the next tick looks for it (its earlier entries go stale)."""
        book = self._symbol(order.symbol)
        order.epoch += 1
        buy = order.side is Side.BUY
        if not order.active:
            assert order.stop_price is not None
            heap, key = (book.buy_stops, order.stop_price) if buy else (book.sell_stops, -order.stop_price)
        elif order.type in _LIMIT_TYPES:
            assert order.price is not None
            heap, key = (book.bids, -order.price) if buy else (book.asks, order.price)
        else:
            book.markets[order.order_id] = order
            return
        heapq.heappush(heap, (key, order.sequence, order.epoch, order))

    def _compact(self, book: _SymbolBook) -> None:
        """Drop stale entries (canceled, filled, replaced orders) so the heaps do not grow without bound."""
        for heap in (book.bids, book.asks, book.buy_stops, book.sell_stops):
            heap[:] = [entry for entry in heap if _is_live(entry)]
            heapq.heapify(heap)

    def _finish(self, order: SimOrder) -> None:
        order.done = True
        self._changed[order.order_id] = order
        self.working.pop(order.order_id, None)
        book = self._symbols.get(order.symbol)
        if book is not None:
            book.working.pop(order.order_id, None)
            book.markets.pop(order.order_id, None)
        self.finished[order.order_id] = order
        while len(self.finished) > self.rules.finished_memory:
            self.finished.popitem(last=False)

    # --- checks ------------------------------------------------------------------------------------

    def _terms_rejection(self, request: BrokerRequest, order_type: OrderType) -> str | None:
        if request.quantity <= _ZERO:
            return "quantity must be positive"
        if self.rules.max_qty is not None and request.quantity > self.rules.max_qty:
            return f"quantity {request.quantity} exceeds the venue maximum {self.rules.max_qty}"
        if order_type in _LIMIT_TYPES and (request.price is None or request.price <= _ZERO):
            return f"{order_type} order needs a positive limit price"
        if order_type in _STOP_TYPES and (request.stop_price is None or request.stop_price <= _ZERO):
            return f"{order_type} order needs a positive stop price"
        return None

    def _rejection(self, request: BrokerRequest) -> str | None:
        if request.symbol in self.rules.reject_symbols:
            return f"symbol {request.symbol} is not accepted by the venue"
        return self._terms_rejection(request, request.type)

    def _replace_rejection(self, order: SimOrder, request: BrokerRequest) -> str | None:
        if request.symbol != order.symbol or request.side is not order.side or request.type is not order.type:
            return "a replace cannot change the symbol, side or order type"
        return self._terms_rejection(request, order.type)

    # --- reports -----------------------------------------------------------------------------------

    def _report(
        self,
        order: SimOrder,
        exec_type: ExecType,
        request_id: str | None,
        now: datetime,
        *,
        last_qty: Decimal = _ZERO,
        last_px: Decimal | None = None,
        fees: Decimal = _ZERO,
        reason: str | None = None,
    ) -> Report:
        # Every change to an order is reported, and a report may carry one (a fill, new terms): mark it.
        self._changed[order.order_id] = order
        return Report(
            execution_id=self.new_id(),
            order_id=order.order_id,
            request_id=request_id,
            broker_order_id=order.broker_order_id,
            exec_type=exec_type,
            last_qty=last_qty,
            last_px=last_px,
            cum_qty=order.cum_qty,
            leaves_qty=order.leaves_qty,
            avg_px=order.avg_px,
            order_qty=order.quantity,
            price=order.price,
            stop_price=order.stop_price,
            fees=fees,
            timestamp=now,
            reason=reason,
        )

    def _request_rejected(
        self,
        request: BrokerRequest,
        exec_type: ExecType,
        reason: str,
        now: datetime,
        order: SimOrder | None = None,
    ) -> Report:
        """A cancel or replace refused; the report carries the order's unchanged terms when it is known."""
        order = order or self.finished.get(request.order_id)
        if order is not None:
            return self._report(order, exec_type, request.request_id, now, reason=reason)
        return self._refused(request, exec_type, reason, now)

    def _refused(self, request: BrokerRequest, exec_type: ExecType, reason: str, now: datetime) -> Report:
        """A request refused while the venue holds no such order: the request's terms, nothing done."""
        return Report(
            execution_id=self.new_id(),
            order_id=request.order_id,
            request_id=request.request_id,
            broker_order_id=None,
            exec_type=exec_type,
            last_qty=_ZERO,
            last_px=None,
            cum_qty=_ZERO,
            leaves_qty=_ZERO,
            avg_px=None,
            order_qty=request.quantity,
            price=request.price,
            stop_price=request.stop_price,
            fees=_ZERO,
            timestamp=now,
            reason=reason,
        )


def _stop_reached(side: Side, stop_price: Decimal, price: Decimal) -> bool:
    return price >= stop_price if side is Side.BUY else price <= stop_price
