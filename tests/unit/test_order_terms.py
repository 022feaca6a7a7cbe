"""An order's terms (``OrderTerms`` and the rules they keep) and the pending request's stored form."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from common.domain import InvalidCommand, Order, OrderTerms, OrderType, PendingRequest, RequestKind, Side, TimeInForce
from common.domain.terms import order_terms_problems

D = Decimal
T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
MARKET, LIMIT, STOP, STOP_LIMIT = OrderType.MARKET, OrderType.LIMIT, OrderType.STOP, OrderType.STOP_LIMIT


def test_the_terms_are_the_aggregates_first_fields_under_the_same_names() -> None:
    names = [f.name for f in dataclasses.fields(OrderTerms)]
    assert names == [
        "account_id",
        "symbol",
        "side",
        "type",
        "quantity",
        "price",
        "stop_price",
        "time_in_force",
        "strategy_id",
        "notes",
        "client_order_id",
    ]
    assert [f.name for f in dataclasses.fields(Order)][1 : 1 + len(names)] == names


def test_fields_gives_every_term_by_name_and_the_defaults_are_a_plain_day_order() -> None:
    terms = OrderTerms(account_id="a", symbol="AAPL", side=Side.BUY, type=MARKET, quantity=D(5))
    assert terms.fields() == {
        "account_id": "a",
        "symbol": "AAPL",
        "side": Side.BUY,
        "type": MARKET,
        "quantity": D(5),
        "price": None,
        "stop_price": None,
        "time_in_force": TimeInForce.DAY,
        "strategy_id": None,
        "notes": None,
        "client_order_id": None,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        terms.quantity = D(6)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("type", "quantity", "price", "stop_price", "problems"),
    [
        (LIMIT, D(1), D("0.01"), None, []),
        (MARKET, D("0.0001"), None, None, []),
        (STOP, D(1), None, D(1), []),
        (STOP_LIMIT, D(1), D(1), D(1), []),
        (LIMIT, D(0), D(1), None, ["quantity must be positive"]),
        (LIMIT, D(-1), D(1), None, ["quantity must be positive"]),
        (LIMIT, D("NaN"), D(1), None, ["quantity must be positive"]),
        (LIMIT, D("Infinity"), D(1), None, ["quantity must be positive"]),
        (LIMIT, D(1), D(0), None, ["price must be positive"]),
        (LIMIT, D(1), D(-1), None, ["price must be positive"]),
        (LIMIT, D(1), D("Infinity"), None, ["price must be positive"]),
        (STOP, D(1), None, D(0), ["stopPrice must be positive"]),
        (STOP, D(1), None, D(-1), ["stopPrice must be positive"]),
        (STOP, D(1), None, D("-Infinity"), ["stopPrice must be positive"]),
        (MARKET, D(1), D(1), None, ["a MARKET order takes no price"]),
        (LIMIT, D(1), None, None, ["a LIMIT order needs a price"]),
        (STOP_LIMIT, D(1), None, D(1), ["a STOP_LIMIT order needs a price"]),
        (STOP, D(1), None, None, ["a STOP order needs a stopPrice"]),
        (STOP_LIMIT, D(1), D(1), None, ["a STOP_LIMIT order needs a stopPrice"]),
        (
            STOP_LIMIT,
            D(0),
            None,
            None,
            ["quantity must be positive", "a STOP_LIMIT order needs a price", "a STOP_LIMIT order needs a stopPrice"],
        ),
    ],
)
def test_order_terms_problems_says_each_broken_rule_in_order(
    type: OrderType, quantity: Decimal, price: Decimal | None, stop_price: Decimal | None, problems: list[str]
) -> None:
    assert order_terms_problems(type, quantity, price, stop_price) == problems
    terms = OrderTerms(
        account_id="a", symbol="S", side=Side.SELL, type=type, quantity=quantity, price=price, stop_price=stop_price
    )
    assert terms.problems() == problems


def test_create_says_every_problem_at_once() -> None:
    terms = OrderTerms(account_id="a", symbol="S", side=Side.BUY, type=MARKET, quantity=D(0), price=D(1))
    with pytest.raises(InvalidCommand, match="^quantity must be positive; a MARKET order takes no price$"):
        Order.create(id="o-1", terms=terms, now=T0, user_id=None)


def test_create_and_create_rejected_take_every_term() -> None:
    terms = OrderTerms(
        account_id="acc-7",
        symbol="MSFT",
        side=Side.SELL,
        type=STOP_LIMIT,
        quantity=D("12.5"),
        price=D("300"),
        stop_price=D("301"),
        time_in_force=TimeInForce.GTC,
        strategy_id="s-1",
        notes="n",
        client_order_id="c-1",
    )
    created = Order.create(id="o-1", terms=terms, now=T0, user_id="u")
    rejected = Order.create_rejected(id="o-2", terms=terms, now=T0, user_id="u", code="C", reason="R")
    for order in (created, rejected):
        assert {name: getattr(order, name) for name in terms.fields()} == terms.fields()
        assert (order.created_at, order.updated_at, order.version) == (T0, T0, 1)
    assert (created.id, rejected.id) == ("o-1", "o-2")
    assert (rejected.rejection_code, rejected.rejection_reason) == ("C", "R")
    assert (created.rejection_code, created.rejection_reason) == (None, None)


def test_a_pending_request_is_stored_with_every_field_under_its_json_name() -> None:
    request = PendingRequest(
        kind=RequestKind.REPLACE,
        request_id="r-1",
        requested_at=T0,
        quantity=D(80),
        price=D("149.5"),
        stop_price=D("150"),
        reason="why",
        acknowledged=True,
    )
    stored = request.to_dict()
    assert stored == {
        "kind": "REPLACE",
        "requestId": "r-1",
        "requestedAt": "2024-01-02T14:30:00+00:00",
        "quantity": D(80),
        "price": D("149.5"),
        "stopPrice": D("150"),
        "reason": "why",
        "acknowledged": True,
    }
    assert PendingRequest.from_dict(stored) == request


def test_a_stored_pending_request_reads_back_from_json_values() -> None:
    # As the JSON column gives it back: numbers as text or floats, the time as text or a datetime.
    data: dict[str, object] = {
        "kind": "CANCEL",
        "requestId": 7,
        "requestedAt": T0,
        "quantity": "80",
        "price": 149.5,
        "stopPrice": "150.25",
        "reason": 42,
    }
    assert PendingRequest.from_dict(data) == PendingRequest(
        kind=RequestKind.CANCEL,
        request_id="7",
        requested_at=T0,
        quantity=D(80),
        price=D("149.5"),
        stop_price=D("150.25"),
        reason="42",
        acknowledged=False,
    )
    minimal = PendingRequest.from_dict({"kind": "CANCEL", "requestId": "c", "requestedAt": T0.isoformat()})
    assert minimal == PendingRequest(kind=RequestKind.CANCEL, request_id="c", requested_at=T0)
    assert minimal.reason is None and minimal.acknowledged is False
