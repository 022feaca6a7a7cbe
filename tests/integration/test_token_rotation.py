"""Token keys that rotate, through running REST and gRPC front ends built from the settings.

The servers are started once; the keys change under them through ``./oms token keys`` (the key set file),
as an operator would do, and the servers pick the change up without a restart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import jwt
import pytest
from flask.testing import FlaskClient
from pydantic import SecretStr
from sqlalchemy import Engine

from common import jsonutil
from common.settings import ApiSettings, InfraSettings, Settings
from proto.gen import order_pb2 as pb
from proto.gen import order_pb2_grpc as pb_grpc
from services.api.app import create_app
from services.api.auth import LEGACY_KID
from services.api.grpc_server import GrpcServer
from tests.support.api import TEST_SECRET, new_account, private_vhost, store_order
from tests.support.polling import async_wait_until
from tools import token as token_command

if TYPE_CHECKING:
    from tools.infra import InfraUrls


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("token-keys") / "jwt-keys.json"


@pytest.fixture(scope="module")
def settings(database_url: str, amqp_url: str, infra_urls: InfraUrls, keys_file: Path) -> Iterator[Settings]:
    api = ApiSettings(jwt_secret=SecretStr(TEST_SECRET), jwt_keys_file=keys_file)
    with private_vhost(infra_urls, amqp_url) as url:
        yield Settings(infra=InfraSettings(database_url=database_url, amqp_url=url), api=api)


@pytest.fixture(scope="module")
def client(engine: Engine, settings: Settings) -> FlaskClient:
    # No tokens= argument: the app builds its token service from the settings, as in production.
    return create_app(settings, engine).test_client()


@pytest.fixture(scope="module")
async def stub(engine: Engine, settings: Settings) -> AsyncIterator[pb_grpc.OrderServiceStub]:
    server = GrpcServer(settings, engine, host="127.0.0.1", port=0)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.OrderServiceStub(channel)
    await server.stop(0.5)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, keys_file: Path) -> None:
    """``./oms token`` in this test's environment: the key set file and the legacy secret of the servers."""
    monkeypatch.setenv("OMS_JWT_KEYS_FILE", str(keys_file))
    monkeypatch.setenv("OMS_JWT_SECRET", TEST_SECRET)
    monkeypatch.delenv("OMS_JWT_ACCEPT_LEGACY", raising=False)


def _mint(capsys: pytest.CaptureFixture[str], account: str) -> str:
    capsys.readouterr()
    assert token_command.main(["--sub", "rotator", "--accounts", account, "--scopes", "orders:read"]) == 0
    return capsys.readouterr().out.strip()


def _keys(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert token_command.main(["keys", *argv]) == 0
    return capsys.readouterr().out


def _rest(client: FlaskClient, token: str, order_id: str) -> tuple[int, dict[str, Any]]:
    response = client.get(f"/orders/{order_id}", headers={"Authorization": f"Bearer {token}"})
    return response.status_code, jsonutil.loads(response.get_data())


async def _grpc(stub: pb_grpc.OrderServiceStub, token: str, order_id: str) -> tuple[grpc.StatusCode, str]:
    try:
        order = await stub.GetOrder(
            pb.GetOrderRequest(order_id=order_id), metadata=(("authorization", f"Bearer {token}"),)
        )
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    assert order.id == order_id
    return grpc.StatusCode.OK, ""


async def test_old_key_works_after_rotation_and_stops_after_removal(
    client: FlaskClient,
    stub: pb_grpc.OrderServiceStub,
    engine: Engine,
    cli: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    account = new_account(engine)
    order_id = store_order(engine, account, status="OPEN")

    async def accepted(token: str) -> bool:
        status, _ = _rest(client, token, order_id)
        code, _ = await _grpc(stub, token, order_id)
        return status == 200 and code is grpc.StatusCode.OK

    # Before any rotation the legacy secret signs (kid "default"), as tokens minted before this feature did.
    legacy = _mint(capsys, account)
    assert jwt.get_unverified_header(legacy)["kid"] == LEGACY_KID
    assert await accepted(legacy)

    first_kid = _keys(capsys, "rotate").strip()
    old = _mint(capsys, account)
    assert jwt.get_unverified_header(old)["kid"] == first_kid
    # The servers re-read the key set within a second; wait for them to trust the new key.
    await async_wait_until(lambda: accepted(old), timeout=5, message="the first key is accepted")

    second_kid = _keys(capsys, "rotate").strip()
    new = _mint(capsys, account)
    assert jwt.get_unverified_header(new)["kid"] == second_kid != first_kid
    await async_wait_until(lambda: accepted(new), timeout=5, message="the second key is accepted")
    # Rotation logged nobody out: the token of the older key and the legacy token still work.
    assert await accepted(old) and await accepted(legacy)
    listing = _keys(capsys, "list")
    assert first_kid in listing and second_kid in listing and TEST_SECRET not in listing

    _keys(capsys, "remove", first_kid)

    async def old_refused() -> bool:
        status, body = _rest(client, old, order_id)
        code, details = await _grpc(stub, old, order_id)
        return status == 401 and code is grpc.StatusCode.UNAUTHENTICATED and (body, details) != ({}, "")

    await async_wait_until(old_refused, timeout=5, message="the removed key's token is refused")
    status, body = _rest(client, old, order_id)
    assert status == 401 and body["code"] == "UNAUTHENTICATED"
    assert f"unknown key id '{first_kid}'" in body["message"]
    code, details = await _grpc(stub, old, order_id)
    assert code is grpc.StatusCode.UNAUTHENTICATED and f"unknown key id '{first_kid}'" in details
    # The remaining key and the legacy secret still verify.
    assert await accepted(new) and await accepted(legacy)
