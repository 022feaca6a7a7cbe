"""FIX execution-report semantics: the Appendix D matrices (tests/fix_scenarios.py) and named cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from common.domain import (
    BookedExecution,
    ExecType,
    ExecutionReportData,
    FillDelta,
    InvalidTransition,
    Order,
    OrderEventType,
    OrderState,
    OrderStatus,
    OrderTerms,
    OrderType,
    ReportOutcome,
    RequestKind,
    Side,
    TimeInForce,
)
from tests.fix_scenarios import SCENARIOS, SCENARIOS_BY_REF, Expect, Report, Request, Scenario

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
S = OrderState
E = OrderEventType
X = ExecType
D = Decimal


def state_of(order: Order) -> OrderState:
    """The order's state, read anew: mypy would keep the state an earlier assert narrowed across a report."""
    return order.state


def pending_of(order: Order) -> object:
    """The order's pending request, read anew (as ``state_of``)."""
    return order.pending_request


def routed_order(
    quantity: Decimal = D(10000),
    price: Decimal | None = D("110"),
    tif: TimeInForce = TimeInForce.DAY,
    type: OrderType = OrderType.LIMIT,
) -> Order:
    """New Order(X): created, approved by risk and handed to the broker."""
    terms = OrderTerms(
        account_id="acc-1", symbol="AAPL", side=Side.BUY, type=type, quantity=quantity, price=price, time_in_force=tif
    )
    order = Order.create(id="o-1", terms=terms, now=T0, user_id="u-1")
    order.approve(["limits"], T0)
    order.mark_routed("route-1", T0)
    order.pull_events()
    return order


class Venue:
    """Builds reports with unique execution ids and increasing timestamps."""

    def __init__(self, order_id: str = "o-1") -> None:
        self.order_id = order_id
        self.seq = 0

    def report(self, exec_type: ExecType, cum: object, leaves: object, **kw: object) -> ExecutionReportData:
        self.seq += 1
        fields: dict[str, object] = dict(
            execution_id=f"e-{self.seq}",
            order_id=self.order_id,
            exec_type=exec_type,
            cum_qty=D(str(cum)),
            leaves_qty=D(str(leaves)),
            timestamp=T0 + timedelta(seconds=self.seq),
            broker_order_id="b-1",
        )
        for key, value in kw.items():
            fields[key] = D(str(value)) if key in _DECIMAL_FIELDS and value is not None else value
        return ExecutionReportData(**fields)  # type: ignore[arg-type]

    def fill(
        self, last: object, px: object, cum: object, leaves: object, avg: object, **kw: object
    ) -> ExecutionReportData:
        exec_type = X.FILL if D(str(leaves)) == 0 else X.PARTIAL_FILL
        return self.report(exec_type, cum, leaves, last_qty=last, last_px=px, avg_px=avg, **kw)


_DECIMAL_FIELDS = {"last_qty", "last_px", "avg_px", "order_qty", "price", "stop_price", "fees"}


# ---------------------------------------------------------------------------------------------- Appendix D


def replay(scenario: Scenario) -> list[tuple[Order, ReportOutcome | None]]:
    """Drive an Order through a scenario's steps, as the pipeline would, checking every expectation."""
    order = routed_order(scenario.quantity, scenario.price, scenario.time_in_force, scenario.type)
    results: list[tuple[Order, ReportOutcome | None]] = []
    for index, step in enumerate(scenario.steps, start=1):
        now = T0 + timedelta(seconds=index)
        outcome: ReportOutcome | None = None
        action = step.action
        if isinstance(action, Request):
            request_id = f"{scenario.ref}-{action.request}"
            assert action.kind is RequestKind.REPLACE or action.quantity is None

            def send(action: Request = action, request_id: str = request_id, now: datetime = now) -> None:
                if action.kind is RequestKind.CANCEL:
                    order.request_cancel(request_id, "scenario", now, "u-1")
                else:
                    assert action.quantity is not None
                    order.request_replace(request_id, action.quantity, action.price, None, now, "u-1")

            if action.refused:
                with pytest.raises(InvalidTransition):
                    send()
            else:
                send()
        else:
            outcome = order.apply_report(to_report(scenario, action, index, now), now)
            assert not outcome.anomalies, (scenario.ref, index, outcome.anomalies)
        check(order, step.expect, f"{scenario.ref} step {index} ({step.note})")
        results.append((order, outcome))
    return results


