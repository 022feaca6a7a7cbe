"""StreamOrderUpdates: live order updates from ``oms.order_updates``, one exclusive queue per call.

A call consumes an exclusive, auto-deleted queue bound to ``oms.order_updates`` with one routing key per
(account, symbol, status) asked for; it sends its initial metadata once the queue is bound (so a client that
waits for it misses nothing) and ends, deleting the queue, when the client goes away. Its channel is a robust
one: after a broker restart aio-pika declares the queue again, binds it and consumes again, and the stream goes
on (updates published meanwhile are not seen: a live stream, not a log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from aio_pika.abc import AbstractRobustConnection
from marshmallow import ValidationError, validate

from common import jsonutil
from common.messages.catalogue import ORDER_UPDATE
from common.messaging.topology import declare_subscription
from proto.gen import order_pb2 as pb
from services.api import grpc_mapping as mapping
from services.api.auth import SCOPE_READ, Principal
from services.api.errors import FieldError, InvalidRequest, Unavailable
from services.api.order_service import OrderService
from services.api.schemas import Identifier

log = logging.getLogger(__name__)

SUBSCRIBED_METADATA = ("x-oms-subscribed", "true")
# One binding per (account, symbol, status); a subscription that needs more is unreasonable.
MAX_BINDINGS = 1000


@dataclass(frozen=True)
class Subscription:
    """What a StreamOrderUpdates call asked for (None: any), within what its token grants."""

    principal: Principal
    accounts: frozenset[str] | None
    symbols: frozenset[str] | None
    statuses: frozenset[str] | None

    def binding_keys(self) -> list[str]:
        """Bindings on ``oms.order_updates`` (``<account>.<symbol>.<STATUS>``) that take at least what is wanted.

        '#' stands for any account or symbol because either may itself contain dots; ``wants`` then decides.
        """
        accounts = sorted(self.accounts) if self.accounts is not None else ["#"]
        symbols = sorted(self.symbols) if self.symbols is not None else ["#"]
        statuses = sorted(self.statuses) if self.statuses is not None else ["*"]
        return [f"{a}.{s}.{st}" for a in accounts for s in symbols for st in statuses]

    def wants(self, body: Mapping[str, Any]) -> bool:
        """Whether an OrderUpdate body is for this subscriber (and one its token may see)."""
        account = str(body.get("accountId", ""))
        return (
            self.principal.may_use(account)
            and (self.accounts is None or account in self.accounts)
            and (self.symbols is None or body.get("symbol") in self.symbols)
            and (self.statuses is None or body.get("status") in self.statuses)
        )


def subscription_of(principal: Principal, request: pb.StreamOrderUpdatesRequest) -> Subscription:
    """The subscription a request asks for; InvalidRequest or Forbidden when it may not have it."""
    OrderService.require_scope(principal, SCOPE_READ)
    accounts: frozenset[str] | None
    if request.account_id:
        _check_identifier("account_id", request.account_id, 36)
        OrderService.require_account(principal, request.account_id)
        accounts = frozenset({request.account_id})
    else:
        accounts = principal.account_filter()
    for symbol in request.symbols:
        _check_identifier("symbols", symbol, 20)
    try:
        statuses = [mapping.status_of(value, "statuses") for value in request.statuses]
    except mapping.MappingError as exc:
        raise InvalidRequest(str(exc), [FieldError(exc.field, exc.message)]) from exc
    if any(status is None for status in statuses):
        raise InvalidRequest("statuses: ORDER_STATUS_UNSPECIFIED is not a status")
    subscription = Subscription(
        principal=principal,
        accounts=accounts,
        symbols=frozenset(request.symbols) or None,
        statuses=frozenset(str(s) for s in statuses) or None,
    )
    if len(subscription.binding_keys()) > MAX_BINDINGS:
        raise InvalidRequest(f"too many combinations of accounts, symbols and statuses (limit {MAX_BINDINGS})")
    return subscription


def _check_identifier(field: str, value: str, max_length: int) -> None:
    try:
        Identifier(validate=validate.Length(1, max_length)).deserialize(value)
    except ValidationError as exc:
        raise InvalidRequest(f"{field}: {value!r} is not valid", [FieldError(field, str(exc))]) from exc


async def order_updates(
    amqp: AbstractRobustConnection,
    subscription: Subscription,
    context: grpc.aio.ServicerContext[Any, Any],
    active_streams: set[str],
) -> AsyncGenerator[pb.OrderUpdate, None]:
    """The updates ``subscription`` wants, until the caller goes away; Unavailable when the broker is away.

    The queue's name is in ``active_streams`` while it is consumed.
    """
    try:
        channel = await amqp.channel()
    except Exception as exc:  # the broker is away; the robust connection is reconnecting
        log.warning("order update stream refused: no broker channel", extra={"error": repr(exc)})
        raise Unavailable("the broker is unavailable; retry shortly") from exc
    queue_name = ""
    try:
        await channel.set_qos(prefetch_count=256)
        queue = await declare_subscription(channel, ORDER_UPDATE.exchange, subscription.binding_keys())
        queue_name = queue.name
        active_streams.add(queue_name)
        log.info("order update stream opened", extra={"queue": queue_name, "user_id": subscription.principal.subject})
        await context.send_initial_metadata((SUBSCRIBED_METADATA,))
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():
                    update = _update_of(subscription, message.body)
                if update is not None:
                    yield update
    finally:
        active_streams.discard(queue_name)
        with contextlib.suppress(Exception):
            await asyncio.shield(channel.close())
        log.info("order update stream closed", extra={"queue": queue_name})


def _update_of(subscription: Subscription, raw: bytes) -> pb.OrderUpdate | None:
    try:
        body = jsonutil.loads(raw)
        if not subscription.wants(body):
            return None
        return mapping.order_update(body)
    except Exception as exc:  # a malformed update must not end the caller's stream
        log.warning("order update skipped", extra={"error": repr(exc)})
        return None
