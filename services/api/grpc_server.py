"""The gRPC front end (``trading.order.v1.OrderService`` on grpc.aio), with health and server reflection.

Calls share the REST front end's order service (run in threads: SQLAlchemy is synchronous). Bearer tokens
come in the ``authorization`` metadata. StreamOrderUpdates consumes an exclusive, auto-deleted queue bound to
``oms.order_updates`` with one routing key per (account, symbol, status) asked for; it sends its initial
metadata once the queue is bound (so a client that waits for it misses nothing) and ends, deleting the
queue, when the client goes away. Its channel is a robust one: after a broker restart aio-pika declares the
queue again, binds it and consumes again, and the stream goes on (updates published meanwhile are not seen:
a live stream, not a log). The broker connection waits for a broker that is down at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import grpc
from aio_pika.abc import AbstractRobustConnection
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from marshmallow import ValidationError, validate
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from common import jsonutil
from common.config import Settings
from common.logging import log_context
from common.messaging.connection import connect
from common.messaging.publisher import Publisher
from common.messaging.topology import ORDER_UPDATES_EXCHANGE, declare_topology
from proto.gen import order_pb2 as pb
from proto.gen import order_pb2_grpc as pb_grpc
from services.api import grpc_mapping as mapping
from services.api.auth import SCOPE_OPERATIONS, SCOPE_READ, AuthenticationError, Principal, TokenService
from services.api.errors import (
    ApiError,
    Conflict,
    FieldError,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from services.api.health import ReadinessProbe
from services.api.order_events import MAX_EVENTS, visible_order_events
from services.api.order_service import OrderService, order_request_of
from services.api.schemas import CreateOrderRequestSchema, Identifier
from services.api.status_report import build_report

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["OrderService"].full_name
EXECUTION_REPORT_KEY = "execution.report"
SUBSCRIBED_METADATA = ("x-oms-subscribed", "true")
# One binding per (account, symbol, status); a subscription that needs more is unreasonable.
MAX_BINDINGS = 1000
HEALTH_INTERVAL_SECONDS = 5.0

_CODES: dict[type[ApiError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def _details(error: ApiError) -> str:
    if isinstance(error, InvalidRequest) and error.errors:
        return "; ".join(f"{e.field}: {e.message}" for e in error.errors)
    return error.message


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: ApiError) -> NoReturn:
    code = next(code for kind, code in _CODES.items() if isinstance(error, kind))
    await context.abort(code, _details(error))
    raise AssertionError("unreachable")  # pragma: no cover - abort raises


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


class OrderServicer(pb_grpc.OrderServiceServicer):
    """The calls of ``trading.order.v1.OrderService``: the specification's five and GetOrderEvents."""

    def __init__(
        self, service: OrderService, tokens: TokenService, amqp: AbstractRobustConnection, engine: Engine
    ) -> None:
        self._service = service
        self._engine = engine
        self._tokens = tokens
        self._amqp = amqp
        self._publisher = Publisher(amqp)
        # Queue names of the streams running now (tests and metrics look at it).
        self.active_streams: set[str] = set()

    # ---- plumbing -------------------------------------------------------------------------------------

    def _principal(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        metadata = {key.lower(): value for key, value in (context.invocation_metadata() or ())}
        header = metadata.get("authorization")
        try:
            return self._tokens.verify_header(header if isinstance(header, str) else None)
        except AuthenticationError as exc:
            raise Unauthenticated(str(exc)) from exc

    async def _run(self, context: grpc.aio.ServicerContext[Any, Any], call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except ApiError as error:
            await _abort(context, error)
        except grpc.aio.AbortError:
            raise
        except OperationalError as exc:
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
            principal = self._principal(context)
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
            principal = self._principal(context)
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
            order = await asyncio.to_thread(self._service.visible_order, principal, request.order_id)
            body = build_report(order, request, datetime.now(UTC))
            with log_context(order_id=order["id"], correlation_id=order["id"]):
                try:
                    await self._publisher.publish_json(
                        "oms",
                        EXECUTION_REPORT_KEY,
                        "ExecutionReport",
                        body,
                        correlation_id=order["id"],
                        headers={"x-oms-user": principal.subject},
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

    def _subscription(self, principal: Principal, request: pb.StreamOrderUpdatesRequest) -> Subscription:
        OrderService.require_scope(principal, SCOPE_READ)
        accounts: frozenset[str] | None
        if request.account_id:
            self._check_identifier("account_id", request.account_id, 36)
            OrderService.require_account(principal, request.account_id)
            accounts = frozenset({request.account_id})
        else:
            accounts = principal.account_filter()
        for symbol in request.symbols:
            self._check_identifier("symbols", symbol, 20)
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

    @staticmethod
    def _check_identifier(field: str, value: str, max_length: int) -> None:
        try:
            Identifier(validate=validate.Length(1, max_length)).deserialize(value)
        except ValidationError as exc:
            raise InvalidRequest(f"{field}: {value!r} is not valid", [FieldError(field, str(exc))]) from exc

    async def StreamOrderUpdates(
        self, request: pb.StreamOrderUpdatesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.OrderUpdate]:
        """Live order updates for the caller's accounts, filtered by account, symbols and statuses."""
        try:
            principal = self._principal(context)
            subscription = self._subscription(principal, request)
        except ApiError as error:
            await _abort(context, error)
        try:
            channel = await self._amqp.channel()
        except Exception as exc:  # the broker is away; the robust connection is reconnecting
            log.warning("order update stream refused: no broker channel", extra={"error": repr(exc)})
            await _abort(context, Unavailable("the broker is unavailable; retry shortly"))
        queue_name = ""
        try:
            await channel.set_qos(prefetch_count=256)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            queue_name = queue.name
            exchange = await channel.get_exchange(ORDER_UPDATES_EXCHANGE, ensure=False)
            for key in subscription.binding_keys():
                await queue.bind(exchange, routing_key=key)
            self.active_streams.add(queue_name)
            log.info("order update stream opened", extra={"queue": queue_name, "user_id": principal.subject})
            await context.send_initial_metadata((SUBSCRIBED_METADATA,))
            async with queue.iterator() as messages:
                async for message in messages:
                    async with message.process():
                        update = self._update_of(subscription, message.body)
                    if update is not None:
                        yield update
        finally:
            self.active_streams.discard(queue_name)
            with contextlib.suppress(Exception):
                await asyncio.shield(channel.close())
            log.info("order update stream closed", extra={"queue": queue_name})

    @staticmethod
    def _update_of(subscription: Subscription, raw: bytes) -> pb.OrderUpdate | None:
        try:
            body = jsonutil.loads(raw)
            if not subscription.wants(body):
                return None
            return mapping.order_update(body)
        except Exception as exc:  # a malformed update must not end the caller's stream
            log.warning("order update skipped", extra={"error": repr(exc)})
            return None


class GrpcServer:
    """The gRPC server with its broker connection and health reporting; ``start`` then ``stop``."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        tokens: TokenService | None = None,
        readiness: ReadinessProbe | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        self.settings = settings
        host = settings.api_host if host is None else host
        self._engine = engine
        self._tokens = tokens or TokenService.from_settings(settings)
        self._readiness = readiness or ReadinessProbe(engine, settings.amqp_url)
        self._address = f"{host}:{settings.grpc_port if port is None else port}"
        self._server: grpc.aio.Server | None = None
        self._amqp: AbstractRobustConnection | None = None
        self._health = health.aio.HealthServicer()
        self._health_task: asyncio.Task[None] | None = None
        self.servicer: OrderServicer | None = None
        self.port = 0

    async def start(self) -> int:
        """Connect to the broker, declare the topology, bind and start serving; returns the bound port."""
        self._amqp = await connect(self.settings.amqp_url, "oms.api.grpc")
        channel = await self._amqp.channel()
        try:
            await declare_topology(channel, self.settings.delivery_limit)
        finally:
            await channel.close()
        self.servicer = OrderServicer(OrderService(self._engine), self._tokens, self._amqp, self._engine)
        server = grpc.aio.server()
        pb_grpc.add_OrderServiceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        self.port = server.add_insecure_port(self._address)
        if self.port == 0:
            raise RuntimeError(f"gRPC server could not bind {self._address}")
        await server.start()
        self._server = server
        await self._report_health()
        self._health_task = asyncio.create_task(self._health_loop())
        log.info("gRPC server listening", extra={"port": self.port})
        return self.port

    async def _report_health(self) -> None:
        result = await asyncio.to_thread(self._readiness.check)
        status = health_pb2.HealthCheckResponse.SERVING if result.ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self._health.set(name, status)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_SECONDS)
            try:
                await self._report_health()
            except Exception as exc:  # the loop must outlive a failed probe
                log.warning("health probe failed", extra={"error": repr(exc)})

    async def wait(self) -> None:
        """Serve until the server stops."""
        assert self._server is not None
        await self._server.wait_for_termination()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting calls, end the streams, close the broker connection."""
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self._amqp is not None:
            await self._amqp.close()


async def serve_forever(settings: Settings, engine: Engine, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully."""
    server = GrpcServer(settings, engine, host=host, port=port)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("gRPC server stopping")
    await server.stop()


def run_in_child(host: str, port: int) -> None:
    """Entry point of the gRPC child process that ``python -m services.api`` starts beside gunicorn."""
    from common import bootstrap
    from common.logging import configure_logging

    configure_logging("oms.api.grpc", bootstrap.settings().log_level)
    asyncio.run(serve_forever(bootstrap.settings(), bootstrap.engine(), host, port))
