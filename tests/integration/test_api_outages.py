"""The front end outlives broker and database outages: the gRPC update stream reconnects its consumer, REST
answers 503 while the database is away and serves again when it is back, and a database that does not answer
is a 503 / UNAVAILABLE within a second, not a hang."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import grpc
import pytest
from sqlalchemy import Engine

from common import jsonutil
from common.domain import Order, OrderState, OrderType, Side, TimeInForce
from common.messages.bodies import order_update_body
from common.messages.exchanges import ORDER_UPDATES_EXCHANGE
from common.messaging.connection import connect
from common.messaging.publisher import Publisher
from common.settings import InfraSettings, Settings
from common.store.outbox import OutboxMessage
from proto.gen import order_pb2 as pb
from proto.gen import order_pb2_grpc as pb_grpc
from services.api.app import create_app
from services.api.database import front_end_engine
from services.api.grpc_server import GrpcServer
from services.api.grpc_stream import SUBSCRIBED_METADATA
from tests.support import outages
from tests.support.api import grpc_metadata, new_account, private_vhost, token_service
from tests.support.polling import async_wait_until

if TYPE_CHECKING:
    from tools.infra import InfraUrls

pytestmark = pytest.mark.integration

# The promise: an answer within a second. The front end gives up on the database after
# OMS_API_DB_TIMEOUT_SECONDS (0.5 s by default); the rest of the second is the margin for the answer itself,
# which a loaded CI machine was once seen to take 0.2 s of.
ANSWER_WITHIN_SECONDS = 1.0


@pytest.fixture(scope="module")
def settings(infra_urls: InfraUrls, amqp_url: str, database_url: str) -> Iterator[Settings]:
    if not infra_urls.management_url:
        pytest.skip("needs the RabbitMQ management API")
    with private_vhost(infra_urls, amqp_url) as url:
        yield Settings(infra=InfraSettings(database_url=database_url, amqp_url=url))


@pytest.fixture(scope="module")
async def server(engine: Engine, settings: Settings) -> AsyncIterator[GrpcServer]:
    server = GrpcServer(settings, engine, tokens=token_service(), host="127.0.0.1", port=0)
    await server.start()
    yield server
    await server.stop(0.5)


def _update(account: str) -> OutboxMessage:
    now = datetime.now(UTC)
    order = Order(
        id=str(uuid.uuid4()),
        account_id=account,
        symbol="AAPL",
        side=Side.BUY,
        type=OrderType.LIMIT,
        quantity=Decimal("100"),
        price=Decimal("190"),
        time_in_force=TimeInForce.DAY,
        state=OrderState.OPEN,
        filled_quantity=Decimal("0"),
        average_execution_price=None,
        created_at=now,
        updated_at=now,
        version=1,
    )
    return OutboxMessage(
        message_id=str(uuid.uuid4()),
        exchange=ORDER_UPDATES_EXCHANGE,
        routing_key=f"{order.account_id}.{order.symbol}.{order.status.value}",
        type="OrderUpdate",
        correlation_id=order.id,
        body=jsonutil.dumps(order_update_body(order, None)),
    )


async def test_order_update_stream_survives_a_broker_restart(
    server: GrpcServer, settings: Settings, engine: Engine, infra_urls: InfraUrls
) -> None:
    account = new_account(engine)
    connection = await connect(settings.infra.amqp_url, "tests.order_updates")
    publisher = Publisher(connection)
    received: list[pb.OrderUpdate] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.OrderServiceStub(channel)
        call = stub.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(account_id=account), metadata=grpc_metadata())

        async def collect() -> None:
            async for update in call:
                received.append(update)

        task = asyncio.ensure_future(collect())
        try:
            assert SUBSCRIBED_METADATA in tuple(await call.initial_metadata())
            first = _update(account)
            assert await publisher.publish([first]) == [first.message_id]
            await async_wait_until(lambda: len(received) >= 1, timeout=60, message="the first update")

            vhost = outages.vhost_of(settings.infra.amqp_url)
            await async_wait_until(
                lambda: asyncio.to_thread(outages.kill_connections, infra_urls.management_url, vhost, "oms.api.grpc"),
                timeout=30,
                message="the gRPC server's broker connection closed",
            )
            # Updates published while the stream's queue is being declared again are lost to it (a live stream,
            # not a log): publish until one gets through, and check the call never ended meanwhile.
            sent: set[str] = set()

            async def one_more_arrives() -> bool:
                assert not task.done(), f"the stream ended: {task.exception() if task.done() else None!r}"
                update = _update(account)
                await publisher.publish([update])
                sent.add(update.correlation_id or "")
                return any(u.order_id in sent for u in received)

            await async_wait_until(one_more_arrives, timeout=40, interval=0.5, message="an update after the restart")
        finally:
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await task
            await connection.close()


def test_rest_answers_503_while_the_database_is_away_and_serves_again_after(
    engine: Engine, database_url: str, amqp_url: str
) -> None:
    from services.api.health import answer_503_while_the_database_is_away
    from tests.support.api import bearer, rest_app

    app = rest_app(engine, database_url, amqp_url)
    answer_503_while_the_database_is_away(app)
    client = app.test_client()
    account = new_account(engine)
    headers = {"Authorization": bearer(accounts=[account])}
    url = f"/orders?accountId={account}&page=0&size=5"
    assert client.get(url, headers=headers).status_code == 200
    with outages.database_down(database_url):
        started = time.perf_counter()
        answer = client.get(url, headers=headers)
        elapsed = time.perf_counter() - started
        assert answer.status_code == 503, answer.get_data(as_text=True)
        assert answer.headers["Retry-After"]
        assert elapsed < ANSWER_WITHIN_SECONDS, elapsed
    assert client.get(url, headers=headers).status_code == 200


@pytest.fixture()
def silent_database() -> Iterator[str]:
    """A database URL whose server accepts TCP connections and never answers (a stopped or hung Postgres, as its
    clients see it: the kernel completes the handshake, nothing replies)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"postgresql+psycopg://oms:oms@127.0.0.1:{listener.getsockname()[1]}/oms"


