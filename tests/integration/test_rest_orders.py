"""REST: create, read, cancel and modify orders on the real database, with the specification's error shapes."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, select

from common import jsonutil
from common.messages.partitions import base_key
from common.store import tables
from tests.support.api import bearer, new_account, store_order
from tests.support.orders import order_count


@pytest.fixture()
def account(engine: Engine) -> str:
    return new_account(engine)


AUTH = {"Authorization": bearer()}


def _json(response: Any) -> Any:
    # Parse exactly as a careful client would: numbers as Decimal.
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


# ---- POST /orders -----------------------------------------------------------------------------------------


def test_create_returns_201_with_the_booked_order(client: FlaskClient, engine: Engine, account: str) -> None:
    response = _create(client, _limit(account))
    assert response.status_code == 201, response.get_data(as_text=True)
    order = _json(response)
    uuid.UUID(order["id"])
    assert order["accountId"] == account
    assert order["status"] == "PENDING" and order["state"] == "NEW"
    assert order["quantity"] == Decimal("100") and order["price"] == Decimal("189.55")
    assert order["filledQuantity"] == 0 and order["executionReports"] == []
    assert order["timeInForce"] == "GTC" and order["strategyId"] == "momentum-1"
    assert order["createdAt"].endswith("+00:00")
    assert "stopPrice" not in order  # absent, not null: the specification's schema does not allow null
    # Booked with its RiskCheck in the outbox for the relay to publish.
    with engine.connect() as connection:
        outbox = connection.execute(
            select(tables.outbox.c.routing_key).where(tables.outbox.c.correlation_id == order["id"])
        ).scalars()
        assert "risk.check" in {base_key(key) for key in outbox}


def test_decimals_survive_exactly(client: FlaskClient, account: str) -> None:
    body = _limit(account, symbol="BTCUSD", quantity=Decimal("0.1234"), price=Decimal("65000.01"))
    response = _create(client, body)
    assert response.status_code == 201, response.get_data(as_text=True)
    text = response.get_data(as_text=True)
    assert '"quantity":0.1234' in text and '"price":65000.01' in text


def test_market_order_defaults_to_day(client: FlaskClient, account: str) -> None:
    body = _limit(account, type="MARKET", price=None, timeInForce=None)
    response = _create(client, body)
    assert response.status_code == 201, response.get_data(as_text=True)
    assert _json(response)["timeInForce"] == "DAY"
    assert "price" not in _json(response)


def test_halted_instrument_is_booked_rejected(client: FlaskClient, account: str) -> None:
    response = _create(client, _limit(account, symbol="HALT", price=Decimal("10.00")))
    assert response.status_code == 201
    order = _json(response)
    assert order["status"] == "REJECTED"
    assert order["rejectionCode"] == "INSTRUMENT_NOT_TRADABLE"
    assert "not tradable" in order["rejectionReason"]


def test_inactive_account_is_booked_rejected(client: FlaskClient, engine: Engine) -> None:
    inactive = new_account(engine, active=False)
    response = _create(client, _limit(inactive))
    assert response.status_code == 201
    assert _json(response)["status"] == "REJECTED" and _json(response)["rejectionCode"] == "ACCOUNT_INACTIVE"


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"price": None}, "price", "needs a price"),
        ({"price": Decimal("189.555")}, "price", "tick size"),
        ({"symbol": "VOD", "quantity": Decimal("150"), "price": Decimal("70.00")}, "quantity", "lot size"),
        ({"quantity": Decimal("0")}, "quantity", "positive"),
        ({"quantity": Decimal("-5")}, "quantity", "positive"),
        ({"symbol": "NOPE"}, "symbol", "not known"),
        ({"type": "MARKET"}, "price", "takes no price"),
        ({"type": "STOP", "price": None}, "stopPrice", "needs a stop price"),
        ({"type": "STOP", "price": None, "stopPrice": Decimal("180"), "timeInForce": "IOC"}, "timeInForce", "DAY"),
        ({"side": "HOLD"}, "side", "Must be one of"),
        ({"quantity": "100"}, "quantity", "Not a valid number"),
        ({"quantity": Decimal("1E+13")}, "quantity", "at most 12 digits"),
        ({"price": Decimal("189.123456789")}, "price", "at most 8 decimal places"),
        ({"accountId": None}, "accountId", "Missing data"),
        ({"notes": "bad\u0000byte"}, "notes", "control characters"),
        ({"accountId": "NO-SUCH-ACCOUNT"}, "accountId", "does not exist"),
    ],
)
def test_rule_violations_are_400_and_book_nothing(
    client: FlaskClient, engine: Engine, account: str, overrides: dict[str, Any], field: str, fragment: str
) -> None:
    body = _limit(account)
    body.update(overrides)
    body = {k: v for k, v in body.items() if v is not None}
    response = _create(client, body)
    assert response.status_code == 400, response.get_data(as_text=True)
    error = _json(response)
    assert set(error) == {"message", "code", "errors"}
    matching = [e for e in error["errors"] if e["field"] == field]
    assert matching, error
    assert any(fragment in e["message"] for e in matching), error
    assert order_count(engine, account) == 0


def test_malformed_json_is_400(client: FlaskClient) -> None:
    response = client.post("/orders", data="{not json", content_type="application/json", headers=AUTH)
    assert response.status_code == 400
    assert _json(response) == {
        "message": "Malformed JSON body",
        "code": "MALFORMED_JSON",
        "errors": [{"field": "body", "message": "Invalid JSON."}],
    }


def test_body_that_is_not_an_object_is_400(client: FlaskClient) -> None:
    response = client.post("/orders", data="[1, 2]", content_type="application/json", headers=AUTH)
    assert response.status_code == 400
    assert _json(response)["errors"][0]["field"] == "body"


# ---- idempotency ------------------------------------------------------------------------------------------


def test_same_idempotency_key_returns_the_same_order(client: FlaskClient, engine: Engine, account: str) -> None:
    key = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    first = _create(client, _limit(account), key)
    again = _create(client, _limit(account), key)
    assert first.status_code == 201 and again.status_code == 200
    assert _json(first)["id"] == _json(again)["id"]
    assert _json(again)["clientOrderId"] == key["Idempotency-Key"]
    assert order_count(engine, account) == 1


def test_same_client_order_id_in_the_body_returns_the_same_order(
    client: FlaskClient, engine: Engine, account: str
) -> None:
    body = _limit(account, clientOrderId="my-order-1")
    first, again = _create(client, body), _create(client, body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert _json(first)["id"] == _json(again)["id"]
    assert order_count(engine, account) == 1


def test_header_and_body_keys_must_agree(client: FlaskClient, account: str) -> None:
    response = _create(client, _limit(account, clientOrderId="a"), {"Idempotency-Key": "b"})
    assert response.status_code == 400
    assert _json(response)["errors"][0]["field"] == "clientOrderId"


def test_concurrent_submissions_with_one_key_book_one_order(
    client: FlaskClient, engine: Engine, account: str, app: Flask
) -> None:
    key = {"Idempotency-Key": f"race-{uuid.uuid4()}"}

    def submit(_: int) -> tuple[int, str]:
        response = _create(app.test_client(), _limit(account), key)
        return response.status_code, _json(response)["id"]

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(submit, range(6)))
    assert {order_id for _, order_id in results} == {results[0][1]}
    assert sorted(code for code, _ in results).count(201) == 1
    assert all(code in (200, 201) for code, _ in results)
    assert order_count(engine, account) == 1


# ---- GET /orders/{orderId} --------------------------------------------------------------------------------


def test_get_returns_the_order_with_its_execution_reports(client: FlaskClient, engine: Engine, account: str) -> None:
    order_id = store_order(engine, account, status="PARTIALLY_FILLED", fill_price=Decimal("189.50"))
    response = client.get(f"/orders/{order_id}", headers=AUTH)
    assert response.status_code == 200
    order = _json(response)
    assert order["status"] == "PARTIALLY_FILLED" and order["filledQuantity"] == 50
    assert order["averageExecutionPrice"] == Decimal("189.5")
    assert order["leavesQuantity"] == 50
    reports = order["executionReports"]
    assert [r["execType"] for r in reports] == ["NEW", "PARTIAL_FILL"]
    fill = reports[1]
    assert fill["quantity"] == 50 and fill["price"] == Decimal("189.5") and fill["fees"] == Decimal("1.25")
    assert fill["venue"] == "SIM" and fill["executionId"] and fill["id"] and fill["timestamp"]
    assert order["totalFees"] == Decimal("1.25")
    assert order["brokerOrderId"].startswith("B-")


@pytest.mark.parametrize("order_id", [str(uuid.uuid4()), "not-a-uuid", "x" * 300])
def test_unknown_order_is_404(client: FlaskClient, order_id: str) -> None:
    response = client.get(f"/orders/{order_id}", headers=AUTH)
    assert response.status_code == 404
    assert set(_json(response)) == {"message", "code"}


# ---- PUT /orders/{orderId} --------------------------------------------------------------------------------


def _put(client: FlaskClient, order_id: str, body: dict[str, Any]) -> Any:
    return client.put(f"/orders/{order_id}", data=jsonutil.dumps(body), content_type="application/json", headers=AUTH)


def test_cancel_a_pending_order_cancels_it_at_once(client: FlaskClient, account: str) -> None:
    order_id = _json(_create(client, _limit(account)))["id"]
    response = _put(client, order_id, {"action": "CANCEL", "notes": "changed my mind"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert _json(response)["status"] == "CANCELED" and _json(response)["state"] == "CANCELED"
    assert _json(client.get(f"/orders/{order_id}", headers=AUTH))["status"] == "CANCELED"


def test_cancel_a_working_order_asks_the_venue(client: FlaskClient, engine: Engine, account: str) -> None:
    order_id = store_order(engine, account, status="OPEN")
    response = _put(client, order_id, {"action": "CANCEL"})
    assert response.status_code == 200
    order = _json(response)
    assert order["status"] == "OPEN" and order["state"] == "OPEN"  # until the venue answers
    with engine.connect() as connection:
        kinds = connection.execute(
            select(tables.order_requests.c.kind).where(tables.order_requests.c.order_id == order_id)
        ).scalars()
        assert list(kinds) == ["CANCEL"]
    again = _put(client, order_id, {"action": "CANCEL"})
    assert again.status_code == 409 and set(_json(again)) == {"message", "code"}


@pytest.mark.parametrize("status", ["FILLED", "CANCELED", "REJECTED"])
def test_a_done_order_cannot_be_changed(client: FlaskClient, engine: Engine, account: str, status: str) -> None:
    order_id = store_order(engine, account, status=status)
    for body in ({"action": "CANCEL"}, {"action": "MODIFY", "quantity": 10}):
        response = _put(client, order_id, body)
        assert response.status_code == 409, (body, response.get_data(as_text=True))
        assert status in _json(response)["message"]


def test_modify_a_pending_order_changes_its_terms(client: FlaskClient, account: str) -> None:
    created = _json(_create(client, _limit(account)))
    response = _put(client, created["id"], {"action": "MODIFY", "quantity": 150, "price": Decimal("188.10")})
    assert response.status_code == 200, response.get_data(as_text=True)
    order = _json(response)
    assert order["quantity"] == 150 and order["price"] == Decimal("188.1")
    assert order["status"] == "PENDING" and order["version"] > created["version"]


def test_modify_a_working_order_requests_a_replace(client: FlaskClient, engine: Engine, account: str) -> None:
    order_id = store_order(engine, account, status="OPEN")
    response = _put(client, order_id, {"action": "MODIFY", "quantity": 80})
    assert response.status_code == 200
    assert _json(response)["quantity"] == 100  # in force only when the venue confirms
    with engine.connect() as connection:
        terms = connection.execute(
            select(tables.order_requests.c.terms).where(tables.order_requests.c.order_id == order_id)
        ).scalar_one()
    assert Decimal(str(terms["quantity"])) == 80


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action": "MODIFY"}, "action"),
        ({"action": "MODIFY", "price": Decimal("188.123")}, "price"),
        ({"action": "MODIFY", "quantity": -1}, "quantity"),
        ({"action": "EXPLODE"}, "action"),
        ({}, "action"),
    ],
)
def test_invalid_updates_are_400(client: FlaskClient, account: str, body: dict[str, Any], field: str) -> None:
    order_id = _json(_create(client, _limit(account)))["id"]
    response = _put(client, order_id, body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert field in {e["field"] for e in _json(response)["errors"]}, _json(response)


def test_unchanged_modify_is_400(client: FlaskClient, account: str) -> None:
    order_id = _json(_create(client, _limit(account)))["id"]
    response = _put(client, order_id, {"action": "MODIFY", "quantity": 100})
    assert response.status_code == 400
    assert "nothing to modify" in _json(response)["message"]


def test_update_of_unknown_order_is_404(client: FlaskClient) -> None:
    response = _put(client, str(uuid.uuid4()), {"action": "CANCEL"})
    assert response.status_code == 404 and set(_json(response)) == {"message", "code"}


# ---- hostile bodies (issue 9, finding 3): 400 with the spec's error shape, never 500 -----------------------

_TOO_DEEP = {
    "message": "Malformed JSON body",
    "code": "MALFORMED_JSON",
    "errors": [{"field": "body", "message": "Refused: nested deeper than 32 levels."}],
}


@pytest.mark.parametrize("depth", [33, 1_000, 100_000])
def test_a_deeply_nested_body_is_400_on_post_and_put(client: FlaskClient, account: str, depth: int) -> None:
    nested = '{"notes":' * depth + "1" + "}" * depth
    response = client.post("/orders", data=nested, content_type="application/json", headers=AUTH)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert _json(response) == _TOO_DEEP
    order_id = _json(_create(client, _limit(account)))["id"]
    response = client.put(
        f"/orders/{order_id}", data="[" * depth + "]" * depth, content_type="application/json", headers=AUTH
    )
    assert response.status_code == 400, response.get_data(as_text=True)
    assert _json(response) == _TOO_DEEP


def test_a_body_larger_than_a_mebibyte_is_400(client: FlaskClient, account: str) -> None:
    body = jsonutil.dumps(_limit(account, notes="x" * (1024 * 1024)))
    response = client.post("/orders", data=body, content_type="application/json", headers=AUTH)
    assert response.status_code == 400
    assert _json(response)["errors"] == [
        {"field": "body", "message": f"Refused: {len(body)} bytes is larger than the limit of {1024 * 1024} bytes."}
    ]


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"symbol": "AA\u0000PL"}, "symbol", "control characters"),
        ({"strategyId": "s\u0000"}, "strategyId", "control characters"),
        ({"clientOrderId": "c\u0000"}, "clientOrderId", "control characters"),
        ({"notes": "lone \ud800"}, "notes", "utf-8"),
        # Beyond the 28 digits Decimal's context keeps: still too precise, not rounded into a valid price.
        ({"price": Decimal("189.5500000000000000000000000001")}, "price", "at most 8 decimal places"),
        ({"quantity": Decimal("1E-999999999")}, "quantity", "at most 8 decimal places"),
        ({"quantity": Decimal("1E+999999999")}, "quantity", "at most 12 digits"),
    ],
)
def test_nul_characters_and_over_precise_numbers_are_400_naming_the_field(
    client: FlaskClient, engine: Engine, account: str, overrides: dict[str, Any], field: str, fragment: str
) -> None:
    response = _create(client, {**_limit(account), **overrides})
    assert response.status_code == 400, response.get_data(as_text=True)
    matching = [e for e in _json(response)["errors"] if e["field"] == field]
    assert any(fragment.lower() in e["message"].lower() for e in matching), _json(response)
    assert order_count(engine, account) == 0


def test_an_integer_too_long_to_parse_is_400(client: FlaskClient, account: str) -> None:
    text = jsonutil.dumps(_limit(account)).replace('"quantity":100', '"quantity":' + "9" * 5000)
    response = client.post("/orders", data=text, content_type="application/json", headers=AUTH)
    assert response.status_code == 400
    assert _json(response)["errors"] == [{"field": "body", "message": "Invalid JSON."}]


def test_a_modify_with_nul_notes_or_over_precise_price_is_400(client: FlaskClient, account: str) -> None:
    order_id = _json(_create(client, _limit(account)))["id"]
    for body, field in (
        ({"action": "MODIFY", "notes": "n\u0000"}, "notes"),
        ({"action": "MODIFY", "price": Decimal("189.5500000000000000000000000001")}, "price"),
    ):
        response = _put(client, order_id, body)
        assert response.status_code == 400, response.get_data(as_text=True)
        assert field in {e["field"] for e in _json(response)["errors"]}
