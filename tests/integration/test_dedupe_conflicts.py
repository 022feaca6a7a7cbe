"""Dedupe keys check content: an Idempotency-Key or clientOrderId seen before with other terms is an error the
caller is told about (REST 422 with code IDEMPOTENCY_KEY_REUSED, gRPC FAILED_PRECONDITION), never the first
order handed back as if the second request had been booked. The same key with the same terms is a replay."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine

from common import jsonutil
from common.settings import InfraSettings, Settings
from proto.gen import order_pb2 as pb
from proto.gen import order_pb2_grpc as pb_grpc
from services.api.grpc_server import GrpcServer
from tests.support.api import bearer, grpc_metadata, new_account, private_vhost, token_service
from tests.support.orders import order_count

if TYPE_CHECKING:
    from tools.infra import InfraUrls

AUTH = {"Authorization": bearer()}


@pytest.fixture()
def account(engine: Engine) -> str:
    return new_account(engine)


def _json(response: Any) -> Any:
    return jsonutil.loads(response.get_data())


def _create(client: FlaskClient, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return client.post(
        "/orders", data=jsonutil.dumps(body), content_type="application/json", headers={**AUTH, **(headers or {})}
    )


def _limit(account: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "accountId": account,
        "symbol": "AAPL",
        "side": "BUY",
        "type": "LIMIT",
        "quantity": Decimal("100"),
        "price": Decimal("189.55"),
        "timeInForce": "GTC",
        "strategyId": "momentum-1",
        "notes": "first order",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


# ---- REST -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"quantity": Decimal("200")}, ["quantity"]),
        ({"price": Decimal("189.60"), "side": "SELL"}, ["side", "price"]),
        ({"type": "MARKET", "price": None}, ["type", "price"]),
        ({"timeInForce": "DAY", "strategyId": "other"}, ["timeInForce", "strategyId"]),
        ({"notes": "second order"}, ["notes"]),
        ({"symbol": "MSFT"}, ["symbol"]),
    ],
)
def test_an_idempotency_key_reused_with_another_body_is_422(
    client: FlaskClient, engine: Engine, account: str, changes: dict[str, Any], fields: list[str]
) -> None:
    key = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    first = _create(client, _limit(account), key)
    assert first.status_code == 201
    again = _create(client, _limit(account, **changes), key)
    assert again.status_code == 422, again.get_data(as_text=True)
    body = _json(again)
    assert body["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert [error["field"] for error in body["errors"]] == fields
    assert key["Idempotency-Key"] in body["message"] and _json(first)["id"] in body["message"]
    assert order_count(engine, account) == 1


def test_a_client_order_id_reused_with_another_body_is_422(client: FlaskClient, engine: Engine, account: str) -> None:
    coid = f"coid-{uuid.uuid4()}"
    assert _create(client, _limit(account, clientOrderId=coid)).status_code == 201
    again = _create(client, _limit(account, clientOrderId=coid, quantity=Decimal("300")))
    assert again.status_code == 422
    assert _json(again)["errors"][0]["field"] == "quantity"
    assert order_count(engine, account) == 1


def test_the_same_key_and_the_same_body_is_200_with_the_same_order(client: FlaskClient, account: str) -> None:
    key = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    first = _create(client, _limit(account), key)
    # 100 and 100.0 are the same quantity; an absent timeInForce is DAY either way.
    again = _create(client, _limit(account, quantity=Decimal("100.0"), price=Decimal("189.550")), key)
    assert (first.status_code, again.status_code) == (201, 200)
    assert _json(first)["id"] == _json(again)["id"]


def test_a_retry_after_a_modify_is_still_the_same_request(client: FlaskClient, account: str) -> None:
    key = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    first = _json(_create(client, _limit(account), key))
    modified = client.put(
        f"/orders/{first['id']}",
        data=jsonutil.dumps({"action": "MODIFY", "quantity": Decimal("150")}),
        content_type="application/json",
        headers=AUTH,
    )
    assert modified.status_code == 200, modified.get_data(as_text=True)
    again = _create(client, _limit(account), key)
    assert again.status_code == 200
    assert _json(again)["quantity"] == Decimal("150")


def test_concurrent_creates_with_one_key_and_other_bodies_book_one_order(
    app: Flask, engine: Engine, account: str
) -> None:
    key = {"Idempotency-Key": f"race-{uuid.uuid4()}"}

    def submit(number: int) -> int:
        quantity = Decimal(100 + 100 * (number % 2))
        status: int = _create(app.test_client(), _limit(account, quantity=quantity), key).status_code
        return status

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(submit, range(6)))
    assert statuses.count(201) == 1
    assert set(statuses) <= {200, 201, 422} and 422 in statuses
    assert order_count(engine, account) == 1


def test_422_is_documented(client: FlaskClient) -> None:
    document = _json(client.get("/openapi.json"))
    assert "422" in document["paths"]["/orders"]["post"]["responses"]


# ---- gRPC -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vhost_url(infra_urls: InfraUrls, amqp_url: str) -> Iterator[str]:
    with private_vhost(infra_urls, amqp_url) as url:
        yield url


@pytest.fixture(scope="module")
async def stub(engine: Engine, database_url: str, vhost_url: str) -> AsyncIterator[pb_grpc.OrderServiceStub]:
    settings = Settings(infra=InfraSettings(database_url=database_url, amqp_url=vhost_url))
    server = GrpcServer(settings, engine, tokens=token_service(), host="127.0.0.1", port=0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield pb_grpc.OrderServiceStub(channel)
    finally:
        await server.stop(0.5)


def _grpc_limit(account: str, **overrides: Any) -> pb.CreateOrderRequest:
    fields: dict[str, Any] = {
        "account_id": account,
        "symbol": "AAPL",
        "side": pb.ORDER_SIDE_BUY,
        "type": pb.ORDER_TYPE_LIMIT,
        "quantity": 100,
        "price": 189.55,
        "time_in_force": pb.TIME_IN_FORCE_GTC,
    }
    fields.update(overrides)
    return pb.CreateOrderRequest(**fields)


async def test_grpc_a_client_order_id_reused_with_other_terms_is_failed_precondition(
    stub: pb_grpc.OrderServiceStub, engine: Engine, account: str
) -> None:
    first = await stub.CreateOrder(_grpc_limit(account, client_order_id="g-1"), metadata=grpc_metadata())
    again = await stub.CreateOrder(_grpc_limit(account, client_order_id="g-1"), metadata=grpc_metadata())
    assert again.id == first.id
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.CreateOrder(_grpc_limit(account, client_order_id="g-1", quantity=200), metadata=grpc_metadata())
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = raised.value.details() or ""
    assert "g-1" in details and first.id in details and "quantity" in details
    assert order_count(engine, account) == 1


async def test_grpc_an_idempotency_key_reused_with_other_terms_is_failed_precondition(
    stub: pb_grpc.OrderServiceStub, account: str
) -> None:
    metadata = grpc_metadata(idempotency_key=f"gk-{uuid.uuid4()}")
    await stub.CreateOrder(_grpc_limit(account), metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.CreateOrder(_grpc_limit(account, side=pb.ORDER_SIDE_SELL, price=189.6), metadata=metadata)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "side, price differ" in (raised.value.details() or "")
