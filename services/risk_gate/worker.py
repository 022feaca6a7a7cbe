"""The risk gate stage: ``RiskCheck`` from ``oms``/``risk.check``."""

from __future__ import annotations

from common.contracts import RiskCheckSchema
from common.runtime.stage import StageSpec
from services.risk_gate.handlers import handle_risk_check

SPEC = StageSpec(stage="risk_gate", schemas={"risk.check": RiskCheckSchema()}, handler=handle_risk_check)
