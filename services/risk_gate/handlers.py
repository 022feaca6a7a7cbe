"""Risk gate: approve an order and hand it to the router, or reject it with the rule it broke and the figures.

Two kinds of ``RiskCheck``: ``{orderId, version}`` checks a NEW order at that version; ``{orderId, version,
requestId}`` checks the new terms of a replace of an order at the venue (recorded by the modify as a PENDING
``order_requests`` row). An approved replace goes on to the router (``RouteReplace``); a refused one never
reaches the venue: its request row is REJECTED and the order, unchanged, forgets it.

The stage's ``prepare`` hook (``prepare_checks``) prepares each batch once (``store.prepare_batch``: account
locks and every query) for the handler; a handler called on its own (tests, tools) prepares for its single
order. Limits, halts and restrictions are read in every batch's transaction, so a change made while the gate
runs applies to the next batch.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from weakref import WeakKeyDictionary

from sqlalchemy import RootTransaction

from common.domain import Order, OrderState, RequestKind
from common.domain.lifecycle import AT_VENUE
from common.messaging.envelope import Envelope
from common.messaging.topology import OMS_EXCHANGE
from common.metrics import RISK_REJECTIONS
from common.runtime.stage import DeadLetter
from common.store.requests_repo import (
    REQUEST_PENDING,
    REQUEST_REJECTED,
    REQUEST_SKIPPED,
    load_request,
    set_request_status,
    terms_of,
)
from common.store.uow import UnitOfWork
from services.intake.commands import ROUTE_NEW_KEY, ROUTE_REPLACE_KEY, USER_HEADER
from services.risk_gate.prices import PriceSettings
from services.risk_gate.rules import OrderTerms, RiskDecision, evaluate
from services.risk_gate.store import RiskBatch, prepare_batch

log = logging.getLogger(__name__)

# The batch ``prepare_checks`` loaded, per unit of work, with the transaction it was loaded (and locked) in.
_PREPARED: WeakKeyDictionary[UnitOfWork, tuple[RootTransaction | None, RiskBatch]] = WeakKeyDictionary()


@lru_cache(maxsize=1)
def configured_price_settings() -> PriceSettings:
    """The process's reference-price settings, read once from the environment."""
    return PriceSettings.from_env()


def prepare(uow: UnitOfWork, order_ids: Collection[str], price_settings: PriceSettings | None = None) -> RiskBatch:
    """Lock the orders' accounts and load what the rules need, in the unit of work's transaction."""
    return prepare_batch(uow.connection, order_ids, datetime.now(UTC), price_settings or configured_price_settings())


def prepare_checks(uow: UnitOfWork, envelopes: list[Envelope]) -> None:
    """The stage's ``prepare`` hook: one batch (locks and queries) for every check about to be handled in this
    transaction; the handler uses it for the orders it covers."""
    order_ids = sorted({env.body["order_id"] for env in envelopes})
    _PREPARED[uow] = (uow.connection.get_transaction(), prepare(uow, order_ids))


def _batch_for(uow: UnitOfWork, order_id: str) -> RiskBatch:
    prepared = _PREPARED.get(uow)
    if prepared is not None:
        transaction, batch = prepared
        # A batch from an earlier transaction of this unit of work holds no locks and may be out of date.
        if transaction is uow.connection.get_transaction() and batch.covers(order_id):
            return batch
    return prepare(uow, [order_id])


def _headers(env: Envelope) -> dict[str, str]:
    return {USER_HEADER: env.user_id} if env.user_id else {}


def _reference(decision: RiskDecision) -> dict[str, object] | None:
    return decision.quote.as_payload() if decision.quote is not None else None


def _violation_details(decision: RiskDecision) -> dict[str, object]:
    violation = decision.violation
    assert violation is not None
    return {
        "rule": violation.rule,
        "field": violation.field,
        "figures": dict(violation.figures),
        "checks": decision.checks,
        "reference_price": _reference(decision),
    }


def apply_decision(uow: UnitOfWork, env: Envelope, order: Order, decision: RiskDecision, batch: RiskBatch) -> None:
    """Approve (and hand to the router) or reject the order, recording why."""
    now = datetime.now(UTC)
    violation = decision.violation
    if violation is not None:
        order.reject(violation.code, violation.message, now, details=_violation_details(decision))
        # Counted when decided: a batch that rolls back and is handled again counts its rejections twice.
        RISK_REJECTIONS.labels(violation.rule).inc()
        log.info(
            "order rejected by risk",
            extra={"code": violation.code, "rule": violation.rule, "reason": violation.message},
        )
    else:
        limits = batch.limits_of(order.account_id).enabled()
        order.approve(decision.checks, now, details={"reference_price": _reference(decision), "limits": limits})
        batch.record_approval(OrderTerms.of(order), decision.quote)
    uow.orders.save(order, correlation_id=env.correlation_id or order.id, message_id=env.message_id)
    if order.state is OrderState.APPROVED:
        body = {"orderId": order.id}
        uow.outbox.add(OMS_EXCHANGE, ROUTE_NEW_KEY, "RouteNew", body, order.id, headers=_headers(env))


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


