"""The execution handler: apply a venue execution report to its order and hand each fill to settlement.

Per report: record it in ``execution_reports`` (a report whose ``executionId`` was seen before is a
duplicate and changes nothing); apply it to the order (FIX semantics live in ``Order.apply_report``); save the
order, which announces an ``OrderUpdate`` carrying the execution for fill reports; hand the fill to settlement
as a ``FillBooked``; and mark the OMS request the report answers.

FillBooked sign convention (shared with settlement): ``quantity``, ``price`` and ``fees`` are the
execution's own terms with a positive quantity. A bust (TRADE_CANCEL) hands over ``reversal: true`` with
``executionId`` = the busted execution and its terms, meaning "undo that execution". In
``execution_reports`` a TRADE_CANCEL row stores the reversed quantity as a negative number (and its fees as
reported: a refund is negative, as ``Order.apply_report`` adds them), so an order's rows sum to what stands.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from common.domain import ExecType, ExecutionReportData, FillDelta, Order
from common.messaging.envelope import Envelope
from common.messaging.topology import OMS_EXCHANGE
from common.runtime.stage import DeadLetter
from common.store.executions_repo import ExecutionReportRepository
from common.store.requests_repo import REQUEST_ACCEPTED, REQUEST_DONE, REQUEST_REJECTED, answer_request
from common.store.uow import UnitOfWork

log = logging.getLogger(__name__)

SETTLEMENT_FILL_KEY = "settlement.fill"
_ZERO = Decimal(0)

# What a report does to the OMS request it names (requestId).
_REQUEST_STATUS: dict[ExecType, str] = {
    ExecType.NEW: REQUEST_ACCEPTED,
    ExecType.PENDING_CANCEL: REQUEST_ACCEPTED,
    ExecType.PENDING_REPLACE: REQUEST_ACCEPTED,
    ExecType.CANCELED: REQUEST_DONE,
    ExecType.REPLACED: REQUEST_DONE,
    ExecType.CANCEL_REJECTED: REQUEST_REJECTED,
    ExecType.REPLACE_REJECTED: REQUEST_REJECTED,
    ExecType.REJECTED: REQUEST_REJECTED,
}


def report_from_body(body: dict[str, Any]) -> ExecutionReportData:
    """The domain's view of a validated ``ExecutionReport`` body (snake_case keys, Decimal numbers)."""
    return ExecutionReportData(
        execution_id=body["execution_id"],
        order_id=body["order_id"],
        request_id=body.get("request_id"),
        broker_order_id=body.get("broker_order_id"),
        exec_type=ExecType(body["exec_type"]),
        last_qty=body.get("last_qty") or _ZERO,
        last_px=body.get("last_px"),
        cum_qty=body["cum_qty"],
        leaves_qty=body["leaves_qty"],
        avg_px=body.get("avg_px"),
        order_qty=body.get("order_qty"),
        price=body.get("price"),
        stop_price=body.get("stop_price"),
        fees=body.get("fees") or _ZERO,
        venue=body.get("venue"),
        timestamp=body["timestamp"],
        reason=body.get("reason"),
        exec_ref_id=body.get("exec_ref_id"),
    )


def handle(uow: UnitOfWork, env: Envelope) -> None:
    """Apply one execution report (the runtime has claimed the inbox row and locked the order)."""
    report = report_from_body(env.body)
    now = datetime.now(UTC)
    order = uow.orders.get(report.order_id, for_update=True)
    if order is None:
        raise DeadLetter(f"unknown order {report.order_id}")

    bust = report.exec_type is ExecType.TRADE_CANCEL
    executions = uow.executions
    row_id = executions.record(
        report,
        quantity=_ZERO - report.last_qty if bust else report.last_qty,
        price=report.last_px if report.last_px is not None else _ZERO,
        received_at=now,
    )
    if row_id is None:
        log.info("duplicate execution report skipped", extra={"execution_id": report.execution_id})
        return
    if bust and not _flag_busted(executions, report):
        return

    outcome = order.apply_report(report, now)
    latest = _latest_execution(row_id, outcome.fill, report) if outcome.fill is not None else None
    uow.orders.save(
        order,
        correlation_id=env.correlation_id or order.id,
        message_id=env.message_id,
        user_id=env.user_id,
        latest_execution=latest,
    )
    if outcome.fill is not None:
        _hand_to_settlement(uow, order, report, outcome.fill)
    if report.request_id is not None and report.exec_type in _REQUEST_STATUS:
        _answer_request(uow, report, now)
    if outcome.anomalies:
        log.warning(
            "execution report anomaly",
            extra={
                "order_id": order.id,
                "execution_id": report.execution_id,
                "exec_type": report.exec_type.value,
                "anomalies": outcome.anomalies,
                "state": order.state.value,
            },
        )


def _flag_busted(executions: ExecutionReportRepository, report: ExecutionReportData) -> bool:
    """Mark the busted execution; False when it was busted already (the second bust must not apply)."""
    if report.exec_ref_id is None:
        return True  # the domain records the missing reference as an anomaly
    flagged = executions.mark_busted(report.order_id, report.exec_ref_id)
    if flagged is False:
        log.warning(
            "execution already busted; bust recorded, not applied",
            extra={"order_id": report.order_id, "exec_ref_id": report.exec_ref_id},
        )
        return False
    if flagged is None:
        # The venue is the authority on cumulative quantities: apply the bust, but say so.
        log.warning(
            "bust of an execution this OMS never recorded",
            extra={"order_id": report.order_id, "exec_ref_id": report.exec_ref_id},
        )
    return True


def _latest_execution(row_id: str, fill: FillDelta, report: ExecutionReportData) -> dict[str, Any]:
    """The spec's ``ExecutionReport`` for the OrderUpdate (a bust carries its negative quantity)."""
    return {
        "id": row_id,
        "executionId": report.execution_id,
        "quantity": fill.quantity,
        "price": fill.price,
        "timestamp": report.timestamp,
        "fees": fill.fees,
        "venue": report.venue,
    }


def fill_booked_body(order: Order, report: ExecutionReportData, fill: FillDelta) -> dict[str, Any]:
    """The FillBooked for settlement: the execution's own terms, ``reversal`` to undo a busted one."""
    if fill.reversal:
        # The bust's delta is negative (quantity and fee refund); settlement wants the busted terms.
        execution_id = fill.reverses_execution_id or fill.execution_id
        quantity, fees = _ZERO - fill.quantity, _ZERO - fill.fees
    else:
        execution_id, quantity, fees = fill.execution_id, fill.quantity, fill.fees
    return {
        "orderId": order.id,
        "executionId": execution_id,
        "accountId": order.account_id,
        "symbol": order.symbol,
        "side": order.side.value,
        "quantity": quantity,
        "price": fill.price,
        "fees": fees,
        "venue": report.venue,
        "timestamp": report.timestamp,
        "reversal": fill.reversal,
    }


def _hand_to_settlement(uow: UnitOfWork, order: Order, report: ExecutionReportData, fill: FillDelta) -> None:
    uow.outbox.add(OMS_EXCHANGE, SETTLEMENT_FILL_KEY, "FillBooked", fill_booked_body(order, report, fill), order.id)


def _answer_request(uow: UnitOfWork, report: ExecutionReportData, now: datetime) -> None:
    assert report.request_id is not None
    status = _REQUEST_STATUS[report.exec_type]
    reason = report.reason if status == REQUEST_REJECTED else None
    if not answer_request(uow.connection, report.order_id, report.request_id, status, reason, now):
        log.info(
            "no open order request to answer",
            extra={"request_id": report.request_id, "exec_type": report.exec_type.value},
        )
