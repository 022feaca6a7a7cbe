"""Properties of report application: convergence under reordering, robustness, cost."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from common.domain import (
    TERMINAL_STATES,
    BookedExecution,
    DomainError,
    ExecType,
    ExecutionReportData,
    Order,
    OrderState,
    OrderTerms,
    OrderType,
    PendingRequest,
    RequestKind,
    Side,
    TimeInForce,
    lifecycle,
)

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
D = Decimal
S = OrderState
X = ExecType


def routed(quantity: Decimal, tif: TimeInForce = TimeInForce.DAY) -> Order:
    terms = OrderTerms(
        account_id="acc-1",
        symbol="AAPL",
        side=Side.BUY,
        type=OrderType.LIMIT,
        quantity=quantity,
        price=D("200"),
        time_in_force=tif,
    )
    order = Order.create(id="o-1", terms=terms, now=T0, user_id=None)
    order.approve([], T0)
    order.mark_routed("r", T0)
    return order


@st.composite
def fill_sets(draw: st.DrawFn) -> tuple[Decimal, TimeInForce, list[ExecutionReportData]]:
    """An order quantity and the reports a venue sent for it: maybe an ack, then fills with cumulative
    totals (possibly overfilling), each with its own fee."""
    quantity = D(draw(st.integers(1, 500))) / D(draw(st.sampled_from([1, 10])))
    tif = draw(st.sampled_from([TimeInForce.DAY, TimeInForce.GTC, TimeInForce.IOC]))
    increments = draw(st.lists(st.integers(1, 200), min_size=1, max_size=6))
    reports: list[ExecutionReportData] = []
    if draw(st.booleans()):
        reports.append(
            ExecutionReportData(
                execution_id="ack",
                order_id="o-1",
                broker_order_id="b-1",
                exec_type=X.NEW,
                cum_qty=D(0),
                leaves_qty=quantity,
                timestamp=T0,
            )
        )
    cum, notional = D(0), D(0)
    for index, increment in enumerate(increments):
        last_qty = D(increment) / D(10)
        last_px = D(draw(st.integers(9000, 11000))) / D(100)
        cum += last_qty
        notional += last_qty * last_px
        final = index == len(increments) - 1
        leaves = max(quantity - cum, D(0))
        if tif is TimeInForce.IOC and final:
            leaves = D(0)  # IOC: the venue's last word leaves nothing working
        reports.append(
            ExecutionReportData(
                execution_id=f"e-{index}",
                order_id="o-1",
                broker_order_id="b-1",
                exec_type=X.FILL if leaves == 0 else X.PARTIAL_FILL,
                last_qty=last_qty,
                last_px=last_px,
                cum_qty=cum,
                leaves_qty=leaves,
                avg_px=notional / cum,
                fees=D(draw(st.integers(0, 99))) / D(100),
                timestamp=T0 + timedelta(seconds=index),
            )
        )
    return quantity, tif, reports


def outcome_of(order: Order) -> tuple[object, ...]:
    return (
        order.state,
        order.status,
        order.filled_quantity,
        order.average_execution_price,
        order.overfilled,
        order.quantity,
        order.broker_order_id,
        order.leaves_quantity,
    )


@settings(max_examples=300, deadline=None)
@given(data=st.data(), case=fill_sets())
def test_any_permutation_of_the_reports_gives_the_same_order(
    data: st.DataObject, case: tuple[Decimal, TimeInForce, list[ExecutionReportData]]
) -> None:
    quantity, tif, reports = case
    reference = routed(quantity, tif)
    booked_reference = [reference.apply_report(r, T0).fill for r in reports]
    permuted = data.draw(st.permutations(reports))
    order = routed(quantity, tif)
    booked = [order.apply_report(r, T0).fill for r in permuted]

    assert outcome_of(order) == outcome_of(reference)
    # What settlement books is the rise of the cumulative quantity, whatever the order of arrival; the fees
    # booked are those of the reports that booked it, and the order says the same.
    for result, fills in ((order, booked), (reference, booked_reference)):
        assert sum((f.quantity for f in fills if f), D(0)) == result.filled_quantity
        assert sum((f.fees for f in fills if f), D(0)) == result.fees
        # every overtaken report was accounted for by the time all had come
        assert result.unreported_quantity == 0
    top = [r for r in reports if r.exec_type is not X.NEW][-1]
    assert order.filled_quantity == top.cum_qty and order.average_execution_price == top.avg_px
    if top.cum_qty >= quantity:
        assert order.state is S.FILLED and order.overfilled == (top.cum_qty > quantity)
    elif tif is TimeInForce.IOC:
        assert order.state is S.CANCELED
    else:
        assert order.state is S.PARTIALLY_FILLED


# ------------------------------------------------------------------ anything a venue may send

_REQUEST_IDS = ["r-1", "r-2", "c-1", None]


@st.composite
def any_report(draw: st.DrawFn) -> ExecutionReportData:
    def qty() -> Decimal:
        return D(draw(st.integers(0, 150)))

    def px() -> Decimal | None:
        return draw(st.one_of(st.none(), st.integers(1, 300).map(D)))

    return ExecutionReportData(
        execution_id=draw(st.uuids()).hex,
        order_id="o-1",
        request_id=draw(st.sampled_from(_REQUEST_IDS)),
        broker_order_id=draw(st.sampled_from([None, "b-1", "b-2"])),
        exec_type=draw(st.sampled_from(ExecType)),
        last_qty=qty(),
        last_px=px(),
        cum_qty=qty(),
        leaves_qty=qty(),
        avg_px=px(),
        order_qty=draw(st.one_of(st.none(), st.integers(1, 150).map(D))),
        price=px(),
        fees=D(draw(st.integers(-10, 10))) / D(10),
        timestamp=T0,
        exec_ref_id=draw(st.sampled_from([None, "e"])),
    )


@st.composite
def any_order(draw: st.DrawFn) -> Order:
    state = draw(st.sampled_from(OrderState))
    quantity = D(draw(st.integers(1, 120)))
    if state is S.FILLED:
        filled = quantity + D(draw(st.integers(0, 5)))
    elif state in (S.NEW, S.APPROVED, S.ROUTED, S.OPEN):
        filled = D(0)
    elif state in TERMINAL_STATES:
        filled = D(draw(st.integers(0, int(quantity))))
    else:
        filled = D(draw(st.integers(0, int(quantity) - 1)))
    if state is S.PARTIALLY_FILLED and filled == 0:
        filled = D(0) if quantity == 1 else D(1)
        state = S.OPEN if filled == 0 else state
    pending = draw(
        st.one_of(
            st.none(),
            st.builds(
                PendingRequest,
                kind=st.sampled_from(RequestKind),
                request_id=st.sampled_from(["r-1", "r-2", "c-1"]),
                requested_at=st.just(T0),
                quantity=st.integers(1, 150).map(D),
                price=st.just(D(100)),
                acknowledged=st.booleans(),
            ),
        )
    )
    return Order(
        id="o-1",
        account_id="a",
        symbol="AAPL",
        side=Side.SELL,
        type=OrderType.LIMIT,
        quantity=quantity,
        price=D(100),
        time_in_force=draw(st.sampled_from(TimeInForce)),
        state=state,
        filled_quantity=filled,
        average_execution_price=D(100) if filled else None,
        pending_request=pending,
        overfilled=filled > quantity,
        created_at=T0,
        updated_at=T0,
    )


_REOPENING = {
    # terminal -> non-terminal moves FIX allows: a bust, or a confirmed increase of a filled order (D8)
    S.FILLED: {X.TRADE_CANCEL, X.REPLACED},
}


@settings(max_examples=500, deadline=None)
@given(order=any_order(), reports=st.lists(any_report(), max_size=8), commands=st.lists(st.integers(0, 4)))
def test_no_report_ever_raises_and_the_invariants_hold(
    order: Order, reports: list[ExecutionReportData], commands: list[int]
) -> None:
    filled0 = order.filled_quantity
    booked: dict[str, BookedExecution] = {}  # what the store keeps of each booked execution
    total = D(0)
    for index, report in enumerate(reports):
        if index < len(commands):  # interleave OMS requests; refusals are fine
            try:
                if commands[index] == 0:
                    order.request_cancel(f"c-{index}", None, T0, None)
                elif commands[index] == 1:
                    order.request_replace("r-1", D(80), D(100), None, T0, None)
            except DomainError:
                pass
        state0, status0, version0 = order.state, order.status, order.version
        busted = next(iter(booked.values()), None) if report.exec_type is X.TRADE_CANCEL else None
        outcome = order.apply_report(report, T0, busted=busted)
        if outcome.fill is not None:
            total += outcome.fill.quantity
            if outcome.fill.reversal:
                assert busted is not None and outcome.fill.reverses_execution_id == busted.execution_id
                booked[busted.execution_id] = BookedExecution(
                    busted.execution_id, busted.quantity, busted.price, busted.fees, busted=True
                )
            else:
                assert outcome.fill.quantity > 0
                booked[report.execution_id] = BookedExecution(
                    report.execution_id, outcome.fill.quantity, outcome.fill.price, outcome.fill.fees
                )
        # The one rule: what is booked is exactly the change of the order's cumulative filled quantity.
        assert order.filled_quantity - filled0 == total

        assert not [a for a in outcome.anomalies if a.startswith("illegal_transition")], outcome.anomalies
        assert outcome.applied == (order.version == version0 + 1)
        assert outcome.state_changed == (order.state is not state0)
        assert outcome.status_changed == (order.status is not status0)
        if outcome.state_changed:
            assert any(order.state in dests for (_, src), dests in lifecycle.TABLE.items() if src is state0)
        if state0 in TERMINAL_STATES and order.state is not state0:
            if state0 is S.FILLED:
                assert report.exec_type in _REOPENING[S.FILLED]
            else:
                assert order.state is S.FILLED  # a late fill completing a dead order
        assert order.leaves_quantity >= 0
        if order.state is S.FILLED:
            assert order.filled_quantity >= order.quantity
        elif order.state not in TERMINAL_STATES:
            assert order.filled_quantity < order.quantity
        if order.filled_quantity > order.quantity:
            assert order.overfilled


# ------------------------------------------------------------------ cost


def test_applying_a_report_is_cheap() -> None:
    """The execution handler applies thousands of reports a second; keep the domain's share tiny.

    Measured ~10-20 us per report on a 2-core machine; the bound is loose so a slow CI box passes.
    """
    orders = [routed(D(100)) for _ in range(500)]
    reports = []
    for order in orders:
        reports.append(
            (
                order,
                ExecutionReportData(
                    execution_id="a",
                    order_id=order.id,
                    broker_order_id="b",
                    exec_type=X.NEW,
                    cum_qty=D(0),
                    leaves_qty=D(100),
                    timestamp=T0,
                ),
            )
        )
        for i, cum in enumerate((D(30), D(70), D(100))):
            reports.append(
                (
                    order,
                    ExecutionReportData(
                        execution_id=f"e{i}",
                        order_id=order.id,
                        exec_type=X.FILL if cum == 100 else X.PARTIAL_FILL,
                        last_qty=D(40),
                        last_px=D("10.5"),
                        cum_qty=cum,
                        leaves_qty=D(100) - cum,
                        avg_px=D("10.5"),
                        fees=D("0.01"),
                        timestamp=T0,
                    ),
                )
            )
    started = time.perf_counter()
    for order, report in reports:
        order.apply_report(report, T0)
    per_report = (time.perf_counter() - started) / len(reports)
    assert all(order.state is S.FILLED for order in orders)
    assert per_report < 200e-6, f"{per_report * 1e6:.1f} us per report"
