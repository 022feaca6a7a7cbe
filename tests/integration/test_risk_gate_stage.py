"""The risk gate on the real database: approve and hand to the router, reject, or skip a stale check."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, update
from sqlalchemy.dialects.postgresql import insert

from common.contracts import RiskCheckSchema
from common.domain import ExecType
from common.messaging.envelope import Envelope
from common.orders.commands import cancel_order, modify_order
from common.risk import admin
from common.runtime.stage import DeadLetter
from common.store import tables
from common.store.uow import UnitOfWork
from services.risk_gate.handlers import handle_risk_check
from tests.support.api import store_order
from tests.support.db import open_engine
from tests.support.orders import (
    changing_order,
    envelope_of,
    events_of,
    execution_report,
    handle,
    order_row,
    outbox_of,
    request_row,
    risk_check,
    submit_new,
)

pytestmark = pytest.mark.integration

D = Decimal
CLOSING_ACCOUNT = "ACC-RISK-CLOSING"
LIMITED_ACCOUNT = "ACC-RISK-LIMITED"
# The global defaults migration 0002 installs (the per-order limits of the basic gate).
DEFAULT_MAX_ORDER_QUANTITY = D("1000000")
DEFAULT_MAX_NOTIONAL = D("50000000")


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    with open_engine(database_url) as engine:
        with engine.begin() as connection:
            for account_id in (CLOSING_ACCOUNT, LIMITED_ACCOUNT):
                account = {"id": account_id, "name": account_id, "account_type": "MARGIN", "base_currency": "USD"}
                connection.execute(
                    insert(tables.accounts)
                    .values(**account, cash_balance=D(0), active=True, created_at=datetime.now(UTC))
                    .on_conflict_do_nothing()
                )
        yield engine


def run(engine: Engine, env: Envelope) -> None:
    handle(engine, handle_risk_check, env)


def route_new_rows(engine: Engine, order_id: str) -> list[dict[str, Any]]:
    return outbox_of(engine, order_id, "router.new")


def test_an_order_within_limits_is_approved_and_handed_to_the_router(engine: Engine) -> None:
    order_id, version = submit_new(engine)
    run(engine, risk_check(order_id, version))

    order = order_row(engine, order_id)
    assert (order["state"], order["status"], order["version"]) == ("APPROVED", "PENDING", version + 1)
    approved = events_of(engine, order_id)[-1]
    assert approved["type"] == "RISK_APPROVED"
    assert approved["payload"]["checks"] == [
        "account_active",
        "kill_switch",
        "instrument_tradable",
        "restricted_symbol",
        "max_order_quantity",
        "max_order_notional",
    ]
    [route] = route_new_rows(engine, order_id)
    assert (route["exchange"], route["type"], route["body"]) == ("oms", "RouteNew", {"orderId": order_id})


def test_a_check_seen_twice_approves_once(engine: Engine) -> None:
    order_id, version = submit_new(engine)
    run(engine, risk_check(order_id, version))
    run(engine, risk_check(order_id, version))  # another message id: the order is no longer NEW
    assert len(route_new_rows(engine, order_id)) == 1
    assert [e["type"] for e in events_of(engine, order_id)] == ["ORDER_CREATED", "RISK_APPROVED"]


@pytest.mark.parametrize(
    ("changes", "code", "reason"),
    [
        (
            {"quantity": DEFAULT_MAX_ORDER_QUANTITY + 1, "price": D("0.01")},
            "MAX_ORDER_QUANTITY_EXCEEDED",
            "quantity 1000001 exceeds the maximum order quantity 1000000",
        ),
        (
            {"quantity": D("263158"), "price": D("190.00")},
            "MAX_NOTIONAL_EXCEEDED",
            "notional 50000020 (263158 at 190) exceeds the maximum order notional 50000000",
        ),
        (
            # A MARKET order is valued at the instrument's reference price (AAPL: 190).
            {"type": "MARKET", "price": None, "quantity": D("263158")},
            "MAX_NOTIONAL_EXCEEDED",
            "notional 50000020 (263158 at 190) exceeds",
        ),
        (
            # A stop-market order is valued at its stop price.
            {"type": "STOP", "price": None, "stop_price": D("200.00"), "quantity": D("250001")},
            "MAX_NOTIONAL_EXCEEDED",
            "notional 50000200 (250001 at 200)",
        ),
    ],
)
def test_default_limits_reject_above_them(engine: Engine, changes: dict[str, Any], code: str, reason: str) -> None:
    order_id, version = submit_new(engine, **changes)
    run(engine, risk_check(order_id, version))

    order = order_row(engine, order_id)
    assert (order["state"], order["status"], order["rejection_code"]) == ("REJECTED", "REJECTED", code)
    assert reason in order["rejection_reason"]
    rejected = events_of(engine, order_id)[-1]
    assert (rejected["type"], rejected["payload"]["code"]) == ("ORDER_REJECTED", code)
    assert route_new_rows(engine, order_id) == []


@pytest.mark.parametrize(
    "changes",
    [
        {"quantity": DEFAULT_MAX_ORDER_QUANTITY, "price": D("0.01")},
        {"quantity": D("263157"), "price": D("190.00")},  # 49,999,830
        {"quantity": D("250000"), "price": D("200.00")},  # exactly the limit
        {"type": "MARKET", "price": None, "quantity": D("263157")},
    ],
)
def test_default_limits_approve_at_them(engine: Engine, changes: dict[str, Any]) -> None:
    assert DEFAULT_MAX_NOTIONAL == D("50000000")
    order_id, version = submit_new(engine, **changes)
    run(engine, risk_check(order_id, version))
    assert order_row(engine, order_id)["state"] == "APPROVED"


def test_limits_are_configurable(engine: Engine) -> None:
    with engine.begin() as connection:
        admin.set_limits(connection, LIMITED_ACCOUNT, {"max_order_quantity": "50"}, by="tester")
    order_id, version = submit_new(engine, account_id=LIMITED_ACCOUNT, quantity=D("51"))
    run(engine, risk_check(order_id, version))
    assert order_row(engine, order_id)["rejection_code"] == "MAX_ORDER_QUANTITY_EXCEEDED"


def test_the_global_defaults_come_with_the_schema(engine: Engine) -> None:
    with engine.connect() as connection:
        limits = admin.show_limits(connection, None).effective
    assert (limits.max_order_quantity, limits.max_order_notional) == (DEFAULT_MAX_ORDER_QUANTITY, DEFAULT_MAX_NOTIONAL)


def test_an_account_closed_after_intake_is_rejected(engine: Engine) -> None:
    order_id, version = submit_new(engine, account_id=CLOSING_ACCOUNT)
    with engine.begin() as connection:
        connection.execute(update(tables.accounts).where(tables.accounts.c.id == CLOSING_ACCOUNT).values(active=False))
    try:
        run(engine, risk_check(order_id, version))
    finally:
        with engine.begin() as connection:
            connection.execute(
                update(tables.accounts).where(tables.accounts.c.id == CLOSING_ACCOUNT).values(active=True)
            )
    order = order_row(engine, order_id)
    assert (order["state"], order["rejection_code"]) == ("REJECTED", "ACCOUNT_INACTIVE")
    assert order["rejection_reason"] == f"account {CLOSING_ACCOUNT} is not active"


def test_a_check_of_an_older_version_is_skipped(engine: Engine) -> None:
    order_id, version = submit_new(engine)
    with UnitOfWork(engine) as uow:
        modified = modify_order(
            uow, order_id, quantity=D("200"), price=None, stop_price=None, notes=None, user_id="trader-1"
        )
        uow.commit()
    assert modified.version > version

    run(engine, risk_check(order_id, version))  # the check intake asked for: stale now
    order = order_row(engine, order_id)
    assert (order["state"], order["version"]) == ("NEW", modified.version)
    assert route_new_rows(engine, order_id) == []

    run(engine, risk_check(order_id, modified.version))
    assert order_row(engine, order_id)["state"] == "APPROVED"
    assert len(route_new_rows(engine, order_id)) == 1


def test_a_check_of_a_canceled_order_is_skipped(engine: Engine) -> None:
    order_id, version = submit_new(engine)
    with UnitOfWork(engine) as uow:
        canceled = cancel_order(uow, order_id, reason="changed my mind", user_id=None)
        uow.commit()
    run(engine, risk_check(order_id, canceled.version))  # even at the order's version
    run(engine, risk_check(order_id, version))
    assert order_row(engine, order_id)["state"] == "CANCELED"
    assert route_new_rows(engine, order_id) == []


def test_an_unknown_order_is_dead_lettered(engine: Engine) -> None:
    with pytest.raises(DeadLetter, match="unknown order"):
        run(engine, risk_check(str(uuid.uuid4()), 1))


# --------------------------------------------------------------------------- replaces of orders at the venue


def request_replace(engine: Engine, order_id: str, quantity: Decimal) -> Envelope:
    """Modify an order at the venue; the RiskCheck of the replace, as the gate receives it."""
    with UnitOfWork(engine) as uow:
        modify_order(uow, order_id, quantity=quantity, price=None, stop_price=None, notes=None, user_id="trader-1")
        uow.commit()
    row = outbox_of(engine, order_id, "risk.check")[-1]
    return envelope_of(row, RiskCheckSchema().load(row["body"]))


def venue_fill(engine: Engine, order_id: str, quantity: Decimal) -> None:
    with changing_order(engine, order_id) as (_, order):
        cum = order.filled_quantity + quantity
        now = datetime.now(UTC)
        report = execution_report(
            order_id,
            ExecType.FILL if cum == order.quantity else ExecType.PARTIAL_FILL,
            last_qty=quantity,
            last_px=order.price,
            cum_qty=cum,
            leaves_qty=order.quantity - cum,
            avg_px=order.price,
            timestamp=now,
        )
        order.apply_report(report, now)


def test_a_replace_check_is_skipped_once_a_later_replace_supersedes_it(engine: Engine) -> None:
    order_id = store_order(engine, "ACC-001", status="OPEN")
    first = request_replace(engine, order_id, D("120"))
    second = request_replace(engine, order_id, D("130"))

    run(engine, first)
    skipped = request_row(engine, first.body["request_id"])
    assert (skipped["status"], skipped["reason"]) == ("SKIPPED", f"superseded by replace {second.body['request_id']}")
    assert outbox_of(engine, order_id, "router.replace") == []
    assert events_of(engine, order_id)[-1]["type"] == "REPLACE_REQUESTED"  # nothing recorded on the order

    run(engine, second)  # the latest one is checked and goes on
    [route] = outbox_of(engine, order_id, "router.replace")
    assert route["body"] == {"orderId": order_id, "requestId": second.body["request_id"]}
    assert route["headers"] == {"x-oms-user": "trader-1"}
    approval = events_of(engine, order_id)[-1]
    assert (approval["type"], approval["payload"]["request_id"]) == ("RISK_APPROVED", second.body["request_id"])
    assert request_row(engine, second.body["request_id"])["status"] == "PENDING"  # the router sends it


def test_a_replace_check_is_skipped_once_a_cancel_supersedes_it(engine: Engine) -> None:
    order_id = store_order(engine, "ACC-001", status="OPEN")
    check = request_replace(engine, order_id, D("120"))
    with UnitOfWork(engine) as uow:
        cancel_order(uow, order_id, reason=None, user_id=None)
        uow.commit()
    cancel_id = order_row(engine, order_id)["pending_request"]["requestId"]

    run(engine, check)
    skipped = request_row(engine, check.body["request_id"])
    assert (skipped["status"], skipped["reason"]) == ("SKIPPED", f"superseded by cancel {cancel_id}")
    assert outbox_of(engine, order_id, "router.replace") == []
    assert order_row(engine, order_id)["pending_request"]["requestId"] == cancel_id


def test_a_replace_check_of_an_order_that_ended_is_skipped(engine: Engine) -> None:
    order_id = store_order(engine, "ACC-001", status="OPEN")
    check = request_replace(engine, order_id, D("120"))
    venue_fill(engine, order_id, D("100"))  # the venue fills the order before the gate gets to the replace

    run(engine, check)
    skipped = request_row(engine, check.body["request_id"])
    assert (skipped["status"], skipped["reason"]) == ("SKIPPED", "order is FILLED")
    assert outbox_of(engine, order_id, "router.replace") == []


def test_a_replace_check_runs_though_a_fill_moved_the_order_version(engine: Engine) -> None:
    order_id = store_order(engine, "ACC-001", status="OPEN")
    check = request_replace(engine, order_id, D("120"))
    venue_fill(engine, order_id, D("30"))
    assert order_row(engine, order_id)["version"] > check.body["version"]

    run(engine, check)
    assert len(outbox_of(engine, order_id, "router.replace")) == 1
    order = order_row(engine, order_id)
    assert (order["state"], order["quantity"]) == ("PARTIALLY_FILLED", D("100"))  # not in force before the venue


def test_a_replace_check_after_the_router_sent_the_request_does_nothing(engine: Engine) -> None:
    order_id = store_order(engine, "ACC-001", status="OPEN")
    check = request_replace(engine, order_id, D("120"))
    run(engine, check)
    with engine.begin() as connection:
        connection.execute(
            update(tables.order_requests)
            .where(tables.order_requests.c.request_id == check.body["request_id"])
            .values(status="SENT")
        )
    events = len(events_of(engine, order_id))

    run(engine, replace(check, message_id=str(uuid.uuid4())))  # e.g. asked again by a job
    assert len(events_of(engine, order_id)) == events
    assert len(outbox_of(engine, order_id, "router.replace")) == 1


def test_a_replace_check_naming_no_replace_request_is_dead_lettered(engine: Engine) -> None:
    order_id = store_order(engine, "ACC-001", status="OPEN")
    env = risk_check(order_id, 3)
    with pytest.raises(DeadLetter, match="no REPLACE request"):
        run(engine, replace(env, body={**env.body, "request_id": str(uuid.uuid4())}))
