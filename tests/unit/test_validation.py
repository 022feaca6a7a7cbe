"""The order business rules, each at its boundary."""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import pytest

from common.domain.validation import (
    Code,
    RuleViolation,
    plain,
    summarize,
    validate_order,
    validate_terms,
)

D = Decimal


@dataclass(frozen=True)
class Instrument:
    symbol: str = "AAPL"
    tick_size: Decimal = D("0.01")
    lot_size: Decimal = D("1")
    tradable: bool = True


@dataclass(frozen=True)
class Account:
    id: str = "ACC-001"
    active: bool = True


@dataclass(frozen=True)
class Request:
    account_id: str = "ACC-001"
    symbol: str = "AAPL"
    side: str = "BUY"
    type: str = "LIMIT"
    quantity: Decimal | None = D("100")
    price: Decimal | None = D("190.00")
    stop_price: Decimal | None = None
    time_in_force: str = "DAY"


AAPL = Instrument()
VOD = Instrument(symbol="VOD", tick_size=D("0.02"), lot_size=D("100"))
BTC = Instrument(symbol="BTCUSD", tick_size=D("0.01"), lot_size=D("0.0001"))
# As the store returns them: DECIMAL(20,8) scale.
AAPL_STORED = Instrument(tick_size=D("0.01000000"), lot_size=D("1.00000000"))


def codes(violations: list[RuleViolation]) -> list[str]:
    return [v.code for v in violations]


def check(request: Request, instrument: Instrument | None = AAPL, account: Account | None = None) -> list[str]:
    return codes(validate_order(request, instrument, account or Account()))


# --------------------------------------------------------------------------- valid orders


@pytest.mark.parametrize(
    "request_",
    [
        Request(),
        Request(type="MARKET", price=None, time_in_force="IOC"),
        Request(type="MARKET", price=None, time_in_force="FOK"),
        Request(type="MARKET", price=None, time_in_force="GTC"),
        Request(type="LIMIT", time_in_force="FOK"),
        Request(type="STOP", price=None, stop_price=D("185.50")),
        Request(type="STOP_LIMIT", price=D("185.00"), stop_price=D("185.50"), time_in_force="GTC"),
        Request(side="SELL"),
    ],
    ids=["limit", "market-ioc", "market-fok", "market-gtc", "limit-fok", "stop", "stop-limit", "sell"],
)
def test_valid_orders_break_no_rule(request_: Request) -> None:
    assert validate_order(request_, AAPL, Account()) == []


def test_store_scaled_tick_and_lot_are_fine() -> None:
    assert check(Request(price=D("190.01")), AAPL_STORED) == []


# --------------------------------------------------------------------------- quantity


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [(D("0"), [Code.QUANTITY_NOT_POSITIVE]), (D("-1"), [Code.QUANTITY_NOT_POSITIVE]), (D("1"), [])],
)
def test_quantity_must_be_positive(quantity: Decimal, expected: list[str]) -> None:
    assert check(Request(quantity=quantity)) == expected


def test_quantity_is_required() -> None:
    violations = validate_order(Request(quantity=None), AAPL, Account())
    assert violations == [RuleViolation(Code.QUANTITY_REQUIRED, "quantity", "quantity is required")]


@pytest.mark.parametrize("quantity", [D("NaN"), D("Infinity"), D("-Infinity")])
def test_quantity_not_finite(quantity: Decimal) -> None:
    assert check(Request(quantity=quantity)) == [Code.QUANTITY_NOT_POSITIVE]


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [(D("999999999999"), []), (D("1000000000000"), [Code.QUANTITY_TOO_LARGE])],
)
def test_quantity_must_fit_the_store(quantity: Decimal, expected: list[str]) -> None:
    assert check(Request(quantity=quantity)) == expected


@pytest.mark.parametrize(
    ("instrument", "quantity", "expected"),
    [
        (AAPL, D("1"), []),
        (AAPL, D("1.5"), [Code.QUANTITY_OFF_LOT]),
        (AAPL, D("0.99999999"), [Code.QUANTITY_OFF_LOT]),
        (VOD, D("100"), []),
        (VOD, D("200"), []),
        (VOD, D("99"), [Code.QUANTITY_OFF_LOT]),
        (VOD, D("150"), [Code.QUANTITY_OFF_LOT]),
        (BTC, D("0.0001"), []),
        (BTC, D("0.00015"), [Code.QUANTITY_OFF_LOT]),
        (BTC, D("1.2345"), []),
    ],
)
def test_quantity_on_lot(instrument: Instrument, quantity: Decimal, expected: list[str]) -> None:
    request = Request(symbol=instrument.symbol, quantity=quantity, price=D("70.00"))
    assert check(request, instrument) == expected