@pytest.fixture()
def closed_port_database() -> str:
    """A database URL on a port where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"postgresql+psycopg://oms:oms@127.0.0.1:{port}/oms"


@pytest.mark.parametrize("database", ["silent_database", "closed_port_database"])
def test_rest_answers_503_within_a_second_when_the_database_does_not_answer(
    database: str, request: pytest.FixtureRequest, amqp_url: str
) -> None:
    from tests.support.api import bearer

    settings = Settings(infra=InfraSettings(database_url=request.getfixturevalue(database), amqp_url=amqp_url))
    engine = front_end_engine(settings)
    try:
        client = create_app(settings, engine, tokens=token_service()).test_client()
        headers = {"Authorization": bearer()}
        # Twice: the first meets an empty pool, the second the pool after a failed connection.
        for path in ("/orders?page=0&size=5", f"/orders/{uuid.uuid4()}"):
            started = time.perf_counter()
            answer = client.get(path, headers=headers)
            elapsed = time.perf_counter() - started
            assert answer.status_code == 503, answer.get_data(as_text=True)
            assert answer.get_json()["code"] == "SERVICE_UNAVAILABLE" and answer.headers["Retry-After"]
            assert elapsed < ANSWER_WITHIN_SECONDS, (path, elapsed)
        started = time.perf_counter()
        answer = client.post("/orders", json={**_ORDER, "accountId": "ACC-001"}, headers=headers)
        assert answer.status_code == 503, answer.get_data(as_text=True)
        assert time.perf_counter() - started < ANSWER_WITHIN_SECONDS
    finally:
        engine.dispose()


_ORDER = {"symbol": "AAPL", "side": "BUY", "type": "LIMIT", "quantity": 100, "price": 189.5, "timeInForce": "DAY"}


async def test_grpc_answers_unavailable_within_a_second_when_the_database_does_not_answer(
    silent_database: str, settings: Settings
) -> None:
    silent = Settings(infra=InfraSettings(database_url=silent_database, amqp_url=settings.infra.amqp_url))
    engine = front_end_engine(silent)
    server = GrpcServer(silent, engine, tokens=token_service(), host="127.0.0.1", port=0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.OrderServiceStub(channel)
            # Each call is made when it is timed (a grpc.aio call starts when it is created).
            calls: tuple[Callable[[], Awaitable[object]], ...] = (
                lambda: stub.GetOrder(pb.GetOrderRequest(order_id=str(uuid.uuid4())), metadata=grpc_metadata()),
                lambda: stub.CreateOrder(
                    pb.CreateOrderRequest(
                        account_id="ACC-001",
                        symbol="AAPL",
                        side=pb.ORDER_SIDE_BUY,
                        type=pb.ORDER_TYPE_LIMIT,
                        quantity=100,
                        price=189.5,
                        time_in_force=pb.TIME_IN_FORCE_DAY,
                    ),
                    metadata=grpc_metadata(),
                ),
            )
            for call in calls:
                started = time.perf_counter()
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await call()
                elapsed = time.perf_counter() - started
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value.details()
                assert elapsed < ANSWER_WITHIN_SECONDS, elapsed
    finally:
        await server.stop(0.5)
        engine.dispose()
