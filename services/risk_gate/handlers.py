"""Risk gate: approve an order and hand it to the router, or reject it with the rule it broke and the figures.

The stage worker (``services.risk_gate.worker``) prepares each batch once (``store.prepare_batch``: account
locks and every query) and publishes it to the handler through ``current_batch``; a handler called on its
own (tests, tools) prepares for its single order. Limits, halts and restrictions are read in every batch's
transaction, so a change made while the gate runs applies to the next batch.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache

from common.domain import Order, OrderEventType, OrderState
from common.messaging.envelope import Envelope
from common.messaging.topology import OMS_EXCHANGE
from common.runtime.stage import DeadLetter
from common.store.uow import UnitOfWork
from services.intake.commands import ROUTE_NEW_KEY, USER_HEADER
from services.risk_gate.prices import PriceSettings
from services.risk_gate.rules import OrderTerms, RiskDecision, evaluate
from services.risk_gate.store import RiskBatch, prepare_batch

log = logging.getLogger(__name__)

_CURRENT_BATCH: ContextVar[RiskBatch | None] = ContextVar("oms_risk_batch", default=None)


@lru_cache(maxsize=1)
def configured_price_settings() -> PriceSettings:
    """The process's reference-price settings, read once from the environment."""
    return PriceSettings.from_env()


@contextmanager
def current_batch(batch: RiskBatch) -> Iterator[None]:
    """Make ``batch`` the one the handler uses for the orders it covers (the worker wraps each batch)."""
    token = _CURRENT_BATCH.set(batch)
    try:
        yield
    finally:
        _CURRENT_BATCH.reset(token)


def prepare(uow: UnitOfWork, order_ids: Collection[str], price_settings: PriceSettings | None = None) -> RiskBatch:
    """Lock the orders' accounts and load what the rules need, in the unit of work's transaction."""
    return prepare_batch(uow.connection, order_ids, datetime.now(UTC), price_settings or configured_price_settings())


def _annotate(order: Order, event_type: OrderEventType, details: Mapping[str, object]) -> None:
    """Add the rule, the figures and the reference price to the event the command just recorded.

    ``Order.approve``/``Order.reject`` take no details yet; until they do, the gate completes the payload of
    the event it has just caused (the event is not persisted before ``uow.orders.save``).
    """
    event = order.events[-1] if order.events else None
    if event is None or event.type is not event_type:
        raise RuntimeError(f"expected a {event_type} event on order {order.id}")
    event.payload.update(details)


def apply_decision(uow: UnitOfWork, env: Envelope, order: Order, decision: RiskDecision, batch: RiskBatch) -> None:
    """Approve (and hand to the router) or reject the order, recording why."""
    now = datetime.now(UTC)
    reference = decision.quote.as_payload() if decision.quote is not None else None
    violation = decision.violation
    if violation is not None:
        order.reject(violation.code, violation.message, now)
        _annotate(
            order,
            OrderEventType.ORDER_REJECTED,
            {
                "rule": violation.rule,
                "field": violation.field,
                "figures": dict(violation.figures),
                "checks": decision.checks,
                "reference_price": reference,
            },
        )
        log.info(
            "order rejected by risk",
            extra={"code": violation.code, "rule": violation.rule, "reason": violation.message},
        )
    else:
        order.approve(decision.checks, now)
        limits = batch.limits_of(order.account_id).enabled()
        _annotate(order, OrderEventType.RISK_APPROVED, {"reference_price": reference, "limits": limits})
        batch.record_approval(OrderTerms.of(order), decision.quote)
    uow.orders.save(order, correlation_id=env.correlation_id or order.id, message_id=env.message_id)
    if order.state is OrderState.APPROVED:
        headers = {USER_HEADER: env.user_id} if env.user_id else {}
        uow.outbox.add(OMS_EXCHANGE, ROUTE_NEW_KEY, "RouteNew", {"orderId": order.id}, order.id, headers=headers)


def load_checkable(uow: UnitOfWork, env: Envelope) -> Order | None:
    """The order a ``RiskCheck`` names, locked; None when the check is stale (a newer version, or not NEW)."""
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
        return None
    return order


def check_order(uow: UnitOfWork, env: Envelope, batch: RiskBatch) -> None:
    """Check the order named by a ``RiskCheck`` at the version it names, with the batch's data."""
    order = load_checkable(uow, env)
    if order is None:
        return
    decision = evaluate(batch.input_for(OrderTerms.of(order), datetime.now(UTC)))
    apply_decision(uow, env, order, decision, batch)


def handle_risk_check(uow: UnitOfWork, env: Envelope) -> None:
    """The stage handler: check with the batch the worker prepared, or prepare for this order alone."""
    order_id: str = env.body["order_id"]
    batch = _CURRENT_BATCH.get()
    if batch is None or not batch.covers(order_id):
        batch = prepare(uow, [order_id])
    check_order(uow, env, batch)


def check_replace_terms(
    uow: UnitOfWork,
    order: Order,
    quantity: Decimal,
    price: Decimal | None,
    stop_price: Decimal | None,
    price_settings: PriceSettings | None = None,
) -> RiskDecision:
    """The rules on the new terms of a replace of an order at the venue: its exposure is counted at the new
    terms instead of the old. (Wiring it into the replace flow needs the changes listed in the report.)"""
    batch = prepare(uow, [order.id], price_settings)
    current = OrderTerms.of(order)
    proposed = replace(current, quantity=quantity, price=price, stop_price=stop_price)
    return evaluate(batch.input_for(proposed, datetime.now(UTC), replacing=current))