def to_report(scenario: Scenario, report: Report, index: int, now: datetime) -> ExecutionReportData:
    return ExecutionReportData(
        execution_id=f"{scenario.ref}-e{index}",
        order_id="o-1",
        request_id=None if report.answers is None else f"{scenario.ref}-{report.answers}",
        broker_order_id="b-1",
        exec_type=report.exec_type,
        last_qty=report.last_qty,
        last_px=report.last_px,
        cum_qty=report.cum_qty,
        leaves_qty=report.leaves_qty,
        avg_px=report.avg_px,
        order_qty=report.order_qty,
        price=report.price,
        timestamp=now,
        venue="SIM",
    )


def check(order: Order, expect: Expect, where: str) -> None:
    actual = (
        order.state,
        order.status,
        order.quantity,
        order.filled_quantity,
        order.leaves_quantity,
        order.average_execution_price,
        order.price,
    )
    wanted = (
        expect.state,
        expect.status,
        expect.quantity,
        expect.cum_qty,
        expect.leaves_qty,
        expect.avg_px,
        expect.price,
    )
    assert actual == wanted, where


def test_the_sixteen_fix_42_matrices_are_all_encoded() -> None:
    refs = [scenario.ref for scenario in SCENARIOS]
    assert [f"D{n}" for n in range(1, 17)] == [ref for ref in refs if ref[1:].isdigit() and int(ref[1:]) <= 16]
    assert len(set(refs)) == len(refs)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.ref for s in SCENARIOS])
def test_fix_appendix_d_matrix(scenario: Scenario) -> None:
    results = replay(scenario)
    order = results[-1][0]
    # the audit trail names every step, and versions moved with every change
    assert order.version >= 3 + sum(1 for _, outcome in results if outcome is not None and outcome.applied)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.ref for s in SCENARIOS])
def test_scenario_data_is_what_a_venue_would_send(scenario: Scenario) -> None:
    """Guard the data itself: cum/leaves/avg consistent with the executions, requests answered exist."""
    cum, notional = D(0), D(0)
    requests: set[str] = set()
    for step in scenario.steps:
        action = step.action
        if isinstance(action, Request):
            requests.add(action.request)
            continue
        if action.answers is not None:
            assert action.answers in requests, (scenario.ref, action)
        if action.exec_type in (X.PARTIAL_FILL, X.FILL):
            assert action.last_qty > 0 and action.last_px is not None
            cum += action.last_qty
            notional += action.last_qty * action.last_px
        else:
            assert action.last_qty == 0
        assert action.cum_qty == cum, (scenario.ref, action)
        if cum:
            assert action.avg_px == notional / cum, (scenario.ref, action)
        live = action.exec_type not in (X.CANCELED, X.EXPIRED, X.REJECTED) and action.leaves_qty != 0
        if live:
            assert action.leaves_qty == action.order_qty - cum, (scenario.ref, action)


def test_replaying_a_scenario_twice_through_permuted_fills_converges() -> None:
    """D4's fills delivered out of order end with the same quantities (the cancel still lands last)."""
    scenario = SCENARIOS_BY_REF["D4"]
    reports = [step.action for step in scenario.steps if isinstance(step.action, Report)]
    fills = [r for r in reports if r.exec_type is X.PARTIAL_FILL]
    order = routed_order()
    order.request_cancel("D4-Y", None, T0, None)
    for index, report in enumerate(reversed(fills), start=1):
        order.apply_report(to_report(scenario, report, index, T0), T0)
    assert (order.filled_quantity, order.average_execution_price, order.state) == (D(6000), D(101), S.PARTIALLY_FILLED)


