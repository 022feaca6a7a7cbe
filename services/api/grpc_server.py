"""The gRPC server (``trading.order.v1.OrderService`` on grpc.aio) with health and server reflection.

:class:`GrpcServer` starts and stops it; :func:`run_in_child` is the process ``python -m services.api`` starts
beside gunicorn. The calls are in ``services.api.grpc_servicer``, the update stream in
``services.api.grpc_stream``. The broker connection waits for a broker that is down at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from aio_pika.abc import AbstractRobustConnection
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy import Engine

from common.messaging.connection import connect
from common.messaging.topology import declare_topology
from common.runtime.process import configure_process, stop_on_signals
from common.settings import Settings
from common.tls import grpc_server_credentials
from proto.gen import order_pb2_grpc as pb_grpc
from services.api.auth import TokenService
from services.api.grpc_servicer import SERVICE_NAME, OrderServicer
from services.api.health import ReadinessProbe
from services.api.order_service import OrderService
from services.api.rate_limit import FrontEndLimits

log = logging.getLogger(__name__)

HEALTH_INTERVAL_SECONDS = 5.0


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
        limits: FrontEndLimits | None = None,
        read_engine: Engine | None = None,
    ) -> None:
        self.settings = settings
        self._limits = limits or FrontEndLimits.from_settings(settings.api)
        host = settings.api.host if host is None else host
        self._engine = engine
        # The order queries' engine (Get, List, GetOrderEvents): a replica's pool, or ``engine`` itself.
        self._read_engine = read_engine or engine
        self._tokens = tokens or TokenService.from_settings(settings.api)
        self._readiness = readiness or ReadinessProbe(engine, settings.infra.amqp_urls)
        self._address = f"{host}:{settings.api.grpc_port if port is None else port}"
        self._server: grpc.aio.Server | None = None
        self._amqp: AbstractRobustConnection | None = None
        self._health = health.aio.HealthServicer()
        self._health_task: asyncio.Task[None] | None = None
        self.servicer: OrderServicer | None = None
        self.port = 0

    async def start(self) -> int:
        """Connect to the broker, declare the topology, bind and start serving; returns the bound port."""
        self._amqp = await connect(self.settings.infra.amqp_urls, "oms.api.grpc")
        channel = await self._amqp.channel()
        try:
            if self.settings.infra.amqp_declare_topology:  # else the broker's definitions own it
                await declare_topology(channel, self.settings.stage.delivery_limit)
        finally:
            await channel.close()
        self.servicer = OrderServicer(
            OrderService(self._engine, self._limits, self._read_engine),
            self._tokens,
            self._amqp,
            self._read_engine,
            self._limits,
        )
        server = grpc.aio.server()
        pb_grpc.add_OrderServiceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        if self.settings.tls.grpc:  # TLS only: a plaintext client's handshake fails, the call is UNAVAILABLE
            self.port = server.add_secure_port(self._address, grpc_server_credentials(self.settings.tls))
        else:
            self.port = server.add_insecure_port(self._address)
        if self.port == 0:
            raise RuntimeError(f"gRPC server could not bind {self._address}")
        await server.start()
        self._server = server
        await self._report_health()
        self._health_task = asyncio.create_task(self._health_loop())
        log.info("gRPC server listening", extra={"port": self.port, "tls": self.settings.tls.grpc})
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


async def serve_forever(
    settings: Settings, engine: Engine, host: str, port: int, read_engine: Engine | None = None
) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully."""
    server = GrpcServer(settings, engine, host=host, port=port, read_engine=read_engine)
    await server.start()
    stopping = asyncio.Event()
    stop_on_signals(stopping.set)
    await stopping.wait()
    log.info("gRPC server stopping")
    await server.stop()


def run_in_child(settings: Settings, host: str, port: int) -> None:
    """Entry point of the gRPC child process that ``python -m services.api`` starts beside gunicorn (given the
    parent's settings)."""
    from services.api.database import front_end_engine, query_engine

    configure_process("oms.api.grpc", settings)
    engine = front_end_engine(settings)
    asyncio.run(serve_forever(settings, engine, host, port, query_engine(settings, engine)))
