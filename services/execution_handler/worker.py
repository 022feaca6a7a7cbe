"""The execution handler stage: venue execution reports (``execution.report``) applied to orders."""

from __future__ import annotations

from common.contracts import ExecutionReportSchema
from common.messaging.envelope import Envelope
from common.runtime.stage import StageSpec
from common.store.requests_repo import RequestRepository
from common.store.uow import UnitOfWork
from services.execution_handler.handlers import answered_request_ids, handle


def prefetch_executions(uow: UnitOfWork, envelopes: list[Envelope]) -> None:
    """One look-up for the whole batch's execution ids, one for the requests its reports answer: duplicates are
    then told apart, and answers checked, without a round trip per report."""
    uow.executions.prefetch(e.body["execution_id"] for e in envelopes)
    request_ids = answered_request_ids(e.body for e in envelopes)
    if request_ids:
        uow.repository(RequestRepository).prefetch(request_ids)


SPEC = StageSpec(
    stage="execution_handler",
    schemas={"execution.report": ExecutionReportSchema()},
    handler=handle,
    prepare=prefetch_executions,
)
