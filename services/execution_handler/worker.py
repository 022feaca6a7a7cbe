"""The execution handler stage: venue execution reports (``execution.report``) applied to orders."""

from __future__ import annotations

from common.contracts import ExecutionReportSchema
from common.runtime.stage import StageSpec
from services.execution_handler.handlers import handle

SPEC = StageSpec(
    stage="execution_handler",
    schemas={"execution.report": ExecutionReportSchema()},
    handler=handle,
)
