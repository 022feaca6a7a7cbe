"""The risk gate's rules as pure functions, each at its boundary: just inside passes, just outside rejects."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest

from common.domain import OrderType, Side
from common.risk.controls import Halt, Restriction
from common.risk.limits import InvalidLimit, Limits, parse_changes, parse_value, resolve
from common.settings import ConfigurationError, load_settings
from services.risk_gate.prices import FeedPrice, NoPriceBehaviour, PriceSettings, choose_quote, parse_price
from services.risk_gate.rules import (
    RULE_NAMES,
    AccountInfo,
    InstrumentInfo,
    OrderTerms,
    Quote,
    RecentOrder,
    RiskCode,
    RiskInput,
    RiskViolation,
    SymbolBook,
    evaluate,
    session_is_open,
)

D = Decimal
# Wednesday 25 November 2026, 15:00 UTC (10:00 in New York, EST).
NOW = datetime(2026, 11, 25, 15, 0, tzinfo=UTC)
US_SESSION: dict[str, Any] = {
    "session_open": time(9, 30),
    "session_close": time(16, 0),
    "session_timezone": "America/New_York",
}


def terms(**changes: Any) -> OrderTerms:
    base = OrderTerms(
        id="order-1",
        account_id="ACC-T",
        symbol="XYZ",
        side=Side.BUY,
        type=OrderType.LIMIT,
        quantity=D("100"),
        price=D("100"),
        stop_price=None,
        strategy_id=None,
        created_at=NOW,
    )
    return replace(base, **changes)


def risk_input(order: OrderTerms | None = None, **changes: Any) -> RiskInput:
    base = RiskInput(
        order=order or terms(),
        account=AccountInfo("ACC-T", "MARGIN", True, D("1000000")),
        instrument=InstrumentInfo("XYZ", True),
        limits=Limits(),
        now=NOW,
        quote=Quote(D("100"), "feed", NOW),
    )
    return replace(base, **changes)


def violation(ri: RiskInput) -> RiskViolation | None:
    return evaluate(ri).violation


def code(ri: RiskInput) -> str | None:
    found = violation(ri)
    return found.code if found else None


def recent(seconds_before: str, **changes: Any) -> RecentOrder:
    fields: dict[str, Any] = {
        "id": f"earlier-{seconds_before}",
        "account_id": "ACC-T",
        "strategy_id": None,
        "symbol": "XYZ",
        "side": Side.BUY,
        "quantity": D("100"),
        "price": D("100"),
        "stop_price": None,
        "created_at": NOW - timedelta(seconds=float(seconds_before)),
    }
    fields.update(changes)
    return RecentOrder(**fields)


# ---------------------------------------------------------------------------------------------- the rule set


def test_with_every_limit_off_only_the_unconditional_rules_run() -> None:
    decision = evaluate(risk_input())
    assert decision.approved
    assert decision.checks == ["account_active", "kill_switch", "instrument_tradable", "restricted_symbol"]


def test_every_rule_that_applies_runs_in_order_and_the_first_violation_stops_them() -> None:
    limits = Limits(
        max_order_quantity=D("1000"),
        max_order_notional=D("1000000"),
        price_collar_percent=D("10"),
        max_position_quantity=D("1000"),
        max_gross_exposure=D("1000000"),
        max_open_orders=10,
        max_orders_per_second=10,
        max_strategy_orders_per_second=10,
        duplicate_window_seconds=D("1"),
        enforce_trading_session=True,
    )
    cash = AccountInfo("ACC-T", "CASH", True, D("1000000"))
    instrument = InstrumentInfo("XYZ", True, **US_SESSION)
    ri = risk_input(terms(strategy_id="S1"), limits=limits, account=cash, instrument=instrument)
    decision = evaluate(ri)
    assert decision.approved
    assert decision.checks == list(RULE_NAMES)

    stopped = evaluate(replace(ri, open_orders=10))
    assert stopped.checks == list(RULE_NAMES[: RULE_NAMES.index("max_open_orders") + 1])


# ---------------------------------------------------------------------------------------------- account, halt


def test_an_unknown_or_inactive_account_is_rejected() -> None:
    assert code(risk_input(account=None)) == RiskCode.UNKNOWN_ACCOUNT
    inactive = risk_input(account=AccountInfo("ACC-T", "MARGIN", False, D(0)))
    found = violation(inactive)
    assert found is not None
    assert (found.code, found.message) == (RiskCode.ACCOUNT_INACTIVE, "account ACC-T is not active")


def test_a_halt_of_the_account_or_of_everyone_rejects_with_who_and_why() -> None:
    since = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)
    found = violation(risk_input(halt=Halt("ACC-T", "runaway strategy", "ops-anna", since)))
    assert found is not None and found.code == RiskCode.TRADING_HALTED
    assert found.message == (
        "new orders are halted for account ACC-T since 2026-11-25T14:00:00+00:00 by ops-anna: runaway strategy"
    )
    everyone = violation(risk_input(halt=Halt(None, "exchange outage", None, since)))
    assert everyone is not None
    assert everyone.message == "new orders are halted for all accounts since 2026-11-25T14:00:00+00:00: exchange outage"
    assert everyone.figures["scope"] == "global"


# ---------------------------------------------------------------------------------------------- instrument


def test_an_unknown_or_untradable_instrument_is_rejected() -> None:
    assert code(risk_input(instrument=None)) == RiskCode.UNKNOWN_INSTRUMENT
    found = violation(risk_input(instrument=InstrumentInfo("XYZ", False)))
    assert found is not None
    assert (found.code, found.message) == (RiskCode.INSTRUMENT_NOT_TRADABLE, "instrument XYZ is not tradable")


@pytest.mark.parametrize(
    ("moment", "is_open"),
    [
        (datetime(2026, 11, 25, 14, 29, 59, tzinfo=UTC), False),  # 09:29:59 in New York
        (datetime(2026, 11, 25, 14, 30, tzinfo=UTC), True),  # 09:30 opens
        (datetime(2026, 11, 25, 20, 59, 59, tzinfo=UTC), True),
        (datetime(2026, 11, 25, 21, 0, tzinfo=UTC), False),  # 16:00 closes
        (datetime(2026, 7, 15, 13, 30, tzinfo=UTC), True),  # 09:30 EDT in summer
        (datetime(2026, 11, 28, 15, 0, tzinfo=UTC), False),  # Saturday
    ],
)
def test_the_trading_session_at_its_edges(moment: datetime, is_open: bool) -> None:
    instrument = InstrumentInfo("XYZ", True, **US_SESSION)
    limits = Limits(enforce_trading_session=True)
    found = violation(risk_input(instrument=instrument, limits=limits, now=moment))
    assert (found is None) is is_open
    if found is not None:
        assert found.code == RiskCode.OUTSIDE_TRADING_SESSION
        assert found.message.startswith("XYZ trades 09:30-16:00 America/New_York on weekdays; it is ")


def test_the_session_message_gives_the_local_time() -> None:
    instrument = InstrumentInfo("XYZ", True, **US_SESSION)
    moment = datetime(2026, 11, 25, 14, 29, tzinfo=UTC)
    found = violation(risk_input(instrument=instrument, limits=Limits(enforce_trading_session=True), now=moment))
    assert found is not None
    assert found.message == "XYZ trades 09:30-16:00 America/New_York on weekdays; it is Wed 09:29 there"


def test_sessions_are_only_checked_when_enforced_and_instruments_without_one_always_trade() -> None:
    closed = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
    assert violation(risk_input(instrument=InstrumentInfo("XYZ", True, **US_SESSION), now=closed)) is None
    around_the_clock = InstrumentInfo("XYZ", True)
    assert violation(risk_input(instrument=around_the_clock, limits=Limits(enforce_trading_session=True))) is None


def test_an_overnight_session_belongs_to_the_day_it_opens() -> None:
    overnight = InstrumentInfo("XYZ", True, time(18, 0), time(17, 0), "America/Chicago")
    assert session_is_open(overnight, datetime(2026, 11, 25, 22, 59, tzinfo=UTC)) is True  # Wed 16:59 CST
    assert session_is_open(overnight, datetime(2026, 11, 25, 23, 0, tzinfo=UTC)) is False  # Wed 17:00 closes
    assert session_is_open(overnight, datetime(2026, 11, 26, 0, 0, tzinfo=UTC)) is True  # Wed 18:00 opens
    assert session_is_open(overnight, datetime(2026, 11, 28, 12, 0, tzinfo=UTC)) is True  # Fri 18:00 -> Sat 06:00
    assert session_is_open(overnight, datetime(2026, 11, 29, 1, 0, tzinfo=UTC)) is False  # Sat 19:00


def test_a_restricted_symbol_is_rejected_for_its_account_or_everyone() -> None:
    own = violation(risk_input(restriction=Restriction("ACC-T", "XYZ", "insider list")))
    assert own is not None
    assert (own.code, own.message) == (RiskCode.SYMBOL_RESTRICTED, "XYZ is restricted for account ACC-T: insider list")
    everyone = violation(risk_input(restriction=Restriction(None, "XYZ", None)))
    assert everyone is not None and everyone.message == "XYZ is restricted for all accounts"


# ---------------------------------------------------------------------------------------------- throttles


def test_a_duplicate_inside_the_window_is_rejected_and_one_just_outside_passes() -> None:
    limits = Limits(duplicate_window_seconds=D("2"))
    inside = violation(risk_input(limits=limits, recent_account_orders=[recent("2")]))
    assert inside is not None and inside.code == RiskCode.DUPLICATE_ORDER
    assert inside.message == ("duplicate of order earlier-2: BUY 100 XYZ at 100 for account ACC-T 2s apart (window 2s)")
    assert inside.figures == {"limit": D("2"), "value": D("2"), "duplicate_of": "earlier-2"}
    assert violation(risk_input(limits=limits, recent_account_orders=[recent("2.000001")])) is None


@pytest.mark.parametrize(
    "different",
    [
        {"price": D("100.01")},
        {"quantity": D("101")},
        {"side": Side.SELL},
        {"symbol": "ABC"},
        {"stop_price": D("99")},
    ],
)
def test_an_order_differing_in_any_term_is_no_duplicate(different: dict[str, Any]) -> None:
    limits = Limits(duplicate_window_seconds=D("2"))
    assert violation(risk_input(limits=limits, recent_account_orders=[recent("0.5", **different)])) is None


def test_the_account_order_rate_at_its_limit() -> None:
    limits = Limits(max_orders_per_second=3)
    two = [recent("0.2"), recent("0.9")]
    assert violation(risk_input(limits=limits, recent_account_orders=two)) is None
    # One submitted exactly a second earlier is outside the window.
    assert violation(risk_input(limits=limits, recent_account_orders=[*two, recent("1")])) is None
    found = violation(risk_input(limits=limits, recent_account_orders=[*two, recent("0.999")]))
    assert found is not None and found.code == RiskCode.ORDER_RATE_EXCEEDED
    assert found.message == "account ACC-T already sent 3 orders in the last second (limit 3 per second)"
    assert (found.figures["limit"], found.figures["value"]) == (3, 4)


def test_the_strategy_order_rate_at_its_limit() -> None:
    limits = Limits(max_strategy_orders_per_second=2)
    order = terms(strategy_id="momo")
    other_account = recent("0.1", account_id="ACC-OTHER", strategy_id="momo")
    one = [other_account]
    assert violation(risk_input(order, limits=limits, recent_strategy_orders=one)) is None
    found = violation(
        risk_input(order, limits=limits, recent_strategy_orders=[*one, recent("0.5", strategy_id="momo")])
    )
    assert found is not None and found.code == RiskCode.STRATEGY_ORDER_RATE_EXCEEDED
    assert found.message == "strategy momo already sent 2 orders in the last second (limit 2 per second)"
    # Orders without a strategy are not throttled per strategy.
    assert "strategy_order_rate" not in evaluate(risk_input(limits=limits)).checks


def test_max_open_orders_at_its_limit() -> None:
    limits = Limits(max_open_orders=5)
    assert violation(risk_input(limits=limits, open_orders=4)) is None
    found = violation(risk_input(limits=limits, open_orders=5))
    assert found is not None and found.code == RiskCode.MAX_OPEN_ORDERS_EXCEEDED
    assert found.message == "account ACC-T already has 5 open orders (limit 5)"


# ---------------------------------------------------------------------------------------------- per order


def test_max_order_quantity_at_its_limit() -> None:
    limits = Limits(max_order_quantity=D("100"))
    assert violation(risk_input(limits=limits)) is None
    found = violation(risk_input(terms(quantity=D("100.00000001")), limits=limits))
    assert found is not None and found.code == RiskCode.MAX_ORDER_QUANTITY_EXCEEDED
    assert found.message == "quantity 100.00000001 exceeds the maximum order quantity 100"


def test_max_order_notional_at_its_limit() -> None:
    limits = Limits(max_order_notional=D("10000"))
    assert violation(risk_input(limits=limits)) is None
    found = violation(risk_input(terms(price=D("100.01")), limits=limits))
    assert found is not None and found.code == RiskCode.MAX_NOTIONAL_EXCEEDED
    assert found.message == "notional 10001 (100 at 100.01) exceeds the maximum order notional 10000"
    assert found.figures == {"limit": D("10000"), "value": D("10001.00"), "price": D("100.01")}


def test_a_market_order_is_valued_at_the_reference_price_and_a_stop_order_at_its_stop() -> None:
    limits = Limits(max_order_notional=D("10000"))
    market = terms(type=OrderType.MARKET, price=None)
    assert violation(risk_input(market, limits=limits, quote=Quote(D("100"), "feed"))) is None
    found = violation(risk_input(market, limits=limits, quote=Quote(D("100.01"), "instrument")))
    assert found is not None and "(100 at 100.01)" in found.message
    stop = terms(type=OrderType.STOP, price=None, stop_price=D("100.01"))
    assert code(risk_input(stop, limits=limits, quote=None)) == RiskCode.MAX_NOTIONAL_EXCEEDED


def test_a_market_order_without_a_reference_price_is_rejected_with_the_reason() -> None:
    market = terms(type=OrderType.MARKET, price=None)
    found = violation(risk_input(market, quote=None, quote_problem="no fresh reference price: no feed price for XYZ"))
    assert found is not None and found.rule == "reference_price"
    assert (found.code, found.message) == (
        RiskCode.NO_REFERENCE_PRICE,
        "no fresh reference price: no feed price for XYZ",
    )
    # A LIMIT order needs none while no rule that uses one is on.
    assert violation(risk_input(quote=None)) is None


@pytest.mark.parametrize(
    ("price", "passes"),
    [(D("110"), True), (D("110.01"), False), (D("90"), True), (D("89.99"), False)],
)
def test_the_price_collar_at_its_edges(price: Decimal, passes: bool) -> None:
    limits = Limits(price_collar_percent=D("10"))
    found = violation(risk_input(terms(price=price), limits=limits))
    assert (found is None) is passes
    if found is not None:
        assert found.code == RiskCode.PRICE_COLLAR_BREACHED and found.field == "price"
        assert "% from the reference price 100 (feed); the collar is 10%" in found.message


def test_the_collar_checks_a_stop_price_too_and_tells_the_deviation() -> None:
    limits = Limits(price_collar_percent=D("5"))
    stop = terms(type=OrderType.STOP, price=None, stop_price=D("95.24"))
    found = violation(risk_input(stop, limits=limits, quote=Quote(D("90.7"), "feed")))
    assert found is not None and found.field == "stopPrice"
    assert found.message == "stop price 95.24 is 5.01% from the reference price 90.7 (feed); the collar is 5%"
    assert violation(risk_input(terms(type=OrderType.MARKET, price=None), limits=limits)) is None


def test_a_collar_without_a_reference_price_rejects_when_none_is_configured() -> None:
    limits = Limits(price_collar_percent=D("5"))
    assert code(risk_input(limits=limits, quote=None)) == RiskCode.NO_REFERENCE_PRICE


# ---------------------------------------------------------------------------------------------- exposure


def test_max_position_counts_the_position_and_open_orders_on_the_same_side() -> None:
    limits = Limits(max_position_quantity=D("1000"))
    books = {"XYZ": SymbolBook(position=D("500"), open_buy=D("300"), open_sell=D("700"))}
    assert violation(risk_input(terms(quantity=D("200")), limits=limits, books=books)) is None
    found = violation(risk_input(terms(quantity=D("201")), limits=limits, books=books))
    assert found is not None and found.code == RiskCode.MAX_POSITION_EXCEEDED
    assert found.message == (
        "BUY 201 XYZ could take the position to 1001 (position 500, open buys 300); the limit is 1000"
    )
    assert (found.figures["limit"], found.figures["value"]) == (D("1000"), D("1001"))


def test_max_position_short_side_and_a_reducing_order() -> None:
    limits = Limits(max_position_quantity=D("1000"))
    short = {"XYZ": SymbolBook(position=D("-500"), open_sell=D("300"))}
    assert violation(risk_input(terms(side=Side.SELL, quantity=D("200")), limits=limits, books=short)) is None
    found = violation(risk_input(terms(side=Side.SELL, quantity=D("201")), limits=limits, books=short))
    assert found is not None and "could take the position to -1001" in found.message
    # Far beyond the limit already, an order that reduces the position passes.
    over = {"XYZ": SymbolBook(position=D("5000"))}
    assert violation(risk_input(terms(side=Side.SELL, quantity=D("100")), limits=limits, books=over)) is None


def test_gross_exposure_sums_the_worst_case_of_every_symbol() -> None:
    limits = Limits(max_gross_exposure=D("100000"))
    books = {
        "ABC": SymbolBook(position=D("100"), open_sell=D("300"), price=D("50")),  # worst case 200 x 50 = 10000
        "XYZ": SymbolBook(position=D("400"), open_buy=D("400")),  # 800 x 100 (the quote) = 80000
    }
    assert violation(risk_input(terms(quantity=D("100")), limits=limits, books=books)) is None  # 100000
    found = violation(risk_input(terms(quantity=D("100.01")), limits=limits, books=books))
    assert found is not None and found.code == RiskCode.MAX_GROSS_EXPOSURE_EXCEEDED
    assert found.message == (
        "the order would take the gross exposure of account ACC-T to 100001 (now 90000); the limit is 100000"
    )
    # A sell that does not go beyond the long side leaves the worst case, and so the exposure, unchanged.
    assert violation(risk_input(terms(side=Side.SELL, quantity=D("700")), limits=limits, books=books)) is None


def test_an_account_over_its_exposure_limit_may_still_reduce() -> None:
    limits = Limits(max_gross_exposure=D("1000"))
    books = {"XYZ": SymbolBook(position=D("50"))}  # 5000 at 100
    assert violation(risk_input(terms(side=Side.SELL, quantity=D("30")), limits=limits, books=books)) is None
    assert code(risk_input(terms(quantity=D("1")), limits=limits, books=books)) == RiskCode.MAX_GROSS_EXPOSURE_EXCEEDED


def test_buying_power_of_a_cash_account_at_its_limit() -> None:
    cash = AccountInfo("ACC-T", "CASH", True, D("10000"))
    fields = {"account": cash, "unsettled_cash": D("-2000"), "open_buy_cost": D("3000")}  # 5000 to spend
    assert violation(risk_input(terms(quantity=D("50")), **fields)) is None
    found = violation(risk_input(terms(quantity=D("50"), price=D("100.01")), **fields))
    assert found is not None and found.code == RiskCode.INSUFFICIENT_BUYING_POWER
    assert found.message == (
        "the order costs 5000.5 (50 at 100.01) but cash account ACC-T can spend 5000"
        " (cash 10000, unsettled -2000, open buys 3000)"
    )
    # Sells, and margin accounts, are not limited by cash.
    assert violation(risk_input(terms(side=Side.SELL, quantity=D("1000")), **fields)) is None
    margin = {**fields, "account": AccountInfo("ACC-T", "MARGIN", True, D("10000"))}
    assert violation(risk_input(terms(quantity=D("1000")), **margin)) is None


# ---------------------------------------------------------------------------------------------- reference prices


def test_a_feed_price_is_fresh_up_to_the_staleness_limit() -> None:
    settings = PriceSettings(staleness=timedelta(seconds=30))
    fresh = FeedPrice("XYZ", D("101"), NOW - timedelta(seconds=30))
    quote, problem = choose_quote("XYZ", fresh, D("100"), NOW, settings)
    assert quote == Quote(D("101"), "feed", fresh.as_of) and problem is None

    stale = FeedPrice("XYZ", D("101"), NOW - timedelta(seconds=30, milliseconds=1))
    quote, problem = choose_quote("XYZ", stale, D("100"), NOW, settings)
    assert quote is not None and (quote.price, quote.source) == (D("100"), "instrument")
    assert quote.note == "the feed price of XYZ is 30.001s old (limit 30s); used the instrument's reference price"


def test_without_a_fresh_price_the_configured_behaviour_applies() -> None:
    reject = PriceSettings(no_price=NoPriceBehaviour.REJECT)
    quote, problem = choose_quote("XYZ", None, D("100"), NOW, reject)
    assert quote is None
    assert problem == "no fresh reference price: no feed price for XYZ, and the configured behaviour is to reject"
    quote, problem = choose_quote("XYZ", None, None, NOW, PriceSettings())
    assert quote is None and problem == (
        "no reference price: no feed price for XYZ, and instrument XYZ has no reference price"
    )


def test_price_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMS_RISK_PRICE_STALENESS_SECONDS", raising=False)
    monkeypatch.delenv("OMS_RISK_NO_PRICE", raising=False)
    default = PriceSettings(timedelta(seconds=30), NoPriceBehaviour.INSTRUMENT_REFERENCE)
    assert PriceSettings.of(load_settings().risk) == default == PriceSettings()
    monkeypatch.setenv("OMS_RISK_PRICE_STALENESS_SECONDS", "2.5")
    monkeypatch.setenv("OMS_RISK_NO_PRICE", " Reject ")
    assert PriceSettings.of(load_settings().risk) == PriceSettings(timedelta(seconds=2.5), NoPriceBehaviour.REJECT)
    monkeypatch.setenv("OMS_RISK_NO_PRICE", "guess")
    monkeypatch.setenv("OMS_RISK_PRICE_STALENESS_SECONDS", "-1")
    with pytest.raises(ConfigurationError, match="OMS_RISK_PRICE_STALENESS_SECONDS: .*; OMS_RISK_NO_PRICE: "):
        load_settings()


def test_feed_messages_are_parsed_exactly_and_junk_is_dropped() -> None:
    body = b'{"symbol":"AAPL","price":190.07,"timestamp":"2026-11-25T15:00:00+00:00"}'
    assert parse_price(body) == FeedPrice("AAPL", D("190.07"), NOW)
    for junk in (b"not json", b'{"symbol":"AAPL"}', b'{"symbol":"AAPL","price":-1,"timestamp":"2026-11-25"}'):
        assert parse_price(junk) is None


# ---------------------------------------------------------------------------------------------- limits


def test_an_account_inherits_the_global_limits_it_does_not_set() -> None:
    limits, sources = resolve(
        {"max_order_quantity": D("1000"), "max_open_orders": 10}, {"max_open_orders": 3, "max_order_quantity": None}
    )
    assert (limits.max_order_quantity, limits.max_open_orders, limits.price_collar_percent) == (D("1000"), 3, None)
    assert (sources["max_order_quantity"], sources["max_open_orders"], sources["price_collar_percent"]) == (
        "global",
        "account",
        "off",
    )


def test_limit_values_are_parsed_and_checked() -> None:
    assert parse_value("max_open_orders", "12") == 12
    assert parse_value("price_collar_percent", "7.5") == D("7.5")
    assert parse_value("enforce_trading_session", "on") is True
    assert parse_value("max_order_quantity", "inherit") is None
    assert parse_value("max_position_quantity", 0) == D(0)
    for name, value, message in [
        ("max_open_orders", "1.5", "whole number"),
        ("max_order_quantity", "0", "greater than 0"),
        ("max_gross_exposure", "-1", "at least 0"),
        ("price_collar_percent", 1.5, "takes a number"),
        ("max_order_notional", "1e13", "does not fit"),
        ("no_such_limit", "1", "unknown limit"),
    ]:
        with pytest.raises(InvalidLimit, match=message):
            parse_value(name, value)
    with pytest.raises(InvalidLimit, match="max_open_orders.*; .*max_order_quantity"):
        parse_changes({"max_open_orders": "x", "max_order_quantity": "-5"})
