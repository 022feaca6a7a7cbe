"""The order commands on the real database, as the front end calls them (its own unit of work)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine

from common.domain import ExecType, InvalidCommand, InvalidTransition
from common.orders.commands import cancel_order, modify_order, submit_order
from common.orders.errors import ConflictingDuplicate, InvalidOrderTerms, OrderNotFound, UnknownAccount
from common.orders.order_request import OrderRequest
from common.store.uow import UnitOfWork
from services.risk_gate.handlers import handle_risk_check
from services.router.handlers import handle_route_new
from tests.support import orders
from tests.support.orders import (
    changing_order,
    envelope_of,
    event_types,
    execution_report,
    handle,
    last_event,
    order_request,
    order_row,
    outbox_of,
    requests_of,
)

pytestmark = pytest.mark.integration

D = Decimal


# --------------------------------------------------------------------------- helpers


MSFT_ORDER: dict[str, Any] = {"symbol": "MSFT", "quantity": D("10"), "price": D("410.00")}


def request(**changes: Any) -> OrderRequest:
    return order_request(**{**MSFT_ORDER, **changes})


def submit(engine: Engine, **changes: Any) -> str:
    order, created = orders.submit(engine, user_id="trader-1", **{**MSFT_ORDER, **changes})
    assert created
    return order.id


def forward(engine: Engine, order_id: str, routing_key: str, handler: Any, body: dict[str, Any]) -> None:
    [row] = outbox_of(engine, order_id, routing_key)[-1:]
    handle(engine, handler, envelope_of(row, body, as_sent=False))


def approve(engine: Engine, order_id: str) -> None:
    version = outbox_of(engine, order_id, "risk.check")[-1]["body"]["version"]
    forward(engine, order_id, "risk.check", handle_risk_check, {"order_id": order_id, "version": version})
    assert order_row(engine, order_id)["state"] == "APPROVED"


def route(engine: Engine, order_id: str) -> None:
    approve(engine, order_id)
    forward(engine, order_id, "router.new", handle_route_new, {"order_id": order_id})
    assert order_row(engine, order_id)["state"] == "ROUTED"


def acknowledge(engine: Engine, order_id: str) -> None:
    with changing_order(engine, order_id) as (_, order):
        now = datetime.now(UTC)
        order.apply_report(
            execution_report(order_id, ExecType.NEW, cum_qty=D(0), leaves_qty=order.quantity, timestamp=now), now
        )
    assert order_row(engine, order_id)["state"] == "OPEN"


def cancel(engine: Engine, order_id: str, reason: str | None = None, user_id: str | None = "trader-1") -> None:
    with UnitOfWork(engine) as uow:
        cancel_order(uow, order_id, reason=reason, user_id=user_id)
        uow.commit()


def modify(engine: Engine, order_id: str, **terms: Any) -> None:
    values: dict[str, Any] = {"quantity": None, "price": None, "stop_price": None, "notes": None}
    values.update(terms)
    with UnitOfWork(engine) as uow:
        modify_order(uow, order_id, **values, user_id="trader-1")
        uow.commit()


# --------------------------------------------------------------------------- submit


def test_submit_from_the_api_leaves_the_outbox_to_the_relay(engine: Engine) -> None:
    order_id = submit(engine)
    [check] = outbox_of(engine, order_id, "risk.check")
    assert check["claimed"] is False  # the API does not publish; the relay does
    assert check["body"] == {"orderId": order_id, "version": 1}
    assert check["headers"] == {"x-oms-user": "trader-1"}


def test_submit_is_idempotent_on_the_client_order_id(engine: Engine) -> None:
    first = request()
    with UnitOfWork(engine) as uow:
        order, created = submit_order(uow, first, user_id=None, correlation_id=None, message_id=None)
        uow.commit()
    with UnitOfWork(engine) as uow:
        # The same terms, the numbers written another way: the same request.
        again, created_again = submit_order(
            uow,
            request(client_order_id=first.client_order_id, quantity=D("10.000"), price=D("410")),
            user_id=None,
            correlation_id=None,
            message_id=None,
        )
        uow.commit()
    assert created and not created_again
    assert again.id == order.id
    assert again.quantity == D("10")


def test_submit_with_a_used_client_order_id_and_other_terms_raises(engine: Engine) -> None:
    first = request(notes="first")
    with UnitOfWork(engine) as uow:
        order, _ = submit_order(uow, first, user_id=None, correlation_id=None, message_id=None)
        uow.commit()
    other = request(client_order_id=first.client_order_id, quantity=D("99"), side="SELL", notes="first")
    with UnitOfWork(engine) as uow, pytest.raises(ConflictingDuplicate) as raised:
        submit_order(uow, other, user_id=None, correlation_id=None, message_id=None)
    assert raised.value.order.id == order.id
    assert raised.value.fields == ["side", "quantity"]
    assert "quantity (booked 10, received 99)" in str(raised.value)


def test_a_retry_of_a_create_is_compared_with_the_terms_it_was_created_with(engine: Engine) -> None:
    # The order was modified since: a retry of its create is still the same request, not a conflict.
    first = request()
    with UnitOfWork(engine) as uow:
        order, _ = submit_order(uow, first, user_id=None, correlation_id=None, message_id=None)
        uow.commit()
    with UnitOfWork(engine) as uow:
        modify_order(uow, order.id, quantity=D("20"), price=None, stop_price=None, notes="bigger", user_id=None)
        uow.commit()
    with UnitOfWork(engine) as uow:
        again, created = submit_order(uow, first, user_id=None, correlation_id=None, message_id=None)
    assert (again.id, created, again.quantity) == (order.id, False, D("20"))
    with UnitOfWork(engine) as uow, pytest.raises(ConflictingDuplicate, match="quantity"):
        submit_order(
            uow,
            request(client_order_id=first.client_order_id, quantity=D("20")),
            user_id=None,
            correlation_id=None,
            message_id=None,
        )


def test_submit_without_a_client_order_id_always_books(engine: Engine) -> None:
    ids = {submit(engine, client_order_id=None) for _ in range(2)}
    assert len(ids) == 2


def test_submit_to_an_unknown_account_raises(engine: Engine) -> None:
    with UnitOfWork(engine) as uow, pytest.raises(UnknownAccount, match="ACC-404"):
        submit_order(uow, request(account_id="ACC-404"), user_id=None, correlation_id=None, message_id=None)


def test_submit_with_a_side_outside_the_enum_raises(engine: Engine) -> None:
    with UnitOfWork(engine) as uow, pytest.raises(InvalidOrderTerms) as raised:
        submit_order(uow, request(side="HOLD"), user_id=None, correlation_id=None, message_id=None)
    assert [(v.code, v.field) for v in raised.value.violations] == [("INVALID_SIDE", "side")]


# --------------------------------------------------------------------------- cancel


def test_cancel_of_a_new_order_is_immediate(engine: Engine) -> None:
    order_id = submit(engine)
    cancel(engine, order_id, reason="fat finger")

    order = order_row(engine, order_id)
    assert (order["state"], order["status"]) == ("CANCELED", "CANCELED")
    event = last_event(engine, order_id)
    assert (event["type"], event["user_id"], event["payload"]["reason"]) == ("ORDER_CANCELED", "trader-1", "fat finger")
    assert requests_of(engine, order_id) == []
    assert outbox_of(engine, order_id, "router.cancel") == []
    assert len(outbox_of(engine, order_id, "ACC-001.MSFT.CANCELED")) == 1


def test_cancel_of_an_approved_order_is_immediate(engine: Engine) -> None:
    order_id = submit(engine)
    approve(engine, order_id)
    cancel(engine, order_id)
    assert order_row(engine, order_id)["state"] == "CANCELED"
    assert outbox_of(engine, order_id, "router.cancel") == []


@pytest.mark.parametrize("acknowledged", [False, True], ids=["routed", "open"])
def test_cancel_at_the_venue_sends_a_request(engine: Engine, acknowledged: bool) -> None:
    order_id = submit(engine)
    route(engine, order_id)
    if acknowledged:
        acknowledge(engine, order_id)
    state = order_row(engine, order_id)["state"]
    cancel(engine, order_id, reason="risk off")

    order = order_row(engine, order_id)
    assert order["state"] == state  # unchanged until the venue answers
    assert order["pending_request"]["kind"] == "CANCEL"
    [_, request_row] = requests_of(engine, order_id)
    assert (request_row["kind"], request_row["status"], request_row["reason"], request_row["created_by"]) == (
        "CANCEL",
        "PENDING",
        "risk off",
        "trader-1",
    )
    [route_cancel] = outbox_of(engine, order_id, "router.cancel")
    assert (route_cancel["exchange"], route_cancel["type"]) == ("oms", "RouteCancel")
    # Without the reason: the outbox keeps sent rows until retention; the request row keeps it (encrypted at rest).
    assert route_cancel["body"] == {"orderId": order_id, "requestId": request_row["request_id"]}
    assert event_types(engine, order_id)[-1] == "CANCEL_REQUESTED"


def test_a_second_cancel_while_one_is_outstanding_is_refused(engine: Engine) -> None:
    order_id = submit(engine)
    route(engine, order_id)
    cancel(engine, order_id)
    with pytest.raises(InvalidTransition):
        cancel(engine, order_id)
    assert len(requests_of(engine, order_id)) == 2  # the NEW and the one CANCEL


def test_cancel_of_a_terminal_order_is_refused(engine: Engine) -> None:
    order_id = submit(engine)
    cancel(engine, order_id)
    with pytest.raises(InvalidTransition):
        cancel(engine, order_id)


def test_cancel_of_an_unknown_order_raises(engine: Engine) -> None:
    with pytest.raises(OrderNotFound):
        cancel(engine, str(uuid.uuid4()))


# --------------------------------------------------------------------------- modify


def test_modify_of_a_new_order_reruns_risk_at_the_new_version(engine: Engine) -> None:
    order_id = submit(engine)
    modify(engine, order_id, quantity=D("20"), notes="bigger")

    order = order_row(engine, order_id)
    assert (order["state"], order["quantity"], order["price"], order["notes"]) == (
        "NEW",
        D("20"),
        D("410.00"),
        "bigger",
    )
    assert order["version"] == 2
    checks = outbox_of(engine, order_id, "risk.check")
    assert [c["body"]["version"] for c in checks] == [1, 2]
    assert event_types(engine, order_id) == ["ORDER_CREATED", "ORDER_MODIFIED"]


def test_modify_of_an_approved_order_goes_back_to_risk(engine: Engine) -> None:
    order_id = submit(engine)
    approve(engine, order_id)
    modify(engine, order_id, price=D("409.50"))
    order = order_row(engine, order_id)
    assert (order["state"], order["price"]) == ("NEW", D("409.50"))
    assert outbox_of(engine, order_id, "risk.check")[-1]["body"]["version"] == order["version"]
    approve(engine, order_id)  # the new check passes


def test_modify_with_terms_breaking_a_rule_is_refused(engine: Engine) -> None:
    order_id = submit(engine)
    with pytest.raises(InvalidOrderTerms) as raised:
        modify(engine, order_id, quantity=D("1.5"), price=D("410.001"))
    assert [(v.code, v.field) for v in raised.value.violations] == [
        ("QUANTITY_OFF_LOT", "quantity"),
        ("PRICE_OFF_TICK", "price"),
    ]
    assert "price 410.001 is not a multiple of the tick size 0.01 of MSFT" in str(raised.value)
    assert order_row(engine, order_id)["version"] == 1


def test_modify_giving_a_stop_price_to_a_limit_order_is_refused(engine: Engine) -> None:
    order_id = submit(engine)
    with pytest.raises(InvalidOrderTerms, match="a LIMIT order takes no stop price"):
        modify(engine, order_id, stop_price=D("400.00"))


def test_modify_changing_nothing_is_refused(engine: Engine) -> None:
    order_id = submit(engine)
    with pytest.raises(InvalidCommand, match="nothing to modify"):
        modify(engine, order_id, quantity=D("10"), price=D("410.00"))


def test_modify_of_a_terminal_order_is_refused(engine: Engine) -> None:
    order_id = submit(engine)
    cancel(engine, order_id)
    with pytest.raises(InvalidTransition):
        modify(engine, order_id, quantity=D("20"))


def test_modify_at_the_venue_sends_a_replace_request_through_the_risk_gate(engine: Engine) -> None:
    order_id = submit(engine)
    route(engine, order_id)
    acknowledge(engine, order_id)
    modify(engine, order_id, price=D("411.00"))

    order = order_row(engine, order_id)
    assert (order["state"], order["quantity"], order["price"]) == ("OPEN", D("10"), D("410.00"))
    assert order["pending_request"]["kind"] == "REPLACE"
    replace = requests_of(engine, order_id)[-1]
    assert (replace["kind"], replace["status"], replace["created_by"]) == ("REPLACE", "PENDING", "trader-1")
    assert replace["terms"] == {"quantity": D("10"), "price": D("411.00"), "stopPrice": None}
    assert event_types(engine, order_id)[-1] == "REPLACE_REQUESTED"
    # The new terms go to the risk gate first, not straight to the router.
    check = outbox_of(engine, order_id, "risk.check")[-1]
    assert check["body"] == {"orderId": order_id, "version": order["version"], "requestId": replace["request_id"]}
    assert check["headers"] == {"x-oms-user": "trader-1"}
    assert outbox_of(engine, order_id, "router.replace") == []

    body = {"order_id": order_id, "version": order["version"], "request_id": replace["request_id"]}
    forward(engine, order_id, "risk.check", handle_risk_check, body)
    [route_replace] = outbox_of(engine, order_id, "router.replace")
    assert route_replace["body"] == {"orderId": order_id, "requestId": replace["request_id"]}
    assert event_types(engine, order_id)[-1] == "RISK_APPROVED"
    order = order_row(engine, order_id)
    assert (order["state"], order["price"], order["pending_request"]["requestId"]) == (
        "OPEN",
        D("410.00"),
        replace["request_id"],
    )


def test_a_chained_replace_builds_on_the_outstanding_one(engine: Engine) -> None:
    order_id = submit(engine)
    route(engine, order_id)
    modify(engine, order_id, quantity=D("30"))
    modify(engine, order_id, price=D("412.00"))  # the quantity asked for a moment ago is kept
    first, second = requests_of(engine, order_id)[-2:]
    assert first["terms"]["quantity"] == D("30")
    assert (second["terms"]["quantity"], second["terms"]["price"]) == (D("30"), D("412.00"))


def test_notes_alone_cannot_change_at_the_venue(engine: Engine) -> None:
    order_id = submit(engine)
    route(engine, order_id)
    with pytest.raises(InvalidCommand, match="notes alone"):
        modify(engine, order_id, notes="just a note")


def test_modify_after_a_cancel_request_is_refused(engine: Engine) -> None:
    order_id = submit(engine)
    route(engine, order_id)
    cancel(engine, order_id)
    with pytest.raises(InvalidTransition):
        modify(engine, order_id, quantity=D("20"))
