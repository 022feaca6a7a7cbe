"""The pre-trade rules: pure functions over plain data, run in a fixed order until one is broken.

Each ``Rule`` has a name (recorded in the approval), a test of whether it applies (a limit that is off, or
a rule for cash accounts only, does not run) and a check returning ``RiskViolation`` or None. A violation
carries a stable code, a sentence a user can read, and the figures (limit, value, ...) for the audit trail.

Exposure is counted the way a risk desk does: per symbol, the worst case of the position if every open
buy fills or if every open sell fills; an order adds to its own side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from common.domain import Order, OrderType, Side
from common.domain.validation import plain
from common.risk.controls import Halt, Restriction
from common.risk.limits import Limits

_ZERO = Decimal(0)
_HUNDRED = Decimal(100)
_ONE_SECOND = timedelta(seconds=1)
_SATURDAY = 5
_PERCENT_PLACES = Decimal("0.01")


class RiskCode:
    """Rejection codes of the risk gate (stable: clients and the audit trail rely on them)."""

    UNKNOWN_ACCOUNT = "UNKNOWN_ACCOUNT"
    ACCOUNT_INACTIVE = "ACCOUNT_INACTIVE"
    TRADING_HALTED = "TRADING_HALTED"
    UNKNOWN_INSTRUMENT = "UNKNOWN_INSTRUMENT"
    INSTRUMENT_NOT_TRADABLE = "INSTRUMENT_NOT_TRADABLE"
    OUTSIDE_TRADING_SESSION = "OUTSIDE_TRADING_SESSION"
    SYMBOL_RESTRICTED = "SYMBOL_RESTRICTED"
    DUPLICATE_ORDER = "DUPLICATE_ORDER"
    ORDER_RATE_EXCEEDED = "ORDER_RATE_EXCEEDED"
    STRATEGY_ORDER_RATE_EXCEEDED = "STRATEGY_ORDER_RATE_EXCEEDED"
    MAX_OPEN_ORDERS_EXCEEDED = "MAX_OPEN_ORDERS_EXCEEDED"
    NO_REFERENCE_PRICE = "NO_REFERENCE_PRICE"
    MAX_ORDER_QUANTITY_EXCEEDED = "MAX_ORDER_QUANTITY_EXCEEDED"
    MAX_NOTIONAL_EXCEEDED = "MAX_NOTIONAL_EXCEEDED"
    PRICE_COLLAR_BREACHED = "PRICE_COLLAR_BREACHED"
    MAX_POSITION_EXCEEDED = "MAX_POSITION_EXCEEDED"
    MAX_GROSS_EXPOSURE_EXCEEDED = "MAX_GROSS_EXPOSURE_EXCEEDED"
    INSUFFICIENT_BUYING_POWER = "INSUFFICIENT_BUYING_POWER"
    # The Risk Analysis Service (services/risk_gate/assessments.py): it refused the order, or could not answer.
    RISK_SERVICE_REJECTED = "RISK_SERVICE_REJECTED"
    RISK_SERVICE_UNAVAILABLE = "RISK_SERVICE_UNAVAILABLE"


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class OrderTerms:
    """The order as the rules see it (a modify's new terms are checked as the same order with new terms)."""

    id: str
    account_id: str
    symbol: str
    side: Side
    type: OrderType
    quantity: Decimal
    price: Decimal | None
    stop_price: Decimal | None
    strategy_id: str | None
    created_at: datetime

    @classmethod
    def of(cls, order: Order) -> OrderTerms:
        """The terms of a domain order."""
        return cls(
            id=order.id,
            account_id=order.account_id,
            symbol=order.symbol,
            side=order.side,
            type=order.type,
            quantity=order.quantity,
            price=order.price,
            stop_price=order.stop_price,
            strategy_id=order.strategy_id,
            created_at=order.created_at,
        )


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """What the rules need of an account."""

    id: str
    account_type: str
    active: bool
    cash_balance: Decimal

    @property
    def is_cash(self) -> bool:
        """A cash account may only buy with cash it has."""
        return self.account_type == "CASH"


@dataclass(frozen=True, slots=True)
class InstrumentInfo:
    """What the rules need of an instrument."""

    symbol: str
    tradable: bool
    session_open: time | None = None
    session_close: time | None = None
    session_timezone: str | None = None


@dataclass(frozen=True, slots=True)
class Quote:
    """The reference price an order is checked against, and where it came from."""

    price: Decimal
    source: str  # "feed" (the market data feed, fresh) or "instrument" (instruments.reference_price)
    as_of: datetime | None = None
    note: str | None = None  # why the fallback was used

    def as_payload(self) -> dict[str, object]:
        """JSON-friendly form for the order's audit event."""
        payload: dict[str, object] = {"price": self.price, "source": self.source}
        if self.as_of is not None:
            payload["as_of"] = self.as_of.isoformat()
        if self.note is not None:
            payload["note"] = self.note
        return payload


@dataclass(frozen=True, slots=True)
class SymbolBook:
    """One symbol of an account: its position, the leaves of its open orders per side, and its price."""

    position: Decimal = _ZERO
    open_buy: Decimal = _ZERO
    open_sell: Decimal = _ZERO
    price: Decimal | None = None

    def worst_case(self) -> Decimal:
        """The largest absolute position the open orders can lead to."""
        return max(abs(self.position + self.open_buy), abs(self.position - self.open_sell))

    def with_order(self, side: Side, quantity: Decimal) -> SymbolBook:
        """The book once an order of ``quantity`` on ``side`` is open too."""
        if side is Side.BUY:
            return SymbolBook(self.position, self.open_buy + quantity, self.open_sell, self.price)
        return SymbolBook(self.position, self.open_buy, self.open_sell + quantity, self.price)


@dataclass(frozen=True, slots=True)
class RecentOrder:
    """An order the gate approved lately (for the throttles and duplicate detection)."""

    id: str
    account_id: str
    strategy_id: str | None
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal | None
    stop_price: Decimal | None
    created_at: datetime


@dataclass(frozen=True)
class RiskInput:
    """Everything the rules look at for one order, loaded in the gate's transaction."""

    order: OrderTerms
    account: AccountInfo | None
    instrument: InstrumentInfo | None
    limits: Limits
    now: datetime
    halt: Halt | None = None
    restriction: Restriction | None = None
    quote: Quote | None = None
    quote_problem: str | None = None  # why there is no quote
    books: Mapping[str, SymbolBook] = field(default_factory=dict)  # the account's symbols
    open_orders: int = 0
    open_buy_cost: Decimal = _ZERO  # what the account's open buys may still cost
    unsettled_cash: Decimal = _ZERO  # signed cash of booked trades not yet settled (negative: owed)
    recent_account_orders: Sequence[RecentOrder] = ()
    recent_strategy_orders: Sequence[RecentOrder] = ()

    def book(self, symbol: str) -> SymbolBook:
        """The account's book in ``symbol`` (flat when it has none)."""
        return self.books.get(symbol) or SymbolBook()


@dataclass(frozen=True, slots=True)
class RiskViolation:
    """A broken rule: its name, a stable code, the order field it is about, a readable reason, the figures."""

    rule: str
    code: str
    field: str
    message: str
    figures: Mapping[str, object]


# --------------------------------------------------------------------------- helpers


def valuation_price(order: OrderTerms, quote: Quote | None) -> Decimal | None:
    """The price an order is valued at: its limit price, else its stop price (a stop-market order trades
    near it), else the reference price (a MARKET order)."""
    if order.price is not None:
        return order.price
    if order.stop_price is not None:
        return order.stop_price
    return quote.price if quote is not None else None


def gross_exposure(books: Mapping[str, SymbolBook]) -> Decimal:
    """Sum over symbols of the worst-case position at the symbol's price (a symbol without one counts 0)."""
    return sum((b.worst_case() * b.price for b in books.values() if b.price is not None), _ZERO)


def percent(value: Decimal) -> str:
    """A percentage as a person reads it: ``10.53``."""
    return plain(value.quantize(_PERCENT_PLACES, ROUND_HALF_EVEN))


def _violation(
    rule: str, code: str, field: str, message: str, limit: object = None, value: object = None, **more: object
) -> RiskViolation:
    figures: dict[str, object] = {"limit": limit, "value": value, **more}
    return RiskViolation(rule, code, field, message, {k: v for k, v in figures.items() if v is not None})


def _count_in_last_second(orders: Sequence[RecentOrder], order: OrderTerms, same: Callable[[RecentOrder], bool]) -> int:
    """Approved orders (not this one) submitted in the second up to this order's submission."""
    end = order.created_at
    start = end - _ONE_SECOND
    count = 0
    for o in orders:  # the time first: most recent orders of a batch are outside the window
        if start < o.created_at <= end and o.id != order.id and same(o):
            count += 1
    return count


def _seconds(delta: timedelta) -> Decimal:
    """A duration in seconds, exactly (to the microsecond)."""
    return Decimal(delta // timedelta(microseconds=1)) / Decimal(1_000_000)


def _who(account_id: str | None) -> str:
    return f"account {account_id}" if account_id is not None else "all accounts"


# --------------------------------------------------------------------------- rules


def account_active(ri: RiskInput) -> RiskViolation | None:
    """The account exists and is active (it may have been closed since intake)."""
    if ri.account is None:
        return _violation(
            "account_active", RiskCode.UNKNOWN_ACCOUNT, "accountId", f"account {ri.order.account_id} does not exist"
        )
    if not ri.account.active:
        return _violation(
            "account_active", RiskCode.ACCOUNT_INACTIVE, "accountId", f"account {ri.account.id} is not active"
        )
    return None


def kill_switch(ri: RiskInput) -> RiskViolation | None:
    """No halt is in force for the account or for everyone."""
    halt = ri.halt
    if halt is None:
        return None
    by = f" by {halt.halted_by}" if halt.halted_by else ""
    return _violation(
        "kill_switch",
        RiskCode.TRADING_HALTED,
        "accountId",
        f"new orders are halted for {_who(halt.account_id)} since {halt.since.isoformat(timespec='seconds')}{by}:"
        f" {halt.reason}",
        scope=halt.account_id or "global",
        since=halt.since.isoformat(),
    )


def instrument_tradable(ri: RiskInput) -> RiskViolation | None:
    """The instrument is known and tradable (it may have been suspended since intake)."""
    if ri.instrument is None:
        return _violation(
            "instrument_tradable", RiskCode.UNKNOWN_INSTRUMENT, "symbol", f"instrument {ri.order.symbol} is not known"
        )
    if not ri.instrument.tradable:
        return _violation(
            "instrument_tradable",
            RiskCode.INSTRUMENT_NOT_TRADABLE,
            "symbol",
            f"instrument {ri.instrument.symbol} is not tradable",
        )
    return None


def session_is_open(instrument: InstrumentInfo, now: datetime) -> bool | None:
    """Whether the instrument's session is open at ``now`` (weekdays, local time); None: it has no session."""
    if instrument.session_open is None or instrument.session_close is None:
        return None
    try:
        zone = ZoneInfo(instrument.session_timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    local = now.astimezone(zone)
    opens, closes, clock = instrument.session_open, instrument.session_close, local.time()
    if opens <= closes:
        return local.weekday() < _SATURDAY and opens <= clock < closes
    # An overnight session (opens in the evening, closes next morning) belongs to the day it opened.
    if clock >= opens:
        return local.weekday() < _SATURDAY
    return (local - timedelta(days=1)).weekday() < _SATURDAY and clock < closes


def _applies_trading_session(ri: RiskInput) -> bool:
    return bool(ri.limits.enforce_trading_session) and ri.instrument is not None


def trading_session(ri: RiskInput) -> RiskViolation | None:
    """When sessions are enforced: the instrument's session is open now."""
    instrument = ri.instrument
    assert instrument is not None
    if session_is_open(instrument, ri.now) is not False:
        return None
    zone = instrument.session_timezone or "UTC"
    try:
        local = ri.now.astimezone(ZoneInfo(zone))
    except (ZoneInfoNotFoundError, ValueError):
        local = ri.now
    hours = f"{instrument.session_open:%H:%M}-{instrument.session_close:%H:%M} {zone}"
    return _violation(
        "trading_session",
        RiskCode.OUTSIDE_TRADING_SESSION,
        "symbol",
        f"{instrument.symbol} trades {hours} on weekdays; it is {local:%a %H:%M} there",
        session=hours,
        local_time=local.isoformat(timespec="seconds"),
    )


def restricted_symbol(ri: RiskInput) -> RiskViolation | None:
    """The symbol is not on the account's or the global restricted list."""
    restriction = ri.restriction
    if restriction is None:
        return None
    why = f": {restriction.reason}" if restriction.reason else ""
    return _violation(
        "restricted_symbol",
        RiskCode.SYMBOL_RESTRICTED,
        "symbol",
        f"{restriction.symbol} is restricted for {_who(restriction.account_id)}{why}",
        scope=restriction.account_id or "global",
    )


def _applies_duplicate(ri: RiskInput) -> bool:
    return ri.limits.duplicate_window_seconds is not None and ri.limits.duplicate_window_seconds > _ZERO


def duplicate_order(ri: RiskInput) -> RiskViolation | None:
    """No approved order of the account has the same symbol, side, quantity and prices within the window."""
    window_seconds = ri.limits.duplicate_window_seconds
    assert window_seconds is not None
    order = ri.order
    for other in ri.recent_account_orders:
        same = (
            other.quantity == order.quantity  # the most telling term first
            and other.symbol == order.symbol
            and other.side is order.side
            and other.price == order.price
            and other.stop_price == order.stop_price
            and other.id != order.id
        )
        if not same:
            continue
        apart = _seconds(abs(order.created_at - other.created_at))
        if apart <= window_seconds:
            price = f" at {plain(order.price)}" if order.price is not None else ""
            return _violation(
                "duplicate_order",
                RiskCode.DUPLICATE_ORDER,
                "quantity",
                f"duplicate of order {other.id}: {order.side} {plain(order.quantity)} {order.symbol}{price}"
                f" for account {order.account_id} {plain(apart)}s apart (window {plain(window_seconds)}s)",
                limit=window_seconds,
                value=apart,
                duplicate_of=other.id,
            )
    return None


def order_rate(ri: RiskInput) -> RiskViolation | None:
    """The account has sent fewer than its limit of orders in the last second."""
    limit = ri.limits.max_orders_per_second
    assert limit is not None
    sent = _count_in_last_second(ri.recent_account_orders, ri.order, lambda o: o.account_id == ri.order.account_id)
    if sent >= limit:
        return _violation(
            "order_rate",
            RiskCode.ORDER_RATE_EXCEEDED,
            "accountId",
            f"account {ri.order.account_id} already sent {sent} orders in the last second (limit {limit} per second)",
            limit=limit,
            value=sent + 1,
        )
    return None


def _applies_strategy_rate(ri: RiskInput) -> bool:
    return ri.order.strategy_id is not None and ri.limits.max_strategy_orders_per_second is not None


def strategy_order_rate(ri: RiskInput) -> RiskViolation | None:
    """The order's strategy has sent fewer than its limit of orders in the last second."""
    limit = ri.limits.max_strategy_orders_per_second
    strategy = ri.order.strategy_id
    assert limit is not None and strategy is not None
    sent = _count_in_last_second(ri.recent_strategy_orders, ri.order, lambda o: o.strategy_id == strategy)
    if sent >= limit:
        return _violation(
            "strategy_order_rate",
            RiskCode.STRATEGY_ORDER_RATE_EXCEEDED,
            "strategyId",
            f"strategy {strategy} already sent {sent} orders in the last second (limit {limit} per second)",
            limit=limit,
            value=sent + 1,
        )
    return None


def max_open_orders(ri: RiskInput) -> RiskViolation | None:
    """The account has fewer open orders than its limit."""
    limit = ri.limits.max_open_orders
    assert limit is not None
    if ri.open_orders >= limit:
        return _violation(
            "max_open_orders",
            RiskCode.MAX_OPEN_ORDERS_EXCEEDED,
            "accountId",
            f"account {ri.order.account_id} already has {ri.open_orders} open orders (limit {limit})",
            limit=limit,
            value=ri.open_orders + 1,
        )
    return None


def needs_reference_price(ri: RiskInput) -> bool:
    """Whether a rule that is on cannot do without the symbol's reference price."""
    limits = ri.limits
    if ri.order.type is OrderType.MARKET:
        # Valued at the reference price: notional, exposure and buying power all need it.
        return True
    return limits.price_collar_percent is not None or limits.max_gross_exposure is not None


def reference_price(ri: RiskInput) -> RiskViolation | None:
    """A reference price exists (fresh from the feed, or the configured fallback) when a rule needs one."""
    if ri.quote is not None:
        return None
    return _violation(
        "reference_price",
        RiskCode.NO_REFERENCE_PRICE,
        "symbol",
        ri.quote_problem or f"no reference price for {ri.order.symbol}",
    )


def max_order_quantity(ri: RiskInput) -> RiskViolation | None:
    """The order's quantity is at most the per-order limit."""
    limit = ri.limits.max_order_quantity
    assert limit is not None
    if ri.order.quantity > limit:
        return _violation(
            "max_order_quantity",
            RiskCode.MAX_ORDER_QUANTITY_EXCEEDED,
            "quantity",
            f"quantity {plain(ri.order.quantity)} exceeds the maximum order quantity {plain(limit)}",
            limit=limit,
            value=ri.order.quantity,
        )
    return None


def max_order_notional(ri: RiskInput) -> RiskViolation | None:
    """Quantity times the valuation price is at most the per-order notional limit."""
    limit = ri.limits.max_order_notional
    assert limit is not None
    price = valuation_price(ri.order, ri.quote)
    if price is None:
        return _violation(
            "max_order_notional",
            RiskCode.NO_REFERENCE_PRICE,
            "price",
            f"cannot value the {ri.order.type} order: {ri.order.symbol} has no reference price",
        )
    notional = ri.order.quantity * price
    if notional > limit:
        return _violation(
            "max_order_notional",
            RiskCode.MAX_NOTIONAL_EXCEEDED,
            "quantity",
            f"notional {plain(notional)} ({plain(ri.order.quantity)} at {plain(price)}) exceeds the maximum"
            f" order notional {plain(limit)}",
            limit=limit,
            value=notional,
            price=price,
        )
    return None


def _applies_collar(ri: RiskInput) -> bool:
    return (
        ri.limits.price_collar_percent is not None
        and ri.quote is not None
        and (ri.order.price is not None or ri.order.stop_price is not None)
    )


def price_collar(ri: RiskInput) -> RiskViolation | None:
    """A LIMIT or STOP price is within the collar (a percentage) of the reference price ("fat finger")."""
    collar = ri.limits.price_collar_percent
    quote = ri.quote
    assert collar is not None and quote is not None
    for label, field_name, price in (
        ("price", "price", ri.order.price),
        ("stop price", "stopPrice", ri.order.stop_price),
    ):
        if price is None:
            continue
        deviation = abs(price - quote.price) / quote.price * _HUNDRED
        if deviation > collar:
            return _violation(
                "price_collar",
                RiskCode.PRICE_COLLAR_BREACHED,
                field_name,
                f"{label} {plain(price)} is {percent(deviation)}% from the reference price {plain(quote.price)}"
                f" ({quote.source}); the collar is {plain(collar)}%",
                limit=collar,
                value=deviation,
                price=price,
                reference_price=quote.price,
            )
    return None


def max_position(ri: RiskInput) -> RiskViolation | None:
    """The position the order's side can reach (position + open orders on that side + this order) stays
    within the limit, long or short."""
    limit = ri.limits.max_position_quantity
    assert limit is not None
    order, book = ri.order, ri.book(ri.order.symbol)
    if order.side is Side.BUY:
        reach = book.position + book.open_buy + order.quantity
        open_label, open_quantity, beyond = "open buys", book.open_buy, reach > limit
    else:
        reach = book.position - book.open_sell - order.quantity
        open_label, open_quantity, beyond = "open sells", book.open_sell, -reach > limit
    if beyond:
        return _violation(
            "max_position",
            RiskCode.MAX_POSITION_EXCEEDED,
            "quantity",
            f"{order.side} {plain(order.quantity)} {order.symbol} could take the position to {plain(reach)}"
            f" (position {plain(book.position)}, {open_label} {plain(open_quantity)}); the limit is"
            f" {plain(limit)}",
            limit=limit,
            value=reach,
            position=book.position,
            open_orders=open_quantity,
        )
    return None


def max_gross_exposure(ri: RiskInput) -> RiskViolation | None:
    """The account's gross exposure with this order stays within the limit (an order that lowers the
    exposure always passes, so an account over its limit can still reduce)."""
    limit = ri.limits.max_gross_exposure
    quote = ri.quote
    assert limit is not None and quote is not None
    order = ri.order
    books = dict(ri.books)
    current_book = ri.book(order.symbol)
    books[order.symbol] = SymbolBook(current_book.position, current_book.open_buy, current_book.open_sell, quote.price)
    before = gross_exposure(books)
    books[order.symbol] = books[order.symbol].with_order(order.side, order.quantity)
    after = gross_exposure(books)
    if after > limit and after > before:
        return _violation(
            "max_gross_exposure",
            RiskCode.MAX_GROSS_EXPOSURE_EXCEEDED,
            "quantity",
            f"the order would take the gross exposure of account {order.account_id} to {plain(after)}"
            f" (now {plain(before)}); the limit is {plain(limit)}",
            limit=limit,
            value=after,
            current=before,
        )
    return None


def _applies_gross_exposure(ri: RiskInput) -> bool:
    return ri.limits.max_gross_exposure is not None and ri.quote is not None


def _applies_buying_power(ri: RiskInput) -> bool:
    return ri.account is not None and ri.account.is_cash and ri.order.side is Side.BUY


def buying_power(ri: RiskInput) -> RiskViolation | None:
    """A cash account buys only with cash it has: balance, plus unsettled trades, minus open buys."""
    account = ri.account
    assert account is not None
    price = valuation_price(ri.order, ri.quote)
    if price is None:
        return _violation(
            "buying_power",
            RiskCode.NO_REFERENCE_PRICE,
            "price",
            f"cannot value the {ri.order.type} order: {ri.order.symbol} has no reference price",
        )
    cost = ri.order.quantity * price
    available = account.cash_balance + ri.unsettled_cash - ri.open_buy_cost
    if cost > available:
        return _violation(
            "buying_power",
            RiskCode.INSUFFICIENT_BUYING_POWER,
            "quantity",
            f"the order costs {plain(cost)} ({plain(ri.order.quantity)} at {plain(price)}) but cash account"
            f" {account.id} can spend {plain(available)} (cash {plain(account.cash_balance)}, unsettled"
            f" {plain(ri.unsettled_cash)}, open buys {plain(ri.open_buy_cost)})",
            limit=available,
            value=cost,
            cash_balance=account.cash_balance,
            unsettled_cash=ri.unsettled_cash,
            open_buy_cost=ri.open_buy_cost,
        )
    return None


# --------------------------------------------------------------------------- the rule set


@dataclass(frozen=True)
class Rule:
    """A named check and the test of whether it runs for an order."""

    name: str
    check: Callable[[RiskInput], RiskViolation | None]
    applies: Callable[[RiskInput], bool] = lambda ri: True


def _limit_set(name: str) -> Callable[[RiskInput], bool]:
    return lambda ri: getattr(ri.limits, name) is not None


RULES: tuple[Rule, ...] = (
    Rule("account_active", account_active),
    Rule("kill_switch", kill_switch),
    Rule("instrument_tradable", instrument_tradable),
    Rule("trading_session", trading_session, _applies_trading_session),
    Rule("restricted_symbol", restricted_symbol),
    Rule("duplicate_order", duplicate_order, _applies_duplicate),
    Rule("order_rate", order_rate, _limit_set("max_orders_per_second")),
    Rule("strategy_order_rate", strategy_order_rate, _applies_strategy_rate),
    Rule("max_open_orders", max_open_orders, _limit_set("max_open_orders")),
    Rule("reference_price", reference_price, needs_reference_price),
    Rule("max_order_quantity", max_order_quantity, _limit_set("max_order_quantity")),
    Rule("max_order_notional", max_order_notional, _limit_set("max_order_notional")),
    Rule("price_collar", price_collar, _applies_collar),
    Rule("max_position", max_position, _limit_set("max_position_quantity")),
    Rule("max_gross_exposure", max_gross_exposure, _applies_gross_exposure),
    Rule("buying_power", buying_power, _applies_buying_power),
)
RULE_NAMES: tuple[str, ...] = tuple(rule.name for rule in RULES)


@dataclass(frozen=True)
class RiskDecision:
    """The rules that ran (by name, in order) and the first violation, if any (the rules stop there)."""

    checks: list[str]
    violation: RiskViolation | None
    quote: Quote | None = None

    @property
    def approved(self) -> bool:
        """True when no rule was broken."""
        return self.violation is None


def evaluate(ri: RiskInput, rules: Sequence[Rule] = RULES) -> RiskDecision:
    """Run the rules that apply, in order; stop at the first violation."""
    ran: list[str] = []
    for rule in rules:
        if not rule.applies(ri):
            continue
        ran.append(rule.name)
        violation = rule.check(ri)
        if violation is not None:
            return RiskDecision(ran, violation, ri.quote)
    return RiskDecision(ran, None, ri.quote)
