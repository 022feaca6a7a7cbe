"""The router's handlers on the in-memory store: approved orders and cancel/replace requests sent to the venue,
once, or skipped when the order no longer needs them; unknown orders and requests dead-lettered.

Orders get here as in production: booked by the intake command, checked by the risk gate on the fake store,
their hand-overs delivered as the runtime delivers them. The Postgres side: tests/integration/test_router_stage.py.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from common.contracts import NewOrderRequestSchema, ReplaceRequestSchema
from common.domain import ExecType, OrderState
from common.messages.catalogue import (
    CANCEL_REQUEST,
    NEW_ORDER_REQUEST,
    REPLACE_REQUEST,
    RISK_CHECK,
    ROUTE_CANCEL,
    ROUTE_NEW,
    ROUTE_REPLACE,
)
from common.orders.commands import cancel_order, modify_order, submit_order
from common.orders.records import REQUEST_NEW, REQUEST_SENT, REQUEST_SKIPPED
from common.runtime.stage import DeadLetter
from services.risk_gate.spec import SPEC as RISK_GATE
from services.router.handlers import lock_requests
from services.router.spec import SPEC as ROUTER
from tests.support.fake_risk import provide_risk_store
from tests.support.fake_stages import delivered, envelope, run_batch, sent
from tests.support.fake_store import FakeMessage, FakeStore
from tests.support.observing import log_lines, record_order_reads
from tests.support.orders import execution_report, order_request

D = Decimal
LOGGER = "services.router.handlers"
# A SELL STOP_LIMIT of 300 VOD for ACC-002: every term travels.
VOD_STOP_LIMIT: dict[str, Any] = {
    "account_id": "ACC-002",
    "symbol": "VOD",
    "side": "SELL",
    "type": "STOP_LIMIT",
    "quantity": D("300"),
    "price": D("70.02"),
    "stop_price": D("70.10"),
    "time_in_force": "GTC",
}


@pytest.fixture()
def store() -> FakeStore:
    store = FakeStore.with_demo_data()
    provide_risk_store(store)
    return store


def last(store: FakeStore, kind_type: str, order_id: str) -> FakeMessage:
    return [m for m in store.outbox if m.type == kind_type and m.correlation_id == order_id][-1]


def pass_risk(store: FakeStore, order_id: str) -> None:
    """The risk gate on the order's latest RiskCheck."""
    run_batch(store, RISK_GATE, delivered(RISK_GATE, last(store, RISK_CHECK.type, order_id)))


def approved_order(store: FakeStore, **changes: Any) -> str:
    """An order through intake and risk: its RouteNew is in the store's outbox."""
    with store.unit_of_work() as uow:
        order, _ = submit_order(
            uow, order_request(**{**VOD_STOP_LIMIT, **changes}), user_id=None, correlation_id=None, message_id=None
        )
        uow.commit()
    pass_risk(store, order.id)
    assert store.order(order.id).state is OrderState.APPROVED
    return order.id


def route(store: FakeStore, kind_type: str, order_id: str) -> list[FakeMessage]:
    """Deliver the order's latest hand-over of this type to the router; what the router sends."""
    return run_batch(store, ROUTER, delivered(ROUTER, last(store, kind_type, order_id)))


def routed_order(store: FakeStore, **changes: Any) -> str:
    order_id = approved_order(store, **changes)
    route(store, ROUTE_NEW.type, order_id)
    return order_id


def acknowledge(store: FakeStore, order_id: str) -> None:
    """The venue's NEW report, applied as the execution handler would."""
    with store.unit_of_work() as uow:
        order = uow.orders.get(order_id, for_update=True)
        assert order is not None
        report = execution_report(order_id, ExecType.NEW, broker_order_id="B-1", cum_qty=D(0), leaves_qty=D("300"))
        order.apply_report(report, datetime.now(UTC))
        uow.orders.save(order, correlation_id=order_id, message_id=None)
        uow.commit()


