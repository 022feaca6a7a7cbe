"""The calls of ``trading.order.v1.OrderService``: the specification's five and GetOrderEvents.

Calls share the REST front end's order service (run in threads: SQLAlchemy is synchronous). Bearer tokens
come in the ``authorization`` metadata. StreamOrderUpdates is served by ``services.api.grpc_stream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import grpc
from aio_pika.abc import AbstractRobustConnection
from marshmallow import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from common.logging import log_context
from common.messages.catalogue import EXECUTION_REPORT
from common.messages.headers import user_headers
from common.messaging.publisher import Publisher
from proto.gen import order_pb2 as pb
from proto.gen import order_pb2_grpc as pb_grpc
from services.api import grpc_mapping as mapping
from services.api.auth import SCOPE_OPERATIONS, AuthenticationError, Principal, TokenService
from services.api.errors import (
    ApiError,
    Conflict,
    FieldError,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from services.api.grpc_stream import order_updates, subscription_of
from services.api.order_events import MAX_EVENTS, visible_order_events
from services.api.order_service import OrderService, order_request_of
from services.api.rate_limit import FrontEndLimits
from services.api.schemas import CreateOrderRequestSchema
from services.api.status_report import build_report

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["OrderService"].full_name
# Trailing metadata of a RESOURCE_EXHAUSTED answer: whole seconds to wait before retrying.
RETRY_AFTER_METADATA = "retry-after"


_CODES: dict[type[ApiError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    RateLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def _details(error: ApiError) -> str:
    if isinstance(error, InvalidRequest) and error.errors:
        return "; ".join(f"{e.field}: {e.message}" for e in error.errors)
    return error.message


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: ApiError) -> NoReturn:
    code = next(code for kind, code in _CODES.items() if isinstance(error, kind))
    trailing: tuple[tuple[str, str], ...] = ()
    if isinstance(error, RateLimited):
        # Seconds, as REST's Retry-After header; the details say it too, for people reading them.
        trailing = ((RETRY_AFTER_METADATA, str(error.retry_after_seconds)),)
    await context.abort(code, _details(error), trailing_metadata=trailing)
    raise AssertionError("unreachable")  # pragma: no cover - abort raises


class OrderServicer(pb_grpc.OrderServiceServicer):
    """The calls of ``trading.order.v1.OrderService``: the specification's five and GetOrderEvents."""

    def __init__(
        self,
        service: OrderService,
        tokens: TokenService,
        amqp: AbstractRobustConnection,
        engine: Engine,
        limits: FrontEndLimits | None = None,
    ) -> None:
        self._service = service
        self._limits = limits or FrontEndLimits.unlimited()
        self._engine = engine
        self._tokens = tokens
        self._amqp = amqp
        self._publisher = Publisher(amqp)
        # Queue names of the streams running now (tests and metrics look at it).
        self.active_streams: set[str] = set()

    # ---- plumbing -------------------------------------------------------------------------------------

    def _principal(self, context: grpc.aio.ServicerContext[Any, Any], *, read: bool = True) -> Principal:
        """The caller; with ``read`` the call counts against its subject's rate limit (order writes pass False:
        the order service counts them against the order's account)."""
        metadata = {key.lower(): value for key, value in (context.invocation_metadata() or ())}
        header = metadata.get("authorization")
        try:
            principal = self._tokens.verify_header(header if isinstance(header, str) else None)
        except AuthenticationError as exc:
            raise Unauthenticated(str(exc)) from exc
        if read:
            self._limits.read(principal.subject)
        return principal

    async def _run(self, context: grpc.aio.ServicerContext[Any, Any], call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except ApiError as error:
            await _abort(context, error)
        except grpc.aio.AbortError:
            raise
        except (OperationalError, PoolTimeout) as exc:
            # The database is away: temporary, and the caller may retry (the pool reconnects once it is back).
            log.warning("gRPC call failed: the database is unavailable", extra={"error": repr(exc)})
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the database is unavailable; retry shortly")
            raise
        except Exception:
            # The caller gets a plain INTERNAL; the details stay in the log, not on the wire.
            log.exception("gRPC call failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            raise

    # ---- unary calls ----------------------------------------------------------------------------------

    async def CreateOrder(
        self, request: pb.CreateOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.OrderResponse:
        """Book an order (idempotent on client_order_id or the ``idempotency-key`` metadata)."""

        async def call() -> pb.OrderResponse:
            principal = self._principal(context, read=False)
            try:
                body = mapping.create_request_body(request)
            except mapping.MappingError as exc:
                raise InvalidRequest(str(exc), [FieldError(exc.field, exc.message)]) from exc
            metadata = {key.lower(): value for key, value in (context.invocation_metadata() or ())}
            key = metadata.get("idempotency-key")
            if isinstance(key, str) and key:
                if body.get("clientOrderId", key) != key:
                    raise InvalidRequest(
                        "client_order_id must equal the idempotency-key metadata",
                        [FieldError("clientOrderId", "must equal the idempotency-key metadata")],
                    )
                body["clientOrderId"] = key
            try:
                loaded = CreateOrderRequestSchema().load(body)
            except ValidationError as exc:
                raise InvalidRequest(
                    "Invalid order request",
                    [FieldError(str(k), "; ".join(map(str, v))) for k, v in exc.normalized_messages().items()],
                ) from exc
            order, _created = await asyncio.to_thread(
                self._service.create, principal, order_request_of(loaded, loaded.get("client_order_id"))
            )
            return mapping.order_response(order)

        return await self._run(context, call)

    async def GetOrder(
        self, request: pb.GetOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.OrderResponse:
        """The order with its execution reports."""

        async def call() -> pb.OrderResponse:
            principal = self._principal(context)
            order = await asyncio.to_thread(self._service.get, principal, request.order_id)
            return mapping.order_response(order)

        return await self._run(context, call)

    async def GetOrderEvents(
        self, request: pb.GetOrderEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetOrderEventsResponse:
        """The order's audit trail in sequence (the rules of GetOrder: NOT_FOUND for another account's order)."""

        async def call() -> pb.GetOrderEventsResponse:
            principal = self._principal(context)
            errors: list[FieldError] = []
            if request.after_sequence < 0:
                errors.append(FieldError("afterSequence", "must be 0 or more"))
            if not 0 <= request.limit <= MAX_EVENTS:
                errors.append(FieldError("limit", f"must be 1 to {MAX_EVENTS} (0: {MAX_EVENTS})"))
            if errors:
                raise InvalidRequest("Invalid request", errors)
            events = await asyncio.to_thread(
                visible_order_events,
                self._service,
                self._engine,
                principal,
                request.order_id,
                request.after_sequence,
                request.limit or MAX_EVENTS,
            )
            return mapping.order_events_response(request.order_id, events)

        return await self._run(context, call)

    async def CancelOrder(
        self, request: pb.CancelOrderRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.OrderResponse:
        """Cancel the order (FAILED_PRECONDITION when it is done or a cancel is already outstanding)."""

        async def call() -> pb.OrderResponse:
            principal = self._principal(context, read=False)
            order = await asyncio.to_thread(self._service.cancel, principal, request.order_id, request.reason or None)
            return mapping.order_response(order)

        return await self._run(context, call)

    async def UpdateOrderStatus(
        self, request: pb.UpdateOrderStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.OrderResponse:
        """Publish the caller's execution report to ``oms``/``execution.report`` (scope ``operations``).

        The execution handler applies it asynchronously, as it does reports arriving over AMQP; the answer
        is the order as it stands when the report is accepted by the broker.
        """

        async def call() -> pb.OrderResponse:
            principal = self._principal(context)
            OrderService.require_scope(principal, SCOPE_OPERATIONS)
            # On the primary: the report is built on the order's current figures, which a replica may lag.
            order = await asyncio.to_thread(self._service.visible_order, principal, request.order_id, primary=True)
            body = build_report(order, request, datetime.now(UTC))
            with log_context(order_id=order["id"], correlation_id=order["id"]):
                try:
                    await self._publisher.publish_json(
                        EXECUTION_REPORT.exchange,
                        EXECUTION_REPORT.routing_key,
                        EXECUTION_REPORT.type,
                        body,
                        correlation_id=order["id"],
                        headers=user_headers(principal.subject),
                    )
                except Exception as exc:
                    log.warning("execution report not published", extra={"error": repr(exc)})
                    raise Unavailable("the broker did not accept the execution report; retry") from exc
                log.info(
                    "execution report published",
                    extra={"execution_id": body["executionId"], "exec_type": body["execType"]},
                )
            return mapping.order_response(order)

        return await self._run(context, call)

    # ---- streaming ------------------------------------------------------------------------------------

    async def StreamOrderUpdates(
        self, request: pb.StreamOrderUpdatesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.OrderUpdate]:
        """Live order updates for the caller's accounts, filtered by account, symbols and statuses."""
        try:
            subscription = subscription_of(self._principal(context), request)
            # Closed here, not left to the garbage collector, so the queue goes when the call ends.
            async with contextlib.aclosing(
                order_updates(self._amqp, subscription, context, self.active_streams)
            ) as updates:
                async for update in updates:
                    yield update
        except ApiError as error:
            await _abort(context, error)
