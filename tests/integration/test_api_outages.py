"""The front end outlives broker and database outages: the gRPC update stream reconnects its consumer, REST
answers 503 while the database is away and serves again when it is back."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import grpc
import pytest
from sqlalchemy import Engine

from common import jsonutil
from common.config import Settings
from common.domain import Order, OrderState, OrderType, Side, TimeInForce
from common.messaging.connection import connect
from common.messaging.publisher import Publisher
from common.messaging.topology import ORDER_UPDATES_EXCHANGE
from common.store.orders_repo import order_update_body
from common.store.outbox import OutboxMessage
from proto.gen import order_pb2 as pb
from proto.gen import order_pb2_grpc as pb_grpc
from services.api.grpc_server import SUBSCRIBED_METADATA, GrpcServer
from tests.support import outages
from tests.support.api import grpc_metadata, new_account, private_vhost, token_service
from tests.support.polling import async_wait_until

if TYPE_CHECKING:
    from tools.infra import InfraUrls

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(infra_urls: InfraUrls, amqp_url: str, database_url: str) -> Iterator[Settings]:
    if not infra_urls.management_url:
        pytest.skip("needs the RabbitMQ management API")
    with private_vhost(infra_urls, amqp_url) as url:
        yield Settings(database_url=database_url, amqp_url=url)


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
    connection = await connect(settings.amqp_url, "tests.order_updates")
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

            vhost = outages.vhost_of(settings.amqp_url)
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
        answer = client.get(url, headers=headers)
        assert answer.status_code == 503, answer.get_data(as_text=True)
        assert answer.headers["Retry-After"]
    assert client.get(url, headers=headers).status_code == 200