# ---------------------------------------------------------------------------------------------- named cases


def test_partial_fills_to_a_full_fill_with_average_price_and_fees() -> None:
    order, venue = routed_order(D(100)), Venue()
    order.apply_report(venue.report(X.NEW, 0, 100), T0)
    first = order.apply_report(venue.fill(30, "10.00", 30, 70, "10.00", fees="0.30"), T0)
    second = order.apply_report(venue.fill(50, "10.40", 80, 20, "10.25", fees="0.50"), T0)
    last = order.apply_report(venue.fill(20, "11.00", 100, 0, "10.40", fees="0.20"), T0)
    assert order.state is S.FILLED and order.status is OrderStatus.FILLED
    assert (order.filled_quantity, order.average_execution_price, order.fees) == (D(100), D("10.40"), D("1.00"))
    assert first.fill == FillDelta("e-2", D(30), D("10.00"), D("0.30"))
    assert second.fill == FillDelta("e-3", D(50), D("10.40"), D("0.50"))
    assert last.fill == FillDelta("e-4", D(20), D("11.00"), D("0.20"))
    assert (first.status_changed, second.status_changed, last.status_changed) == (True, False, True)
    assert [e.type for e in order.events] == [
        E.ORDER_ACKNOWLEDGED,
        E.ORDER_PARTIALLY_FILLED,
        E.ORDER_PARTIALLY_FILLED,
        E.ORDER_FILLED,
    ]
    assert order.broker_order_id == "b-1"


def test_average_price_is_weighted_when_the_venue_sends_none() -> None:
    order, venue = routed_order(D(100)), Venue()
    order.apply_report(venue.fill(40, "10", 40, 60, None), T0)
    outcome = order.apply_report(venue.fill(60, "11", 100, 0, None), T0)
    assert order.average_execution_price == D("10.6")
    assert outcome.anomalies == ["avg_px_missing"]


def test_a_duplicate_report_changes_no_quantity_so_the_store_must_dedup_by_execution_id() -> None:
    """Store contract: ``execution_reports.execution_id`` is unique and a report seen before is skipped.

    The aggregate cannot know execution ids it has seen (it keeps none); re-applying the same report books
    nothing (the cumulative quantity did not rise) and is flagged as a contradiction.
    """
    order, venue = routed_order(D(100)), Venue()
    report = venue.fill(30, "10", 30, 70, "10", fees="0.3")
    seen: set[str] = set()

    def deliver(r: ExecutionReportData) -> ReportOutcome | None:  # what the execution handler does
        if r.execution_id in seen:
            return None
        seen.add(r.execution_id)
        return order.apply_report(r, T0)

    assert deliver(report) is not None
    assert deliver(report) is None  # redelivered: skipped by the store's unique execution_id
    assert (order.filled_quantity, order.fees, order.state) == (D(30), D("0.3"), S.PARTIALLY_FILLED)

    again = order.apply_report(report, T0)  # what happens without the store's dedup
    assert (order.filled_quantity, order.average_execution_price, order.state) == (D(30), D(10), S.PARTIALLY_FILLED)
    assert (order.fees, again.fill, again.anomalies) == (D("0.3"), None, ["no_cum_change", "fees_not_booked"])


