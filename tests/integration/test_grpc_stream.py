"""gRPC StreamOrderUpdates: live updates from ``oms.order_updates``, filtered, in order, ending cleanly.

The first tests publish OrderUpdate messages as the pipeline does (``order_update_body`` through the
confirming publisher). The last one runs the real path while it happens: an order created over gRPC, its
update relayed from the outbox, the venue's reports sent with UpdateOrderStatus and applied by the
execution handler, from PENDING to FILLED.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aio_pika
import grpc
import pytest
from sqlalchemy import Engine

from common import jsonutil
from common.domain import Order, OrderState, OrderType, Side, TimeInForce
from common.messages.bodies import order_update_body
from common.messages.exchanges import ORDER_UPDATES_EXCHANGE
from common.messaging.connection import connect
from common.messaging.publisher import Publisher
from common.runtime.outbox_relay import OutboxRelay
from common.runtime.stage import StageWorker
from common.settings import InfraSettings, Settings, StageSettings
from common.store.outbox import OutboxMessage
from proto.gen import order_pb2 as pb
from proto.gen import order_pb2_grpc as pb_grpc
from services.api.auth import SCOPE_READ
from services.api.grpc_server import GrpcServer
from services.api.grpc_stream import SUBSCRIBED_METADATA
from services.execution_handler.spec import SPEC as EXECUTION_HANDLER
from tests.support.api import bearer, grpc_metadata, new_account, private_vhost, token_service
from tests.support.orders import changing_order
from tests.support.polling import async_wait_until

if TYPE_CHECKING:
    from tools.infra import InfraUrls

STATUS = pb.OrderStatus


@pytest.fixture(scope="module")
def settings(infra_urls: InfraUrls, amqp_url: str, database_url: str) -> Iterator[Settings]:
    with private_vhost(infra_urls, amqp_url) as url:
        yield Settings(
            infra=InfraSettings(database_url=database_url, amqp_url=url),
            stage=StageSettings(outbox_poll_seconds=0.2, batch_linger_ms=1.0),
        )


@pytest.fixture(scope="module")
async def server(engine: Engine, settings: Settings) -> AsyncIterator[GrpcServer]:
    server = GrpcServer(settings, engine, tokens=token_service(), host="127.0.0.1", port=0)
    await server.start()
    yield server
    await server.stop(0.5)


@pytest.fixture(scope="module")
async def stub(server: GrpcServer) -> AsyncIterator[pb_grpc.OrderServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.OrderServiceStub(channel)


@pytest.fixture(scope="module")
async def publisher(settings: Settings, server: GrpcServer) -> AsyncIterator[Publisher]:
    connection = await connect(settings.infra.amqp_url, "tests.order_updates")
    yield Publisher(connection)
    await connection.close()


def _order(account: str, symbol: str, state: OrderState, filled: str = "0", version: int = 1) -> Order:
    now = datetime.now(UTC)
    return Order(
        id=str(uuid.uuid4()),
        account_id=account,
        symbol=symbol,
        side=Side.BUY,
        type=OrderType.LIMIT,
        quantity=Decimal("100"),
        price=Decimal("190"),
        time_in_force=TimeInForce.DAY,
        state=state,
        filled_quantity=Decimal(filled),
        average_execution_price=Decimal("190") if Decimal(filled) else None,
        created_at=now,
        updated_at=now,
        version=version,
    )


async def _publish(publisher: Publisher, order: Order, latest: dict[str, Any] | None = None) -> None:
    """Publish an OrderUpdate exactly as the pipeline's outbox does."""
    body = order_update_body(order, latest)
    message = OutboxMessage(
        message_id=str(uuid.uuid4()),
        exchange=ORDER_UPDATES_EXCHANGE,
        routing_key=f"{order.account_id}.{order.symbol}.{order.status.value}",
        type="OrderUpdate",
        correlation_id=order.id,
        body=jsonutil.dumps(body),
    )
    assert await publisher.publish([message]) == [message.message_id]


