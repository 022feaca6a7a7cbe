"""The execution reports repository on every backend: duplicates told apart, what a bust reverses."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from common.domain import ExecType, FillDelta, Order
from tests.contract.backends import UowFactory
from tests.support.orders import create_order, execution_report, mark_routed

D = Decimal


def _routed_order(uow_factory: UowFactory) -> Order:
    order = mark_routed(create_order(), datetime.now(UTC))
    with uow_factory() as uow:
        uow.orders.add(order, correlation_id=None, message_id=None)
        uow.commit()
    return order


def test_a_recorded_report_is_known_in_its_transaction_and_after(uow_factory: UowFactory) -> None:
    order = _routed_order(uow_factory)
    report = execution_report(
        order.id, ExecType.PARTIAL_FILL, last_qty=D("40"), last_px=D("190.10"), cum_qty=D("40"), leaves_qty=D("60")
    )
    fill = FillDelta(report.execution_id, D("40"), D("190.10"), D("1.5"))
    with uow_factory() as uow:
        uow.executions.prefetch([report.execution_id, str(uuid.uuid4())])
        assert uow.executions.known(report.execution_id) is None
        row_id = uow.executions.record(report, booked=fill, unreported_delta=D(0), received_at=datetime.now(UTC))
        assert row_id
        stored = uow.executions.known(report.execution_id)
        assert stored is not None and stored.differences(report) == []
        uow.commit()
    with uow_factory() as uow:
        uow.executions.prefetch([report.execution_id])
        stored = uow.executions.known(report.execution_id)
        assert stored is not None
        assert (stored.order_id, stored.exec_type, stored.last_qty, stored.cum_qty) == (
            order.id,
            "PARTIAL_FILL",
            D("40"),
            D("40"),
        )
        assert stored.differences(report) == []
        other = execution_report(
            order.id,
            ExecType.PARTIAL_FILL,
            execution_id=report.execution_id,
            last_qty=D("41"),
            last_px=D("190.10"),
            cum_qty=D("41"),
            leaves_qty=D("59"),
        )
        assert stored.differences(other) == ["lastQty", "cumQty"]


def test_booked_is_what_the_execution_booked_and_a_bust_marks_it(uow_factory: UowFactory) -> None:
    order = _routed_order(uow_factory)
    trade = execution_report(
        order.id, ExecType.PARTIAL_FILL, last_qty=D("40"), last_px=D("190.10"), cum_qty=D("40"), leaves_qty=D("60")
    )
    with uow_factory() as uow:
        fill = FillDelta(trade.execution_id, D("40"), D("190.10"), D("1.5"))
        uow.executions.record(trade, booked=fill, unreported_delta=D(0), received_at=datetime.now(UTC))
        booked = uow.executions.booked(order.id, trade.execution_id)  # in the same batch as the trade
        assert booked is not None and (booked.quantity, booked.price, booked.fees, booked.busted) == (
            D("40"),
            D("190.10"),
            D("1.5"),
            False,
        )
        uow.commit()
    bust = execution_report(
        order.id,
        ExecType.TRADE_CANCEL,
        exec_ref_id=trade.execution_id,
        last_qty=D("40"),
        last_px=D("190.10"),
        cum_qty=D("0"),
        leaves_qty=D("100"),
    )
    with uow_factory() as uow:
        assert uow.executions.booked(str(uuid.uuid4()), trade.execution_id) is None  # not that order's
        assert uow.executions.booked(order.id, str(uuid.uuid4())) is None
        reversal = FillDelta(bust.execution_id, D("-40"), D("190.10"), D("-1.5"), True, trade.execution_id)
        uow.executions.record(bust, booked=reversal, unreported_delta=D(0), received_at=datetime.now(UTC))
        uow.executions.mark_busted(order.id, trade.execution_id)
        marked = uow.executions.booked(order.id, trade.execution_id)
        assert marked is not None and marked.busted
        assert uow.executions.booked(order.id, bust.execution_id) is None  # a bust is not a booked execution
        uow.rollback()
        unmarked = uow.executions.booked(order.id, trade.execution_id)
        assert unmarked is not None and not unmarked.busted  # the rollback took the mark back
        assert uow.executions.known(bust.execution_id) is None
        uow.executions.record(bust, booked=reversal, unreported_delta=D(0), received_at=datetime.now(UTC))
        uow.executions.mark_busted(order.id, trade.execution_id)
        uow.commit()
    with uow_factory() as uow:
        marked = uow.executions.booked(order.id, trade.execution_id)
        assert marked is not None and marked.busted


def test_a_report_without_a_booking_records_what_it_said(uow_factory: UowFactory) -> None:
    order = _routed_order(uow_factory)
    ack = execution_report(order.id, ExecType.NEW, cum_qty=D("0"), leaves_qty=D("100"))
    with uow_factory() as uow:
        uow.executions.record(ack, booked=None, unreported_delta=D(0), received_at=datetime.now(UTC))
        uow.commit()
    with uow_factory() as uow:
        stored = uow.executions.known(ack.execution_id)
        assert stored is not None and (stored.exec_type, stored.last_qty) == ("NEW", D("0"))
        booked = uow.executions.booked(order.id, ack.execution_id)
        assert booked is not None and booked.quantity == D("0")
