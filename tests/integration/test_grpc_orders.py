"""gRPC: every unary call and its error codes, with a real client against a running grpc.aio server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aio_pika
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sqlalchemy import Engine, select

from common import jsonutil
from common.contracts import ExecutionReportSchema
from common.messages.exchanges import OMS_EXCHANGE
from common.settings import InfraSettings, Settings
from common.store import tables
from proto.gen import order_pb2 as pb
from proto.gen import order_pb2_grpc as pb_grpc
from services.api.auth import SCOPE_OPERATIONS, SCOPE_READ, SCOPE_WRITE
from services.api.grpc_server import GrpcServer
from services.api.grpc_servicer import SERVICE_NAME
from tests.support.api import bearer, grpc_metadata, new_account, private_vhost, store_order, token_service
from tests.support.orders import order_count
from tests.support.polling import async_wait_until

if TYPE_CHECKING:
    from tools.infra import InfraUrls

Code = grpc.StatusCode


@pytest.fixture(scope="module")
def vhost_url(infra_urls: InfraUrls, amqp_url: str) -> Iterator[str]:
    with private_vhost(infra_urls, amqp_url) as url:
        yield url


@pytest.fixture(scope="module")
async def server(engine: Engine, database_url: str, vhost_url: str) -> AsyncIterator[GrpcServer]:
    settings = Settings(infra=InfraSettings(database_url=database_url, amqp_url=vhost_url))
    server = GrpcServer(settings, engine, tokens=token_service(), host="127.0.0.1", port=0)
    await server.start()
    yield server
    await server.stop(0.5)


@pytest.fixture(scope="module")
async def channel(server: GrpcServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel: grpc.aio.Channel) -> pb_grpc.OrderServiceStub:
    return pb_grpc.OrderServiceStub(channel)


@pytest.fixture()
def account(engine: Engine) -> str:
    return new_account(engine)


def _limit(account: str, **overrides: Any) -> pb.CreateOrderRequest:
    fields: dict[str, Any] = {
        "account_id": account,
        "symbol": "AAPL",
        "side": pb.ORDER_SIDE_BUY,
        "type": pb.ORDER_TYPE_LIMIT,
        "quantity": 100,
        "price": 189.55,
        "time_in_force": pb.TIME_IN_FORCE_GTC,
        "strategy_id": "grpc-strategy",
    }
    fields.update(overrides)
    return pb.CreateOrderRequest(**fields)


async def _code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code(), raised.value.details() or ""


# ---- CreateOrder ------------------------------------------------------------------------------------------


async def test_create_order(stub: pb_grpc.OrderServiceStub, account: str) -> None:
    order = await stub.CreateOrder(_limit(account), metadata=grpc_metadata())
    uuid.UUID(order.id)
    assert order.account_id == account and order.symbol == "AAPL"
    assert order.side == pb.ORDER_SIDE_BUY and order.type == pb.ORDER_TYPE_LIMIT
    assert order.status == pb.ORDER_STATUS_PENDING and order.state == "NEW"
    assert order.quantity == 100 and order.price == 189.55 and order.filled_quantity == 0
    assert order.time_in_force == pb.TIME_IN_FORCE_GTC and order.strategy_id == "grpc-strategy"
    assert order.created_at.seconds > 0 and order.version == 1


async def test_create_reads_doubles_as_their_shortest_decimal(
    stub: pb_grpc.OrderServiceStub, engine: Engine, account: str
) -> None:
    order = await stub.CreateOrder(
        _limit(account, symbol="BTCUSD", quantity=0.1234, price=65000.01), metadata=grpc_metadata()
    )
    with engine.connect() as connection:
        row = connection.execute(
            select(tables.orders.c.quantity, tables.orders.c.price).where(tables.orders.c.id == order.id)
        ).one()
    assert (row.quantity, row.price) == (Decimal("0.1234"), Decimal("65000.01"))


async def test_create_defaults_time_in_force_to_day(stub: pb_grpc.OrderServiceStub, account: str) -> None:
    order = await stub.CreateOrder(
        _limit(account, type=pb.ORDER_TYPE_MARKET, price=0, time_in_force=pb.TIME_IN_FORCE_UNSPECIFIED),
        metadata=grpc_metadata(),
    )
    assert order.time_in_force == pb.TIME_IN_FORCE_DAY and order.price == 0


async def test_create_is_idempotent_on_client_order_id_and_metadata(
    stub: pb_grpc.OrderServiceStub, engine: Engine, account: str
) -> None:
    first = await stub.CreateOrder(_limit(account, client_order_id="c-1"), metadata=grpc_metadata())
    again = await stub.CreateOrder(_limit(account, client_order_id="c-1"), metadata=grpc_metadata())
    assert first.id == again.id and again.client_order_id == "c-1"
    keyed = await stub.CreateOrder(_limit(account), metadata=grpc_metadata(idempotency_key="k-1"))
    keyed_again = await stub.CreateOrder(_limit(account), metadata=grpc_metadata(idempotency_key="k-1"))
    assert keyed.id == keyed_again.id != first.id
    assert order_count(engine, account) == 2


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"price": 0}, "price: a LIMIT order needs a price"),
        ({"price": 189.555}, "tick size"),
        ({"quantity": 0}, "quantity"),
        ({"side": pb.ORDER_SIDE_UNSPECIFIED}, "side: is required"),
        ({"type": 99}, "type: 99 is not a known value"),
        ({"symbol": "NOPE"}, "symbol: instrument NOPE is not known"),
        ({"symbol": ""}, "symbol"),
        ({"account_id": "NO-SUCH"}, "accountId: account NO-SUCH does not exist"),
        ({"notes": "nul\x00byte"}, "notes"),
    ],
)
async def test_create_invalid_is_invalid_argument(
    stub: pb_grpc.OrderServiceStub, engine: Engine, account: str, overrides: dict[str, Any], fragment: str
) -> None:
    code, details = await _code_of(stub.CreateOrder(_limit(account, **overrides), metadata=grpc_metadata()))
    assert code is Code.INVALID_ARGUMENT and fragment in details, details
    assert order_count(engine, account) == 0


async def test_create_without_write_scope_is_permission_denied(stub: pb_grpc.OrderServiceStub, account: str) -> None:
    read_only = grpc_metadata(bearer(scopes=[SCOPE_READ]))
    code, details = await _code_of(stub.CreateOrder(_limit(account), metadata=read_only))
    assert code is Code.PERMISSION_DENIED and SCOPE_WRITE in details


# ---- GetOrder ---------------------------------------------------------------------------------------------


async def test_get_order_with_execution_reports(stub: pb_grpc.OrderServiceStub, engine: Engine, account: str) -> None:
    order_id = store_order(engine, account, status="FILLED", fill_price=Decimal("190.25"))
    order = await stub.GetOrder(pb.GetOrderRequest(order_id=order_id), metadata=grpc_metadata())
    assert order.status == pb.ORDER_STATUS_FILLED and order.filled_quantity == 100
    assert order.average_execution_price == 190.25 and order.total_fees == 1.25
    assert [r.exec_type for r in order.execution_reports] == ["NEW", "FILL"]
    fill = order.execution_reports[1]
    assert fill.quantity == 100 and fill.price == 190.25 and fill.venue == "SIM" and fill.timestamp.seconds > 0
    assert fill.HasField("cum_quantity") and fill.cum_quantity == 100


@pytest.mark.parametrize("order_id", [str(uuid.uuid4()), "", "garbage"])
async def test_get_unknown_order_is_not_found(stub: pb_grpc.OrderServiceStub, order_id: str) -> None:
    code, _ = await _code_of(stub.GetOrder(pb.GetOrderRequest(order_id=order_id), metadata=grpc_metadata()))
    assert code is Code.NOT_FOUND


# ---- CancelOrder ------------------------------------------------------------------------------------------


async def test_cancel_order(stub: pb_grpc.OrderServiceStub, account: str) -> None:
    created = await stub.CreateOrder(_limit(account), metadata=grpc_metadata())
    canceled = await stub.CancelOrder(
        pb.CancelOrderRequest(order_id=created.id, reason="no longer wanted"), metadata=grpc_metadata()
    )
    assert canceled.status == pb.ORDER_STATUS_CANCELED and canceled.id == created.id


@pytest.mark.parametrize("status", ["FILLED", "CANCELED", "REJECTED"])
async def test_cancel_a_done_order_is_failed_precondition(
    stub: pb_grpc.OrderServiceStub, engine: Engine, account: str, status: str
) -> None:
    order_id = store_order(engine, account, status=status)
    code, details = await _code_of(stub.CancelOrder(pb.CancelOrderRequest(order_id=order_id), metadata=grpc_metadata()))
    assert code is Code.FAILED_PRECONDITION and status in details


async def test_cancel_unknown_order_is_not_found(stub: pb_grpc.OrderServiceStub) -> None:
    code, _ = await _code_of(
        stub.CancelOrder(pb.CancelOrderRequest(order_id=str(uuid.uuid4())), metadata=grpc_metadata())
    )
    assert code is Code.NOT_FOUND


# ---- UpdateOrderStatus ------------------------------------------------------------------------------------


@pytest.fixture()
async def reports(vhost_url: str, server: GrpcServer) -> AsyncIterator[aio_pika.abc.AbstractQueue]:
    """A queue of our own on ``oms``/``execution.report``: what the execution handler would receive."""
    connection = await aio_pika.connect(vhost_url)
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(OMS_EXCHANGE, routing_key="execution.report")
    yield queue
    await connection.close()


async def _next_report(queue: aio_pika.abc.AbstractQueue) -> tuple[aio_pika.abc.AbstractIncomingMessage, Any]:
    async def next_message() -> aio_pika.abc.AbstractIncomingMessage | None:
        return await queue.get(fail=False)

    message: aio_pika.abc.AbstractIncomingMessage = await async_wait_until(
        next_message, timeout=10, message="an execution report"
    )
    await message.ack()
    return message, jsonutil.loads(message.body)


async def test_update_order_status_publishes_a_fill(
    stub: pb_grpc.OrderServiceStub, engine: Engine, account: str, reports: aio_pika.abc.AbstractQueue
) -> None:
    order_id = store_order(engine, account, status="PARTIALLY_FILLED", fill_price=Decimal("190.00"))
    answer = await stub.UpdateOrderStatus(
        pb.UpdateOrderStatusRequest(
            order_id=order_id,
            status=pb.ORDER_STATUS_FILLED,
            execution_report=pb.ExecutionReport(execution_id="X-1", quantity=50, price=191.0, fees=0.5, venue="XNAS"),
        ),
        metadata=grpc_metadata(),
    )
    assert answer.id == order_id and answer.status == pb.ORDER_STATUS_PARTIALLY_FILLED  # applied asynchronously
    message, body = await _next_report(reports)
    assert message.type == "ExecutionReport" and message.correlation_id == order_id
    ExecutionReportSchema().load(body)  # the public contract the execution handler validates against
    assert body["executionId"] == "X-1" and body["execType"] == "FILL" and body["orderId"] == order_id
    assert (body["lastQty"], body["lastPx"], body["cumQty"], body["leavesQty"]) == (50, Decimal("191.0"), 100, 0)
    assert body["avgPx"] == Decimal("190.5") and body["fees"] == Decimal("0.5") and body["venue"] == "XNAS"


async def test_update_order_status_carries_an_explicit_report(
    stub: pb_grpc.OrderServiceStub, engine: Engine, account: str, reports: aio_pika.abc.AbstractQueue
) -> None:
    order_id = store_order(engine, account, status="OPEN")
    report = pb.ExecutionReport(
        execution_id="X-2",
        exec_type="REPLACED",
        cum_quantity=0,
        leaves_quantity=80,
        order_quantity=80,
        limit_price=189.0,
    )
    await stub.UpdateOrderStatus(
        pb.UpdateOrderStatusRequest(order_id=order_id, execution_report=report), metadata=grpc_metadata()
    )
    _, body = await _next_report(reports)
    assert body["execType"] == "REPLACED" and body["orderQty"] == 80 and body["leavesQty"] == 80
    assert body["price"] == Decimal("189.0") and body["lastQty"] == 0


@pytest.mark.parametrize(
    ("request_fields", "code"),
    [
        ({"status": pb.ORDER_STATUS_PENDING}, Code.INVALID_ARGUMENT),
        ({"status": pb.ORDER_STATUS_FILLED}, Code.INVALID_ARGUMENT),  # a fill without quantity and price
        ({"execution_report": pb.ExecutionReport(exec_type="BOGUS")}, Code.INVALID_ARGUMENT),
    ],
)
async def test_update_order_status_invalid(
    stub: pb_grpc.OrderServiceStub, engine: Engine, account: str, request_fields: dict[str, Any], code: grpc.StatusCode
) -> None:
    order_id = store_order(engine, account, status="OPEN")
    request = pb.UpdateOrderStatusRequest(order_id=order_id, **request_fields)
    assert (await _code_of(stub.UpdateOrderStatus(request, metadata=grpc_metadata())))[0] is code


async def test_update_order_status_of_a_done_order(
    stub: pb_grpc.OrderServiceStub, engine: Engine, account: str
) -> None:
    order_id = store_order(engine, account, status="CANCELED")
    request = pb.UpdateOrderStatusRequest(order_id=order_id, status=pb.ORDER_STATUS_OPEN)
    code, details = await _code_of(stub.UpdateOrderStatus(request, metadata=grpc_metadata()))
    assert code is Code.FAILED_PRECONDITION and "CANCELED" in details


async def test_update_order_status_needs_the_operations_scope(
    stub: pb_grpc.OrderServiceStub, engine: Engine, account: str
) -> None:
    order_id = store_order(engine, account, status="OPEN")
    request = pb.UpdateOrderStatusRequest(order_id=order_id, status=pb.ORDER_STATUS_CANCELED)
    trader = grpc_metadata(bearer(scopes=[SCOPE_READ, SCOPE_WRITE]))
    code, details = await _code_of(stub.UpdateOrderStatus(request, metadata=trader))
    assert code is Code.PERMISSION_DENIED and SCOPE_OPERATIONS in details
    unknown = pb.UpdateOrderStatusRequest(order_id=str(uuid.uuid4()), status=pb.ORDER_STATUS_CANCELED)
    assert (await _code_of(stub.UpdateOrderStatus(unknown, metadata=grpc_metadata())))[0] is Code.NOT_FOUND


# ---- health and reflection --------------------------------------------------------------------------------


async def test_health_service_reports_serving(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for answer in stub.ServerReflectionInfo(requests()):
        names = {service.name for service in answer.list_services_response.service}
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
        break