class Subscription:
    """A running StreamOrderUpdates call and the updates it has received so far."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.received: list[pb.OrderUpdate] = []
        self.task = asyncio.ensure_future(self._collect())

    async def _collect(self) -> None:
        async for update in self.call:
            self.received.append(update)

    async def ready(self) -> None:
        metadata = await self.call.initial_metadata()
        assert SUBSCRIBED_METADATA in tuple(metadata), metadata

    async def until(self, count: int) -> list[pb.OrderUpdate]:
        await async_wait_until(lambda: len(self.received) >= count, timeout=60, message=f"{count} updates")
        return self.received

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self.task


@contextlib.asynccontextmanager
async def subscribe(
    stub: pb_grpc.OrderServiceStub, request: pb.StreamOrderUpdatesRequest, authorization: str | None = None
) -> AsyncIterator[Subscription]:
    subscription = Subscription(stub.StreamOrderUpdates(request, metadata=grpc_metadata(authorization)))
    try:
        await subscription.ready()
        yield subscription
    finally:
        await subscription.close()


async def test_filters_by_account_symbols_and_statuses(
    stub: pb_grpc.OrderServiceStub, publisher: Publisher, engine: Engine
) -> None:
    mine, other = new_account(engine), new_account(engine)
    request = pb.StreamOrderUpdatesRequest(
        account_id=mine, symbols=["AAPL", "SPY"], statuses=[STATUS.ORDER_STATUS_FILLED, STATUS.ORDER_STATUS_CANCELED]
    )
    async with subscribe(stub, request) as subscription:
        wanted_first = _order(mine, "AAPL", OrderState.FILLED, filled="100", version=5)
        wanted_last = _order(mine, "SPY", OrderState.CANCELED, version=3)
        for order in (
            _order(mine, "AAPL", OrderState.OPEN),  # status not asked for
            wanted_first,
            _order(mine, "MSFT", OrderState.FILLED, filled="100"),  # symbol not asked for
            _order(other, "AAPL", OrderState.FILLED, filled="100"),  # another account
            wanted_last,
        ):
            await _publish(publisher, order)
        # One publisher, one queue: anything the filter let through would arrive before the last update.
        received = await subscription.until(2)
    assert [u.order_id for u in received] == [wanted_first.id, wanted_last.id]
    first = received[0]
    assert first.status == STATUS.ORDER_STATUS_FILLED and first.filled_quantity == 100
    assert first.account_id == mine and first.symbol == "AAPL" and first.state == "FILLED" and first.version == 5
    assert first.average_execution_price == 190 and first.timestamp.seconds > 0


async def test_without_filters_streams_every_update_of_the_callers_accounts(
    stub: pb_grpc.OrderServiceStub, publisher: Publisher, engine: Engine
) -> None:
    mine, other = new_account(engine), new_account(engine)
    token = bearer(accounts=[mine], scopes=[SCOPE_READ])
    async with subscribe(stub, pb.StreamOrderUpdatesRequest(), token) as subscription:
        orders = [
            _order(other, "AAPL", OrderState.NEW),
            _order(mine, "MSFT", OrderState.NEW),
            _order(other, "MSFT", OrderState.OPEN),
            _order(mine, "VOD.L", OrderState.OPEN),  # a symbol with a dot: more words in the routing key
            _order(mine, "BTCUSD", OrderState.PARTIALLY_FILLED, filled="0.5"),
        ]
        for order in orders:
            await _publish(publisher, order)
        received = await subscription.until(3)
    assert [u.order_id for u in received] == [orders[1].id, orders[3].id, orders[4].id]
    assert received[1].symbol == "VOD.L" and received[2].filled_quantity == 0.5


async def test_symbols_with_dots_filter_exactly(
    stub: pb_grpc.OrderServiceStub, publisher: Publisher, engine: Engine
) -> None:
    mine = new_account(engine)
    request = pb.StreamOrderUpdatesRequest(account_id=mine, symbols=["BRK.B"])
    async with subscribe(stub, request) as subscription:
        orders = [
            _order(mine, "BRK.B", OrderState.OPEN),
            _order(mine, "BRK", OrderState.OPEN),
            _order(mine, "BRK.B.X", OrderState.OPEN),
            _order(mine, "BRK.B", OrderState.FILLED, filled="100"),
        ]
        for order in orders:
            await _publish(publisher, order)
        received = await subscription.until(2)
    assert [u.order_id for u in received] == [orders[0].id, orders[3].id]


async def test_latest_execution_is_carried(
    stub: pb_grpc.OrderServiceStub, publisher: Publisher, engine: Engine
) -> None:
    mine = new_account(engine)
    async with subscribe(stub, pb.StreamOrderUpdatesRequest(account_id=mine)) as subscription:
        execution = {
            "id": str(uuid.uuid4()),
            "executionId": "E-9",
            "quantity": Decimal("40"),
            "price": Decimal("190.5"),
            "timestamp": datetime.now(UTC),
            "fees": Decimal("0.2"),
            "venue": "SIM",
        }
        await _publish(publisher, _order(mine, "AAPL", OrderState.PARTIALLY_FILLED, filled="40"), execution)
        (update,) = await subscription.until(1)
    latest = update.latest_execution
    assert (latest.execution_id, latest.quantity, latest.price, latest.fees, latest.venue) == (
        "E-9",
        40,
        190.5,
        0.2,
        "SIM",
    )


async def test_stream_ends_cleanly_when_the_client_goes_away(
    stub: pb_grpc.OrderServiceStub, server: GrpcServer, settings: Settings, engine: Engine
) -> None:
    servicer = server.servicer
    assert servicer is not None
    before = set(servicer.active_streams)
    subscription = Subscription(stub.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(), metadata=grpc_metadata()))
    await subscription.ready()
    (queue_name,) = set(servicer.active_streams) - before
    await subscription.close()
    assert subscription.call.cancelled()
    await async_wait_until(lambda: queue_name not in servicer.active_streams, message="the stream to end")

    async def queue_gone() -> bool:
        connection = await aio_pika.connect(settings.infra.amqp_url)
        try:
            channel = await connection.channel()
            await channel.declare_queue(queue_name, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return True
        finally:
            await connection.close()
        return False

    assert await async_wait_until(queue_gone, message="the stream's queue to be deleted")


@pytest.mark.parametrize(
    ("request_fields", "code"),
    [
        ({"statuses": [STATUS.ORDER_STATUS_UNSPECIFIED]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"symbols": ["AAPL.#"]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"account_id": "ACC.*"}, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_invalid_subscriptions(stub: pb_grpc.OrderServiceStub, request_fields: dict[str, Any], code: Any) -> None:
    call = stub.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(**request_fields), metadata=grpc_metadata())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in call:
            pass
    assert raised.value.code() is code


# ---- the real thing, while it happens ---------------------------------------------------------------------


@pytest.fixture()
async def pipeline(settings: Settings, engine: Engine, server: GrpcServer) -> AsyncIterator[None]:
    """The outbox relay (publishes the API's rows) and the execution handler (applies venue reports)."""
    relay = OutboxRelay(settings, engine)
    handler = StageWorker(EXECUTION_HANDLER, settings, engine)
    tasks = [asyncio.ensure_future(relay.run()), asyncio.ensure_future(handler.run())]
    yield
    relay.stop()
    handler.stop()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=15)


