"""``python -m services.api`` serves REST under gunicorn and gRPC beside it, on the ports it is given."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.settings import REPO_ROOT
from common.store.db import make_engine
from proto.gen import order_pb2 as pb
from proto.gen import order_pb2_grpc as pb_grpc
from tests.support.api import TEST_SECRET, bearer, grpc_metadata, private_vhost
from tests.support.polling import wait_until
from tools.seed import seed_demo

if TYPE_CHECKING:
    from tools.infra import InfraUrls


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, token: str | None = None) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, headers={"Authorization": token} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def service(
    database_url: str, amqp_url: str, infra_urls: InfraUrls, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, int]]:
    engine = make_engine(database_url)
    with engine.begin() as connection:
        seed_demo(connection)
    engine.dispose()
    ports = {"rest": _free_port(), "grpc": _free_port()}
    data_dir: Path = tmp_path_factory.mktemp("api-data")
    with private_vhost(infra_urls, amqp_url) as vhost_url:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "OMS_DATABASE_URL": database_url,
            "OMS_AMQP_URL": vhost_url,
            "OMS_JWT_SECRET": TEST_SECRET,
            "OMS_REST_PORT": str(ports["rest"]),
            "OMS_GRPC_PORT": str(ports["grpc"]),
            "OMS_DATA_DIR": str(data_dir),
            "OMS_API_HOST": "127.0.0.1",
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        process = subprocess.Popen(
            [sys.executable, "-m", "services.api", "--workers", "2"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(data_dir / "stderr.log").open("w"),
        )
        try:
            yield {**ports, "pid": process.pid}
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_rest_under_gunicorn(service: dict[str, int]) -> None:
    base = f"http://127.0.0.1:{service['rest']}"

    def ready() -> bool:
        try:
            return _get(f"{base}/health/ready")[0] == 200
        except OSError:
            return False

    wait_until(ready, timeout=30, message="the REST server to be ready")
    with urllib.request.urlopen(f"{base}/health/live", timeout=5) as response:
        assert "gunicorn" in response.headers.get("Server", "")
    status, page = _get(f"{base}/orders?accountId=ACC-001&size=1", bearer())
    assert status == 200 and page["size"] == 1
    assert _get(f"{base}/orders")[0] == 401
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        assert b"oms_http_requests_total" in response.read()


async def test_grpc_beside_it(service: dict[str, int]) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service['grpc']}") as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        order = await pb_grpc.OrderServiceStub(channel).CreateOrder(
            pb.CreateOrderRequest(
                account_id="ACC-001", symbol="AAPL", side=pb.ORDER_SIDE_BUY, type=pb.ORDER_TYPE_MARKET, quantity=1
            ),
            metadata=grpc_metadata(),
        )
        assert order.status == pb.ORDER_STATUS_PENDING
