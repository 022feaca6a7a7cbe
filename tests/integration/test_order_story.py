"""An order's story everywhere a user looks: GET /orders/{id}/events, GetOrderEvents, ``oms order show``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine, insert

from common import jsonutil
from common.settings import InfraSettings, Settings
from common.store import tables
from proto.gen import order_pb2 as pb
from proto.gen import order_pb2_grpc as pb_grpc
from services.api.auth import SCOPE_OPERATIONS, SCOPE_READ, SCOPE_WRITE
from services.api.grpc_server import GrpcServer
from tests.support.api import bearer, grpc_metadata, new_account, private_vhost, store_order, token_service
from tests.support.orders import event_records
from tools import cli

if TYPE_CHECKING:
    from tools.infra import InfraUrls

D = Decimal
Code = grpc.StatusCode


@pytest.fixture()
def account(engine: Engine) -> str:
    return new_account(engine)


@pytest.fixture()
def filled(engine: Engine, account: str) -> str:
    """A FILLED order of a fresh account: created, approved, routed, acknowledged, filled."""
    return store_order(engine, account, status="FILLED", quantity=D("100"), fill_price=D("190.25"))


def _stored_events(engine: Engine, order_id: str) -> list[Any]:
    return list(event_records(engine, order_id))


# ---- REST ---------------------------------------------------------------------------------------------------


def _events(client: FlaskClient, order_id: str, token: str, query: str = "") -> Any:
    return client.get(f"/orders/{order_id}/events{query}", headers={"Authorization": token})


def test_rest_returns_the_events_in_sequence(client: FlaskClient, engine: Engine, account: str, filled: str) -> None:
    response = _events(client, filled, bearer([account], [SCOPE_READ]))
    assert response.status_code == 200, response.get_data(as_text=True)
    body = jsonutil.loads(response.get_data())
    assert body["orderId"] == filled
    stored = _stored_events(engine, filled)
    events = body["events"]
    assert [e["sequence"] for e in events] == list(range(1, len(stored) + 1))
    assert [e["type"] for e in events] == [row.type for row in stored]
    assert events[0]["type"] == "ORDER_CREATED" and events[-1]["type"] == "ORDER_FILLED"
    first = events[0]
    assert set(first) >= {"type", "sequence", "timestamp", "payload"}
    assert first["userId"] == "tests"
    assert first["correlationId"] == filled
    assert "messageId" not in first  # absent rather than null
    assert isinstance(first["payload"], dict)
    # Figures in the payload are exact JSON numbers (no float on the way).
    fill = events[-1]["payload"]
    assert all(not isinstance(v, float) for v in fill.values())


def test_rest_pages_by_sequence(client: FlaskClient, account: str, filled: str) -> None:
    token = bearer([account], [SCOPE_READ])
    all_events = jsonutil.loads(_events(client, filled, token).get_data())["events"]
    first_two = jsonutil.loads(_events(client, filled, token, "?limit=2").get_data())["events"]
    rest = jsonutil.loads(_events(client, filled, token, "?afterSequence=2").get_data())["events"]
    assert first_two + rest == all_events
    assert [e["sequence"] for e in first_two] == [1, 2]


@pytest.mark.parametrize("query", ["?limit=0", "?limit=1001", "?afterSequence=-1", "?limit=x"])
def test_rest_refuses_bad_paging(client: FlaskClient, filled: str, query: str) -> None:
    response = _events(client, filled, bearer(), query)
    assert response.status_code == 400
    assert response.get_json()["errors"]


def test_rest_hides_another_accounts_order(client: FlaskClient, engine: Engine, filled: str) -> None:
    other = new_account(engine)
    response = _events(client, filled, bearer([other], [SCOPE_READ]))
    assert response.status_code == 404
    # The same answer as for an order that does not exist: its existence is not the caller's business.
    assert response.get_json()["message"] == f"order {filled} not found"


@pytest.mark.parametrize("order_id", ["00000000-0000-0000-0000-000000000000", "not-a-uuid"])
def test_rest_unknown_order_is_404(client: FlaskClient, order_id: str) -> None:
    assert _events(client, order_id, bearer()).status_code == 404


def test_rest_needs_a_token_and_the_read_scope(client: FlaskClient, account: str, filled: str) -> None:
    assert client.get(f"/orders/{filled}/events").status_code == 401
    assert _events(client, filled, "Bearer forged").status_code == 401
    assert _events(client, filled, bearer([account], [SCOPE_WRITE])).status_code == 403


def test_rest_documents_the_endpoint(client: FlaskClient) -> None:
    document = client.get("/openapi.json").get_json()
    operation = document["paths"]["/orders/{orderId}/events"]["get"]
    assert operation["operationId"] == "getOrderEvents"
    assert {"200", "400", "401", "403", "404"} <= set(operation["responses"])
    names = {parameter["name"] for parameter in operation["parameters"]}
    assert {"afterSequence", "limit"} <= names


# ---- gRPC ---------------------------------------------------------------------------------------------------


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


async def _code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    code: grpc.StatusCode = raised.value.code()
    return code


async def test_grpc_returns_the_events_in_sequence(
    stub: pb_grpc.OrderServiceStub, engine: Engine, account: str, filled: str
) -> None:
    metadata = grpc_metadata(bearer([account], [SCOPE_READ]))
    answer = await stub.GetOrderEvents(pb.GetOrderEventsRequest(order_id=filled), metadata=metadata)
    stored = _stored_events(engine, filled)
    assert answer.order_id == filled
    assert [e.sequence for e in answer.events] == [row.sequence for row in stored]
    assert [e.type for e in answer.events] == [row.type for row in stored]
    first = answer.events[0]
    assert first.user_id == "tests" and first.correlation_id == filled and first.message_id == ""
    assert first.timestamp.ToDatetime(tzinfo=UTC) == stored[0].timestamp
    # The payload is JSON text with exact decimals.
    assert jsonutil.loads(answer.events[-1].payload_json) == stored[-1].payload


async def test_grpc_pages_by_sequence(stub: pb_grpc.OrderServiceStub, filled: str) -> None:
    metadata = grpc_metadata()
    everything = await stub.GetOrderEvents(pb.GetOrderEventsRequest(order_id=filled), metadata=metadata)
    page = await stub.GetOrderEvents(pb.GetOrderEventsRequest(order_id=filled, limit=2), metadata=metadata)
    rest = await stub.GetOrderEvents(pb.GetOrderEventsRequest(order_id=filled, after_sequence=2), metadata=metadata)
    assert [e.sequence for e in page.events] == [1, 2]
    assert list(page.events) + list(rest.events) == list(everything.events)


async def test_grpc_hides_another_accounts_order(stub: pb_grpc.OrderServiceStub, engine: Engine, filled: str) -> None:
    other = new_account(engine)
    request = pb.GetOrderEventsRequest(order_id=filled)
    metadata = grpc_metadata(bearer([other], [SCOPE_READ, SCOPE_OPERATIONS]))
    assert await _code_of(stub.GetOrderEvents(request, metadata=metadata)) is Code.NOT_FOUND


async def test_grpc_errors(stub: pb_grpc.OrderServiceStub, account: str, filled: str) -> None:
    unknown = pb.GetOrderEventsRequest(order_id=str(uuid.uuid4()))
    assert await _code_of(stub.GetOrderEvents(unknown, metadata=grpc_metadata())) is Code.NOT_FOUND
    request = pb.GetOrderEventsRequest(order_id=filled)
    assert await _code_of(stub.GetOrderEvents(request)) is Code.UNAUTHENTICATED
    write_only = grpc_metadata(bearer([account], [SCOPE_WRITE]))
    assert await _code_of(stub.GetOrderEvents(request, metadata=write_only)) is Code.PERMISSION_DENIED
    for bad in (
        pb.GetOrderEventsRequest(order_id=filled, limit=1001),
        pb.GetOrderEventsRequest(order_id=filled, after_sequence=-1),
    ):
        assert await _code_of(stub.GetOrderEvents(bad, metadata=grpc_metadata())) is Code.INVALID_ARGUMENT


# ---- oms order show -----------------------------------------------------------------------------------------


def _settle(engine: Engine, order_id: str, account: str, *, quantity: Decimal, reversal: bool = False) -> str:
    """A confirmation and its instruction for the order, as settlement books them (written straight in)."""
    confirmation_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    gross = quantity * D("190.25")
    with engine.begin() as connection:
        connection.execute(
            insert(tables.trade_confirmations).values(
                id=confirmation_id,
                order_id=order_id,
                execution_id=f"X-{confirmation_id[:8]}",
                account_id=account,
                symbol="AAPL",
                side="BUY",
                quantity=quantity,
                price=D("190.25"),
                gross_amount=gross,
                fees=D("1.25"),
                net_amount=gross + D("1.25"),
                currency="USD",
                venue="SIM",
                trade_date=date(2026, 11, 25),
                settlement_date=date(2026, 11, 26),
                reversal=reversal,
                created_at=now,
            )
        )
        connection.execute(
            insert(tables.settlement_instructions).values(
                id=str(uuid.uuid4()),
                confirmation_id=confirmation_id,
                order_id=order_id,
                account_id=account,
                symbol="AAPL",
                securities_direction="RECEIVE" if not reversal else "DELIVER",
                quantity=quantity,
                cash_amount=gross + D("1.25"),
                currency="USD",
                settlement_date=date(2026, 11, 26),
                status="PENDING",
                created_at=now,
            )
        )
    return confirmation_id


@pytest.fixture()
def settled(engine: Engine, account: str, filled: str) -> str:
    """The filled order with two confirmations (100 bought, 40 of it reversed) and the account's position."""
    _settle(engine, filled, account, quantity=D("100"))
    _settle(engine, filled, account, quantity=D("40"), reversal=True)
    with engine.begin() as connection:
        connection.execute(
            insert(tables.positions).values(
                account_id=account,
                symbol="AAPL",
                quantity=D("60"),
                average_cost=D("190.25"),
                realized_pnl=D("0"),
                updated_at=datetime.now(UTC),
            )
        )
    return filled


