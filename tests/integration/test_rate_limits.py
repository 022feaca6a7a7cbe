"""Rate limits on REST and gRPC: a caller over its limit is refused with a retry-after, others are not.

Reads count against the token's subject, order writes (create, cancel, modify) against the order's account.
The limits are per minute so that nothing refills while a test runs; each test has its own subjects and
accounts (and its own app or server, so its own in-memory counters).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine

from common.settings import ApiSettings, InfraSettings, Settings
from proto.gen import order_pb2 as pb
from proto.gen import order_pb2_grpc as pb_grpc
from services.api.app import create_app
from services.api.auth import SCOPE_READ, SCOPE_WRITE
from services.api.grpc_server import GrpcServer
from services.api.grpc_servicer import RETRY_AFTER_METADATA
from tests.support.api import ALL_SCOPES, bearer, new_account, private_vhost, token_service

if TYPE_CHECKING:
    from tools.infra import InfraUrls

pytestmark = pytest.mark.integration

READS_PER_SUBJECT = 3
WRITES_PER_ACCOUNT = 2
LIMITS = ApiSettings(
    rate_limit_subject=f"{READS_PER_SUBJECT}/minute;100/hour",
    rate_limit_account=f"{WRITES_PER_ACCOUNT}/minute",
)


def _subject() -> str:
    return f"rl-{uuid.uuid4().hex[:8]}"


def _body(account: str) -> dict[str, Any]:
    return {
        "accountId": account,
        "symbol": "AAPL",
        "side": "BUY",
        "type": "LIMIT",
        "quantity": 100,
        "price": 189.5,
        "timeInForce": "DAY",
    }


# ---- REST -------------------------------------------------------------------------------------------------


@pytest.fixture()
def client(engine: Engine, database_url: str, amqp_url: str) -> FlaskClient:
    settings = Settings(infra=InfraSettings(database_url=database_url, amqp_url=amqp_url), api=LIMITS)
    return create_app(settings, engine, tokens=token_service()).test_client()


def _assert_429(answer: Any, names: str) -> None:
    assert answer.status_code == 429, answer.get_data(as_text=True)
    body = answer.get_json()
    assert body["code"] == "RATE_LIMITED" and names in body["message"], body
    assert 1 <= int(answer.headers["Retry-After"]) <= 60


def test_rest_reads_over_the_subject_limit_get_429_and_another_subject_does_not(
    client: FlaskClient, engine: Engine
) -> None:
    account = new_account(engine)
    busy, other = _subject(), _subject()
    url = f"/orders?accountId={account}&page=0&size=5"
    busy_headers = {"Authorization": bearer(accounts=[account], subject=busy)}
    for _ in range(READS_PER_SUBJECT):
        assert client.get(url, headers=busy_headers).status_code == 200
    _assert_429(client.get(url, headers=busy_headers), busy)
    # The same subject is refused on another read endpoint too (the limit is the subject's, not the path's).
    _assert_429(client.get(f"/orders/{uuid.uuid4()}", headers=busy_headers), busy)
    assert client.get(url, headers={"Authorization": bearer(accounts=[account], subject=other)}).status_code == 200
    # Health, metrics and the documentation are never limited.
    for _ in range(READS_PER_SUBJECT + 2):
        for path in ("/health/live", "/metrics", "/openapi.json"):
            assert client.get(path, headers=busy_headers).status_code == 200, path


def test_rest_writes_count_against_the_orders_account_not_the_subject(client: FlaskClient, engine: Engine) -> None:
    busy_account, other_account = new_account(engine), new_account(engine)
    first, second = _subject(), _subject()
    first_headers = {"Authorization": bearer(subject=first, scopes=(SCOPE_READ, SCOPE_WRITE))}
    second_headers = {"Authorization": bearer(subject=second, scopes=(SCOPE_READ, SCOPE_WRITE))}
    # Exhaust the first subject's reads: its writes still pass, they are the account's to count.
    for _ in range(READS_PER_SUBJECT):
        client.get(f"/orders/{uuid.uuid4()}", headers=first_headers)
    _assert_429(client.get(f"/orders/{uuid.uuid4()}", headers=first_headers), first)

    created = client.post("/orders", json=_body(busy_account), headers=first_headers)
    assert created.status_code == 201, created.get_data(as_text=True)
    order_id = created.get_json()["id"]
    # A cancel is a write on the order's account: the account's second, and last, write of the minute.
    canceled = client.put(f"/orders/{order_id}", json={"action": "CANCEL"}, headers=first_headers)
    assert canceled.status_code == 200, canceled.get_data(as_text=True)
    # Over the account's limit, whoever writes: another subject is refused on that account too...
    _assert_429(client.post("/orders", json=_body(busy_account), headers=second_headers), busy_account)
    modify = {"action": "MODIFY", "quantity": 50}
    _assert_429(client.put(f"/orders/{order_id}", json=modify, headers=second_headers), busy_account)
    # ...while another account is unaffected, for either subject.
    assert client.post("/orders", json=_body(other_account), headers=first_headers).status_code == 201
    assert client.post("/orders", json=_body(other_account), headers=second_headers).status_code == 201


# ---- gRPC -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vhost_url(infra_urls: InfraUrls, amqp_url: str) -> Iterator[str]:
    with private_vhost(infra_urls, amqp_url) as url:
        yield url


@pytest.fixture()
async def stub(engine: Engine, database_url: str, vhost_url: str) -> AsyncIterator[pb_grpc.OrderServiceStub]:
    settings = Settings(infra=InfraSettings(database_url=database_url, amqp_url=vhost_url), api=LIMITS)
    server = GrpcServer(settings, engine, tokens=token_service(), host="127.0.0.1", port=0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield pb_grpc.OrderServiceStub(channel)
    finally:
        await server.stop(0.5)


def _metadata(subject: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", bearer(scopes=ALL_SCOPES, subject=subject)),)


def _create(account: str) -> pb.CreateOrderRequest:
    return pb.CreateOrderRequest(
        account_id=account,
        symbol="AAPL",
        side=pb.ORDER_SIDE_BUY,
        type=pb.ORDER_TYPE_LIMIT,
        quantity=100,
        price=189.5,
        time_in_force=pb.TIME_IN_FORCE_DAY,
    )


async def _exhausted(call: Any, names: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    error = raised.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (error.code(), error.details())
    assert names in (error.details() or "") and "retry after" in (error.details() or "")
    trailing = dict(error.trailing_metadata() or ())
    assert 1 <= int(trailing[RETRY_AFTER_METADATA]) <= 60, trailing


async def test_grpc_calls_over_the_limits_get_resource_exhausted_and_others_do_not(
    stub: pb_grpc.OrderServiceStub, engine: Engine
) -> None:
    busy_account, other_account = new_account(engine), new_account(engine)
    busy, other = _subject(), _subject()

    order = await stub.CreateOrder(_create(busy_account), metadata=_metadata(busy))
    for _ in range(READS_PER_SUBJECT):
        assert (await stub.GetOrder(pb.GetOrderRequest(order_id=order.id), metadata=_metadata(busy))).id == order.id
    await _exhausted(stub.GetOrder(pb.GetOrderRequest(order_id=order.id), metadata=_metadata(busy)), busy)
    assert (await stub.GetOrder(pb.GetOrderRequest(order_id=order.id), metadata=_metadata(other))).id == order.id

    # Writes: the account's second write (a cancel) passes for the subject whose reads are exhausted; a third
    # write on that account is refused to anyone; another account takes writes.
    await stub.CancelOrder(pb.CancelOrderRequest(order_id=order.id), metadata=_metadata(busy))
    await _exhausted(stub.CreateOrder(_create(busy_account), metadata=_metadata(other)), busy_account)
    assert (await stub.CreateOrder(_create(other_account), metadata=_metadata(busy))).account_id == other_account