def test_an_approved_order_is_routed_to_the_broker_once(store: FakeStore) -> None:
    order_id = approved_order(store)
    [new_order] = sent(route(store, ROUTE_NEW.type, order_id), NEW_ORDER_REQUEST)

    assert store.order(order_id).state is OrderState.ROUTED
    [request] = store.requests_of(order_id)
    assert (request.kind, request.status) == (REQUEST_NEW, REQUEST_SENT)
    assert request.terms == {"quantity": D("300"), "price": D("70.02"), "stopPrice": D("70.10"), "timeInForce": "GTC"}
    assert new_order.exchange == "broker"
    assert NewOrderRequestSchema().load(dict(new_order.payload)) == {
        "order_id": order_id,
        "request_id": request.request_id,
        "account_id": "ACC-002",
        "symbol": "VOD",
        "side": "SELL",
        "type": "STOP_LIMIT",
        "quantity": D("300"),
        "price": D("70.02"),
        "stop_price": D("70.10"),
        "time_in_force": "GTC",
    }
    routed = [e for e in store.events_of(order_id) if e.type == "ORDER_ROUTED"]
    assert routed[0].payload["request_id"] == request.request_id
    assert route(store, ROUTE_NEW.type, order_id) == []  # a second RouteNew: not APPROVED any more
    assert len(store.requests_of(order_id)) == 1


def test_a_market_order_is_sent_without_prices(store: FakeStore) -> None:
    order_id = approved_order(
        store, symbol="AAPL", type="MARKET", quantity=D("5"), price=None, stop_price=None, time_in_force="IOC"
    )
    [new_order] = sent(route(store, ROUTE_NEW.type, order_id), NEW_ORDER_REQUEST)
    body = new_order.payload
    assert (body["type"], body["price"], body["stopPrice"], body["timeInForce"]) == ("MARKET", None, None, "IOC")


def test_an_order_canceled_before_routing_is_not_sent(store: FakeStore) -> None:
    order_id = approved_order(store)
    with store.unit_of_work() as uow:
        cancel_order(uow, order_id, reason=None, user_id=None)
        uow.commit()
    assert route(store, ROUTE_NEW.type, order_id) == []
    assert store.order(order_id).state is OrderState.CANCELED
    assert store.requests_of(order_id) == []


def test_a_cancel_is_sent_once_and_the_order_waits_for_the_venue(store: FakeStore) -> None:
    order_id = routed_order(store)
    acknowledge(store, order_id)
    with store.unit_of_work() as uow:
        cancel_order(uow, order_id, reason="risk off", user_id="trader-3")
        uow.commit()
    cancel_route = last(store, ROUTE_CANCEL.type, order_id)
    assert dict(cancel_route.headers) == {"x-oms-user": "trader-3"}
    [cancel] = sent(run_batch(store, ROUTER, delivered(ROUTER, cancel_route)), CANCEL_REQUEST)

    request = store.requests_of(order_id)[-1]
    assert (request.kind, request.status, request.reason) == ("CANCEL", REQUEST_SENT, "risk off")
    assert (cancel.exchange, cancel.payload["requestId"], cancel.payload["quantity"]) == (
        "broker",
        request.request_id,
        D("300"),
    )
    assert store.order(order_id).state is OrderState.OPEN  # it changes when the venue answers
    again = replace(delivered(ROUTER, cancel_route), message_id=str(uuid.uuid4()))
    assert run_batch(store, ROUTER, again) == []  # the same request again: already sent


def test_a_replace_is_sent_with_the_new_terms_not_yet_in_force(store: FakeStore) -> None:
    order_id = routed_order(store)
    with store.unit_of_work() as uow:
        modify_order(uow, order_id, quantity=D("500"), price=D("70.04"), stop_price=None, notes=None, user_id=None)
        uow.commit()
    pass_risk(store, order_id)
    [replace_request] = sent(route(store, ROUTE_REPLACE.type, order_id), REPLACE_REQUEST)

    request = store.requests_of(order_id)[-1]
    assert (request.kind, request.status) == ("REPLACE", REQUEST_SENT)
    body = ReplaceRequestSchema().load(dict(replace_request.payload))
    assert body["request_id"] == request.request_id
    assert (body["quantity"], body["price"], body["stop_price"]) == (D("500"), D("70.04"), D("70.10"))
    order = store.order(order_id)
    assert (order.quantity, order.price) == (D("300"), D("70.02"))