def _route(engine: Engine, order_id: str) -> None:
    """Stand in for the risk gate and the router: approve the order and hand it to the venue."""
    now = datetime.now(UTC)
    with changing_order(engine, order_id) as (uow, order):
        order.approve(["test"], now)
        uow.orders.save(order, correlation_id=order_id, message_id=None)
        order.mark_routed(str(uuid.uuid4()), now)


async def test_an_order_streams_from_pending_to_filled_while_it_happens(
    stub: pb_grpc.OrderServiceStub, engine: Engine, pipeline: None
) -> None:
    account = new_account(engine)
    request = pb.StreamOrderUpdatesRequest(account_id=account, symbols=["AAPL"])
    async with subscribe(stub, request) as subscription:
        order = await stub.CreateOrder(
            pb.CreateOrderRequest(
                account_id=account,
                symbol="AAPL",
                side=pb.ORDER_SIDE_BUY,
                type=pb.ORDER_TYPE_LIMIT,
                quantity=100,
                price=190.0,
            ),
            metadata=grpc_metadata(),
        )
        await subscription.until(1)  # PENDING (NEW), published by the outbox relay
        # Approval and routing change the internal state only: no update (the public status stays PENDING).
        await asyncio.to_thread(_route, engine, order.id)

        async def report(status: pb.OrderStatus, **fields: Any) -> None:
            await stub.UpdateOrderStatus(
                pb.UpdateOrderStatusRequest(
                    order_id=order.id, status=status, execution_report=pb.ExecutionReport(venue="SIM", **fields)
                ),
                metadata=grpc_metadata(),
            )

        await report(STATUS.ORDER_STATUS_OPEN, execution_id=f"{order.id}-ack")
        await subscription.until(2)
        await report(STATUS.ORDER_STATUS_PARTIALLY_FILLED, execution_id=f"{order.id}-1", quantity=40, price=190.0)
        await subscription.until(3)
        await report(STATUS.ORDER_STATUS_FILLED, execution_id=f"{order.id}-2", quantity=60, price=189.5, fees=0.3)
        received = await subscription.until(4)

    assert [u.status for u in received] == [
        STATUS.ORDER_STATUS_PENDING,
        STATUS.ORDER_STATUS_OPEN,
        STATUS.ORDER_STATUS_PARTIALLY_FILLED,
        STATUS.ORDER_STATUS_FILLED,
    ]
    assert [u.state for u in received] == ["NEW", "OPEN", "PARTIALLY_FILLED", "FILLED"]
    assert all(u.order_id == order.id for u in received)
    versions = [u.version for u in received]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert [u.filled_quantity for u in received[1:]] == [0, 40, 100]
    assert received[2].latest_execution.execution_id == f"{order.id}-1"
    assert received[3].latest_execution.quantity == 60 and received[3].latest_execution.price == 189.5
    assert received[3].average_execution_price == pytest.approx(189.7)
    final = await stub.GetOrder(pb.GetOrderRequest(order_id=order.id), metadata=grpc_metadata())
    assert final.status == STATUS.ORDER_STATUS_FILLED and final.filled_quantity == 100
    assert [r.execution_id for r in final.execution_reports] == [f"{order.id}-ack", f"{order.id}-1", f"{order.id}-2"]
