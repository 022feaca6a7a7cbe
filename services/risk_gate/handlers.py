"""Risk gate: approve an order and hand it to the router, or reject it with the rule it broke and the figures.

Two kinds of ``RiskCheck``: ``{orderId, version}`` checks a NEW order at that version; ``{orderId, version,
requestId}`` checks the new terms of a replace of an order at the venue (recorded by the modify as a PENDING
``order_requests`` row). An approved replace goes on to the router (``RouteReplace``); a refused one never
reaches the venue: its request row is REJECTED and the order, unchanged, forgets it.

The stage's ``prepare`` hook (``prepare_checks``) prepares each batch once (``store.prepare_batch``: account
locks and every query) for the handler; a handler called on its own (tests, tools) prepares for its single
order. Limits, halts and restrictions are read in every batch's transaction, so a change made while the gate
runs applies to the next batch.

Checking an order then costs no statement of its own: the runtime has locked and loaded the batch's orders,
the batch is kept in the unit of work's risk store (``uow.repository(RISK_STORE)``, forgotten at commit and
rollback), and the approvals, events and hand-overs are written for the whole batch at commit.

With the Risk Analysis Service enabled (``OMS_RISK_SERVICE_ENABLED``), the stage asks it about the batch before
the transaction (``services.risk_gate.assessments``) and an order the rules approve is approved only if the
service approves it too; while the service cannot answer, it is rejected with the reason (fail closed).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

from common.domain import Order, OrderState, RequestKind
from common.domain.lifecycle import AT_VENUE
from common.messages.bodies import route_new_body, route_replace_body
from common.messages.catalogue import ROUTE_NEW, ROUTE_REPLACE
from common.messages.headers import user_headers
from common.messaging.envelope import Envelope
from common.metrics import RISK_REJECTIONS
from common.orders.ports import AbstractUnitOfWork
from common.orders.records import REQUEST_PENDING, REQUEST_REJECTED, REQUEST_SKIPPED, terms_of
from common.runtime.stage import DeadLetter
from services.risk_gate.assessments import RiskServiceGate
from services.risk_gate.prices import PriceSettings
from services.risk_gate.rules import OrderTerms, RiskDecision, evaluate
from services.risk_gate.store import RISK_STORE, OrderMeta, RiskBatch

log = logging.getLogger(__name__)


def prepare(
    uow: AbstractUnitOfWork, order_ids: Collection[str], price_settings: PriceSettings | None = None
) -> RiskBatch:
    """Lock the orders' accounts and load what the rules need, in the unit of work's transaction.

    The orders are locked first, as the stage runtime does (it has locked and loaded them already: no statement);
    an unknown order id is left out (its check dead-letters it).
    """
    uow.orders.lock(order_ids)
    metas = {
        order.id: OrderMeta(order.account_id, order.strategy_id, order.symbol, order.created_at)
        for order in (uow.orders.get(order_id, for_update=True) for order_id in order_ids)
        if order is not None
    }
    # None: the settings' defaults; the stage process binds the configured ones (worker.stage_spec).
    settings = price_settings or PriceSettings()
    return uow.repository(RISK_STORE).load(metas, datetime.now(UTC), settings)


def prepare_checks(
    uow: AbstractUnitOfWork, envelopes: list[Envelope], price_settings: PriceSettings | None = None
) -> None:
    """The stage's ``prepare`` hook: one batch (locks and queries) for every check about to be handled in this
    transaction; the handler uses it for the orders it covers. The replaces' requests are locked here too, in
    one statement, after the orders (the router's order)."""
    request_ids = [env.body["request_id"] for env in envelopes if env.body.get("request_id") is not None]
    if request_ids:
        uow.requests.lock(request_ids)
    order_ids = sorted({env.body["order_id"] for env in envelopes})
    uow.repository(RISK_STORE).prepared = prepare(uow, order_ids, price_settings)


def _batch_for(uow: AbstractUnitOfWork, order_id: str, price_settings: PriceSettings | None) -> RiskBatch:
    batch = uow.repository(RISK_STORE).prepared
    if batch is not None and batch.covers(order_id):
        return batch
    return prepare(uow, [order_id], price_settings)


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


def apply_decision(
    uow: AbstractUnitOfWork, env: Envelope, order: Order, decision: RiskDecision, batch: RiskBatch
) -> None:
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
        limits = batch.enabled_limits_of(order.account_id)
        order.approve(decision.checks, now, details={"reference_price": _reference(decision), "limits": limits})
        batch.record_approval(OrderTerms.of(order), decision.quote)
    uow.orders.save(order, correlation_id=env.correlation_id or order.id, message_id=env.message_id)
    if order.state is OrderState.APPROVED:
        ROUTE_NEW.send(uow.outbox, route_new_body(order.id), order.id, headers=user_headers(env.user_id))


def load_checkable(uow: AbstractUnitOfWork, env: Envelope) -> Order | None:
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


def check_order(
    uow: AbstractUnitOfWork, env: Envelope, batch: RiskBatch, risk_service: RiskServiceGate | None = None
) -> None:
    """Check the order named by a ``RiskCheck`` at the version it names, with the batch's data (and, when
    enabled, the Risk Analysis Service's verdict on the orders the rules approve)."""
    order = load_checkable(uow, env)
    if order is None:
        return
    terms = OrderTerms.of(order)
    decision = evaluate(batch.input_for(terms, datetime.now(UTC)))
    if risk_service is not None:
        decision = risk_service.review_order(decision, terms, order.version)
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


def check_replace(
    uow: AbstractUnitOfWork, env: Envelope, batch: RiskBatch, risk_service: RiskServiceGate | None = None
) -> None:
    """Check the replace a ``RiskCheck`` names: approved, it goes to the router; refused, the request is
    REJECTED and the order forgets it; stale (see ``stale_replace_reason``), the request is SKIPPED."""
    order_id: str = env.body["order_id"]
    request_id: str = env.body["request_id"]
    order = uow.orders.get(order_id, for_update=True)
    if order is None:
        raise DeadLetter(f"unknown order {order_id}")
    request = uow.requests.get(request_id)  # locked (for the whole batch by prepare_checks)
    if request is None or request.order_id != order_id or request.kind != RequestKind.REPLACE.value:
        raise DeadLetter(f"no REPLACE request {request_id} for order {order_id}")
    if request.status != REQUEST_PENDING:
        log.info("replace already handled", extra={"request_id": request_id, "status": request.status})
        return
    now = datetime.now(UTC)
    stale = stale_replace_reason(order, request_id)
    if stale is not None:
        uow.requests.set_status(request_id, REQUEST_SKIPPED, now, stale)
        log.info("stale replace check skipped", extra={"request_id": request_id, "reason": stale})
        return
    quantity, price, stop_price = terms_of(request)
    if quantity is None:
        raise DeadLetter(f"replace request {request_id} has no quantity")
    decision = replace_decision(batch, order, quantity, price, stop_price)
    if risk_service is not None:
        proposed = replace(OrderTerms.of(order), quantity=quantity, price=price, stop_price=stop_price)
        decision = risk_service.review_replace(decision, proposed, request_id)
    violation = decision.violation
    if violation is not None:
        details = _violation_details(decision)
        order.reject_replace_request(request_id, violation.code, violation.message, now, details=details)
        uow.requests.set_status(request_id, REQUEST_REJECTED, now, f"{violation.code}: {violation.message}")
        RISK_REJECTIONS.labels(violation.rule).inc()
        log.info(
            "replace rejected by risk",
            extra={"request_id": request_id, "code": violation.code, "rule": violation.rule},
        )
    else:
        limits = batch.enabled_limits_of(order.account_id)
        details = {"reference_price": _reference(decision), "limits": limits}
        order.approve_replace_request(request_id, decision.checks, now, details=details)
        # The order's state does not change here, so the repository's state-change line does not cover it.
        log.info("replace approved by risk", extra={"request_id": request_id})
    uow.orders.save(order, correlation_id=env.correlation_id or order.id, message_id=env.message_id)
    if violation is None:
        # The router reads the terms from the request row, which the router alone moves on from PENDING.
        body = route_replace_body(order.id, request_id)
        ROUTE_REPLACE.send(uow.outbox, body, order.id, headers=user_headers(env.user_id))


def handle_risk_check(
    uow: AbstractUnitOfWork,
    env: Envelope,
    price_settings: PriceSettings | None = None,
    risk_service: RiskServiceGate | None = None,
) -> None:
    """The stage handler: check with the batch ``prepare_checks`` loaded, or prepare for this order alone;
    with ``risk_service``, the Risk Analysis Service has the last word on what the rules approve."""
    batch = _batch_for(uow, env.body["order_id"], price_settings)
    if env.body.get("request_id") is not None:
        check_replace(uow, env, batch, risk_service)
    else:
        check_order(uow, env, batch, risk_service)


def check_replace_terms(
    uow: AbstractUnitOfWork,
    order: Order,
    quantity: Decimal,
    price: Decimal | None,
    stop_price: Decimal | None,
    price_settings: PriceSettings | None = None,
) -> RiskDecision:
    """The rules on the new terms of a replace of an order at the venue, prepared for that order alone."""
    return replace_decision(prepare(uow, [order.id], price_settings), order, quantity, price, stop_price)
