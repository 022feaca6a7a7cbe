"""Risk gate: approve an order and hand it to the router, or reject it with the rule it broke."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import lru_cache

from common.domain import OrderState
from common.messaging.envelope import Envelope
from common.messaging.topology import OMS_EXCHANGE
from common.runtime.stage import DeadLetter
from common.store.uow import UnitOfWork
from services.intake.commands import ROUTE_NEW_KEY, USER_HEADER
from services.risk_gate.checks import RiskContext, RiskLimits, run_checks

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def configured_limits() -> RiskLimits:
    """The process's limits, read once from the environment."""
    return RiskLimits.from_env()


def check_order(uow: UnitOfWork, env: Envelope, limits: RiskLimits) -> None:
    """Check the order named by a ``RiskCheck`` at the version it names."""
    order_id: str = env.body["order_id"]
    version: int = env.body["version"]
    order = uow.orders.get(order_id, for_update=True)
    if order is None:
        raise DeadLetter(f"unknown order {order_id}")
    if order.version != version or order.state is not OrderState.NEW:
        # A modify re-sent the order at a newer version, or it was canceled: this check is stale.
        log.info(
            "stale risk check skipped",
            extra={"version": version, "order_version": order.version, "state": order.state.value},
        )
        return
    ctx = RiskContext(
        order=order,
        account=uow.reference.account(order.account_id),
        instrument=uow.reference.instrument(order.symbol),
        limits=limits,
    )
    result = run_checks(ctx)
    now = datetime.now(UTC)
    if result.violation is not None:
        order.reject(result.violation.code, result.violation.message, now)
        log.info("order rejected by risk", extra={"code": result.violation.code})
    else:
        order.approve(result.checks, now)
    uow.orders.save(order, correlation_id=env.correlation_id or order.id, message_id=env.message_id)
    if order.state is OrderState.APPROVED:
        headers = {USER_HEADER: env.user_id} if env.user_id else {}
        uow.outbox.add(OMS_EXCHANGE, ROUTE_NEW_KEY, "RouteNew", {"orderId": order.id}, order.id, headers=headers)


def handle_risk_check(uow: UnitOfWork, env: Envelope) -> None:
    """The stage handler: check with the configured limits."""
    check_order(uow, env, configured_limits())