def test_reports_out_of_order_converge() -> None:
    venue = Venue()
    reports = [
        venue.report(X.NEW, 0, 100),
        venue.fill(20, "10", 20, 80, "10", fees="0.1"),
        venue.fill(30, "12", 50, 50, "11.2", fees="0.1"),
        venue.fill(50, "10", 100, 0, "10.6", fees="0.1"),
    ]
    in_order, reverse = routed_order(D(100)), routed_order(D(100))
    for report in reports:
        in_order.apply_report(report, T0)
    outcomes = [reverse.apply_report(report, T0) for report in reversed(reports)]
    for order in (in_order, reverse):
        assert (order.state, order.filled_quantity, order.average_execution_price, order.unreported_quantity) == (
            S.FILLED,
            D(100),
            D("10.6"),
            D(0),
        )
    # What is booked is the rise of the cumulative quantity: all of it with the report that raised it to 100.
    # Its lastQty (50) cannot explain that rise when it comes, which is recorded; the overtaken fills then
    # account for the difference and book nothing; the late NEW changes nothing.
    assert [o.fill.quantity if o.fill else None for o in outcomes] == [D(100), None, None, None]
    assert [o.anomalies for o in outcomes] == [["last_qty_mismatch"], ["fees_not_booked"], ["fees_not_booked"], []]
    assert [o.unreported_delta for o in outcomes] == [D(50), D(-30), D(-20), D(0)]
    # Fees travel with booked quantity only: the overtaken fills' fees are flagged on their events, not booked.
    assert (in_order.fees, reverse.fees) == (D("0.3"), D("0.1"))
    assert outcomes[-1].applied is False


def test_a_fill_after_a_cancel_request_is_applied_and_the_cancel_still_lands() -> None:
    order, venue = routed_order(D(100)), Venue()
    order.apply_report(venue.report(X.NEW, 0, 100), T0)
    order.request_cancel("c-1", "user", T0, "u-1")
    outcome = order.apply_report(venue.fill(40, "10", 40, 60, "10"), T0)
    assert (order.state, order.status, outcome.fill) == (
        S.PARTIALLY_FILLED,
        OrderStatus.PARTIALLY_FILLED,
        FillDelta("e-2", D(40), D(10), D(0)),
    )
    order.apply_report(venue.report(X.PENDING_CANCEL, 40, 60, request_id="c-1"), T0)
    assert order.state is S.PENDING_CANCEL and order.pending_request is not None
    assert order.pending_request.acknowledged
    order.apply_report(venue.report(X.CANCELED, 40, 0, request_id="c-1", avg_px="10"), T0)
    assert (state_of(order), order.status, order.filled_quantity, pending_of(order)) == (
        S.CANCELED,
        OrderStatus.CANCELED,
        D(40),
        None,
    )


@pytest.mark.parametrize("dead", [S.CANCELED, S.EXPIRED])
def test_a_fill_after_the_order_ended_is_applied_and_recorded(dead: OrderState) -> None:
    order, venue = routed_order(D(100)), Venue()
    order.apply_report(venue.fill(40, "10", 40, 60, "10"), T0)
    order.apply_report(venue.report(X.CANCELED if dead is S.CANCELED else X.EXPIRED, 40, 0), T0)
    assert order.state is dead

    late = order.apply_report(venue.fill(20, "13", 60, 0, "11"), T0)
    assert late.applied and late.fill == FillDelta("e-3", D(20), D(13), D(0))
    assert (order.state, order.filled_quantity, order.average_execution_price) == (dead, D(60), D(11))
    assert order.events[-1].payload["late"] is True and not late.status_changed

    completing = order.apply_report(venue.fill(40, "10", 100, 0, "10.6"), T0)
    assert (order.state, order.status, completing.status_changed) == (S.FILLED, OrderStatus.FILLED, True)
    assert order.events[-1].type is E.ORDER_FILLED


def test_an_overfill_is_recorded_and_flagged_never_raised() -> None:
    order, venue = routed_order(D(100)), Venue()
    order.apply_report(venue.fill(100, "10", 100, 0, "10"), T0)
    outcome = order.apply_report(venue.fill(10, "10", 110, 0, "10"), T0)
    assert outcome.anomalies == ["overfill"] and outcome.fill is not None
    assert (order.state, order.filled_quantity, order.overfilled, order.leaves_quantity) == (
        S.FILLED,
        D(110),
        True,
        D(0),
    )
    types = [e.type for e in order.events]
    assert types[-2:] == [E.OVERFILL_DETECTED, E.EXECUTION_ANOMALY]
    assert order.events[-2].payload["excess"] == D(10)