def test_order_show_json_tells_the_whole_story(
    engine: Engine, database_url: str, account: str, settled: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["order", "show", settled, "--json", "--url", database_url]) == 0
    story = jsonutil.loads(capsys.readouterr().out)
    assert story["order"]["id"] == settled and story["order"]["status"] == "FILLED"
    assert [e["sequence"] for e in story["events"]] == [row.sequence for row in _stored_events(engine, settled)]
    assert [r["exec_type"] for r in story["execution_reports"]] == ["NEW", "FILL"]
    assert [(c["quantity"], c["reversal"]) for c in story["trade_confirmations"]] == [(100, False), (40, True)]
    assert len(story["settlement_instructions"]) == 2
    assert story["position_effect"] == {
        "account_id": account,
        "symbol": "AAPL",
        "quantity": 60,
        "position_now": 60,
    }


def test_order_show_text(database_url: str, account: str, settled: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["order", "show", settled, "--url", database_url]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"order {settled}  FILLED\n")
    assert f"{account}  BUY 100 AAPL LIMIT @ 190" in out
    for title in ("events (", "execution reports (2)", "trade confirmations (2)", "settlement instructions (2)"):
        assert title in out
    assert "ORDER_CREATED" in out and "ORDER_FILLED" in out
    assert "REVERSAL BUY 40 @ 190.25" in out
    assert f"this order: +60 AAPL in {account}; position now 60" in out


def test_order_show_of_an_order_without_fills(
    engine: Engine, database_url: str, account: str, capsys: pytest.CaptureFixture[str]
) -> None:
    order_id = store_order(engine, account, status="REJECTED")
    assert cli.main(["order", "show", order_id, "--url", database_url]) == 0
    out = capsys.readouterr().out
    assert "REJECTED" in out and "rejection reason: rejected by the test" in out
    assert "trade confirmations (0)\n  none" in out
    assert f"this order: 0 AAPL in {account}; position now 0" in out


@pytest.mark.parametrize("order_id", [str(uuid.uuid4()), "not-an-order"])
def test_order_show_of_a_missing_order_exits_1(
    database_url: str, order_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["order", "show", order_id, "--url", database_url]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"oms order show: no order {order_id}\n"
