"""Every REST error body keeps the specification's ``message`` (and ``errors``) and carries a stable ``code``.

Each code is provoked by a real request through the whole WSGI stack (routing, flask-smorest, webargs, the
order service on the session's database), and the served OpenAPI document declares the ``code`` property.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, NoReturn

import pytest
from flask import Flask, abort
from flask.testing import FlaskClient
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from common import jsonutil
from common.settings import InfraSettings, Settings
from common.store.db import make_engine
from services.api.app import create_app
from services.api.auth import SCOPE_OPERATIONS, SCOPE_READ
from services.api.blueprints import EXTENSION
from services.api.health import answer_503_while_the_database_is_away
from tests.support.api import bearer, new_account, rest_app, token_service

AUTH = {"Authorization": bearer()}


@pytest.fixture()
def account(engine: Engine) -> str:
    return new_account(engine)


def _json(response: Any) -> Any:
    return jsonutil.loads(response.get_data())


def _order(account: str, **overrides: Any) -> dict[str, Any]:
    return {
        "accountId": account,
        "symbol": "AAPL",
        "side": "BUY",
        "type": "LIMIT",
        "quantity": Decimal("100"),
        "price": Decimal("189.50"),
        **overrides,
    }


def _post(client: FlaskClient, body: Any, headers: dict[str, str] | None = None) -> Any:
    data = body if isinstance(body, str) else jsonutil.dumps(body)
    return client.post("/orders", data=data, content_type="application/json", headers={**AUTH, **(headers or {})})


def _error(response: Any, status: int, code: str, *, with_errors: bool = False) -> dict[str, Any]:
    """The body of an error response, checked: its status, its code, and the specification's shape."""
    assert response.status_code == status, response.get_data(as_text=True)
    body: dict[str, Any] = _json(response)
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    assert set(body) == ({"message", "code", "errors"} if with_errors else {"message", "code"}), body
    if with_errors:
        assert body["errors"] and all(set(e) == {"field", "message"} for e in body["errors"]), body
    return body


def test_validation_failed(client: FlaskClient, account: str) -> None:
    body = _error(
        _post(client, _order(account, type="MARKET", quantity=-5)), 400, "VALIDATION_FAILED", with_errors=True
    )
    assert "quantity" in {e["field"] for e in body["errors"]}
    listing = client.get("/orders?size=0", headers=AUTH)
    assert _error(listing, 400, "VALIDATION_FAILED", with_errors=True)["errors"][0]["field"] == "size"


@pytest.mark.parametrize("data", ["{not json", '{"notes":' * 40 + "1" + "}" * 40])
def test_malformed_json(client: FlaskClient, data: str) -> None:
    body = _error(_post(client, data), 400, "MALFORMED_JSON", with_errors=True)
    assert body["errors"][0]["field"] == "body"


def test_unauthenticated(client: FlaskClient) -> None:
    for response in (client.get("/orders"), client.get("/orders", headers={"Authorization": "Bearer forged"})):
        _error(response, 401, "UNAUTHENTICATED")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    _error(client.get("/risk/halts"), 401, "UNAUTHENTICATED")


def test_forbidden(client: FlaskClient, account: str) -> None:
    other = {"Authorization": bearer(accounts=["SOMEONE-ELSE"])}
    _error(_post(client, _order(account), other), 403, "FORBIDDEN")
    read_only = {"Authorization": bearer(scopes=(SCOPE_READ,))}
    _error(_post(client, _order(account), read_only), 403, "FORBIDDEN")
    _error(client.get("/risk/halts", headers=AUTH), 403, "FORBIDDEN")  # no operations scope


def test_not_found(client: FlaskClient) -> None:
    _error(client.get(f"/orders/{uuid.uuid4()}", headers=AUTH), 404, "NOT_FOUND")
    _error(client.get("/nowhere", headers=AUTH), 404, "NOT_FOUND")  # no route: werkzeug's 404, same code
    operator = {"Authorization": bearer(scopes=(SCOPE_OPERATIONS,))}
    _error(client.get("/risk/limits/NO-SUCH-ACCOUNT", headers=operator), 404, "NOT_FOUND")