def test_a_request_for_an_order_that_ended_or_superseded_is_skipped(store: FakeStore) -> None:
    order_id = routed_order(store)
    with store.unit_of_work() as uow:
        modify_order(uow, order_id, quantity=D("400"), price=None, stop_price=None, notes=None, user_id=None)
        uow.commit()
    pass_risk(store, order_id)  # the gate approves the replace; a cancel overtakes it on its way to the router
    with store.unit_of_work() as uow:
        cancel_order(uow, order_id, reason=None, user_id=None)
        uow.commit()
    assert route(store, ROUTE_REPLACE.type, order_id) == []
    statuses = {r.kind: (r.status, r.reason or "") for r in store.requests_of(order_id)}
    assert statuses["REPLACE"][0] == REQUEST_SKIPPED and statuses["REPLACE"][1].startswith("superseded by cancel")

    with store.unit_of_work() as uow:  # the venue fills the order before the cancel reaches it
        order = uow.orders.get(order_id, for_update=True)
        assert order is not None
        fill = execution_report(
            order_id,
            ExecType.FILL,
            last_qty=D("300"),
            last_px=D("70.02"),
            cum_qty=D("300"),
            leaves_qty=D(0),
            avg_px=D("70.02"),
        )
        order.apply_report(fill, datetime.now(UTC))
        uow.orders.save(order, correlation_id=order_id, message_id=None)
        uow.commit()
    assert route(store, ROUTE_CANCEL.type, order_id) == []
    cancel = store.requests_of(order_id)[-1]
    assert (cancel.status, cancel.reason) == (REQUEST_SKIPPED, "order is FILLED")


def test_an_unknown_order_or_request_is_dead_lettered(store: FakeStore) -> None:
    with pytest.raises(DeadLetter, match="unknown order"):
        run_batch(store, ROUTER, envelope(ROUTE_NEW, {"orderId": str(uuid.uuid4())}))
    order_id = routed_order(store)
    body = {"orderId": order_id, "requestId": str(uuid.uuid4()), "reason": None}
    with pytest.raises(DeadLetter, match="no CANCEL request"):
        run_batch(store, ROUTER, envelope(ROUTE_CANCEL, body))


