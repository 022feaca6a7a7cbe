"""TLS on every connection: the whole system under ``./oms up --detach --tls``, and plaintext refused on each port.

The test brings up an OMS of its own, as a user does (tests/fault/harness.py's ``Instance``): its own data folder,
Postgres and RabbitMQ (ports in 544x6x/567x6x/157x6x/257x6x, picked free), REST, gRPC and metrics ports, a local
CA made by ``tools/infra/tls.py``. Every process connects with TLS: Postgres ``sslmode=verify-full``, AMQPS
(aio-pika and dramatiq's pika), and serves TLS: REST over HTTPS (gunicorn), gRPC, the workers' /metrics.

Orders go in over HTTPS REST and over gRPC with TLS and must end FILLED with their position booked; the servers
must report every TCP connection encrypted; then a plaintext client is refused by each: psycopg with
``sslmode=disable``, ``amqp://``, an insecure gRPC channel, ``http://`` to REST and to /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import aio_pika
import grpc
import psycopg
import pytest
import requests
from sqlalchemy import Engine, text

from common.store.db import make_engine
from proto.gen import order_pb2 as pb
from proto.gen import order_pb2_grpc as pb_grpc
from tests.fault.harness import Instance, free_ports
from tests.support.api import TEST_SECRET, bearer, grpc_metadata
from tests.support.polling import wait_until
from tools import infra
from tools.infra import postgres, tls

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ACCOUNT, SYMBOL, QUANTITY = "ACC-001", "AAPL", Decimal("10")
# Each server's port: the first free one of its block (a port of the machine's ephemeral range may be held by a
# client connection for a while, so a fixed one could be taken).
PORT_BLOCKS = {
    "OMS_PG_PORT": 54460,
    "OMS_AMQP_PORT": 56760,
    "OMS_RABBITMQ_MGMT_PORT": 15760,
    "OMS_RABBITMQ_DIST_PORT": 25760,
}
METRICS_SLOTS = 12  # tools/up.py gives each process its slot from the base


def _servers_installed() -> bool:
    return bool(
        (shutil.which("rabbitmq-server") or Path("/usr/sbin/rabbitmq-server").exists())
        and (shutil.which("pg_ctl") or list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")))
    )


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_in_block(first: int) -> int:
    for port in range(first, first + 10):
        if _bindable(port):
            return port
    raise RuntimeError(f"no free port in {first}..{first + 9}")


def _metrics_base() -> int:
    for base in free_ports(20):
        if base + METRICS_SLOTS < 65535 and all(_bindable(p) for p in range(base, base + METRICS_SLOTS)):
            return base
    raise RuntimeError("no block of free ports for the metrics servers")


def _server_pids(data_dir: Path) -> list[int]:
    """The Postgres and RabbitMQ processes of the instance (its data folder in their command or environment)."""
    marker = str(data_dir).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline, environ = (entry / "cmdline").read_bytes(), (entry / "environ").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        server = b"postgres" in cmdline or b"beam" in cmdline
        if server and (
            marker in cmdline or any(v.startswith(b"RABBITMQ_MNESIA_BASE=" + marker) for v in environ.split(b"\0"))
        ):
            found.append(int(entry.name))
    return found


@dataclass
class TlsSystem:
    """The running instance and where its TLS endpoints answer."""

    instance: Instance
    settings: infra.ServerSettings
    rest: str
    grpc_target: str
    metrics: str
    ca: Path

    @property
    def engine_url(self) -> str:
        return self.settings.urls.database_url  # the owner, over TLS (sslmode=verify-full, the instance's CA)


@pytest.fixture(scope="module")
def system() -> Iterator[TlsSystem]:
    """``./oms up --detach --tls`` on servers of the test's own; ``./oms down`` and the data folder removed."""
    if not _servers_installed():
        pytest.skip("needs Postgres and rabbitmq-server installed locally (the test runs servers of its own)")
    run = uuid.uuid4().hex[:8]
    default = Instance._settings({k: v for k, v in os.environ.items() if k != "OMS_DATA_DIR"}).data_dir
    data_dir = default / f"tls-{run}"
    rest, grpc_port = free_ports(2)
    metrics = _metrics_base()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OMS_")},
        "OMS_DATA_DIR": str(data_dir),
        **{variable: str(_free_in_block(first)) for variable, first in PORT_BLOCKS.items()},
        "OMS_RABBITMQ_NODENAME": f"oms-tls-{run}@localhost",
        "OMS_REST_PORT": str(rest),
        "OMS_GRPC_PORT": str(grpc_port),
        "OMS_METRICS_PORT_BASE": str(metrics),
        # The instance's own token secret and key files (the tests' tokens verify; the checkout's keys stay apart).
        "OMS_JWT_SECRET": TEST_SECRET,
        "OMS_JWT_KEYS_FILE": str(data_dir / "jwt-keys.json"),
        "OMS_DATA_KEYS_FILE": str(data_dir / "data-keys.json"),
        "OMS_API_WORKERS": "1",
        "OMS_OUTBOX_GRACE_SECONDS": "2",
        "OMS_OUTBOX_POLL_SECONDS": "0.5",
    }
    instance = Instance(env=env, data_dir=data_dir, urls=Instance._settings(env).urls, crash_trigger=data_dir / "none")
    try:
        instance.oms("up", "--detach", "--tls", timeout=240)
        settings = instance.infra_settings
        assert settings.tls, "the TLS mode is remembered in the instance's data folder"
        yield TlsSystem(
            instance=instance,
            settings=settings,
            rest=f"https://127.0.0.1:{rest}",
            grpc_target=f"127.0.0.1:{grpc_port}",
            metrics=f"127.0.0.1:{metrics}",  # the first slot: intake
            ca=tls.files(data_dir).ca_cert,
        )
    except BaseException:
        print("\n".join(instance.log))
        raise
    finally:
        left = instance.down()
        servers = _server_pids(data_dir)
        for pid in servers:  # a server `./oms down` did not stop must not outlive the test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert left == [] and servers == [], f"outlived `./oms down`: {left} {servers}\n" + "\n".join(instance.log)


