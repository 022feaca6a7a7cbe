"""The intake stage: trade decisions from ``oms``/``intake.decision``."""

from __future__ import annotations

from common.contracts import TradeDecisionSchema
from common.runtime.stage import StageSpec
from services.intake.handlers import handle_decision

SPEC = StageSpec(stage="intake", schemas={"intake.decision": TradeDecisionSchema()}, handler=handle_decision)