def test_routing_records_who_asked_and_when_under_the_delivery(
    store: FakeStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = approved_order(store)
    reads = record_order_reads(monkeypatch)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    delivery = envelope(ROUTE_NEW, {"orderId": order_id}, user_id="trader-3", message_id="msg-1")
    [new_order] = run_batch(store, ROUTER, delivery)

    assert reads == [(order_id, True)]
    [request] = store.requests_of(order_id)
    row = store.requests[request.request_id]
    assert (request.created_by, row.created_at.tzinfo is not None) == ("trader-3", True)
    routed = store.events_of(order_id)[-1]
    assert (routed.type, routed.correlation_id, routed.message_id) == ("ORDER_ROUTED", order_id, "msg-1")
    assert routed.timestamp.tzinfo is not None
    assert new_order.correlation_id == order_id
    assert log_lines(caplog, LOGGER) == [("DEBUG", "order routed", {"request_id": request.request_id})]

    caplog.clear()
    assert run_batch(store, ROUTER, replace(delivery, correlation_id="corr-2")) == []
    assert log_lines(caplog, LOGGER) == [("INFO", "route skipped: order not approved", {"state": "ROUTED"})]


def test_a_routed_order_keeps_the_correlation_it_came_with(store: FakeStore) -> None:
    order_id = approved_order(store)
    run_batch(store, ROUTER, envelope(ROUTE_NEW, {"orderId": order_id}, correlation_id="corr-1"))
    assert store.events_of(order_id)[-1].correlation_id == "corr-1"


def test_a_sent_request_is_logged_stamped_and_keyed_by_its_order(
    store: FakeStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = routed_order(store)
    acknowledge(store, order_id)
    with store.unit_of_work() as uow:
        modify_order(uow, order_id, quantity=D("400"), price=None, stop_price=None, notes=None, user_id=None)
        uow.commit()
    pass_risk(store, order_id)
    reads = record_order_reads(monkeypatch)
    caplog.set_level(logging.INFO, logger=LOGGER)
    [replace_request] = sent(route(store, ROUTE_REPLACE.type, order_id), REPLACE_REQUEST)
    request = store.requests_of(order_id)[-1]
    row = store.requests[request.request_id]
    assert (replace_request.correlation_id, request.status) == (order_id, REQUEST_SENT)
    assert row.updated_at.tzinfo is not None and row.updated_at >= row.created_at
    assert reads == [(order_id, True)]
    assert log_lines(caplog, LOGGER) == [
        ("INFO", "request sent", {"request_id": request.request_id, "kind": "REPLACE"})
    ]

    caplog.clear()
    assert route(store, ROUTE_REPLACE.type, order_id) == []
    assert log_lines(caplog, LOGGER) == [
        ("INFO", "request already handled", {"request_id": request.request_id, "status": REQUEST_SENT})
    ]

    with store.unit_of_work() as uow:
        cancel_order(uow, order_id, reason=None, user_id=None)
        uow.commit()
    [cancel] = sent(route(store, ROUTE_CANCEL.type, order_id), CANCEL_REQUEST)
    assert cancel.correlation_id == order_id


def test_a_skipped_request_says_why(store: FakeStore, caplog: pytest.LogCaptureFixture) -> None:
    order_id = routed_order(store)
    with store.unit_of_work() as uow:
        cancel_order(uow, order_id, reason=None, user_id=None)
        uow.commit()
    with store.unit_of_work() as uow:  # the order ends at the venue before the router sends the cancel
        order = uow.orders.get(order_id, for_update=True)
        assert order is not None
        order.apply_report(
            execution_report(order_id, ExecType.REJECTED, cum_qty=D(0), leaves_qty=D(0), reason="no"),
            datetime.now(UTC),
        )
        uow.orders.save(order, correlation_id=order_id, message_id=None)
        uow.commit()
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert route(store, ROUTE_CANCEL.type, order_id) == []
    request = store.requests_of(order_id)[-1]
    row = store.requests[request.request_id]
    assert (request.status, request.reason) == (REQUEST_SKIPPED, "order is REJECTED")
    assert row.updated_at.tzinfo is not None
    assert log_lines(caplog, LOGGER) == [
        ("INFO", "request skipped", {"request_id": request.request_id, "reason": "order is REJECTED"})
    ]


def test_a_request_of_another_order_is_dead_lettered(store: FakeStore) -> None:
    mine, other = routed_order(store), routed_order(store)
    acknowledge(store, mine)
    with store.unit_of_work() as uow:
        cancel_order(uow, mine, reason=None, user_id=None)
        uow.commit()
    request_id = store.requests_of(mine)[-1].request_id
    body = {"orderId": other, "requestId": request_id, "reason": None}
    with pytest.raises(DeadLetter, match=rf"^no CANCEL request {request_id} for order {other}$"):
        run_batch(store, ROUTER, envelope(ROUTE_CANCEL, body))
    unknown = str(uuid.uuid4())
    with pytest.raises(DeadLetter, match=rf"^unknown order {unknown}$"):
        run_batch(store, ROUTER, envelope(ROUTE_NEW, {"orderId": unknown}))


def test_the_batch_locks_its_cancel_and_replace_requests_at_once(store: FakeStore) -> None:
    cancel = envelope(ROUTE_CANCEL, {"orderId": str(uuid.uuid4()), "requestId": "R-C", "reason": None})
    replaced = envelope(ROUTE_REPLACE, {"orderId": str(uuid.uuid4()), "requestId": "R-R"})
    new = envelope(ROUTE_NEW, {"orderId": str(uuid.uuid4())})
    locked: list[list[str]] = []
    with store.unit_of_work() as uow:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(uow.requests, "lock", lambda ids: locked.append(list(ids)))
            lock_requests(uow, [cancel, new, replaced])
            lock_requests(uow, [new])
        uow.rollback()
    assert locked == [["R-C", "R-R"]]