def test_method_not_allowed(client: FlaskClient) -> None:
    response = client.delete("/orders", headers=AUTH)
    _error(response, 405, "METHOD_NOT_ALLOWED")
    assert "POST" in response.headers["Allow"]


def test_order_state_conflict(client: FlaskClient, account: str) -> None:
    created = _post(client, _order(account))
    assert created.status_code == 201, created.get_data(as_text=True)
    order_id = _json(created)["id"]
    cancel = {"data": '{"action": "CANCEL"}', "content_type": "application/json", "headers": AUTH}
    # Not yet at the venue: canceled at once, so a second cancel meets a done order.
    assert client.put(f"/orders/{order_id}", **cancel).status_code == 200
    _error(client.put(f"/orders/{order_id}", **cancel), 409, "ORDER_STATE_CONFLICT")


def test_idempotency_key_reused(client: FlaskClient, account: str) -> None:
    key = {"Idempotency-Key": f"codes-{uuid.uuid4().hex}"}
    assert _post(client, _order(account), key).status_code == 201
    assert _post(client, _order(account), key).status_code == 200  # the same terms: a replay, not an error
    body = _error(
        _post(client, _order(account, quantity=Decimal("101")), key), 422, "IDEMPOTENCY_KEY_REUSED", with_errors=True
    )
    assert [e["field"] for e in body["errors"]] == ["quantity"]


def test_service_unavailable_while_the_database_is_away(database_url: str, amqp_url: str) -> None:
    # Nothing listens on port 1: every connection is refused, as during a database outage.
    dead_url = make_url(database_url).set(host="127.0.0.1", port=1).render_as_string(hide_password=False)
    dead = make_engine(dead_url)
    try:
        app = create_app(
            Settings(infra=InfraSettings(database_url=dead_url, amqp_url=amqp_url)), dead, tokens=token_service()
        )
        answer_503_while_the_database_is_away(app)  # as the gunicorn app does
        response = app.test_client().get("/orders", headers=AUTH)
        _error(response, 503, "SERVICE_UNAVAILABLE")
        assert response.headers["Retry-After"]
    finally:
        dead.dispose()


class _BrokenService:
    """An order service with a bug: whatever is asked, it raises."""

    def __getattr__(self, name: str) -> Any:
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug")

        return broken


@pytest.fixture()
def broken_app(engine: Engine, database_url: str, amqp_url: str) -> Iterator[Flask]:
    app = rest_app(engine, database_url, amqp_url)
    app.extensions[EXTENSION]["service"] = _BrokenService()

    def refused() -> NoReturn:
        abort(400)  # as werkzeug answers a request it cannot parse

    app.add_url_rule("/refused", "refused", refused)
    yield app


def test_internal_and_plain_http_errors(broken_app: Flask) -> None:
    client = broken_app.test_client()
    body = _error(client.get("/orders", headers=AUTH), 500, "INTERNAL")
    assert "a bug" not in body["message"]  # the caller learns nothing of the internals
    _error(client.get("/refused"), 400, "BAD_REQUEST")


def test_the_document_declares_the_code(client: FlaskClient) -> None:
    served = client.get("/openapi.json").get_json()
    schemas, responses = served["components"]["schemas"], served["components"]["responses"]

    def properties(schema: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
        props: dict[str, Any] = schema["properties"]
        return props

    for name in ("BadRequest", "Unauthorized"):
        props = properties(responses[name]["content"]["application/json"]["schema"])
        assert props["code"]["type"] == "string" and "VALIDATION_FAILED" in props["code"]["description"], name
    put = served["paths"]["/orders/{orderId}"]["put"]["responses"]
    assert "code" in properties(put["409"]["content"]["application/json"]["schema"])
    post = served["paths"]["/orders"]["post"]["responses"]
    assert "code" in properties(post["422"]["content"]["application/json"]["schema"])
