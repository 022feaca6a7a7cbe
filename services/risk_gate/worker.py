"""The risk gate stage: ``RiskCheck`` from ``oms``/``risk.check``, checked a batch at a time, and beside it the
reference price feed (``marketdata``) that keeps the prices the checks value orders at fresh."""

from __future__ import annotations

from sqlalchemy import Engine

from common.config import Settings
from common.contracts import RiskCheckSchema
from common.runtime.stage import StageSpec
from services.risk_gate.handlers import configured_price_settings, handle_risk_check, prepare_checks
from services.risk_gate.prices import ReferencePriceConsumer


def price_feed(settings: Settings, engine: Engine) -> ReferencePriceConsumer:
    """The stage's companion: the reference price feed consumer."""
    configured_price_settings()  # a bad OMS_RISK_* setting stops the process now, not at the first order
    return ReferencePriceConsumer(engine, settings.amqp_url)


SPEC = StageSpec(
    stage="risk_gate",
    schemas={"risk.check": RiskCheckSchema()},
    handler=handle_risk_check,
    prepare=prepare_checks,
    companions=(price_feed,),
)
