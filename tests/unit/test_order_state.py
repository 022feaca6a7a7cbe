"""The command table of the Order aggregate: every command in every state, allowed or refused."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from common.domain import (
    TERMINAL_STATES,
    DomainEvent,
    ExecType,
    ExecutionReportData,
    InvalidCommand,
    InvalidTransition,
    Order,
    OrderEventType,
    OrderState,
    OrderStatus,
    OrderTerms,
    OrderType,
    PendingRequest,
    ReportMismatch,
    RequestKind,
    Side,
    TimeInForce,
    lifecycle,
    public_status,
)

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
T1 = T0 + timedelta(seconds=1)
S = OrderState
E = OrderEventType


def make_order(state: OrderState = S.NEW, filled: Decimal = Decimal(0), **overrides: object) -> Order:
    """An order as the store would load it, in any state."""
    fields: dict[str, object] = dict(
        id="o-1",
        account_id="acc-1",
        symbol="AAPL",
        side=Side.BUY,
        type=OrderType.LIMIT,
        quantity=Decimal(100),
        price=Decimal("150"),
        time_in_force=TimeInForce.DAY,
        state=state,
        filled_quantity=filled,
        average_execution_price=Decimal("150") if filled else None,
        created_at=T0,
        updated_at=T0,
        version=3,
    )
    fields.update(overrides)
    return Order(**fields)  # type: ignore[arg-type]


Command = Callable[[Order], None]

COMMANDS: dict[str, Command] = {
    "approve": lambda o: o.approve(["limits", "restricted_list"], T1),
    "reject": lambda o: o.reject("RISK_LIMIT", "notional over limit", T1, "u-1"),
    "mark_routed": lambda o: o.mark_routed("r-1", T1),
    "cancel_unrouted": lambda o: o.cancel_unrouted("user asked", T1, "u-1"),
    "modify_unrouted": lambda o: o.modify_unrouted(Decimal(50), Decimal("149"), None, T1, "u-1"),
    "request_cancel": lambda o: o.request_cancel("c-1", "user asked", T1, "u-1"),
    "request_replace": lambda o: o.request_replace("c-2", Decimal(80), Decimal("149"), None, T1, "u-1"),
    "approve_replace_request": lambda o: o.approve_replace_request("r-9", ["max_position"], T1),
    "reject_replace_request": lambda o: o.reject_replace_request("r-9", "MAX_POSITION_EXCEEDED", "too big", T1),
    "expire": lambda o: o.expire("session close", T1),
}
# The risk gate answers a replace the order is waiting on: these commands run on an order that has one.
PENDING_REPLACE = PendingRequest(
    kind=RequestKind.REPLACE, request_id="r-9", requested_at=T0, quantity=Decimal(80), price=Decimal("149")
)
NEEDS_PENDING_REPLACE = {"approve_replace_request", "reject_replace_request"}

AT_VENUE_REQUESTABLE = {S.ROUTED, S.OPEN, S.PARTIALLY_FILLED, S.PENDING_REPLACE}
AT_VENUE = AT_VENUE_REQUESTABLE | {S.PENDING_CANCEL}
LIVE = {S.NEW, S.APPROVED, S.ROUTED, S.OPEN, S.PARTIALLY_FILLED, S.PENDING_CANCEL, S.PENDING_REPLACE}

# The expected table, written out independently of the implementation: command -> (sources, dest, event).
# dest None: the state does not move (the request waits for the venue's answer).
EXPECTED: dict[str, tuple[set[OrderState], OrderState | None, OrderEventType]] = {
    "approve": ({S.NEW}, S.APPROVED, E.RISK_APPROVED),
    "reject": ({S.NEW, S.APPROVED, S.ROUTED}, S.REJECTED, E.ORDER_REJECTED),
    "mark_routed": ({S.APPROVED}, S.ROUTED, E.ORDER_ROUTED),
    "cancel_unrouted": ({S.NEW, S.APPROVED}, S.CANCELED, E.ORDER_CANCELED),
    "modify_unrouted": ({S.NEW, S.APPROVED}, S.NEW, E.ORDER_MODIFIED),
    "request_cancel": (AT_VENUE_REQUESTABLE, None, E.CANCEL_REQUESTED),
    "request_replace": (AT_VENUE_REQUESTABLE, None, E.REPLACE_REQUESTED),
    "approve_replace_request": (AT_VENUE, None, E.RISK_APPROVED),
    "reject_replace_request": (AT_VENUE, None, E.REPLACE_REJECTED),
    "expire": (LIVE, S.EXPIRED, E.ORDER_EXPIRED),
}


def _filled_for(state: OrderState) -> Decimal:
    return Decimal(40) if state in (S.PARTIALLY_FILLED, S.FILLED) else Decimal(0)


CASES = [(command, state) for command in COMMANDS for state in OrderState]


@pytest.mark.parametrize(("command", "state"), CASES, ids=[f"{c}-{s}" for c, s in CASES])
def test_every_command_in_every_state(command: str, state: OrderState) -> None:
    filled = Decimal(100) if state is S.FILLED else _filled_for(state)
    pending = {"pending_request": PENDING_REPLACE} if command in NEEDS_PENDING_REPLACE else {}
    order = make_order(state, filled, **pending)
    before = copy.deepcopy(order)
    sources, dest, event_type = EXPECTED[command]

    if state in sources:
        COMMANDS[command](order)
        assert order.state is (state if dest is None else dest)
        assert order.version == before.version + 1
        assert order.updated_at == T1
        assert [e.type for e in order.events] == [event_type]
        assert order.events[0].timestamp == T1
    else:
        with pytest.raises(InvalidTransition):
            COMMANDS[command](order)
        assert order == before  # dataclass equality: every persisted field unchanged
        assert order.events == []


def test_state_table_is_one_machine_without_models() -> None:
    assert lifecycle.MACHINE.models == []
    assert not lifecycle.MACHINE.auto_transitions
    assert "to_NEW" not in lifecycle.TRIGGERS
    expected_triggers = {
        "approve",
        "reject",
        "route",
        "acknowledge",
        "partial_fill",
        "fill",
        "cancel_pending",
        "cancel",
        "cancel_reject",
        "replace_pending",
        "replace",
        "replace_reject",
        "expire",
        "bust",
    }
    assert expected_triggers <= lifecycle.TRIGGERS
    # the flattened table agrees with the Machine it came from
    for (trigger, source), dests in lifecycle.TABLE.items():
        machine_dests = {
            source if t.dest is None else OrderState[t.dest]
            for t in lifecycle.MACHINE.get_transitions(trigger=trigger, source=source.name)
        }
        assert machine_dests == set(dests)


def test_command_table_matches_machine() -> None:
    triggers = {"mark_routed": "route"}
    for command, (sources, dest, _) in EXPECTED.items():
        trigger = triggers.get(command, command)
        for state in OrderState:
            allowed = lifecycle.destinations(trigger, state)
            if state in sources:
                assert allowed == {state if dest is None else dest}, (command, state)
            else:
                assert not allowed, (command, state)


def test_terminal_states_accept_no_command() -> None:
    for state in TERMINAL_STATES:
        for command in COMMANDS.values():
            order = make_order(state, Decimal(100) if state is S.FILLED else Decimal(0))
            with pytest.raises(InvalidTransition):
                command(order)


def test_a_second_cancel_is_refused_while_one_is_outstanding() -> None:
    order = make_order(S.OPEN)
    order.request_cancel("c-1", None, T1, "u-1")
    before = copy.deepcopy(order)
    with pytest.raises(InvalidTransition, match="c-1"):
        order.request_cancel("c-2", None, T1, "u-1")
    with pytest.raises(InvalidTransition):
        order.request_replace("c-3", Decimal(10), Decimal("150"), None, T1, "u-1")
    assert order == before


def test_a_replace_may_follow_an_unanswered_replace_and_a_cancel_may_follow_a_replace() -> None:
    order = make_order(S.PARTIALLY_FILLED, Decimal(10))
    order.request_replace("r-1", Decimal(80), Decimal("150"), None, T1, "u-1")
    order.request_replace("r-2", Decimal(70), Decimal("150"), None, T1, "u-1")
    assert order.pending_request is not None and order.pending_request.request_id == "r-2"
    assert order.events[-1].payload["supersedes_request_id"] == "r-1"
    order.request_cancel("c-1", "out", T1, "u-1")
    assert order.pending_request.kind is RequestKind.CANCEL
    assert order.state is S.PARTIALLY_FILLED


def test_the_risk_gate_approves_a_replace_without_changing_the_order() -> None:
    order = make_order(S.PARTIALLY_FILLED, Decimal(40), pending_request=PENDING_REPLACE)
    order.approve_replace_request("r-9", ["max_order_quantity"], T1, details={"limits": {"a": 1}, "state": "x"})
    assert (order.state, order.quantity, order.price, order.pending_request) == (
        S.PARTIALLY_FILLED,
        Decimal(100),
        Decimal("150"),
        PENDING_REPLACE,
    )
    [event] = order.events
    assert event.payload == {
        "request_id": "r-9",
        "checks": ["max_order_quantity"],
        "state": S.PARTIALLY_FILLED,
        "limits": {"a": 1},
    }  # details join the payload; the command's own fields win a clash


@pytest.mark.parametrize("pending", [None, "c-1", "r-1"])
def test_only_the_pending_replace_can_be_approved(pending: str | None) -> None:
    request = None
    if pending is not None:
        kind = RequestKind.CANCEL if pending.startswith("c") else RequestKind.REPLACE
        request = PendingRequest(kind=kind, request_id=pending, requested_at=T0)
    order = make_order(S.OPEN, pending_request=request)
    before = copy.deepcopy(order)
    with pytest.raises(InvalidCommand, match="r-9"):
        order.approve_replace_request("r-9", [], T1)
    assert order == before and order.events == []


def test_a_replace_refused_by_risk_clears_its_pending_request_and_keeps_the_terms() -> None:
    order = make_order(S.OPEN, pending_request=PENDING_REPLACE)
    details = {"rule": "max_position", "figures": {"limit": Decimal(10)}}
    order.reject_replace_request("r-9", "MAX_POSITION_EXCEEDED", "too big", T1, details=details)
    assert (order.state, order.quantity, order.price, order.pending_request) == (
        S.OPEN,
        Decimal(100),
        Decimal("150"),
        None,
    )
    assert (order.rejection_code, order.rejection_reason) == (None, None)  # the order is not rejected
    [event] = order.events
    assert event.type is E.REPLACE_REJECTED
    assert event.payload == {
        "request_id": "r-9",
        "code": "MAX_POSITION_EXCEEDED",
        "reason": "too big",
        "source": "risk",
        "pending_cleared": True,
        "state": S.OPEN,
        **details,
    }


def test_a_replace_refused_by_risk_leaves_a_newer_request_pending() -> None:
    newer = PendingRequest(kind=RequestKind.REPLACE, request_id="r-10", requested_at=T1, quantity=Decimal(70))
    order = make_order(S.OPEN, pending_request=newer)
    order.reject_replace_request("r-9", "MAX_ORDER_QUANTITY_EXCEEDED", "too big", T1)
    assert order.pending_request == newer
    assert order.events[-1].payload["pending_cleared"] is False


def test_approve_and_reject_merge_their_details_into_the_event() -> None:
    approved = make_order(S.NEW)
    approved.approve(["kill_switch"], T1, details={"reference_price": {"price": Decimal("150")}})
    assert approved.events[-1].payload == {
        "checks": ["kill_switch"],
        "state": S.APPROVED,
        "reference_price": {"price": Decimal("150")},
    }
    rejected = make_order(S.NEW)
    rejected.reject("MAX_ORDER_QUANTITY_EXCEEDED", "too big", T1, details={"rule": "max_order_quantity", "code": "X"})
    assert rejected.events[-1].payload == {
        "code": "MAX_ORDER_QUANTITY_EXCEEDED",
        "reason": "too big",
        "state": S.REJECTED,
        "rule": "max_order_quantity",
    }


def test_request_replace_records_the_complete_new_terms() -> None:
    order = make_order(S.OPEN)
    order.request_replace("r-1", Decimal(80), Decimal("149.5"), None, T1, "u-9")
    assert order.pending_request == PendingRequest(
        kind=RequestKind.REPLACE,
        request_id="r-1",
        requested_at=T1,
        quantity=Decimal(80),
        price=Decimal("149.5"),
        stop_price=None,
    )
    assert order.quantity == Decimal(100) and order.price == Decimal("150")  # not in force yet
    assert order.events[-1].user_id == "u-9"


@pytest.mark.parametrize(
    ("quantity", "price", "stop_price"),
    [
        (Decimal(0), Decimal("150"), None),
        (Decimal(-5), Decimal("150"), None),
        (Decimal(10), None, None),
        (Decimal(10), Decimal("-1"), None),
        (Decimal("NaN"), Decimal("150"), None),
    ],
)
def test_commands_with_bad_terms_raise_and_change_nothing(
    quantity: Decimal, price: Decimal | None, stop_price: Decimal | None
) -> None:
    calls: tuple[tuple[OrderState, Callable[[Order], object]], ...] = (
        (S.APPROVED, lambda o: o.modify_unrouted(quantity, price, stop_price, T1, None)),
        (S.OPEN, lambda o: o.request_replace("r", quantity, price, stop_price, T1, None)),
    )
    for state, call in calls:
        order = make_order(state)
        before = copy.deepcopy(order)
        with pytest.raises(InvalidCommand):
            call(order)
        assert order == before and order.events == []


def test_modify_unrouted_sends_the_order_back_to_risk() -> None:
    order = make_order(S.APPROVED)
    order.modify_unrouted(Decimal(60), Decimal("151"), None, T1, "u-1")
    assert (order.state, order.quantity, order.price) == (S.NEW, Decimal(60), Decimal("151"))
    payload = order.events[-1].payload
    assert payload["previous"] == {"quantity": Decimal(100), "price": Decimal("150"), "stop_price": None}


def test_reject_records_code_and_reason() -> None:
    order = make_order(S.NEW)
    order.reject("RISK_LIMIT", "too big", T1)
    assert (order.state, order.status, order.rejection_code, order.rejection_reason) == (
        S.REJECTED,
        OrderStatus.REJECTED,
        "RISK_LIMIT",
        "too big",
    )


TERMS = OrderTerms(
    account_id="acc-1",
    symbol="MSFT",
    side=Side.SELL,
    type=OrderType.STOP_LIMIT,
    quantity=Decimal("12.5"),
    price=Decimal("300"),
    stop_price=Decimal("301"),
    time_in_force=TimeInForce.GTC,
    strategy_id="s-1",
    notes="n",
    client_order_id="dec-1",
)


def test_create_makes_a_new_order_with_one_event() -> None:
    order = Order.create(id="o-9", terms=TERMS, now=T0, user_id="u-1")
    assert (order.state, order.status, order.version) == (S.NEW, OrderStatus.PENDING, 1)
    assert order.filled_quantity == 0 and order.fees == 0 and order.average_execution_price is None
    assert order.leaves_quantity == Decimal("12.5")
    [event] = order.events
    assert event.type is E.ORDER_CREATED and event.user_id == "u-1" and event.timestamp == T0
    assert event.payload["stop_price"] == Decimal("301") and event.payload["client_order_id"] == "dec-1"


@pytest.mark.parametrize(
    "overrides",
    [
        {"quantity": Decimal(0)},
        {"type": OrderType.MARKET},
        {"type": OrderType.LIMIT, "price": None},
        {"type": OrderType.STOP, "stop_price": None, "price": None},
    ],
)
def test_create_refuses_terms_that_break_the_rules(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidCommand):
        Order.create(id="o-9", terms=dataclasses.replace(TERMS, **overrides), now=T0, user_id="u-1")


def test_create_rejected_is_born_rejected_with_both_events() -> None:
    terms = dataclasses.replace(TERMS, quantity=Decimal(-1))
    order = Order.create_rejected(
        id="o-9", terms=terms, now=T0, user_id="u-1", code="INVALID_QUANTITY", reason="quantity must be positive"
    )
    assert (order.state, order.status, order.rejection_code) == (S.REJECTED, "REJECTED", "INVALID_QUANTITY")
    assert [e.type for e in order.events] == [E.ORDER_CREATED, E.ORDER_REJECTED]
    assert order.is_terminal and order.leaves_quantity == 0


@pytest.mark.parametrize(
    ("state", "filled", "status"),
    [
        (S.NEW, 0, "PENDING"),
        (S.APPROVED, 0, "PENDING"),
        (S.ROUTED, 0, "PENDING"),
        (S.OPEN, 0, "OPEN"),
        (S.PARTIALLY_FILLED, 5, "PARTIALLY_FILLED"),
        (S.PENDING_CANCEL, 0, "OPEN"),
        (S.PENDING_CANCEL, 5, "PARTIALLY_FILLED"),
        (S.PENDING_REPLACE, 0, "OPEN"),
        (S.PENDING_REPLACE, 5, "PARTIALLY_FILLED"),
        (S.FILLED, 100, "FILLED"),
        (S.CANCELED, 5, "CANCELED"),
        (S.EXPIRED, 5, "CANCELED"),
        (S.REJECTED, 0, "REJECTED"),
    ],
)
def test_public_status_table(state: OrderState, filled: int, status: str) -> None:
    assert public_status(state, Decimal(filled)) == OrderStatus(status)
    assert make_order(state, Decimal(filled)).status == OrderStatus(status)


def test_leaves_quantity() -> None:
    assert make_order(S.PARTIALLY_FILLED, Decimal(40)).leaves_quantity == Decimal(60)
    assert make_order(S.CANCELED, Decimal(40)).leaves_quantity == 0
    assert make_order(S.FILLED, Decimal(120), overfilled=True).leaves_quantity == 0
    assert TERMINAL_STATES == {S.FILLED, S.CANCELED, S.EXPIRED, S.REJECTED}


def test_pending_request_round_trips_through_a_dict() -> None:
    request = PendingRequest(
        kind=RequestKind.REPLACE,
        request_id="r-1",
        requested_at=T0,
        quantity=Decimal("10.5"),
        price=Decimal("99.25"),
        stop_price=None,
        acknowledged=True,
    )
    data = request.to_dict()
    as_stored = {k: (str(v) if isinstance(v, Decimal) else v) for k, v in data.items()}
    assert PendingRequest.from_dict(as_stored) == request
    assert PendingRequest.from_dict(data) == request


def test_pull_events_hands_over_and_forgets() -> None:
    order = make_order(S.NEW)
    order.approve([], T1)
    events = order.pull_events()
    assert [e.type for e in events] == [E.RISK_APPROVED] and order.events == []
    assert isinstance(events[0], DomainEvent)


def test_a_report_for_another_order_is_a_caller_bug() -> None:
    order = make_order(S.ROUTED)
    report = ExecutionReportData(
        execution_id="x",
        order_id="other",
        exec_type=ExecType.NEW,
        cum_qty=Decimal(0),
        leaves_qty=Decimal(100),
        timestamp=T1,
    )
    with pytest.raises(ReportMismatch, match="^report x is for order other, not o-1$"):
        order.apply_report(report, T1)
    assert (order.version, order.events) == (3, [])


def test_a_command_whose_destination_the_table_refuses_is_refused() -> None:
    # Every command names a destination its trigger allows; this guards the pairing itself.
    order = make_order(S.NEW)
    with pytest.raises(InvalidTransition) as raised:
        order._command("approve", S.FILLED)
    assert (raised.value.command, raised.value.state, raised.value.detail) == ("approve", S.NEW, "cannot reach FILLED")
    assert order.state is S.NEW
