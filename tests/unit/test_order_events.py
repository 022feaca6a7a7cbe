"""The audit trail: the exact event every command records (type, payload, time, user), and what a refused
command leaves behind (nothing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from common.domain import (
    DomainEvent,
    InvalidCommand,
    InvalidTransition,
    Order,
    OrderEventType,
    OrderState,
    OrderStatus,
    OrderTerms,
    OrderType,
    PendingRequest,
    RequestKind,
    Side,
    TimeInForce,
)

D = Decimal
S = OrderState
E = OrderEventType
T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
T1 = T0 + timedelta(seconds=1)
TERMS = OrderTerms(
    account_id="acc-1",
    symbol="MSFT",
    side=Side.SELL,
    type=OrderType.STOP_LIMIT,
    quantity=D("12.5"),
    price=D("300"),
    stop_price=D("301"),
    time_in_force=TimeInForce.GTC,
    strategy_id="s-1",
    notes="n",
    client_order_id="c-1",
)


def order_in(state: OrderState, pending: PendingRequest | None = None, **fields: object) -> Order:
    """An order as the store would load it, version 3, with no events."""
    values: dict[str, object] = {
        "id": "o-1",
        "account_id": "acc-1",
        "symbol": "AAPL",
        "side": Side.BUY,
        "type": OrderType.LIMIT,
        "quantity": D(100),
        "price": D("150"),
        "state": state,
        "pending_request": pending,
        "created_at": T0,
        "updated_at": T0,
        "version": 3,
        **fields,
    }
    return Order(**values)  # type: ignore[arg-type]


def only_event(order: Order) -> DomainEvent:
    """The one event a command recorded, after checking it stamped the order."""
    assert (order.version, order.updated_at) == (4, T1)
    [event] = order.events
    return event


def test_create_records_the_terms_as_received() -> None:
    order = Order.create(id="o-9", terms=TERMS, now=T0, user_id="u-1")
    assert order.events == [
        DomainEvent(
            E.ORDER_CREATED,
            {
                "account_id": "acc-1",
                "symbol": "MSFT",
                "side": Side.SELL,
                "type": OrderType.STOP_LIMIT,
                "quantity": D("12.5"),
                "price": D("300"),
                "stop_price": D("301"),
                "time_in_force": TimeInForce.GTC,
                "strategy_id": "s-1",
                "notes": "n",
                "client_order_id": "c-1",
                "state": S.NEW,
                "status": OrderStatus.PENDING,
            },
            T0,
            "u-1",
        )
    ]


def test_create_rejected_records_the_terms_then_the_rejection() -> None:
    order = Order.create_rejected(
        id="o-9", terms=TERMS, now=T0, user_id="u-1", code="INVALID_PRICE", reason="price off tick"
    )
    created, rejected = order.events
    assert created.type is E.ORDER_CREATED and (created.timestamp, created.user_id) == (T0, "u-1")
    assert (created.payload["state"], created.payload["status"]) == (S.REJECTED, OrderStatus.REJECTED)
    assert created.payload["account_id"] == "acc-1" and created.payload["client_order_id"] == "c-1"
    assert rejected == DomainEvent(
        E.ORDER_REJECTED, {"code": "INVALID_PRICE", "reason": "price off tick", "state": S.REJECTED}, T0, "u-1"
    )
    assert (order.state, order.rejection_code, order.rejection_reason) == (
        S.REJECTED,
        "INVALID_PRICE",
        "price off tick",
    )


def test_approve() -> None:
    order = order_in(S.NEW)
    order.approve(("limits", "restricted"), T1)
    assert only_event(order) == DomainEvent(
        E.RISK_APPROVED, {"checks": ["limits", "restricted"], "state": S.APPROVED}, T1, None
    )


def test_reject_clears_a_pending_request_and_details_never_override_the_commands_fields() -> None:
    order = order_in(S.ROUTED)
    order.reject("RISK", "too big", T1, "u-2", details={"rule": "notional", "code": "ignored", "state": "ignored"})
    assert only_event(order) == DomainEvent(
        E.ORDER_REJECTED, {"rule": "notional", "code": "RISK", "reason": "too big", "state": S.REJECTED}, T1, "u-2"
    )
    assert (order.rejection_code, order.rejection_reason, order.pending_request) == ("RISK", "too big", None)


def test_reject_without_details() -> None:
    order = order_in(S.NEW)
    order.reject("RISK", "too big", T1)
    assert only_event(order) == DomainEvent(
        E.ORDER_REJECTED, {"code": "RISK", "reason": "too big", "state": S.REJECTED}, T1, None
    )


def test_mark_routed() -> None:
    order = order_in(S.APPROVED)
    order.mark_routed("route-1", T1)
    assert only_event(order) == DomainEvent(E.ORDER_ROUTED, {"request_id": "route-1", "state": S.ROUTED}, T1, None)


def test_cancel_unrouted() -> None:
    order = order_in(S.APPROVED)
    order.cancel_unrouted("user asked", T1, "u-3")
    assert only_event(order) == DomainEvent(
        E.ORDER_CANCELED, {"reason": "user asked", "at_venue": False, "state": S.CANCELED}, T1, "u-3"
    )


def test_modify_unrouted() -> None:
    order = order_in(S.APPROVED, type=OrderType.STOP_LIMIT, stop_price=D("151"))
    order.modify_unrouted(D(50), D("149"), D("150"), T1, "u-4")
    assert only_event(order) == DomainEvent(
        E.ORDER_MODIFIED,
        {
            "previous": {"quantity": D(100), "price": D("150"), "stop_price": D("151")},
            "quantity": D(50),
            "price": D("149"),
            "stop_price": D("150"),
            "state": S.NEW,
        },
        T1,
        "u-4",
    )
    assert (order.quantity, order.price, order.stop_price, order.state) == (D(50), D("149"), D("150"), S.NEW)


def test_request_cancel_records_the_request_it_supersedes() -> None:
    earlier = PendingRequest(kind=RequestKind.REPLACE, request_id="r-1", requested_at=T0, quantity=D(80))
    order = order_in(S.PENDING_REPLACE, pending=earlier)
    order.request_cancel("c-1", "user asked", T1, "u-5")
    assert only_event(order) == DomainEvent(
        E.CANCEL_REQUESTED,
        {"request_id": "c-1", "reason": "user asked", "supersedes_request_id": "r-1", "state": S.PENDING_REPLACE},
        T1,
        "u-5",
    )
    assert order.pending_request == PendingRequest(
        kind=RequestKind.CANCEL, request_id="c-1", requested_at=T1, reason="user asked"
    )


def test_request_cancel_with_nothing_outstanding() -> None:
    order = order_in(S.OPEN)
    order.request_cancel("c-1", None, T1, None)
    assert only_event(order).payload == {
        "request_id": "c-1",
        "reason": None,
        "supersedes_request_id": None,
        "state": S.OPEN,
    }


def test_request_replace() -> None:
    earlier = PendingRequest(kind=RequestKind.REPLACE, request_id="r-1", requested_at=T0, quantity=D(80))
    order = order_in(S.OPEN, pending=earlier, type=OrderType.STOP_LIMIT, stop_price=D("151"))
    order.request_replace("r-2", D(70), D("148"), D("149"), T1, "u-6")
    assert only_event(order) == DomainEvent(
        E.REPLACE_REQUESTED,
        {
            "request_id": "r-2",
            "quantity": D(70),
            "price": D("148"),
            "stop_price": D("149"),
            "supersedes_request_id": "r-1",
            "state": S.OPEN,
        },
        T1,
        "u-6",
    )
    assert order.pending_request == PendingRequest(
        kind=RequestKind.REPLACE, request_id="r-2", requested_at=T1, quantity=D(70), price=D("148"), stop_price=D("149")
    )
    # Terms change only when the venue confirms.
    assert (order.quantity, order.price, order.stop_price) == (D(100), D("150"), D("151"))


@pytest.mark.parametrize("command", ["request_cancel", "request_replace"])
def test_an_outstanding_cancel_refuses_a_new_request_and_names_itself(command: str) -> None:
    cancel = PendingRequest(kind=RequestKind.CANCEL, request_id="c-7", requested_at=T0)
    order = order_in(S.OPEN, pending=cancel)
    with pytest.raises(InvalidTransition) as raised:
        if command == "request_cancel":
            order.request_cancel("c-8", None, T1, None)
        else:
            order.request_replace("r-8", D(10), D(1), None, T1, None)
    assert (raised.value.command, raised.value.state, raised.value.detail) == (
        command,
        S.OPEN,
        "cancel c-7 is outstanding",
    )
    assert str(raised.value) == f"{command} is not allowed in state OPEN: cancel c-7 is outstanding"
    assert (order.version, order.events, order.pending_request) == (3, [], cancel)


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        ((D(0), D(1), None), "quantity must be positive"),
        ((D(1), D(1), D(-1)), "stopPrice must be positive"),
        ((D(-1), None, None), "quantity must be positive; a LIMIT order needs a price"),
    ],
)
def test_new_terms_that_break_the_rules_are_refused_with_the_problems(
    terms: tuple[Decimal, Decimal | None, Decimal | None], message: str
) -> None:
    for state, command in ((S.NEW, "modify_unrouted"), (S.OPEN, "request_replace")):
        order = order_in(state)
        with pytest.raises(InvalidCommand) as raised:
            if command == "modify_unrouted":
                order.modify_unrouted(*terms, T1, None)
            else:
                order.request_replace("r-1", *terms, T1, None)
        assert str(raised.value) == message
        assert (order.version, order.events, order.pending_request, order.quantity) == (3, [], None, D(100))


def test_a_refused_command_names_the_command_and_state() -> None:
    order = order_in(S.FILLED)
    with pytest.raises(InvalidTransition) as raised:
        order.approve([], T1)
    assert (raised.value.command, raised.value.state, raised.value.detail) == ("approve", S.FILLED, None)
    assert str(raised.value) == "approve is not allowed in state FILLED"


def test_approve_replace_request() -> None:
    pending = PendingRequest(kind=RequestKind.REPLACE, request_id="r-9", requested_at=T0, quantity=D(80))
    order = order_in(S.OPEN, pending=pending)
    order.approve_replace_request("r-9", ["max_position"], T1, details={"figure": 1, "request_id": "ignored"})
    assert only_event(order) == DomainEvent(
        E.RISK_APPROVED, {"figure": 1, "request_id": "r-9", "checks": ["max_position"], "state": S.OPEN}, T1, None
    )
    assert order.pending_request == pending


def test_reject_replace_request() -> None:
    pending = PendingRequest(kind=RequestKind.REPLACE, request_id="r-9", requested_at=T0, quantity=D(80))
    order = order_in(S.OPEN, pending=pending)
    order.reject_replace_request("r-9", "MAX_POSITION", "too big", T1, details={"limit": 5})
    assert only_event(order) == DomainEvent(
        E.REPLACE_REJECTED,
        {
            "limit": 5,
            "request_id": "r-9",
            "code": "MAX_POSITION",
            "reason": "too big",
            "source": "risk",
            "pending_cleared": True,
            "state": S.OPEN,
        },
        T1,
        None,
    )
    assert order.pending_request is None


def test_reject_replace_request_of_an_older_request_keeps_the_pending_one() -> None:
    pending = PendingRequest(kind=RequestKind.REPLACE, request_id="r-10", requested_at=T0, quantity=D(80))
    order = order_in(S.OPEN, pending=pending)
    order.reject_replace_request("r-9", "MAX_POSITION", "too big", T1)
    assert only_event(order).payload["pending_cleared"] is False
    assert order.pending_request == pending


def test_expire_clears_a_pending_request() -> None:
    pending = PendingRequest(kind=RequestKind.CANCEL, request_id="c-1", requested_at=T0)
    order = order_in(S.PENDING_CANCEL, pending=pending)
    order.expire("session close", T1, "jobs")
    assert only_event(order) == DomainEvent(
        E.ORDER_EXPIRED, {"reason": "session close", "source": "oms", "state": S.EXPIRED}, T1, "jobs"
    )
    assert order.pending_request is None


def test_record_anomaly_changes_nothing_but_the_trail() -> None:
    order = order_in(S.OPEN, filled_quantity=D(10))
    order.record_anomaly("e-9", ("cum_backwards", "fees_not_booked"), T1, details={"cum_qty": D(5), "applied": True})
    assert only_event(order) == DomainEvent(
        E.EXECUTION_ANOMALY,
        {
            "cum_qty": D(5),
            "execution_id": "e-9",
            "anomalies": ["cum_backwards", "fees_not_booked"],
            "applied": False,
            "state": S.OPEN,
        },
        T1,
        None,
    )
    assert (order.state, order.filled_quantity) == (S.OPEN, D(10))