# --------------------------------------------------------------------------- replaces of orders at the venue


def stale_replace_reason(order: Order, request_id: str) -> str | None:
    """Why the risk check of replace ``request_id`` no longer applies, or None when it must run.

    The order's version says nothing here (fills move it while the replace waits); what counts is whether the
    order still waits on this request: not if it ended, or if a later cancel or replace took its place (only
    the latest request is sent: the venue never sees a replace the user has already superseded).
    """
    if order.is_terminal:
        return f"order is {order.state.value}"
    if order.state not in AT_VENUE:
        return f"order is not at the venue ({order.state.value})"
    pending = order.pending_request
    if pending is None:
        return "no longer pending"
    if pending.request_id != request_id:
        return f"superseded by {pending.kind.value.lower()} {pending.request_id}"
    return None


def replace_decision(
    batch: RiskBatch, order: Order, quantity: Decimal, price: Decimal | None, stop_price: Decimal | None
) -> RiskDecision:
    """The rules on new terms of an order at the venue: its exposure counts at the new terms instead of the old."""
    current = OrderTerms.of(order)
    proposed = replace(current, quantity=quantity, price=price, stop_price=stop_price)
    return evaluate(batch.input_for(proposed, datetime.now(UTC), replacing=current))


def check_replace(uow: UnitOfWork, env: Envelope, batch: RiskBatch) -> None:
    """Check the replace a ``RiskCheck`` names: approved, it goes to the router; refused, the request is
    REJECTED and the order forgets it; stale (see ``stale_replace_reason``), the request is SKIPPED."""
    order_id: str = env.body["order_id"]
    request_id: str = env.body["request_id"]
    order = uow.orders.get(order_id, for_update=True)
    if order is None:
        raise DeadLetter(f"unknown order {order_id}")
    request = load_request(uow.connection, request_id)
    if request is None or request.order_id != order_id or request.kind != RequestKind.REPLACE.value:
        raise DeadLetter(f"no REPLACE request {request_id} for order {order_id}")
    if request.status != REQUEST_PENDING:
        log.info("replace already handled", extra={"request_id": request_id, "status": request.status})
        return
    now = datetime.now(UTC)
    stale = stale_replace_reason(order, request_id)
    if stale is not None:
        set_request_status(uow.connection, request_id, REQUEST_SKIPPED, now, stale)
        log.info("stale replace check skipped", extra={"request_id": request_id, "reason": stale})
        return
    quantity, price, stop_price = terms_of(request)
    if quantity is None:
        raise DeadLetter(f"replace request {request_id} has no quantity")
    decision = replace_decision(batch, order, quantity, price, stop_price)
    violation = decision.violation
    if violation is not None:
        details = _violation_details(decision)
        order.reject_replace_request(request_id, violation.code, violation.message, now, details=details)
        set_request_status(uow.connection, request_id, REQUEST_REJECTED, now, f"{violation.code}: {violation.message}")
        RISK_REJECTIONS.labels(violation.rule).inc()
        log.info(
            "replace rejected by risk",
            extra={"request_id": request_id, "code": violation.code, "rule": violation.rule},
        )
    else:
        limits = batch.limits_of(order.account_id).enabled()
        details = {"reference_price": _reference(decision), "limits": limits}
        order.approve_replace_request(request_id, decision.checks, now, details=details)
        # The order's state does not change here, so the repository's state-change line does not cover it.
        log.info("replace approved by risk", extra={"request_id": request_id})
    uow.orders.save(order, correlation_id=env.correlation_id or order.id, message_id=env.message_id)
    if violation is None:
        # The router reads the terms from the request row, which the router alone moves on from PENDING.
        body = {"orderId": order.id, "requestId": request_id}
        uow.outbox.add(OMS_EXCHANGE, ROUTE_REPLACE_KEY, "RouteReplace", body, order.id, headers=_headers(env))


def handle_risk_check(uow: UnitOfWork, env: Envelope) -> None:
    """The stage handler: check with the batch ``prepare_checks`` loaded, or prepare for this order alone."""
    batch = _batch_for(uow, env.body["order_id"])
    if env.body.get("request_id") is not None:
        check_replace(uow, env, batch)
    else:
        check_order(uow, env, batch)


def check_replace_terms(
    uow: UnitOfWork,
    order: Order,
    quantity: Decimal,
    price: Decimal | None,
    stop_price: Decimal | None,
    price_settings: PriceSettings | None = None,
) -> RiskDecision:
    """The rules on the new terms of a replace of an order at the venue, prepared for that order alone."""
    return replace_decision(prepare(uow, [order.id], price_settings), order, quantity, price, stop_price)
