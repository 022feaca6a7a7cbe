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
the batch is kept in the unit of work (``uow.repository``, forgotten at commit and rollback) rather than found
through ``uow.connection`` (which would write the batch's buffered changes out message by message), and the
approvals, events and hand-overs are written for the whole batch at commit.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache

from sqlalchemy import ARRAY, Connection, String, any_, bindparam, select

from common.domain import Order, OrderState, RequestKind
from common.domain.lifecycle import AT_VENUE
from common.messaging.envelope import Envelope
from common.messaging.topology import OMS_EXCHANGE
from common.metrics import RISK_REJECTIONS
from common.runtime.stage import DeadLetter
from common.store import tables
from common.store.requests_repo import (
    REQUEST_PENDING,
    REQUEST_REJECTED,
    REQUEST_SKIPPED,
    VenueRequest,
    set_request_status,
    terms_of,
    venue_request,
)
from common.store.uow import UnitOfWork
from services.intake.commands import ROUTE_NEW_KEY, ROUTE_REPLACE_KEY, USER_HEADER
from services.risk_gate.prices import PriceSettings
from services.risk_gate.rules import OrderTerms, RiskDecision, evaluate
from services.risk_gate.store import OrderMeta, RiskBatch, prepare_batch

log = logging.getLogger(__name__)


# The batch's replace requests, locked in id order (as the router locks them); typed, so their JSON terms are
# read Decimal-exact. Built once.
_LOCK_REQUESTS = (
    select(tables.order_requests)
    .where(tables.order_requests.c.request_id == any_(bindparam("ids", type_=ARRAY(String))))
    .order_by(tables.order_requests.c.request_id)
    .with_for_update()
)


class PreparedBatch:
    """What ``prepare_checks`` loaded (and locked) in the unit of work's transaction, and the replace requests'
    status moves, written at flush. A repository of the unit of work (``uow.repository``): written before the
    commit, forgotten when the transaction commits or rolls back."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.reset()

    def reset(self) -> None:
        """The transaction ended: its locks are gone and what was read may be out of date."""
        self.batch: RiskBatch | None = None
        self._requests: dict[str, VenueRequest | None] = {}
        self._moves: dict[str, tuple[str, datetime, str | None]] = {}

    def lock_requests(self, request_ids: Collection[str]) -> None:
        """Read and lock these requests in one statement."""
        ids = sorted(set(request_ids) - self._requests.keys())
        if not ids:
            return
        for row in self._connection.execute(_LOCK_REQUESTS, {"ids": ids}).mappings():
            self._requests[row["request_id"]] = venue_request(row)
        for request_id in ids:
            self._requests.setdefault(request_id, None)

    def request(self, request_id: str) -> VenueRequest | None:
        """The request, locked, as this transaction sees it."""
        self.lock_requests([request_id])
        return self._requests[request_id]

    def set_status(self, request_id: str, status: str, now: datetime, reason: str) -> None:
        """Move a request to ``status`` (written at flush)."""
        self._moves[request_id] = (status, now, reason)
        request = self._requests.get(request_id)
        if request is not None:
            self._requests[request_id] = replace(request, status=status, reason=reason)

    def flush(self) -> None:
        """Write the status moves (only refused or stale replaces move one here: a statement each)."""
        for request_id, (status, now, reason) in self._moves.items():
            set_request_status(self._connection, request_id, status, now, reason)
        self._moves.clear()


@lru_cache(maxsize=1)
def configured_price_settings() -> PriceSettings:
    """The process's reference-price settings, read once from the environment."""
    return PriceSettings.from_env()


def prepare(uow: UnitOfWork, order_ids: Collection[str], price_settings: PriceSettings | None = None) -> RiskBatch:
    """Lock the orders' accounts and load what the rules need, in the unit of work's transaction.

    The orders come from the unit of work (the stage runtime has locked and loaded them: no statement); an
    unknown order id is left out (its check dead-letters it).
    """
    orders = uow.orders.get_many(order_ids)
    metas = {i: OrderMeta(o.account_id, o.strategy_id, o.symbol, o.created_at) for i, o in orders.items()}
    return prepare_batch(uow.connection, metas, datetime.now(UTC), price_settings or configured_price_settings())


def prepare_checks(uow: UnitOfWork, envelopes: list[Envelope]) -> None:
    """The stage's ``prepare`` hook: one batch (locks and queries) for every check about to be handled in this
    transaction; the handler uses it for the orders it covers. The replaces' requests are locked here too, in
    one statement, after the orders (the router's order)."""
    prepared = uow.repository(PreparedBatch)
    request_ids = [env.body["request_id"] for env in envelopes if env.body.get("request_id") is not None]
    if request_ids:
        prepared.lock_requests(request_ids)
    order_ids = sorted({env.body["order_id"] for env in envelopes})
    prepared.batch = prepare(uow, order_ids)


def _batch_for(uow: UnitOfWork, order_id: str) -> RiskBatch:
    batch = uow.repository(PreparedBatch).batch
    if batch is not None and batch.covers(order_id):
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
        limits = batch.enabled_limits_of(order.account_id)
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
    prepared = uow.repository(PreparedBatch)
    request = prepared.request(request_id)
    if request is None or request.order_id != order_id or request.kind != RequestKind.REPLACE.value:
        raise DeadLetter(f"no REPLACE request {request_id} for order {order_id}")
    if request.status != REQUEST_PENDING:
        log.info("replace already handled", extra={"request_id": request_id, "status": request.status})
        return
    now = datetime.now(UTC)
    stale = stale_replace_reason(order, request_id)
    if stale is not None:
        prepared.set_status(request_id, REQUEST_SKIPPED, now, stale)
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
        prepared.set_status(request_id, REQUEST_REJECTED, now, f"{violation.code}: {violation.message}")
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
