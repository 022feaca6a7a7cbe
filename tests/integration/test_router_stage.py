"""The router on the real database: new orders, cancels and replaces go to the broker exchange."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, select

from common.contracts import (
    CancelRequestSchema,
    NewOrderRequestSchema,
    ReplaceRequestSchema,
    RiskCheckSchema,
    RouteCancelSchema,
    RouteNewSchema,
    RouteReplaceSchema,
)
from common.domain import ExecType
from common.messages.partitions import base_key
from common.orders.commands import cancel_order, modify_order
from common.runtime.stage import DeadLetter
from common.store import tables
from common.store.uow import UnitOfWork
from services.risk_gate.handlers import handle_risk_check
from services.router.spec import SPEC as ROUTER
from tests.support.orders import (
    apply_report,
    envelope_of,
    handle,
    order_row,
    outbox_of,
    requests_of,
    submit,
)

pytestmark = pytest.mark.integration

D = Decimal
ROUTE_SCHEMAS = {
    "router.new": RouteNewSchema(),
    "router.cancel": RouteCancelSchema(),
    "router.replace": RouteReplaceSchema(),
}


# --------------------------------------------------------------------------- helpers


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


def deliver(engine: Engine, row: dict[str, Any]) -> None:
    """Hand an outbox row to the router as the broker would: its body loaded through the route schema."""
    handle(engine, ROUTER.handle, envelope_of(row, ROUTE_SCHEMAS[base_key(row["routing_key"])].load(row["body"])))


def pass_risk(engine: Engine, order_id: str) -> None:
    """Run the risk gate on the order's latest RiskCheck (a replace's new terms go through it first)."""
    check = outbox_of(engine, order_id, "risk.check")[-1]
    handle(engine, handle_risk_check, envelope_of(check, RiskCheckSchema().load(check["body"]), as_sent=False))


def approved_order(engine: Engine, **changes: Any) -> str:
    """An order through intake and risk, its RouteNew waiting in the outbox."""
    order, _ = submit(engine, **{**VOD_STOP_LIMIT, **changes})
    [check] = outbox_of(engine, order.id, "risk.check")
    body = {"order_id": order.id, "version": check["body"]["version"]}
    handle(engine, handle_risk_check, envelope_of(check, body, as_sent=False))
    assert order_row(engine, order.id)["state"] == "APPROVED"
    return order.id


def routed_order(engine: Engine, **changes: Any) -> str:
    order_id = approved_order(engine, **changes)
    [route] = outbox_of(engine, order_id, "router.new")
    deliver(engine, route)
    return order_id


# --------------------------------------------------------------------------- new orders


def test_an_approved_order_is_routed_to_the_broker(engine: Engine) -> None:
    order_id = approved_order(engine)
    [route] = outbox_of(engine, order_id, "router.new")
    deliver(engine, route)

    order = order_row(engine, order_id)
    assert (order["state"], order["status"]) == ("ROUTED", "PENDING")
    [request] = requests_of(engine, order_id)
    assert (request["kind"], request["status"]) == ("NEW", "SENT")
    assert request["terms"] == {
        "quantity": D("300"),
        "price": D("70.02"),
        "stopPrice": D("70.10"),
        "timeInForce": "GTC",
    }

    [sent] = outbox_of(engine, order_id, "orders.new")
    assert (sent["exchange"], sent["type"], sent["claimed"]) == ("broker", "NewOrderRequest", True)
    assert set(sent["body"]) == {
        "orderId",
        "requestId",
        "accountId",
        "symbol",
        "side",
        "type",
        "quantity",
        "price",
        "stopPrice",
        "timeInForce",
    }
    assert NewOrderRequestSchema().load(sent["body"]) == {
        "order_id": order_id,
        "request_id": request["request_id"],
        "account_id": "ACC-002",
        "symbol": "VOD",
        "side": "SELL",
        "type": "STOP_LIMIT",
        "quantity": D("300"),
        "price": D("70.02"),
        "stop_price": D("70.10"),
        "time_in_force": "GTC",
    }
    with engine.connect() as connection:
        routed = connection.execute(
            select(tables.order_events.c.payload).where(
                tables.order_events.c.order_id == order_id, tables.order_events.c.type == "ORDER_ROUTED"
            )
        ).scalar_one()
    assert routed["request_id"] == request["request_id"]


def test_a_market_order_is_sent_without_prices(engine: Engine) -> None:
    order_id = routed_order(
        engine, symbol="AAPL", type="MARKET", quantity=D("5"), price=None, stop_price=None, time_in_force="IOC"
    )
    [sent] = outbox_of(engine, order_id, "orders.new")
    assert (sent["body"]["type"], sent["body"]["price"], sent["body"]["stopPrice"]) == ("MARKET", None, None)
    assert sent["body"]["timeInForce"] == "IOC"


def test_route_new_is_idempotent(engine: Engine) -> None:
    order_id = approved_order(engine)
    [route] = outbox_of(engine, order_id, "router.new")
    deliver(engine, route)
    deliver(engine, {**route, "message_id": str(uuid.uuid4())})  # a second RouteNew (e.g. after a modify)
    assert len(outbox_of(engine, order_id, "orders.new")) == 1
    assert len(requests_of(engine, order_id)) == 1


def test_an_order_canceled_before_routing_is_not_sent(engine: Engine) -> None:
    order_id = approved_order(engine)
    with UnitOfWork(engine) as uow:
        cancel_order(uow, order_id, reason=None, user_id=None)
        uow.commit()
    [route] = outbox_of(engine, order_id, "router.new")
    deliver(engine, route)
    assert order_row(engine, order_id)["state"] == "CANCELED"
    assert outbox_of(engine, order_id, "orders.new") == []
    assert requests_of(engine, order_id) == []


def test_an_unknown_order_is_dead_lettered(engine: Engine) -> None:
    row = {
        "message_id": str(uuid.uuid4()),
        "routing_key": "router.new",
        "body": {"orderId": str(uuid.uuid4())},
        "correlation_id": None,
        "type": "RouteNew",
        "headers": {},
    }
    with pytest.raises(DeadLetter, match="unknown order"):
        deliver(engine, row)


# --------------------------------------------------------------------------- cancel and replace


def test_a_cancel_is_sent_with_the_order_terms(engine: Engine) -> None:
    order_id = routed_order(engine)
    apply_report(engine, order_id, ExecType.NEW, cum_qty=D(0), leaves_qty=D("300"), broker_order_id="B-1")
    with UnitOfWork(engine) as uow:
        cancel_order(uow, order_id, reason="risk off", user_id="trader-3")
        uow.commit()
    [route] = outbox_of(engine, order_id, "router.cancel")
    assert route["headers"] == {"x-oms-user": "trader-3"}
    deliver(engine, route)

    [_, cancel] = requests_of(engine, order_id)
    assert (cancel["kind"], cancel["status"], cancel["reason"]) == ("CANCEL", "SENT", "risk off")
    [sent] = outbox_of(engine, order_id, "orders.cancel")
    assert (sent["exchange"], sent["type"]) == ("broker", "CancelRequest")
    assert CancelRequestSchema().load(sent["body"]) == {
        "order_id": order_id,
        "request_id": cancel["request_id"],
        "account_id": "ACC-002",
        "symbol": "VOD",
        "side": "SELL",
        "type": "STOP_LIMIT",
        "quantity": D("300"),
        "price": D("70.02"),
        "stop_price": D("70.10"),
        "time_in_force": "GTC",
    }
    # The order waits for the venue's answer.
    assert order_row(engine, order_id)["state"] == "OPEN"

    deliver(engine, {**route, "message_id": str(uuid.uuid4())})  # the same request again: already sent
    assert len(outbox_of(engine, order_id, "orders.cancel")) == 1


def test_a_replace_is_sent_with_the_new_terms(engine: Engine) -> None:
    order_id = routed_order(engine)
    with UnitOfWork(engine) as uow:
        modify_order(uow, order_id, quantity=D("500"), price=D("70.04"), stop_price=None, notes=None, user_id=None)
        uow.commit()
    pass_risk(engine, order_id)
    [route] = outbox_of(engine, order_id, "router.replace")
    deliver(engine, route)

    replace = requests_of(engine, order_id)[-1]
    assert (replace["kind"], replace["status"]) == ("REPLACE", "SENT")
    [sent] = outbox_of(engine, order_id, "orders.replace")
    assert (sent["exchange"], sent["type"]) == ("broker", "ReplaceRequest")
    body = ReplaceRequestSchema().load(sent["body"])
    assert body["request_id"] == replace["request_id"]
    assert (body["quantity"], body["price"], body["stop_price"]) == (D("500"), D("70.04"), D("70.10"))
    # Not in force until the venue confirms.
    order = order_row(engine, order_id)
    assert (order["quantity"], order["price"]) == (D("300"), D("70.02"))


def test_a_request_for_an_order_that_ended_is_skipped(engine: Engine) -> None:
    order_id = routed_order(engine)
    with UnitOfWork(engine) as uow:
        cancel_order(uow, order_id, reason=None, user_id=None)
        uow.commit()
    # The venue fills the whole order before the cancel reaches it.
    apply_report(
        engine,
        order_id,
        ExecType.FILL,
        last_qty=D("300"),
        last_px=D("70.02"),
        cum_qty=D("300"),
        leaves_qty=D(0),
        avg_px=D("70.02"),
    )
    [route] = outbox_of(engine, order_id, "router.cancel")
    deliver(engine, route)

    cancel = requests_of(engine, order_id)[-1]
    assert (cancel["status"], cancel["reason"]) == ("SKIPPED", "order is FILLED")
    assert outbox_of(engine, order_id, "orders.cancel") == []


def test_a_replace_superseded_by_a_cancel_is_skipped(engine: Engine) -> None:
    order_id = routed_order(engine)
    with UnitOfWork(engine) as uow:
        modify_order(uow, order_id, quantity=D("400"), price=None, stop_price=None, notes=None, user_id=None)
        uow.commit()
    pass_risk(engine, order_id)  # the gate approves the replace; a cancel overtakes it on its way to the router
    with UnitOfWork(engine) as uow:
        cancel_order(uow, order_id, reason=None, user_id=None)
        uow.commit()
    [replace_route] = outbox_of(engine, order_id, "router.replace")
    [cancel_route] = outbox_of(engine, order_id, "router.cancel")
    deliver(engine, replace_route)
    deliver(engine, cancel_route)

    statuses = {r["kind"]: (r["status"], r["reason"]) for r in requests_of(engine, order_id)}
    assert statuses["REPLACE"][0] == "SKIPPED"
    assert statuses["REPLACE"][1].startswith("superseded by cancel")
    assert statuses["CANCEL"][0] == "SENT"
    assert outbox_of(engine, order_id, "orders.replace") == []
    assert len(outbox_of(engine, order_id, "orders.cancel")) == 1


def test_an_unknown_request_is_dead_lettered(engine: Engine) -> None:
    order_id = routed_order(engine)
    row = {
        "message_id": str(uuid.uuid4()),
        "routing_key": "router.cancel",
        "body": {"orderId": order_id, "requestId": str(uuid.uuid4()), "reason": None},
        "correlation_id": order_id,
        "type": "RouteCancel",
        "headers": {},
    }
    with pytest.raises(DeadLetter, match="no CANCEL request"):
        deliver(engine, row)
