"""Expire DAY orders at the session close.

A DAY order still live after the close of the session it was entered in ends: one the venue has not seen yet
(NEW, APPROVED) is EXPIRED at once; one at the venue gets a cancel sent to the venue (reason "DAY order
expired at session close") and becomes CANCELED when the venue answers, like any cancel. An order whose
cancel is already outstanding is left to that cancel.

The job looks at the latest close that has passed, not at "now is the close": a run that comes late (the
scheduler was down at the close) still ends every order of the sessions before it, and running it twice is
harmless. Each instrument's own session close and zone (``instruments.session_close``/``session_timezone``)
override the configured default; the holidays and trading weekdays are the configured calendar's.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection
from datetime import UTC, datetime

from sqlalchemy import Engine, select

from common.domain import InvalidCommand, InvalidTransition, OrderState, RequestKind
from common.domain.lifecycle import LIVE, UNROUTED
from common.logging import log_context
from common.orders.commands import cancel_order
from common.store import tables
from common.store.uow import UnitOfWork
from services.jobs.config import SYSTEM_USER
from services.jobs.metrics import ORDERS_EXPIRED
from services.jobs.session import SessionCalendar

log = logging.getLogger(__name__)

EXPIRY_REASON = "DAY order expired at session close"


def due_orders(
    engine: Engine, calendar: SessionCalendar, now: datetime, accounts: Collection[str] | None = None
) -> list[str]:
    """Ids of live DAY orders entered before the latest session close of their instrument that has passed."""
    orders, instruments = tables.orders, tables.instruments
    query = (
        select(
            orders.c.id,
            orders.c.created_at,
            instruments.c.session_close,
            instruments.c.session_timezone,
        )
        .select_from(orders.outerjoin(instruments, instruments.c.symbol == orders.c.symbol))
        .where(orders.c.time_in_force == "DAY", orders.c.state.in_([s.value for s in LIVE]))
        .order_by(orders.c.created_at)
    )
    if accounts is not None:
        query = query.where(orders.c.account_id.in_(list(accounts)))
    due: list[str] = []
    with engine.connect() as connection:
        for row in connection.execute(query):
            close = calendar.for_instrument(row.session_close, row.session_timezone).last_close(now)
            if close is not None and row.created_at < close:
                due.append(row.id)
    return due


def _end_one(engine: Engine, order_id: str, user_id: str) -> str:
    with UnitOfWork(engine) as uow, log_context(order_id=order_id, correlation_id=order_id):
        order = uow.orders.get(order_id, for_update=True)
        if order is None or order.is_terminal:
            return "already_ended"
        if order.state in UNROUTED:
            order.expire(EXPIRY_REASON, datetime.now(UTC), user_id)
            uow.orders.save(order, correlation_id=order.id, message_id=None, user_id=user_id)
            uow.commit()
            log.info("DAY order expired at session close")
            return "expired"
        pending = order.pending_request
        if order.state is OrderState.PENDING_CANCEL or (pending is not None and pending.kind is RequestKind.CANCEL):
            return "cancel_outstanding"
        try:
            cancel_order(uow, order.id, reason=EXPIRY_REASON, user_id=user_id)
        except (InvalidTransition, InvalidCommand) as exc:
            log.warning("DAY order could not be canceled at session close", extra={"error": str(exc)})
            return "skipped"
        uow.commit()
        log.info("DAY order at the venue: cancel sent at session close")
        return "cancel_requested"


def expire_day_orders(
    engine: Engine,
    calendar: SessionCalendar,
    now: datetime | None = None,
    accounts: Collection[str] | None = None,
    user_id: str = SYSTEM_USER,
) -> dict[str, int]:
    """End every DAY order whose session has closed (see the module doc); returns counts by outcome."""
    now = now or datetime.now(UTC)
    outcomes: Counter[str] = Counter()
    for order_id in due_orders(engine, calendar, now, accounts):
        outcome = _end_one(engine, order_id, user_id)
        outcomes[outcome] += 1
        if outcome in ("expired", "cancel_requested"):
            ORDERS_EXPIRED.labels(outcome).inc()
    return {key: outcomes.get(key, 0) for key in ("expired", "cancel_requested", "cancel_outstanding", "skipped")}
