"""The execution handler stage: venue execution reports (``execution.report``) applied to orders."""

from __future__ import annotations

from common.messages.catalogue import EXECUTION_REPORT
from common.messaging.envelope import Envelope
from common.orders.ports import AbstractUnitOfWork
from common.runtime.stage import StageSpec
from services.execution_handler.handlers import answered_request_ids, handle_execution_report


def prefetch_executions(uow: AbstractUnitOfWork, envelopes: list[Envelope]) -> None:
    """One look-up for the whole batch's execution ids, one for the requests its reports answer: duplicates are
    then told apart, and answers checked, without a round trip per report."""
    uow.executions.prefetch(e.body["execution_id"] for e in envelopes)
    request_ids = answered_request_ids(e.body for e in envelopes)
    if request_ids:
        uow.requests.prefetch(request_ids)


SPEC = StageSpec(
    stage="execution_handler",
    handlers={EXECUTION_REPORT: handle_execution_report},
    prepare=prefetch_executions,
)