def test_an_overfill_in_one_report_goes_straight_to_filled() -> None:
    order, venue = routed_order(D(100)), Venue()
    outcome = order.apply_report(venue.fill(120, "10", 120, 0, "10"), T0)
    assert (order.state, order.overfilled, outcome.anomalies) == (S.FILLED, True, ["overfill"])


def test_a_bust_reverses_the_fill_and_reopens_a_filled_order() -> None:
    order, venue = routed_order(D(100)), Venue()
    order.apply_report(venue.fill(40, "10", 40, 60, "10", fees="0.4"), T0)
    order.apply_report(venue.fill(60, "11", 100, 0, "10.6", fees="0.6"), T0)
    assert order.state is S.FILLED

    bust = order.apply_report(
        venue.report(X.TRADE_CANCEL, 40, 60, last_qty=60, last_px="11", avg_px="10", fees="-0.6", exec_ref_id="e-2"),
        T0,
        busted=BookedExecution("e-2", D(60), D(11), D("0.6")),
    )
    assert bust.fill == FillDelta("e-3", D(-60), D(11), D("-0.6"), reversal=True, reverses_execution_id="e-2")
    assert (order.state, order.status, order.filled_quantity, order.average_execution_price, order.fees) == (
        S.PARTIALLY_FILLED,
        OrderStatus.PARTIALLY_FILLED,
        D(40),
        D(10),
        D("0.4"),
    )
    assert bust.status_changed and order.events[-1].type is E.TRADE_BUSTED

    order.apply_report(
        venue.report(X.TRADE_CANCEL, 0, 100, last_qty=40, last_px="10", exec_ref_id="e-1"),
        T0,
        busted=BookedExecution("e-1", D(40), D(10), D("0.4")),
    )
    assert (state_of(order), order.filled_quantity, order.average_execution_price, order.fees) == (
        S.OPEN,
        D(0),
        None,
        D(0),
    )


def test_a_bust_on_a_canceled_order_changes_quantities_not_state() -> None:
    order, venue = routed_order(D(100)), Venue()
    order.apply_report(venue.fill(40, "10", 40, 60, "10"), T0)
    order.apply_report(venue.report(X.CANCELED, 40, 0), T0)
    outcome = order.apply_report(
        venue.report(X.TRADE_CANCEL, 0, 0, last_qty=40, last_px="10", exec_ref_id="e-1"),
        T0,
        busted=BookedExecution("e-1", D(40), D(10), D(0)),
    )
    assert (order.state, order.filled_quantity, outcome.fill is not None) == (S.CANCELED, D(0), True)


def test_ioc_remainder_is_canceled_when_the_venue_leaves_nothing() -> None:
    order, venue = routed_order(D(100), tif=TimeInForce.IOC), Venue()
    outcome = order.apply_report(venue.report(X.PARTIAL_FILL, 30, 0, last_qty=30, last_px="10", avg_px="10"), T0)
    assert (order.state, order.status, order.filled_quantity) == (S.CANCELED, OrderStatus.CANCELED, D(30))
    assert outcome.fill is not None and not outcome.anomalies
    assert [e.type for e in order.events] == [E.ORDER_PARTIALLY_FILLED, E.ORDER_CANCELED]
    # the venue's own CANCELED that may follow is a no-op
    assert order.apply_report(venue.report(X.CANCELED, 30, 0), T0).applied is False


def test_ioc_with_leaves_keeps_working_until_the_venue_ends_it() -> None:
    order, venue = routed_order(D(100), tif=TimeInForce.IOC), Venue()
    order.apply_report(venue.fill(30, "10", 30, 70, "10"), T0)
    assert order.state is S.PARTIALLY_FILLED
    order.apply_report(venue.report(X.CANCELED, 30, 0), T0)
    assert state_of(order) is S.CANCELED


