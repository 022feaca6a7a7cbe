"""The intake stage on the real database: trade decisions become NEW orders (on to risk) or REJECTED ones."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.dialects.postgresql import insert

from common import jsonutil
from common.contracts import TradeDecisionSchema
from common.messaging.envelope import Envelope
from common.runtime.stage import DeadLetter
from common.store import tables
from services.intake.handlers import handle_trade_decision
from tests.support.db import open_engine
from tests.support.orders import events_of, handle, outbox_of, trade_decision

pytestmark = pytest.mark.integration

INACTIVE_ACCOUNT = "ACC-INTAKE-CLOSED"


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    with open_engine(database_url) as engine:
        with engine.begin() as connection:
            account = {"id": INACTIVE_ACCOUNT, "name": "Closed", "account_type": "CASH", "base_currency": "USD"}
            connection.execute(
                insert(tables.accounts)
                .values(**account, cash_balance=Decimal(0), active=False, created_at=datetime.now(UTC))
                .on_conflict_do_nothing()
            )
        yield engine


def decision(**changes: Any) -> dict[str, Any]:
    """A trade decision body as the strategy service sends it (camelCase, JSON numbers)."""
    limit = {"type": "LIMIT", "quantity": 100, "price": Decimal("190.00"), "strategyId": "momentum-1"}
    return trade_decision(**{**limit, **changes})


def envelope(body: dict[str, Any], user: str | None = None) -> Envelope:
    loaded = TradeDecisionSchema().load(jsonutil.loads(jsonutil.dumps(body)))
    return Envelope(
        message_id=str(uuid.uuid4()),
        routing_key="intake.decision",
        body=loaded,
        type="TradeDecision",
        headers={"x-oms-user": user} if user else {},
    )


def run(engine: Engine, *envelopes: Envelope) -> None:
    """Handle the envelopes in one transaction, as one batch of the runtime would."""
    handle(engine, handle_trade_decision, *envelopes)


def orders_for(engine: Engine, account_id: str, decision_id: str) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(tables.orders).where(
                tables.orders.c.account_id == account_id, tables.orders.c.client_order_id == decision_id
            )
        )
        return [dict(r) for r in rows.mappings()]


def test_a_valid_decision_makes_a_new_order_and_asks_risk(engine: Engine) -> None:
    body = decision()
    run(engine, envelope(body, user="trader-7"))

    [order] = orders_for(engine, "ACC-001", body["decisionId"])
    assert order["state"] == "NEW"
    assert order["status"] == "PENDING"
    assert order["quantity"] == Decimal("100")
    assert order["price"] == Decimal("190.00")
    assert order["time_in_force"] == "DAY"
    assert order["strategy_id"] == "momentum-1"
    assert order["rejection_code"] is None

    [created] = events_of(engine, order["id"])
    assert created["type"] == "ORDER_CREATED"
    assert created["user_id"] == "trader-7"
    assert created["correlation_id"] == order["id"]

    [risk] = outbox_of(engine, order["id"], "risk.check")
    assert (risk["exchange"], risk["type"], risk["claimed"]) == ("oms", "RiskCheck", True)
    assert risk["body"] == {"orderId": order["id"], "version": order["version"]}
    assert risk["headers"] == {"x-oms-user": "trader-7"}
    [update] = outbox_of(engine, order["id"], "ACC-001.AAPL.PENDING")
    assert update["exchange"] == "oms.order_updates"


def test_time_in_force_defaults_to_day(engine: Engine) -> None:
    body = decision(timeInForce=None, type="MARKET", price=None)
    run(engine, envelope(body))
    [order] = orders_for(engine, "ACC-001", body["decisionId"])
    assert (order["state"], order["time_in_force"], order["price"]) == ("NEW", "DAY", None)


def test_the_same_decision_twice_makes_one_order(engine: Engine) -> None:
    body = decision()
    run(engine, envelope(body))
    run(engine, envelope(body))  # redelivered under another message id
    run(engine, envelope(body), envelope(body))  # twice within one batch

    [order] = orders_for(engine, "ACC-001", body["decisionId"])
    assert len(outbox_of(engine, order["id"], "risk.check")) == 1
    assert [e["type"] for e in events_of(engine, order["id"])] == ["ORDER_CREATED"]


def test_the_same_decision_id_on_another_account_is_another_order(engine: Engine) -> None:
    body = decision()
    run(engine, envelope(body), envelope({**body, "accountId": "ACC-002"}))
    assert len(orders_for(engine, "ACC-001", body["decisionId"])) == 1
    assert len(orders_for(engine, "ACC-002", body["decisionId"])) == 1


@pytest.mark.parametrize(
    ("changes", "code", "reason"),
    [
        ({"quantity": 0}, "QUANTITY_NOT_POSITIVE", "quantity must be positive, got 0"),
        ({"quantity": -5}, "QUANTITY_NOT_POSITIVE", "quantity must be positive, got -5"),
        (
            {"quantity": Decimal("1.5")},
            "QUANTITY_OFF_LOT",
            "quantity 1.5 is not a multiple of the lot size 1",
        ),
        (
            {"symbol": "VOD", "quantity": 150, "price": Decimal("70.02")},
            "QUANTITY_OFF_LOT",
            "quantity 150 is not a multiple of the lot size 100 of VOD",
        ),
        ({"price": None}, "PRICE_REQUIRED", "a LIMIT order needs a price"),
        ({"type": "MARKET"}, "PRICE_NOT_ALLOWED", "a MARKET order takes no price"),
        ({"type": "STOP", "price": None}, "STOP_PRICE_REQUIRED", "a STOP order needs a stop price"),
        ({"price": Decimal("0")}, "PRICE_NOT_POSITIVE", "price must be positive, got 0"),
        (
            {"price": Decimal("190.005")},
            "PRICE_OFF_TICK",
            "price 190.005 is not a multiple of the tick size 0.01 of AAPL",
        ),
        (
            {"type": "STOP_LIMIT", "stopPrice": Decimal("189.001")},
            "STOP_PRICE_OFF_TICK",
            "stop price 189.001 is not a multiple of the tick size 0.01",
        ),
        (
            {"type": "STOP", "price": None, "stopPrice": Decimal("189.00"), "timeInForce": "IOC"},
            "TIME_IN_FORCE_NOT_ALLOWED",
            "time in force must be DAY or GTC, not IOC",
        ),
        ({"symbol": "NOPE"}, "UNKNOWN_INSTRUMENT", "instrument NOPE is not known"),
        (
            {"symbol": "HALT", "price": Decimal("10.00")},
            "INSTRUMENT_NOT_TRADABLE",
            "instrument HALT is not tradable",
        ),
        ({"accountId": INACTIVE_ACCOUNT}, "ACCOUNT_INACTIVE", f"account {INACTIVE_ACCOUNT} is not active"),
        ({"quantity": Decimal("1E+13")}, "QUANTITY_TOO_LARGE", "quantity 10000000000000 is too large"),
    ],
)
def test_a_broken_rule_books_a_rejected_order(engine: Engine, changes: dict[str, Any], code: str, reason: str) -> None:
    body = decision(**changes)
    run(engine, envelope(body))

    [order] = orders_for(engine, body["accountId"], body["decisionId"])
    assert order["state"] == "REJECTED"
    assert order["status"] == "REJECTED"
    assert order["rejection_code"] == code
    assert reason in order["rejection_reason"]
    events = events_of(engine, order["id"])
    assert [e["type"] for e in events] == ["ORDER_CREATED", "ORDER_REJECTED"]
    assert events[1]["payload"]["code"] == code
    assert outbox_of(engine, order["id"], "risk.check") == []
    assert len(outbox_of(engine, order["id"], f"{body['accountId']}.{body['symbol']}.REJECTED")) == 1


def test_a_value_too_large_to_store_is_recorded_as_zero(engine: Engine) -> None:
    body = decision(quantity=Decimal("1E+13"), price=Decimal("1E+13"))
    run(engine, envelope(body))
    [order] = orders_for(engine, "ACC-001", body["decisionId"])
    assert (order["quantity"], order["price"]) == (Decimal(0), None)
    assert "quantity 10000000000000 is too large" in order["rejection_reason"]
    assert "price 10000000000000 is too large" in order["rejection_reason"]


def test_every_broken_rule_is_in_the_reason(engine: Engine) -> None:
    body = decision(symbol="VOD", quantity=150, price=Decimal("70.01"))
    run(engine, envelope(body))
    [order] = orders_for(engine, "ACC-001", body["decisionId"])
    assert order["rejection_code"] == "QUANTITY_OFF_LOT"
    assert order["rejection_reason"] == (
        "quantity 150 is not a multiple of the lot size 100 of VOD;"
        " price 70.01 is not a multiple of the tick size 0.02 of VOD"
    )


def test_a_rejected_decision_seen_again_is_not_booked_twice(engine: Engine) -> None:
    body = decision(quantity=0)
    run(engine, envelope(body))
    run(engine, envelope(body))
    assert len(orders_for(engine, "ACC-001", body["decisionId"])) == 1


def test_an_unknown_account_is_dead_lettered(engine: Engine) -> None:
    body = decision(accountId="ACC-404")
    with pytest.raises(DeadLetter, match="unknown account ACC-404"):
        run(engine, envelope(body))
    assert orders_for(engine, "ACC-404", body["decisionId"]) == []


def test_the_same_decision_with_the_numbers_written_otherwise_is_a_duplicate(engine: Engine) -> None:
    body = decision(quantity=100, price=Decimal("190.00"))
    run(engine, envelope(body))
    run(engine, envelope({**body, "quantity": Decimal("100.0"), "price": Decimal("190")}))
    [order] = orders_for(engine, "ACC-001", body["decisionId"])
    assert [e["type"] for e in events_of(engine, order["id"])] == ["ORDER_CREATED"]


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"quantity": 200}, "quantity"),
        ({"side": "SELL", "price": Decimal("191.00")}, "side, price"),
        ({"symbol": "MSFT", "timeInForce": "GTC"}, "symbol, timeInForce"),
        ({"strategyId": "other", "notes": "again"}, "strategyId, notes"),
        ({"type": "MARKET", "price": None}, "type, price"),
    ],
)
def test_a_decision_id_seen_with_other_terms_is_dead_lettered(
    engine: Engine, changes: dict[str, Any], fields: str
) -> None:
    body = decision()
    run(engine, envelope(body))
    conflicting = {k: v for k, v in {**body, **changes}.items() if v is not None}
    with pytest.raises(DeadLetter) as raised:
        run(engine, envelope(conflicting))
    reason = str(raised.value)
    assert body["decisionId"] in reason
    assert f"differing: {fields} (" in reason
    [order] = orders_for(engine, "ACC-001", body["decisionId"])
    assert order["quantity"] == Decimal(100)
    assert [e["type"] for e in events_of(engine, order["id"])] == ["ORDER_CREATED"]


def test_a_conflicting_decision_in_the_same_batch_is_dead_lettered(engine: Engine) -> None:
    body = decision()
    with pytest.raises(DeadLetter, match="differing: quantity"):
        run(engine, envelope(body), envelope({**body, "quantity": 300}))


def test_a_rejected_decision_with_an_unstorable_value_seen_again_is_a_duplicate(engine: Engine) -> None:
    body = decision(quantity=Decimal("1E+13"))
    run(engine, envelope(body))
    run(engine, envelope(body))
    with pytest.raises(DeadLetter, match="differing: quantity"):
        run(engine, envelope({**body, "quantity": 5}))
    assert len(orders_for(engine, "ACC-001", body["decisionId"])) == 1