@pytest.fixture(scope="module")
def engine(system: TlsSystem) -> Iterator[Engine]:
    engine = make_engine(system.engine_url, pool_size=1)
    yield engine
    engine.dispose()


def _post_rest_order(system: TlsSystem, strategy: str) -> str:
    body: dict[str, str | float] = {
        "accountId": ACCOUNT,
        "symbol": SYMBOL,
        "side": "BUY",
        "type": "MARKET",
        "quantity": float(QUANTITY),
        "timeInForce": "DAY",
        "strategyId": strategy,
    }
    answer = requests.post(
        f"{system.rest}/orders", json=body, headers={"Authorization": bearer()}, timeout=10, verify=str(system.ca)
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def _create_grpc_order(system: TlsSystem, strategy: str) -> str:
    credentials = grpc.ssl_channel_credentials(root_certificates=system.ca.read_bytes())
    async with grpc.aio.secure_channel(system.grpc_target, credentials) as channel:
        request = pb.CreateOrderRequest(
            account_id=ACCOUNT,
            symbol=SYMBOL,
            side=pb.ORDER_SIDE_BUY,
            type=pb.ORDER_TYPE_MARKET,
            quantity=float(QUANTITY),
            time_in_force=pb.TIME_IN_FORCE_DAY,
            strategy_id=strategy,
        )
        reply = await pb_grpc.OrderServiceStub(channel).CreateOrder(request, metadata=grpc_metadata(), timeout=10)
    return str(reply.id)


def _rest_status(system: TlsSystem, order_id: str) -> str:
    answer = requests.get(
        f"{system.rest}/orders/{order_id}", headers={"Authorization": bearer()}, timeout=10, verify=str(system.ca)
    )
    answer.raise_for_status()
    return str(answer.json()["status"])


def _position(engine: Engine) -> Decimal:
    with engine.connect() as connection:
        quantity = connection.execute(
            text("SELECT quantity FROM positions WHERE account_id = :a AND symbol = :s"), {"a": ACCOUNT, "s": SYMBOL}
        ).scalar()
    return Decimal(quantity or 0)


def test_orders_over_https_and_grpc_tls_fill_with_every_connection_encrypted(system: TlsSystem, engine: Engine) -> None:
    before = _position(engine)
    strategy = f"tls-{uuid.uuid4().hex[:8]}"
    ids = [_post_rest_order(system, strategy), asyncio.run(_create_grpc_order(system, strategy))]

    # Read back over HTTPS until both are FILLED, then the books: a confirmation each, the position moved.
    wait_until(
        lambda: all(_rest_status(system, order_id) == "FILLED" for order_id in ids),
        timeout=60,
        interval=0.3,
        message=lambda: f"both orders FILLED: {[_rest_status(system, i) for i in ids]}",
    )
    with engine.connect() as connection:
        confirmed = connection.execute(
            text("SELECT count(DISTINCT order_id) FROM trade_confirmations WHERE order_id = ANY(:ids)"), {"ids": ids}
        ).scalar()
    assert confirmed == len(ids)
    wait_until(lambda: _position(engine) == before + 2 * QUANTITY, timeout=30, message="the position booked")

    # Every TCP connection Postgres has is encrypted (the workers', the API's, the jobs', this test's): asked as
    # the superuser over the socket, the one login that sees every role's sessions.
    with postgres.superuser_connection(system.settings) as admin:
        ssl_flags = [
            bool(ssl)
            for (ssl,) in admin.execute(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                "WHERE a.client_addr IS NOT NULL AND a.backend_type = 'client backend'"
            )
        ]
    assert len(ssl_flags) >= 5 and all(ssl_flags), ssl_flags
    # And every AMQP connection RabbitMQ has (a plaintext one could not exist: there is no plaintext listener).
    management = system.settings.urls.management_url
    connections = requests.get(
        f"{management}api/connections", auth=("guest", "guest"), timeout=10, verify=str(system.ca)
    ).json()
    assert len(connections) >= 5 and all(c["ssl"] for c in connections), [(c["name"], c["ssl"]) for c in connections]

    # A worker's /metrics over HTTPS; `./oms check` (a tool) connects with the instance's TLS URLs by itself.
    metrics = requests.get(f"https://{system.metrics}/metrics", timeout=10, verify=str(system.ca))
    assert metrics.status_code == 200 and "oms_stage_messages_total" in metrics.text
    check = system.instance.oms("check", "--settle", "30", check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_plaintext_client_is_refused_on_every_port(system: TlsSystem) -> None:
    settings = system.settings
    # Postgres: TLS refused by the client side, so the server's pg_hba `hostnossl ... reject` answers.
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(
            f"postgresql://oms:oms@127.0.0.1:{settings.pg_port}/oms", sslmode="disable", connect_timeout=5
        ).close()
    assert "no encryption" in str(refused.value)

    # RabbitMQ: no plaintext listener; the TLS one drops a client that speaks AMQP straight away.
    async def plain_amqp() -> None:
        async with asyncio.timeout(15):
            connection = await aio_pika.connect(f"amqp://guest:guest@127.0.0.1:{settings.amqp_port}/")
            await connection.close()

    with pytest.raises((aio_pika.exceptions.AMQPConnectionError, ConnectionError)):
        asyncio.run(plain_amqp())

    # gRPC: an insecure channel cannot complete a call.
    async def insecure_grpc() -> None:
        async with grpc.aio.insecure_channel(system.grpc_target) as channel:
            await pb_grpc.OrderServiceStub(channel).GetOrder(
                pb.GetOrderRequest(order_id=str(uuid.uuid4())), metadata=grpc_metadata(), timeout=10
            )

    with pytest.raises(grpc.aio.AioRpcError) as grpc_refused:
        asyncio.run(insecure_grpc())
    assert grpc_refused.value.code() == grpc.StatusCode.UNAVAILABLE

    # REST and a worker's /metrics: plain HTTP gets no answer.
    for url in (f"{system.rest.replace('https:', 'http:')}/health/live", f"http://{system.metrics}/metrics"):
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=10)

    # And TLS without the instance's CA is refused by the client: nothing trusts "any certificate".
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{system.rest}/health/live", timeout=10, verify=True)