def test_fok_partial_fill_is_an_anomaly_but_quantities_are_followed() -> None:
    order, venue = routed_order(D(100), tif=TimeInForce.FOK), Venue()
    outcome = order.apply_report(venue.report(X.PARTIAL_FILL, 30, 0, last_qty=30, last_px="10", avg_px="10"), T0)
    assert outcome.anomalies == ["fok_partial_fill"]
    assert (order.filled_quantity, order.state) == (D(30), S.CANCELED)
    assert order.events[-1].type is E.EXECUTION_ANOMALY
    full = routed_order(D(100), tif=TimeInForce.FOK)
    assert full.apply_report(Venue().fill(100, "10", 100, 0, "10"), T0).anomalies == []
    assert full.state is S.FILLED


def test_venue_reject_rejects_an_unfilled_order() -> None:
    order, venue = routed_order(D(100)), Venue()
    outcome = order.apply_report(venue.report(X.REJECTED, 0, 0, reason="unknown symbol"), T0)
    assert (order.state, order.status, order.rejection_code, order.rejection_reason) == (
        S.REJECTED,
        OrderStatus.REJECTED,
        "VENUE_REJECTED",
        "unknown symbol",
    )
    assert outcome.status_changed


def test_venue_reject_of_a_partly_filled_order_cancels_the_remainder() -> None:
    order, venue = routed_order(D(100)), Venue()
    order.apply_report(venue.fill(30, "10", 30, 70, "10"), T0)
    outcome = order.apply_report(venue.report(X.REJECTED, 30, 0), T0)
    assert (order.state, outcome.anomalies) == (S.CANCELED, ["venue_reject_after_fill"])


def test_venue_expiry_and_filled_over_canceled() -> None:
    order, venue = routed_order(D(100)), Venue()
    order.apply_report(venue.report(X.EXPIRED, 0, 0), T0)
    assert (order.state, order.status) == (S.EXPIRED, OrderStatus.CANCELED)

    filled = routed_order(D(100))
    venue = Venue()
    filled.apply_report(venue.fill(100, "10", 100, 0, "10"), T0)
    for exec_type in (X.CANCELED, X.EXPIRED, X.REJECTED, X.PENDING_CANCEL):
        assert filled.apply_report(venue.report(exec_type, 100, 0), T0).applied is False
    assert filled.state is S.FILLED


def test_a_cancel_report_carrying_the_full_cum_qty_means_filled() -> None:
    order, venue = routed_order(D(100)), Venue()
    order.apply_report(venue.report(X.CANCELED, 100, 0, avg_px="10"), T0)
    assert (order.state, order.filled_quantity) == (S.FILLED, D(100))


def test_a_late_new_changes_no_state() -> None:
    order, venue = routed_order(D(100)), Venue()
    order.apply_report(venue.fill(30, "10", 30, 70, "10"), T0)
    late = order.apply_report(venue.report(X.NEW, 0, 100), T0)
    assert order.state is S.PARTIALLY_FILLED and late.applied is False


def test_new_ack_records_the_broker_order_id() -> None:
    order, venue = routed_order(D(100)), Venue()
    venue_report = venue.report(X.NEW, 0, 100)
    outcome = order.apply_report(venue_report, T0)
    assert (order.state, order.broker_order_id, outcome.state_changed, outcome.status_changed) == (
        S.OPEN,
        "b-1",
        True,
        True,
    )


def test_replace_below_cum_qty_leaves_the_order_filled_not_overfilled() -> None:
    """D12 with a venue that quotes the requested qty instead of amending it to the cum qty."""
    order, venue = routed_order(D(10000)), Venue()
    order.request_replace("r-1", D(7000), D("110"), None, T0, None)
    order.apply_report(venue.fill(8000, "100", 8000, 2000, "100"), T0)
    outcome = order.apply_report(venue.report(X.REPLACED, 8000, 0, order_qty=7000, request_id="r-1"), T0)
    assert (order.state, order.quantity, order.overfilled, outcome.anomalies) == (S.FILLED, D(8000), False, [])
    assert order.events[-1].payload["amended_to_cum_qty"] is True


