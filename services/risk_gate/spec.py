"""The risk gate stage: ``RiskCheck`` from ``oms``/``risk.check``, checked a batch at a time, and beside it the
reference price feed (``marketdata``) that keeps the prices the checks value orders at fresh. With
``OMS_RISK_SERVICE_ENABLED``, each batch is also put to the Risk Analysis Service before its transaction."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from sqlalchemy import Engine

from common.messages.catalogue import RISK_CHECK
from common.runtime.stage import StageSpec
from common.settings import Settings
from services.risk_gate.assessments import RiskServiceGate
from services.risk_gate.handlers import handle_risk_check, prepare_checks
from services.risk_gate.prices import PriceSettings, ReferencePriceConsumer
from services.risk_gate.risk_service import RiskServiceClient, RiskServiceConfig


def price_feed(settings: Settings, engine: Engine) -> ReferencePriceConsumer:
    """The stage's companion: the reference price feed consumer."""
    return ReferencePriceConsumer(engine, settings.infra.amqp_urls)


SPEC = StageSpec(
    stage="risk_gate",
    handlers={RISK_CHECK: handle_risk_check},
    prepare=prepare_checks,
    companions=(price_feed,),
)


def risk_service_gate(settings: Settings) -> RiskServiceGate | None:
    """The Risk Analysis Service's client, when enabled (its token file is read now: a bad one stops the start)."""
    if not settings.risk.service_enabled:
        return None
    return RiskServiceGate(RiskServiceClient(RiskServiceConfig.of(settings.risk, settings.tls.ca_file)))


def stage_spec(settings: Settings, risk_service: RiskServiceGate | None = None) -> StageSpec:
    """The stage as the process runs it: checking against the configured reference-price settings, and asking
    the Risk Analysis Service when it is enabled (``risk_service``: the one to use, else built from settings)."""
    prices = PriceSettings.of(settings.risk)
    gate = risk_service if risk_service is not None else risk_service_gate(settings)
    return replace(
        SPEC,
        handlers={RISK_CHECK: partial(handle_risk_check, price_settings=prices, risk_service=gate)},
        prepare=partial(prepare_checks, price_settings=prices),
        before_transaction=gate.before_transaction if gate is not None else None,
    )
