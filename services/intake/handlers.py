"""Intake: turn a trade decision into an order (NEW and on to risk, or REJECTED with the broken rule)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from common.messaging.envelope import Envelope
from common.orders.commands import submit_order
from common.orders.errors import ConflictingDuplicate, InvalidOrderTerms, UnknownAccount
from common.orders.order_request import OrderRequest
from common.orders.ports import AbstractUnitOfWork
from common.runtime.stage import DeadLetter

log = logging.getLogger(__name__)


def request_from_decision(body: Mapping[str, Any]) -> OrderRequest:
    """The order a ``TradeDecision`` body asks for; the decision id is the idempotency key."""
    return OrderRequest.from_body(body, client_order_id=body["decision_id"])


def handle_trade_decision(uow: AbstractUnitOfWork, env: Envelope) -> None:
    """Book the decision's order; the same decision twice makes one order.

    A decision id seen before with other terms is dead-lettered, naming the terms that differ: the strategy
    meant a second order, and dropping it as a duplicate would lose it without anyone knowing.
    """
    request = request_from_decision(env.body)
    try:
        order, created = submit_order(
            uow, request, user_id=env.user_id, correlation_id=env.correlation_id, message_id=env.message_id
        )
    except ConflictingDuplicate as exc:
        raise DeadLetter(
            f"decision {request.client_order_id} was already booked as order {exc.order.id} with other terms; "
            f"differing: {', '.join(exc.fields)} ({'; '.join(str(d) for d in exc.differences)})"
        ) from exc
    except UnknownAccount as exc:
        raise DeadLetter(f"unknown account {exc.account_id}: the order cannot be booked") from exc
    except InvalidOrderTerms as exc:
        # The schema admits only enum values, so this means the schema and the rules disagree.
        raise DeadLetter(f"decision cannot be booked: {exc}") from exc
    if not created:
        log.info(
            "decision already booked",
            extra={"order_id": order.id, "decision_id": request.client_order_id},
        )