def test_cancel_reject_clears_only_the_request_it_answers() -> None:
    order, venue = routed_order(D(100)), Venue()
    order.apply_report(venue.report(X.NEW, 0, 100), T0)
    order.request_replace("r-1", D(90), D("110"), None, T0, None)
    order.apply_report(venue.report(X.PENDING_REPLACE, 0, 100, request_id="r-1"), T0)
    order.request_replace("r-2", D(80), D("110"), None, T0, None)
    # the answer to r-1 leaves r-2 outstanding
    order.apply_report(venue.report(X.REPLACE_REJECTED, 0, 100, request_id="r-1"), T0)
    assert order.state is S.OPEN
    assert order.pending_request is not None and order.pending_request.request_id == "r-2"
    order.apply_report(venue.report(X.REPLACE_REJECTED, 0, 100, request_id="r-2"), T0)
    assert order.pending_request is None and order.state is S.OPEN


def test_a_replace_answer_keeps_a_later_acknowledged_cancel_pending() -> None:
    order, venue = routed_order(D(100)), Venue()
    order.apply_report(venue.report(X.NEW, 0, 100), T0)
    order.request_replace("r-1", D(90), D("110"), None, T0, None)
    order.apply_report(venue.report(X.PENDING_REPLACE, 0, 100, request_id="r-1"), T0)
    order.request_cancel("c-1", None, T0, None)
    order.apply_report(venue.report(X.PENDING_CANCEL, 0, 100, request_id="c-1"), T0)
    assert order.state is S.PENDING_CANCEL
    order.apply_report(venue.report(X.REPLACED, 0, 90, order_qty=90, price="110", request_id="r-1"), T0)
    assert (order.state, order.quantity) == (S.PENDING_CANCEL, D(90))
    order.apply_report(venue.report(X.CANCELED, 0, 0, request_id="c-1"), T0)
    assert state_of(order) is S.CANCELED


def test_a_replace_confirmed_without_terms_uses_the_request() -> None:
    order, venue = routed_order(D(100)), Venue()
    order.request_replace("r-1", D(90), D("108"), None, T0, None)
    outcome = order.apply_report(venue.report(X.REPLACED, 0, 90, request_id="r-1", price=None), T0)
    assert (order.quantity, order.price, order.state, outcome.anomalies) == (D(90), D("108"), S.OPEN, [])


def test_stop_limit_replace_terms_follow_the_venue() -> None:
    order = routed_order(D(100), price=D("110"), type=OrderType.LIMIT)
    venue = Venue()
    order.request_replace("r-1", D(100), D("109"), None, T0, None)
    order.apply_report(venue.report(X.REPLACED, 0, 100, order_qty=100, price="109", request_id="r-1"), T0)
    assert order.price == D("109") and order.pending_request is None


def test_a_pending_report_arriving_after_its_answer_leaves_the_order_working() -> None:
    order = routed_order()
    venue = Venue()
    order.apply_report(venue.report(X.NEW, 0, 10000), T0)
    order.request_replace("r-1", D(12000), D("110"), None, T0, "u-1")
    order.apply_report(venue.report(X.REPLACED, 0, 12000, order_qty=12000, price="110", request_id="r-1"), T0)
    assert (order.state, order.quantity, order.pending_request) == (S.OPEN, D(12000), None)
    order.apply_report(venue.report(X.PENDING_REPLACE, 0, 12000, request_id="r-1"), T0)  # overtaken on the way
    assert order.state is S.OPEN
    order.request_cancel("c-1", "done", T0, "u-1")
    order.apply_report(venue.report(X.CANCELED, 0, 0, request_id="c-1"), T0)
    order.apply_report(venue.report(X.PENDING_CANCEL, 0, 0, request_id="c-1"), T0)
    assert state_of(order) is S.CANCELED
