"""The API's queries on the read side (``OMS_READ_DATABASE_URL``), its writes and their answers on the primary.

The read URL is the read-only role's (``oms_reader``, made by tools/infra/postgres.py), in libpq's multi-host
form with a dead first host and ``target_session_attrs=prefer-standby``, as a Patroni or managed deployment
gives it. The queries (REST's GET of an order, a list, the events; gRPC's GetOrder and GetOrderEvents) run
there, on a pool of their own; the answers to POST, cancel and idempotent replays come from the primary. A
read side on another, empty database stands for a replica that has not replayed the newest orders: a GET of
one order falls back to the primary, a list shows what the replica has. Without a read URL of its own, the
queries use the primary's engine itself.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import grpc
import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, make_url, text
from sqlalchemy.exc import ProgrammingError

from common import jsonutil
from common.settings import InfraSettings, Settings
from proto.gen import order_pb2 as pb
from proto.gen import order_pb2_grpc as pb_grpc
from services.api.app import create_app
from services.api.database import front_end_engine, query_engine
from services.api.grpc_server import GrpcServer
from tests.support.api import bearer, grpc_metadata, new_account, private_vhost, token_service
from tests.support.db import statements
from tools import infra, migrate

if TYPE_CHECKING:
    from tools.infra import InfraUrls

pytestmark = pytest.mark.integration

AUTH = {"Authorization": bearer()}
DEAD_HOST = "127.0.0.1:1"  # nothing listens: libpq moves on to the next host


def _multi_host(role_url: str) -> str:
    """``role_url`` in the multi-host form of a read URL: a dead host first, then the server, standby preferred."""
    url = make_url(role_url)
    password = quote(str(url.password), safe="")
    return (
        f"postgresql+psycopg://{url.username}:{password}@/{url.database}"
        f"?host={DEAD_HOST}&host={url.host}:{url.port}&target_session_attrs=prefer-standby"
    )


@dataclass
class Sides:
    settings: Settings
    primary: Engine
    reads: Engine


def _sides(database_url: str, read_database_url: str, tmp_path: Path, amqp_url: str) -> Sides:
    worker = infra.role_url("worker", database_url)
    if worker is None:
        pytest.skip("no local roles for this server (tools/infra/postgres.py makes them for the local one)")
    settings = Settings(
        infra=InfraSettings(
            database_url=database_url,
            worker_database_url=worker,
            read_database_url=read_database_url,
            amqp_url=amqp_url,
            data_keys_file=tmp_path / "data-keys.json",
        )
    )
    primary = front_end_engine(settings)  # as the API builds them (services/api/__main__.py)
    return Sides(settings, primary, query_engine(settings, primary))


@pytest.fixture()
def sides(database_url: str, amqp_url: str, tmp_path: Path) -> Iterator[Sides]:
    reader = infra.role_url("reader", database_url)
    if reader is None:
        pytest.skip("no local reader role for this server")
    made = _sides(database_url, _multi_host(reader), tmp_path, amqp_url)
    try:
        yield made
    finally:
        made.reads.dispose()
        made.primary.dispose()


def _client(sides: Sides) -> FlaskClient:
    app = create_app(sides.settings, sides.primary, tokens=token_service(), read_engine=sides.reads)
    return app.test_client()


def _order(account: str, **extra: Any) -> dict[str, Any]:
    return {
        "accountId": account,
        "symbol": "AAPL",
        "side": "BUY",
        "type": "LIMIT",
        "quantity": 10,
        "price": 189.55,
        "timeInForce": "GTC",
        **extra,
    }


def _post(client: FlaskClient, body: dict[str, Any], key: str | None = None) -> Any:
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    return client.post("/orders", data=jsonutil.dumps(body), content_type="application/json", headers=headers)


class Sent:
    """The statements each side runs while a block runs."""

    def __init__(self, sides: Sides) -> None:
        self._sides = sides
        self._stack = ExitStack()
        self.primary: list[str] = []
        self.reads: list[str] = []

    def __enter__(self) -> Sent:
        self.primary = self._stack.enter_context(statements(self._sides.primary))
        self.reads = self._stack.enter_context(statements(self._sides.reads))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def _queried(sent: list[str]) -> bool:
    return any("order_summary" in statement for statement in sent)


def test_the_read_side_is_the_reader_role_on_a_pool_of_its_own(sides: Sides) -> None:
    assert sides.reads is not sides.primary
    with sides.reads.connect() as connection:
        user, in_recovery = connection.execute(text("SELECT current_user, pg_is_in_recovery()")).one()
    assert user == "oms_reader" and in_recovery is False  # prefer-standby took the primary: no standby here
    with pytest.raises(ProgrammingError, match="permission denied"), sides.reads.begin() as connection:
        connection.execute(text("INSERT INTO inbox (stage, message_id, processed_at) VALUES ('t', 'x', now())"))
    with sides.primary.connect() as connection:
        assert connection.execute(text("SELECT current_user")).scalar_one() == "oms_worker"


def test_gets_read_the_read_side_and_writes_answer_from_the_primary(sides: Sides, engine: Engine) -> None:
    client = _client(sides)
    account = new_account(engine)
    key = str(uuid.uuid4())
    with Sent(sides) as sent:
        created = _post(client, _order(account, notes="call Zoë first"), key)
    assert created.status_code == 201, created.get_data(as_text=True)
    order_id = jsonutil.loads(created.get_data())["id"]
    assert _queried(sent.primary) and sent.reads == []  # the answer: read in the transaction that wrote it

    with Sent(sides) as sent:
        one = client.get(f"/orders/{order_id}", headers=AUTH)
        listed = client.get(f"/orders?accountId={account}", headers=AUTH)
        events = client.get(f"/orders/{order_id}/events", headers=AUTH)
    assert one.status_code == 200 and jsonutil.loads(one.get_data())["notes"] == "call Zoë first"  # keys too
    assert [o["id"] for o in jsonutil.loads(listed.get_data())["content"]] == [order_id]
    assert [e["type"] for e in jsonutil.loads(events.get_data())["events"]] == ["ORDER_CREATED"]
    assert _queried(sent.reads) and sent.primary == []

    with Sent(sides) as sent:
        replay = _post(client, _order(account, notes="call Zoë first"), key)
    assert replay.status_code == 200 and jsonutil.loads(replay.get_data())["id"] == order_id
    assert _queried(sent.primary) and sent.reads == []  # an idempotent replay answers from the primary

    with Sent(sides) as sent:
        body = {"action": "CANCEL", "notes": "no longer wanted"}
        canceled = client.put(
            f"/orders/{order_id}", data=jsonutil.dumps(body), content_type="application/json", headers=AUTH
        )
    assert canceled.status_code == 200 and jsonutil.loads(canceled.get_data())["status"] == "CANCELED"
    assert _queried(sent.primary) and sent.reads == []  # the check before it, and its answer


def test_a_lagging_replica_still_finds_a_new_order_and_never_answers_a_write(
    infra_urls: InfraUrls, database_url: str, amqp_url: str, engine: Engine, tmp_path: Path
) -> None:
    name = f"oms_replica_{uuid.uuid4().hex[:10]}"
    replica = infra.create_database(name, infra_urls.database_url)  # empty: it has replayed nothing yet
    try:
        migrate.upgrade(replica)
        reader = infra.role_url("reader", replica)
        if reader is None:
            pytest.skip("no local reader role for this server")
        sides = _sides(database_url, _multi_host(reader), tmp_path, amqp_url)
        try:
            client = _client(sides)
            account = new_account(engine)
            order_id = jsonutil.loads(_post(client, _order(account)).get_data())["id"]
            with Sent(sides) as sent:
                one = client.get(f"/orders/{order_id}", headers=AUTH)
            assert one.status_code == 200  # not on the replica: asked of the primary before calling it missing
            assert _queried(sent.reads) and _queried(sent.primary)
            listed = client.get(f"/orders?accountId={account}", headers=AUTH)
            assert jsonutil.loads(listed.get_data())["content"] == []  # a list shows what the replica has
            missing = client.get(f"/orders/{uuid.uuid4()}", headers=AUTH)
            assert missing.status_code == 404
            body = {"action": "CANCEL", "notes": "changed my mind"}
            canceled = client.put(
                f"/orders/{order_id}", data=jsonutil.dumps(body), content_type="application/json", headers=AUTH
            )
            assert canceled.status_code == 200 and jsonutil.loads(canceled.get_data())["status"] == "CANCELED"
        finally:
            sides.reads.dispose()
            sides.primary.dispose()
    finally:
        infra.drop_database(name, infra_urls.database_url)


def test_without_a_read_url_of_its_own_the_queries_share_the_primary(
    database_url: str, amqp_url: str, tmp_path: Path
) -> None:
    worker = infra.role_url("worker", database_url) or database_url
    settings = Settings(infra=InfraSettings(database_url=worker, amqp_url=amqp_url, data_keys_file=tmp_path / "k"))
    primary = front_end_engine(settings)
    try:
        assert settings.infra.read_database_url == settings.infra.worker_database_url
        assert query_engine(settings, primary) is primary  # one engine, one pool: nothing more per request
    finally:
        primary.dispose()


# ---- gRPC -------------------------------------------------------------------------------------------------


@pytest.fixture()
def vhost_url(infra_urls: InfraUrls, amqp_url: str) -> Iterator[str]:
    with private_vhost(infra_urls, amqp_url) as url:
        yield url


@pytest.fixture()
async def grpc_server(sides: Sides, vhost_url: str) -> AsyncIterator[GrpcServer]:
    settings = Settings(infra=sides.settings.infra.model_copy(update={"amqp_url": vhost_url}))
    server = GrpcServer(
        settings, sides.primary, tokens=token_service(), host="127.0.0.1", port=0, read_engine=sides.reads
    )
    await server.start()
    yield server
    await server.stop(0.5)


async def test_grpc_gets_on_the_read_side_creates_on_the_primary(
    sides: Sides, grpc_server: GrpcServer, engine: Engine
) -> None:
    account = new_account(engine)
    request = pb.CreateOrderRequest(
        account_id=account,
        symbol="AAPL",
        side=pb.ORDER_SIDE_BUY,
        type=pb.ORDER_TYPE_LIMIT,
        quantity=10,
        price=189.55,
        time_in_force=pb.TIME_IN_FORCE_GTC,
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_server.port}") as channel:
        stub = pb_grpc.OrderServiceStub(channel)
        with Sent(sides) as sent:
            created = await stub.CreateOrder(request, metadata=grpc_metadata())
        assert _queried(sent.primary) and sent.reads == []
        with Sent(sides) as sent:
            got = await stub.GetOrder(pb.GetOrderRequest(order_id=created.id), metadata=grpc_metadata())
            events = await stub.GetOrderEvents(pb.GetOrderEventsRequest(order_id=created.id), metadata=grpc_metadata())
        assert got.id == created.id
        assert [e.type for e in events.events] == ["ORDER_CREATED"]
        assert _queried(sent.reads) and sent.primary == []