def test_off_lot_message_is_readable() -> None:
    [violation] = validate_order(Request(symbol="VOD", quantity=D("150"), price=D("70.00")), VOD, Account())
    assert violation == RuleViolation(
        Code.QUANTITY_OFF_LOT, "quantity", "quantity 150 is not a multiple of the lot size 100 of VOD"
    )


# --------------------------------------------------------------------------- price and stop price by type


@pytest.mark.parametrize(
    ("order_type", "price", "stop_price", "expected"),
    [
        ("MARKET", None, None, []),
        ("MARKET", D("190.00"), None, [Code.PRICE_NOT_ALLOWED]),
        ("MARKET", None, D("190.00"), [Code.STOP_PRICE_NOT_ALLOWED]),
        ("LIMIT", None, None, [Code.PRICE_REQUIRED]),
        ("LIMIT", D("190.00"), D("189.00"), [Code.STOP_PRICE_NOT_ALLOWED]),
        ("STOP", None, None, [Code.STOP_PRICE_REQUIRED]),
        ("STOP", D("190.00"), D("189.00"), [Code.PRICE_NOT_ALLOWED]),
        ("STOP_LIMIT", None, D("189.00"), [Code.PRICE_REQUIRED]),
        ("STOP_LIMIT", D("190.00"), None, [Code.STOP_PRICE_REQUIRED]),
        ("STOP_LIMIT", None, None, [Code.PRICE_REQUIRED, Code.STOP_PRICE_REQUIRED]),
    ],
)
def test_prices_by_order_type(
    order_type: str, price: Decimal | None, stop_price: Decimal | None, expected: list[str]
) -> None:
    assert check(Request(type=order_type, price=price, stop_price=stop_price)) == expected


def test_price_required_message() -> None:
    [violation] = validate_order(Request(price=None), AAPL, Account())
    assert violation == RuleViolation(Code.PRICE_REQUIRED, "price", "a LIMIT order needs a price")


@pytest.mark.parametrize(
    ("price", "expected"),
    [(D("0"), [Code.PRICE_NOT_POSITIVE]), (D("-0.01"), [Code.PRICE_NOT_POSITIVE]), (D("0.01"), [])],
)
def test_price_must_be_positive(price: Decimal, expected: list[str]) -> None:
    assert check(Request(price=price)) == expected


@pytest.mark.parametrize(
    ("stop_price", "expected"),
    [(D("0"), [Code.STOP_PRICE_NOT_POSITIVE]), (D("-5"), [Code.STOP_PRICE_NOT_POSITIVE]), (D("0.01"), [])],
)
def test_stop_price_must_be_positive(stop_price: Decimal, expected: list[str]) -> None:
    assert check(Request(type="STOP", price=None, stop_price=stop_price)) == expected


@pytest.mark.parametrize(
    ("price", "expected"),
    [(D("999999999999.99"), []), (D("1000000000000"), [Code.PRICE_TOO_LARGE])],
)
def test_price_must_fit_the_store(price: Decimal, expected: list[str]) -> None:
    assert check(Request(price=price)) == expected


def test_stop_price_must_fit_the_store() -> None:
    assert check(Request(type="STOP", price=None, stop_price=D("1E+12"))) == [Code.STOP_PRICE_TOO_LARGE]


# --------------------------------------------------------------------------- tick


@pytest.mark.parametrize(
    ("instrument", "price", "expected"),
    [
        (AAPL, D("190.01"), []),
        (AAPL, D("190.005"), [Code.PRICE_OFF_TICK]),
        (AAPL, D("190.00000001"), [Code.PRICE_OFF_TICK]),
        (VOD, D("70.02"), []),
        (VOD, D("70.04"), []),
        (VOD, D("70.01"), [Code.PRICE_OFF_TICK]),
        (VOD, D("70.03"), [Code.PRICE_OFF_TICK]),
    ],
)
def test_price_on_tick(instrument: Instrument, price: Decimal, expected: list[str]) -> None:
    request = Request(symbol=instrument.symbol, quantity=instrument.lot_size, price=price)
    assert check(request, instrument) == expected


def test_off_tick_message_is_readable() -> None:
    [violation] = validate_order(Request(price=D("190.005")), AAPL_STORED, Account())
    assert violation == RuleViolation(
        Code.PRICE_OFF_TICK, "price", "price 190.005 is not a multiple of the tick size 0.01 of AAPL"
    )


@pytest.mark.parametrize(("stop_price", "expected"), [(D("70.02"), []), (D("70.01"), [Code.STOP_PRICE_OFF_TICK])])
def test_stop_price_on_tick(stop_price: Decimal, expected: list[str]) -> None:
    request = Request(symbol="VOD", type="STOP_LIMIT", quantity=D("100"), price=D("70.00"), stop_price=stop_price)
    violations = validate_order(request, VOD, Account())
    assert codes(violations) == expected
    assert all(v.field == "stopPrice" for v in violations)


