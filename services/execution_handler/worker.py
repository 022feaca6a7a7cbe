"""The execution handler stage: venue execution reports (``execution.report``) applied to orders."""

from __future__ import annotations

from common.contracts import ExecutionReportSchema
from common.messaging.envelope import Envelope
from common.runtime.stage import StageSpec
from common.store.uow import UnitOfWork
from services.execution_handler.handlers import handle


def prefetch_executions(uow: UnitOfWork, envelopes: list[Envelope]) -> None:
    """One look-up for the whole batch's execution ids: duplicates are then told apart without a round trip."""
    uow.executions.prefetch(e.body["execution_id"] for e in envelopes)


SPEC = StageSpec(
    stage="execution_handler",
    schemas={"execution.report": ExecutionReportSchema()},
    handler=handle,
    prepare=prefetch_executions,
)
