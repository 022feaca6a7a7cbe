"""Authentication and isolation on both APIs: no token, expired, forged, wrong issuer, another account's token."""

from __future__ import annotations

import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import jwt
import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine

from common import jsonutil
from common.settings import ApiSettings, InfraSettings, Settings
from proto.gen import order_pb2 as pb
from proto.gen import order_pb2_grpc as pb_grpc
from services.api.app import create_app
from services.api.auth import SCOPE_READ, SCOPE_WRITE, TokenService, load_secret
from services.api.grpc_server import GrpcServer
from tests.support.api import (
    TEST_SECRET,
    bearer,
    grpc_metadata,
    new_account,
    private_vhost,
    store_order,
    token_service,
)
from tools import token as token_command

if TYPE_CHECKING:
    from tools.infra import InfraUrls


def _claims(**overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": "mallory",
        "accounts": ["*"],
        "scopes": [SCOPE_READ, SCOPE_WRITE],
        "iss": "oms",
        "iat": now,
        "exp": now + timedelta(minutes=5),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


BAD_AUTHORIZATION = {
    "none": None,
    "not bearer": "Basic dXNlcjpwYXNz",
    "empty bearer": "Bearer ",
    "garbage": "Bearer not.a.jwt",
    "expired": "Bearer " + jwt.encode(_claims(exp=datetime.now(UTC) - timedelta(minutes=1)), TEST_SECRET),
    "forged": "Bearer " + jwt.encode(_claims(), "another-secret-of-the-same-length-0123456789"),
    "alg none": "Bearer " + jwt.encode(_claims(), "", algorithm="none"),
    "other issuer": "Bearer " + jwt.encode(_claims(iss="someone-else"), TEST_SECRET),
    "no expiry": "Bearer " + jwt.encode(_claims(exp=None), TEST_SECRET),
    "accounts not a list": "Bearer " + jwt.encode(_claims(accounts="*"), TEST_SECRET),
}


@pytest.fixture(scope="module")
def settings(database_url: str, amqp_url: str, infra_urls: InfraUrls) -> Iterator[Settings]:
    with private_vhost(infra_urls, amqp_url) as url:
        yield Settings(infra=InfraSettings(database_url=database_url, amqp_url=url))


@pytest.fixture(scope="module")
def client(engine: Engine, settings: Settings) -> FlaskClient:
    return create_app(settings, engine, tokens=token_service()).test_client()


@pytest.fixture(scope="module")
def accounts(engine: Engine) -> dict[str, Any]:
    """Alice's account with an order, and Bob's."""
    alice, bob = new_account(engine), new_account(engine)
    return {"alice": alice, "bob": bob, "alice_order": store_order(engine, alice, status="OPEN")}


def _headers(authorization: str | None) -> dict[str, str]:
    return {"Authorization": authorization} if authorization else {}


def _order_body(account: str) -> str:
    return jsonutil.dumps({"accountId": account, "symbol": "AAPL", "side": "BUY", "type": "MARKET", "quantity": 100})


# ---- REST ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(BAD_AUTHORIZATION))
def test_rest_rejects_missing_and_bad_tokens(client: FlaskClient, accounts: dict[str, Any], case: str) -> None:
    headers = _headers(BAD_AUTHORIZATION[case])
    order_path = f"/orders/{accounts['alice_order']}"
    for response in (
        client.get("/orders", headers=headers),
        client.get(order_path, headers=headers),
        client.post("/orders", data=_order_body(accounts["alice"]), content_type="application/json", headers=headers),
        client.put(order_path, data='{"action": "CANCEL"}', content_type="application/json", headers=headers),
    ):
        assert response.status_code == 401, (case, response.get_data(as_text=True))
        assert jsonutil.loads(response.get_data())["code"] == "UNAUTHENTICATED"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_rest_checks_the_token_before_the_body(client: FlaskClient) -> None:
    response = client.post("/orders", data="{broken", content_type="application/json")
    assert response.status_code == 401


def test_rest_expired_token_says_so(client: FlaskClient) -> None:
    response = client.get("/orders", headers=_headers(BAD_AUTHORIZATION["expired"]))
    assert jsonutil.loads(response.get_data()) == {"message": "token expired", "code": "UNAUTHENTICATED"}


def test_rest_another_accounts_order_is_invisible(client: FlaskClient, accounts: dict[str, Any]) -> None:
    bob = {"Authorization": bearer(accounts=[accounts["bob"]])}
    order_path = f"/orders/{accounts['alice_order']}"
    assert client.get(order_path, headers=bob).status_code == 404
    cancel = client.put(order_path, data='{"action": "CANCEL"}', content_type="application/json", headers=bob)
    assert cancel.status_code == 404
    listed = jsonutil.loads(client.get("/orders?size=100", headers=bob).get_data())
    assert accounts["alice_order"] not in {o["id"] for o in listed["content"]}
    assert client.get(f"/orders?accountId={accounts['alice']}", headers=bob).status_code == 403
    create = client.post("/orders", data=_order_body(accounts["alice"]), content_type="application/json", headers=bob)
    assert create.status_code == 403 and set(jsonutil.loads(create.get_data())) == {"message", "code"}
    # Alice herself sees it.
    alice = {"Authorization": bearer(accounts=[accounts["alice"]])}
    assert client.get(order_path, headers=alice).status_code == 200


def test_rest_scopes(client: FlaskClient, accounts: dict[str, Any]) -> None:
    read_only = {"Authorization": bearer(scopes=[SCOPE_READ])}
    write_only = {"Authorization": bearer(scopes=[SCOPE_WRITE])}
    post = client.post(
        "/orders", data=_order_body(accounts["alice"]), content_type="application/json", headers=read_only
    )
    assert post.status_code == 403 and SCOPE_WRITE in jsonutil.loads(post.get_data())["message"]
    assert client.get("/orders", headers=write_only).status_code == 403
    assert client.get(f"/orders/{accounts['alice_order']}", headers=write_only).status_code == 403
    assert client.get("/orders", headers=read_only).status_code == 200


def test_health_docs_and_metrics_need_no_token(client: FlaskClient) -> None:
    for path in ("/health/live", "/openapi.json", "/docs", "/metrics"):
        assert client.get(path).status_code == 200, path


# ---- gRPC ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def stub(engine: Engine, settings: Settings) -> AsyncIterator[pb_grpc.OrderServiceStub]:
    server = GrpcServer(settings, engine, tokens=token_service(), host="127.0.0.1", port=0)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.OrderServiceStub(channel)
    await server.stop(0.5)


def _calls(stub: pb_grpc.OrderServiceStub, accounts: dict[str, Any], metadata: Any) -> list[Any]:
    order_id = accounts["alice_order"]
    return [
        stub.CreateOrder(
            pb.CreateOrderRequest(
                account_id=accounts["alice"],
                symbol="AAPL",
                side=pb.ORDER_SIDE_BUY,
                type=pb.ORDER_TYPE_MARKET,
                quantity=1,
            ),
            metadata=metadata,
        ),
        stub.GetOrder(pb.GetOrderRequest(order_id=order_id), metadata=metadata),
        stub.CancelOrder(pb.CancelOrderRequest(order_id=order_id), metadata=metadata),
        stub.UpdateOrderStatus(
            pb.UpdateOrderStatusRequest(order_id=order_id, status=pb.ORDER_STATUS_CANCELED), metadata=metadata
        ),
    ]


async def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        result = await call if not hasattr(call, "__aiter__") else [m async for m in call]
        del result
    return raised.value.code()


@pytest.mark.parametrize("case", list(BAD_AUTHORIZATION))
async def test_grpc_rejects_missing_and_bad_tokens(
    stub: pb_grpc.OrderServiceStub, accounts: dict[str, Any], case: str
) -> None:
    value = BAD_AUTHORIZATION[case]
    metadata = (("authorization", value),) if value else ()
    calls = _calls(stub, accounts, metadata)
    calls.append(stub.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(), metadata=metadata))
    for call in calls:
        assert await _code(call) is grpc.StatusCode.UNAUTHENTICATED, case


