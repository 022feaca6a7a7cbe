"""Reconcile orders that made no progress: hand them on again, or ask the venue again.

An order is stuck when it has not changed for ``OMS_RECONCILE_AFTER_SECONDS`` while something is owed to it:

- NEW: a RiskCheck at the order's version again (the risk gate ignores a check it already did).
- APPROVED: a RouteNew again (the router ignores an order it already routed).
- ROUTED: the venue's NewOrderRequest again, same ``requestId`` (the venue answers a request it knows again).
- a cancel or replace outstanding (PENDING_CANCEL, PENDING_REPLACE, or OPEN/PARTIALLY_FILLED with a request
  unanswered): that request again, to the router when it never left (still PENDING), else to the venue,
  same ``requestId``.

Every message the job sends is one its receiver already treats as a possible duplicate, so a reconcile that
races the real answer is harmless. Each action is recorded in ``order_reconciliations`` and the order is left
alone for another ``OMS_RECONCILE_AFTER_SECONDS`` before it is tried again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, exists, func, or_, select

from common.domain import Order, OrderState, RequestKind
from common.logging import log_context
from common.messages.bodies import broker_request_body, route_cancel_body, route_new_body
from common.messages.catalogue import CANCEL_REQUEST, NEW_ORDER_REQUEST, REPLACE_REQUEST, ROUTE_CANCEL, ROUTE_NEW
from common.orders.commands import ask_risk
from common.orders.ports import AbstractUnitOfWork
from common.orders.records import REQUEST_NEW, REQUEST_PENDING, terms_of
from common.store import tables
from common.store.tables import order_reconciliations
from common.store.uow import UnitOfWork
from services.jobs.metrics import ORDERS_RECONCILED
from services.jobs.reconciliations import RECONCILIATIONS

log = logging.getLogger(__name__)

S = OrderState
WAITING_STATES = (S.NEW, S.APPROVED, S.ROUTED, S.PENDING_CANCEL, S.PENDING_REPLACE)
# OPEN/PARTIALLY_FILLED orders are only stuck when a cancel or replace they sent is unanswered.
WORKING_STATES = (S.OPEN, S.PARTIALLY_FILLED)


def stuck_orders(
    engine: Engine, after_seconds: float, now: datetime, accounts: Collection[str] | None = None, limit: int = 500
) -> list[str]:
    """Ids of orders unchanged for ``after_seconds`` with something owed to them, not reconciled lately."""
    orders = tables.orders
    cutoff = now - timedelta(seconds=after_seconds)
    recently = exists().where(
        order_reconciliations.c.order_id == orders.c.id, order_reconciliations.c.created_at > cutoff
    )
    query = (
        select(orders.c.id)
        .where(
            orders.c.updated_at < cutoff,
            or_(
                orders.c.state.in_([s.value for s in WAITING_STATES]),
                and_(
                    orders.c.state.in_([s.value for s in WORKING_STATES]),
                    # JSONB 'null' (no request) is not SQL NULL: ask for an object.
                    func.jsonb_typeof(orders.c.pending_request) == "object",
                ),
            ),
            ~recently,
        )
        .order_by(orders.c.updated_at)
        .limit(limit)
    )
    if accounts is not None:
        query = query.where(orders.c.account_id.in_(list(accounts)))
    with engine.connect() as connection:
        return [row.id for row in connection.execute(query)]


def _resend_request(uow: AbstractUnitOfWork, order: Order, actions: list[tuple[str, dict[str, Any]]]) -> None:
    pending = order.pending_request
    if pending is None:
        return
    request = uow.requests.get(pending.request_id)
    if request is None:
        actions.append(("request_missing", {"request_id": pending.request_id}))
        return
    cancel = pending.kind is RequestKind.CANCEL
    if request.status == REQUEST_PENDING:
        # Never sent to the venue: hand it on again (the router sends it and marks it SENT).
        if cancel:
            ROUTE_CANCEL.send(uow.outbox, route_cancel_body(order.id, request.request_id), order.id)
        else:
            # A replace passes the risk gate before the router: ask the gate again (it checks it is still the
            # order's pending request, and the router ignores a request it already sent).
            ask_risk(uow, order, request_id=request.request_id)
        actions.append(
            ("route_cancel_resent" if cancel else "replace_risk_check_resent", {"request_id": request.request_id})
        )
        return
    if cancel:
        CANCEL_REQUEST.send(uow.outbox, broker_request_body(order, request.request_id), order.id)
    else:
        body = broker_request_body(order, request.request_id, terms_of(request))
        REPLACE_REQUEST.send(uow.outbox, body, order.id)
    actions.append(("cancel_resent" if cancel else "replace_resent", {"request_id": request.request_id}))


def _reconcile_one(engine: Engine, order_id: str, cutoff: datetime) -> list[str]:
    with UnitOfWork(engine) as uow, log_context(order_id=order_id, correlation_id=order_id):
        order = uow.orders.get(order_id, for_update=True)
        if order is None or order.is_terminal or order.updated_at >= cutoff:
            return []  # it moved on while we looked
        actions: list[tuple[str, dict[str, Any]]] = []
        if order.state is S.NEW:
            ask_risk(uow, order)
            actions.append(("risk_check_resent", {"version": order.version}))
        elif order.state is S.APPROVED:
            ROUTE_NEW.send(uow.outbox, route_new_body(order.id), order.id)
            actions.append(("route_new_resent", {}))
        else:
            if order.state is S.ROUTED:
                request = uow.requests.latest(order.id, REQUEST_NEW)
                if request is None:
                    actions.append(("request_missing", {"kind": REQUEST_NEW}))
                else:
                    NEW_ORDER_REQUEST.send(uow.outbox, broker_request_body(order, request.request_id), order.id)
                    actions.append(("new_order_resent", {"request_id": request.request_id}))
            _resend_request(uow, order, actions)
        if not actions:
            actions.append(("nothing_to_resend", {}))
        stuck_since = order.updated_at.isoformat()
        uow.repository(RECONCILIATIONS).record(
            order.id,
            order.state.value,
            [(action, {**detail, "stuck_since": stuck_since}) for action, detail in actions],
            datetime.now(UTC),
        )
        uow.commit()
        names = [action for action, _ in actions]
        log.warning("order made no progress; reconciled", extra={"state": order.state.value, "actions": names})
        return names


def reconcile_stuck_orders(
    engine: Engine, after_seconds: float, now: datetime | None = None, accounts: Collection[str] | None = None
) -> dict[str, int]:
    """Re-drive or re-ask every stuck order (see the module doc); returns counts by action."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=after_seconds)
    counts: Counter[str] = Counter()
    for order_id in stuck_orders(engine, after_seconds, now, accounts):
        for action in _reconcile_one(engine, order_id, cutoff):
            counts[action] += 1
            ORDERS_RECONCILED.labels(action).inc()
    return dict(counts)
