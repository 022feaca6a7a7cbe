"""The execution handler: apply a venue execution report to its order and hand what it booked to settlement.

Per report: a report whose ``executionId`` was seen before is a resend and changes nothing, unless its terms
differ, which is recorded on the order as an anomaly (nothing applied). A bust must name an execution of the
order (else the report is dead-lettered at once: there is nothing it can reverse). Then the report is applied
to the order (FIX semantics and the booking rule live in ``Order.apply_report``), recorded in
``execution_reports`` with what it booked, and the order saved, which announces an ``OrderUpdate``; what it
booked goes to settlement as a ``FillBooked``; the OMS request the report answers is marked.

Round trips: the stage's ``prepare`` (spec.py) looks up the batch's execution ids and the requests its reports
answer, each in one statement; everything a report changes is buffered and written at commit, one statement per
table for the whole batch. Only a bust reads and writes on its own (it needs the busted execution's row).

The booking rule (docs/design.md): what is booked for an order is exactly the rise of its cumulative filled
quantity, priced by the report; a bust books the reversal of what the busted execution booked. Every
contradiction is an ``EXECUTION_ANOMALY`` event, a metric and a WARNING log line, never a silent drop.

FillBooked sign convention (shared with settlement): ``quantity``, ``price`` and ``fees`` are the booked
terms with a positive quantity. A bust hands over ``reversal: true`` with ``executionId`` = the busted
execution and its booked terms, meaning "undo that execution". In ``execution_reports`` a TRADE_CANCEL row
stores the reversed quantity and fees as negative numbers, so an order's rows sum to what stands.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from common.domain import ExecType, ExecutionReportData, Order
from common.messages.bodies import fill_booked_body, latest_execution_body
from common.messages.catalogue import FILL_BOOKED
from common.messaging.envelope import Envelope
from common.metrics import EXECUTION_ANOMALIES
from common.orders.ports import AbstractUnitOfWork
from common.orders.records import REQUEST_ACCEPTED, REQUEST_DONE, REQUEST_REJECTED
from common.runtime.stage import DeadLetter

log = logging.getLogger(__name__)

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


def handle_execution_report(uow: AbstractUnitOfWork, env: Envelope) -> None:
    """Apply one execution report (the runtime has claimed the inbox row and locked the order)."""
    report = report_from_body(env.body)
    now = datetime.now(UTC)
    order = uow.orders.get(report.order_id, for_update=True)
    if order is None:
        raise DeadLetter(f"unknown order {report.order_id}")

    executions = uow.executions
    stored = executions.known(report.execution_id)
    if stored is not None:
        differences = stored.differences(report)
        if not differences:
            log.debug("duplicate execution report skipped", extra={"execution_id": report.execution_id})
            return
        # The same id for other terms: which one is true cannot be known, so the first stands and this is shown.
        order.record_anomaly(report.execution_id, ["execution_id_reused"], now, {"differences": differences})
        uow.orders.save(order, correlation_id=env.correlation_id or order.id, message_id=env.message_id)
        _report_anomalies(uow, order, report, ["execution_id_reused"], {"differences": differences})
        return

    busted = None
    if report.exec_type is ExecType.TRADE_CANCEL:
        if report.exec_ref_id is None:
            raise DeadLetter("TRADE_CANCEL without execRefId: it names no execution to reverse")
        busted = executions.booked(order.id, report.exec_ref_id)
        if busted is None:
            raise DeadLetter(f"TRADE_CANCEL of execution {report.exec_ref_id}, which order {order.id} never had")

    outcome = order.apply_report(report, now, busted=busted)
    row_id = executions.record(report, booked=outcome.fill, unreported_delta=outcome.unreported_delta, received_at=now)
    if outcome.fill is not None and outcome.fill.reversal and busted is not None:
        executions.mark_busted(order.id, busted.execution_id)
    latest = latest_execution_body(row_id, outcome.fill, report) if outcome.fill is not None else None
    uow.orders.save(
        order,
        correlation_id=env.correlation_id or order.id,
        message_id=env.message_id,
        user_id=env.user_id,
        latest_execution=latest,
    )
    # Every applied report, with what it did, at DEBUG: the repository logs a change of state at INFO.
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "execution report applied",
            extra={
                "execution_id": report.execution_id,
                "exec_type": report.exec_type.value,
                "state": order.state.value,
                "filled_quantity": str(order.filled_quantity),
                "booked_quantity": None if outcome.fill is None else str(outcome.fill.quantity),
            },
        )
    if outcome.fill is not None:
        FILL_BOOKED.send(uow.outbox, fill_booked_body(order, report, outcome.fill), order.id)
    if report.request_id is not None and report.exec_type in _REQUEST_STATUS:
        _answer_request(uow, report, now)
    if outcome.anomalies:
        booked = outcome.fill.quantity if outcome.fill is not None else _ZERO
        _report_anomalies(uow, order, report, outcome.anomalies, {"booked_quantity": str(booked)})


def _report_anomalies(
    uow: AbstractUnitOfWork, order: Order, report: ExecutionReportData, anomalies: list[str], details: dict[str, Any]
) -> None:
    """Make a contradiction visible once it is committed: a metric per anomaly and a WARNING line (the event is
    on the order). After the commit, so a batch retried message by message does not count it twice."""
    extra = {
        "order_id": order.id,
        "execution_id": report.execution_id,
        "exec_type": report.exec_type.value,
        "anomalies": list(anomalies),
        "state": order.state.value,
        **details,
    }

    def announce() -> None:
        for anomaly in anomalies:
            EXECUTION_ANOMALIES.labels(anomaly.split(":", 1)[0]).inc()
        log.warning("execution report anomaly", extra=extra)

    uow.after_commit(announce)


def answered_request_ids(bodies: Iterable[Mapping[str, Any]]) -> list[str]:
    """The ids of the OMS requests these (loaded) report bodies answer, for one look-up per batch."""
    return [
        request_id
        for body in bodies
        if (request_id := body.get("request_id")) is not None and ExecType(body["exec_type"]) in _REQUEST_STATUS
    ]


def _answer_request(uow: AbstractUnitOfWork, report: ExecutionReportData, now: datetime) -> None:
    assert report.request_id is not None
    status = _REQUEST_STATUS[report.exec_type]
    reason = report.reason if status == REQUEST_REJECTED else None
    if not uow.requests.answer(report.order_id, report.request_id, status, reason, now):
        log.debug(
            "no open order request to answer",
            extra={"request_id": report.request_id, "exec_type": report.exec_type.value},
        )