# --------------------------------------------------------------------------- instrument and account


def test_unknown_instrument_skips_tick_and_lot() -> None:
    violations = validate_order(Request(symbol="NOPE", price=D("1.001")), None, Account())
    assert violations == [RuleViolation(Code.UNKNOWN_INSTRUMENT, "symbol", "instrument NOPE is not known")]


def test_instrument_not_tradable() -> None:
    halted = replace(AAPL, symbol="HALT", tradable=False)
    violations = validate_order(Request(symbol="HALT"), halted, Account())
    assert violations == [RuleViolation(Code.INSTRUMENT_NOT_TRADABLE, "symbol", "instrument HALT is not tradable")]


def test_account_inactive() -> None:
    violations = validate_order(Request(), AAPL, Account(active=False))
    assert violations == [RuleViolation(Code.ACCOUNT_INACTIVE, "accountId", "account ACC-001 is not active")]


def test_unknown_account() -> None:
    assert codes(validate_order(Request(account_id="ACC-999"), AAPL, None)) == [Code.UNKNOWN_ACCOUNT]


# --------------------------------------------------------------------------- enums and time in force


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"side": "HOLD"}, Code.INVALID_SIDE, "side"),
        ({"type": "ICEBERG"}, Code.INVALID_ORDER_TYPE, "type"),
        ({"time_in_force": "GTD"}, Code.INVALID_TIME_IN_FORCE, "timeInForce"),
    ],
)
def test_values_outside_the_enums(changes: dict[str, Any], code: str, field: str) -> None:
    [violation] = validate_order(replace(Request(), **changes), AAPL, Account())
    assert (violation.code, violation.field) == (code, field)


@pytest.mark.parametrize(
    ("order_type", "price", "stop_price", "time_in_force", "allowed"),
    [
        ("STOP", None, D("189.00"), "DAY", True),
        ("STOP", None, D("189.00"), "GTC", True),
        ("STOP", None, D("189.00"), "IOC", False),
        ("STOP", None, D("189.00"), "FOK", False),
        ("STOP_LIMIT", D("190.00"), D("189.00"), "IOC", False),
        ("STOP_LIMIT", D("190.00"), D("189.00"), "FOK", False),
        ("LIMIT", D("190.00"), None, "IOC", True),
        ("MARKET", None, None, "DAY", True),
    ],
)
def test_time_in_force_by_order_type(
    order_type: str, price: Decimal | None, stop_price: Decimal | None, time_in_force: str, allowed: bool
) -> None:
    request = Request(type=order_type, price=price, stop_price=stop_price, time_in_force=time_in_force)
    assert check(request) == ([] if allowed else [Code.TIME_IN_FORCE_NOT_ALLOWED])


# --------------------------------------------------------------------------- several at once, helpers


def test_every_broken_rule_is_reported() -> None:
    request = Request(symbol="VOD", type="MARKET", quantity=D("150"), price=D("70.01"))
    violations = validate_order(request, VOD, Account(active=False))
    assert codes(violations) == [Code.ACCOUNT_INACTIVE, Code.QUANTITY_OFF_LOT, Code.PRICE_NOT_ALLOWED]
    code, reason = summarize(violations)
    assert code == Code.ACCOUNT_INACTIVE
    assert reason == (
        "account ACC-001 is not active; quantity 150 is not a multiple of the lot size 100 of VOD;"
        " a MARKET order takes no price"
    )


def test_summarize_needs_a_violation() -> None:
    with pytest.raises(ValueError):
        summarize([])


def test_validate_terms_for_a_modify() -> None:
    assert validate_terms("LIMIT", D("150"), D("70.02"), None, VOD) == [
        RuleViolation(Code.QUANTITY_OFF_LOT, "quantity", "quantity 150 is not a multiple of the lot size 100 of VOD")
    ]
    assert validate_terms("LIMIT", D("200"), D("70.02"), None, VOD) == []
    assert codes(validate_terms("LIMIT", D("1.5"), D("1.001"), None, None)) == []


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (D("0.01000000"), "0.01"),
        (D("100.00000000"), "100"),
        (D("1E+2"), "100"),
        (D("0"), "0"),
        (D("-1.50"), "-1.5"),
    ],
)
def test_plain(value: Decimal, text: str) -> None:
    assert plain(value) == text


# --------------------------------------------------------------------------- what each violation says


