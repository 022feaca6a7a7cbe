"""Intake's handler on the in-memory store: decisions become NEW orders on to risk, REJECTED ones, or dead letters.

The same paths run on Postgres in tests/integration/test_intake_stage.py; here they take milliseconds.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from common.domain import OrderState
from common.messages.catalogue import ORDER_UPDATE, RISK_CHECK, TRADE_DECISION
from common.messages.partitions import partition_of
from common.messaging.envelope import Envelope
from common.orders.errors import ConflictingDuplicate
from common.runtime.stage import DeadLetter
from services.intake.spec import SPEC
from tests.support.fake_stages import envelope, run_batch, sent
from tests.support.fake_store import FakeStore
from tests.support.observing import log_lines
from tests.support.orders import trade_decision

D = Decimal
LOGGER = "services.intake.handlers"


@pytest.fixture()
def store() -> FakeStore:
    store = FakeStore.with_demo_data()
    store.add_account("ACC-CLOSED", account_type="CASH", active=False)
    return store


def decision(**changes: Any) -> dict[str, Any]:
    """A LIMIT buy of 100 AAPL at 190 for ACC-001 (camelCase, as the strategy service sends it)."""
    limit = {"type": "LIMIT", "quantity": 100, "price": D("190.00"), "strategyId": "momentum-1"}
    return trade_decision(**{**limit, **changes})


def delivery(body: dict[str, Any], user_id: str | None = None) -> Envelope:
    return envelope(TRADE_DECISION, body, user_id=user_id, correlation_id=body["decisionId"])


def orders_of(store: FakeStore, account_id: str, decision_id: str) -> list[str]:
    return [o.id for o in store.orders.values() if (o.account_id, o.client_order_id) == (account_id, decision_id)]


def test_a_valid_decision_makes_a_new_order_and_asks_risk(store: FakeStore) -> None:
    body = decision()
    messages = run_batch(store, SPEC, delivery(body, user_id="trader-7"))

    [order_id] = orders_of(store, "ACC-001", body["decisionId"])
    order = store.order(order_id)
    assert (order.state, order.status.value, order.quantity, order.price) == (OrderState.NEW, "PENDING", D(100), D(190))
    assert (order.strategy_id, order.time_in_force.value, order.rejection_code) == ("momentum-1", "DAY", None)
    [created] = store.events_of(order_id)
    assert (created.type, created.user_id, created.correlation_id) == ("ORDER_CREATED", "trader-7", body["decisionId"])
    [risk] = sent(messages, RISK_CHECK)
    # To the risk gate partition of the account (one replica sees all of an account's checks, in order).
    partition = partition_of(body["accountId"])
    assert (risk.exchange, risk.routing_key, risk.correlation_id) == ("oms", f"risk.check.{partition}", order_id)
    assert risk.payload == {"orderId": order_id, "version": 1}
    assert dict(risk.headers) == {"x-oms-user": "trader-7"}
    [update] = sent(messages, ORDER_UPDATE)
    assert (update.exchange, update.routing_key) == ("oms.order_updates", "ACC-001.AAPL.PENDING")


def test_the_same_decision_twice_makes_one_order(store: FakeStore) -> None:
    body = decision()
    run_batch(store, SPEC, delivery(body))
    assert run_batch(store, SPEC, delivery(body)) == []  # redelivered under another message id
    assert run_batch(store, SPEC, delivery(body), delivery(body)) == []

    [order_id] = orders_of(store, "ACC-001", body["decisionId"])
    assert len(store.messages(RISK_CHECK.routing_key)) == 1
    assert store.event_types(order_id) == ["ORDER_CREATED"]


def test_twice_in_one_batch_and_on_another_account(store: FakeStore) -> None:
    body = decision()
    messages = run_batch(store, SPEC, delivery(body), delivery(body), delivery({**body, "accountId": "ACC-002"}))
    assert len(orders_of(store, "ACC-001", body["decisionId"])) == 1
    assert len(orders_of(store, "ACC-002", body["decisionId"])) == 1
    assert len(sent(messages, RISK_CHECK)) == 2


@pytest.mark.parametrize(
    ("changes", "code", "reason"),
    [
        ({"quantity": 0}, "QUANTITY_NOT_POSITIVE", "quantity must be positive, got 0"),
        ({"price": None}, "PRICE_REQUIRED", "a LIMIT order needs a price"),
        ({"price": D("190.005")}, "PRICE_OFF_TICK", "price 190.005 is not a multiple of the tick size 0.01 of AAPL"),
        ({"symbol": "NOPE"}, "UNKNOWN_INSTRUMENT", "instrument NOPE is not known"),
        ({"symbol": "HALT", "price": D("10.00")}, "INSTRUMENT_NOT_TRADABLE", "instrument HALT is not tradable"),
        ({"accountId": "ACC-CLOSED"}, "ACCOUNT_INACTIVE", "account ACC-CLOSED is not active"),
    ],
)
def test_a_broken_rule_books_a_rejected_order(
    store: FakeStore, changes: dict[str, Any], code: str, reason: str
) -> None:
    body = decision(**changes)
    messages = run_batch(store, SPEC, delivery(body))

    [order_id] = orders_of(store, body["accountId"], body["decisionId"])
    order = store.order(order_id)
    assert (order.state, order.rejection_code) == (OrderState.REJECTED, code)
    assert order.rejection_reason is not None and reason in order.rejection_reason
    assert store.event_types(order_id) == ["ORDER_CREATED", "ORDER_REJECTED"]
    assert sent(messages, RISK_CHECK) == []
    [update] = sent(messages, ORDER_UPDATE)
    assert update.routing_key == f"{body['accountId']}.{body['symbol']}.REJECTED"
    assert run_batch(store, SPEC, delivery(body)) == []  # seen again: not booked twice


def test_an_unknown_account_is_dead_lettered_and_nothing_is_booked(store: FakeStore) -> None:
    body = decision(accountId="ACC-404")
    with pytest.raises(DeadLetter, match="unknown account ACC-404"):
        run_batch(store, SPEC, delivery(body))
    assert store.orders == {} and store.outbox == []


def test_a_decision_id_seen_with_other_terms_is_dead_lettered(store: FakeStore) -> None:
    body = decision()
    run_batch(store, SPEC, delivery(body))
    run_batch(store, SPEC, delivery({**body, "quantity": D("100.0"), "price": D("190")}))  # the same numbers
    with pytest.raises(DeadLetter) as raised:
        run_batch(store, SPEC, delivery({**body, "side": "SELL", "price": D("191.00")}))
    assert body["decisionId"] in str(raised.value) and "differing: side, price (" in str(raised.value)
    [order_id] = orders_of(store, "ACC-001", body["decisionId"])
    assert store.event_types(order_id) == ["ORDER_CREATED"]


def test_a_conflicting_decision_in_the_same_batch_fails_the_batch(store: FakeStore) -> None:
    body = decision()
    with pytest.raises(DeadLetter, match="differing: quantity"):
        run_batch(store, SPEC, delivery(body), delivery({**body, "quantity": 300}))
    assert store.orders == {}  # the batch rolled back; the runtime then handles each alone


def test_a_conflicting_decision_names_each_difference(store: FakeStore) -> None:
    body = decision()
    run_batch(store, SPEC, delivery(body))
    with pytest.raises(DeadLetter) as raised:
        run_batch(store, SPEC, delivery({**body, "side": "SELL", "price": D("191.00")}))
    conflict = raised.value.__cause__
    assert isinstance(conflict, ConflictingDuplicate)
    assert str(raised.value) == (
        f"decision {body['decisionId']} was already booked as order {conflict.order.id} with other terms; "
        f"differing: side, price ({'; '.join(str(d) for d in conflict.differences)})"
    )
    assert len(conflict.differences) == 2 and "None" not in str(raised.value)


def test_the_order_is_booked_under_the_delivery_and_a_repeat_is_logged(
    store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    body = decision()
    first = replace(delivery(body), message_id="msg-1")
    caplog.set_level(logging.INFO, logger=LOGGER)
    run_batch(store, SPEC, first)
    assert log_lines(caplog, LOGGER) == []  # a new order is announced by its events, not by this handler
    [order_id] = orders_of(store, "ACC-001", body["decisionId"])
    [created] = store.events_of(order_id)
    assert created.message_id == "msg-1"

    run_batch(store, SPEC, delivery(body))
    assert log_lines(caplog, LOGGER) == [
        ("INFO", "decision already booked", {"order_id": order_id, "decision_id": body["decisionId"]})
    ]