async def test_grpc_another_accounts_order_is_invisible(
    stub: pb_grpc.OrderServiceStub, accounts: dict[str, Any]
) -> None:
    bob = grpc_metadata(bearer(accounts=[accounts["bob"]], scopes=[SCOPE_READ, SCOPE_WRITE, "operations"]))
    create, get, cancel, update = _calls(stub, accounts, bob)
    assert await _code(create) is grpc.StatusCode.PERMISSION_DENIED
    assert await _code(get) is grpc.StatusCode.NOT_FOUND
    assert await _code(cancel) is grpc.StatusCode.NOT_FOUND
    assert await _code(update) is grpc.StatusCode.NOT_FOUND
    stream = stub.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(account_id=accounts["alice"]), metadata=bob)
    assert await _code(stream) is grpc.StatusCode.PERMISSION_DENIED
    alice = grpc_metadata(bearer(accounts=[accounts["alice"]]))
    order = await stub.GetOrder(pb.GetOrderRequest(order_id=accounts["alice_order"]), metadata=alice)
    assert order.account_id == accounts["alice"]


async def test_grpc_scopes(stub: pb_grpc.OrderServiceStub, accounts: dict[str, Any]) -> None:
    write_only = grpc_metadata(bearer(scopes=[SCOPE_WRITE]))
    _, get, _, update = _calls(stub, accounts, write_only)
    assert await _code(get) is grpc.StatusCode.PERMISSION_DENIED
    assert await _code(update) is grpc.StatusCode.PERMISSION_DENIED
    stream = stub.StreamOrderUpdates(pb.StreamOrderUpdatesRequest(), metadata=write_only)
    assert await _code(stream) is grpc.StatusCode.PERMISSION_DENIED


# ---- tokens ---------------------------------------------------------------------------------------------------


def test_token_command_mints_a_token_the_services_accept(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("OMS_JWT_SECRET", TEST_SECRET)
    # An empty key set of its own: with keys rotated in the checkout's .data, the command would sign with those.
    monkeypatch.setenv("OMS_JWT_KEYS_FILE", str(tmp_path / "jwt-keys.json"))
    argv = ["--sub", "alice", "--accounts", "ACC-001,ACC-002", "--scopes", "orders:read", "--ttl", "60"]
    assert token_command.main(argv) == 0
    principal = token_service().verify(capsys.readouterr().out.strip())
    assert principal.subject == "alice"
    assert principal.accounts == {"ACC-001", "ACC-002"} and principal.scopes == {"orders:read"}
    with pytest.raises(SystemExit):
        token_command.main(["--scopes", "orders:delete"])


def test_secret_file_is_created_private_and_reused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OMS_JWT_SECRET", raising=False)
    secret_file = tmp_path / "nested" / f"jwt-{uuid.uuid4().hex}"
    api = ApiSettings(jwt_secret_file=secret_file)
    first = load_secret(api)
    assert len(first) >= 32
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert load_secret(api) == first
    token = TokenService.from_settings(api).issue("u", ["*"], [SCOPE_READ])
    assert TokenService(first, api.jwt_issuer).verify(token).subject == "u"