@pytest.mark.parametrize(
    ("request_", "instrument", "account", "violations"),
    [
        (
            Request(account_id="ACC-999"),
            AAPL,
            None,
            [RuleViolation(Code.UNKNOWN_ACCOUNT, "accountId", "account ACC-999 does not exist")],
        ),
        (
            Request(symbol="ZZZ"),
            None,
            Account(),
            [RuleViolation(Code.UNKNOWN_INSTRUMENT, "symbol", "instrument ZZZ is not known")],
        ),
        (
            Request(),
            Instrument(tradable=False),
            Account(),
            [RuleViolation(Code.INSTRUMENT_NOT_TRADABLE, "symbol", "instrument AAPL is not tradable")],
        ),
        (
            Request(quantity=None),
            AAPL,
            Account(),
            [RuleViolation(Code.QUANTITY_REQUIRED, "quantity", "quantity is required")],
        ),
        (
            Request(quantity=D("-0.50")),
            AAPL,
            Account(),
            [RuleViolation(Code.QUANTITY_NOT_POSITIVE, "quantity", "quantity must be positive, got -0.5")],
        ),
        (
            Request(quantity=D("1E+12")),
            AAPL,
            Account(),
            [
                RuleViolation(
                    Code.QUANTITY_TOO_LARGE, "quantity", "quantity 1000000000000 is too large (limit 1000000000000)"
                )
            ],
        ),
        (
            Request(quantity=D("1000000000000.5")),
            AAPL,
            Account(),
            [
                RuleViolation(
                    Code.QUANTITY_TOO_LARGE, "quantity", "quantity 1000000000000.5 is too large (limit 1000000000000)"
                )
            ],
        ),
        (
            Request(price=D("NaN")),
            AAPL,
            Account(),
            [RuleViolation(Code.PRICE_NOT_POSITIVE, "price", "price must be positive, got NaN")],
        ),
        (
            Request(type="STOP", price=None, stop_price=D("2E+12")),
            AAPL,
            Account(),
            [
                RuleViolation(
                    Code.STOP_PRICE_TOO_LARGE,
                    "stopPrice",
                    "stop price 2000000000000 is too large (limit 1000000000000)",
                )
            ],
        ),
        (
            Request(stop_price=D("189")),
            AAPL,
            Account(),
            [RuleViolation(Code.STOP_PRICE_NOT_ALLOWED, "stopPrice", "a LIMIT order takes no stop price")],
        ),
        (
            Request(type="STOP", price=None, stop_price=D("189.005")),
            AAPL,
            Account(),
            [
                RuleViolation(
                    Code.STOP_PRICE_OFF_TICK,
                    "stopPrice",
                    "stop price 189.005 is not a multiple of the tick size 0.01 of AAPL",
                )
            ],
        ),
        (
            Request(side="HOLD", type="ICEBERG", time_in_force="GTD"),
            AAPL,
            Account(),
            [
                RuleViolation(Code.INVALID_SIDE, "side", "side 'HOLD' is not one of BUY, SELL"),
                RuleViolation(
                    Code.INVALID_ORDER_TYPE, "type", "type 'ICEBERG' is not one of MARKET, LIMIT, STOP, STOP_LIMIT"
                ),
                RuleViolation(
                    Code.INVALID_TIME_IN_FORCE, "timeInForce", "timeInForce 'GTD' is not one of DAY, GTC, IOC, FOK"
                ),
            ],
        ),
        (
            Request(type="STOP", price=None, stop_price=D("189"), time_in_force="IOC"),
            AAPL,
            Account(),
            [
                RuleViolation(
                    Code.TIME_IN_FORCE_NOT_ALLOWED,
                    "timeInForce",
                    "a STOP order rests until triggered, so its time in force must be DAY or GTC, not IOC",
                )
            ],
        ),
    ],
    ids=[
        "unknown-account",
        "unknown-instrument",
        "not-tradable",
        "no-quantity",
        "negative-quantity",
        "huge-quantity",
        "huge-quantity-off-lot",
        "nan-price",
        "huge-stop-price",
        "stop-price-not-allowed",
        "stop-price-off-tick",
        "enums",
        "tif-not-allowed",
    ],
)
def test_each_violation_names_its_field_and_says_why(
    request_: Request, instrument: Instrument | None, account: Account | None, violations: list[RuleViolation]
) -> None:
    assert validate_order(request_, instrument, account) == violations


def test_an_instrument_without_a_tick_or_lot_size_checks_neither() -> None:
    free = Instrument(tick_size=D(0), lot_size=D(0))
    assert validate_order(Request(quantity=D("0.123"), price=D("1.2345")), free, Account()) == []


def test_summarize_says_what_it_needs() -> None:
    with pytest.raises(ValueError, match="^no violations to summarize$"):
        summarize([])


@pytest.mark.parametrize(("value", "text"), [(D("-0.000"), "0"), (D("Infinity"), "Infinity"), (D("-NaN"), "-NaN")])
def test_plain_edges(value: Decimal, text: str) -> None:
    assert plain(value) == text
