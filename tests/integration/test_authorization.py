"""Authorization on everything: the ``operations`` scope acts only on the token's accounts.

A token for some accounts may read and change those accounts' limits, halts and restrictions, and sees only
them in lists; the global settings (the limits every account inherits, the global halt, restrictions for
everyone) need a token for every account (``accounts: ["*"]``). Anything else is 403 with the spec's shape,
before the account is even looked up.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine

from common import jsonutil
from services.api.auth import SCOPE_OPERATIONS, SCOPE_READ
from tests.support.api import bearer, new_account

pytestmark = pytest.mark.integration

EVERY_ACCOUNT = {"Authorization": bearer(accounts=("*",), scopes=(SCOPE_OPERATIONS,), subject="ops-root")}


def _ops(*accounts: str) -> dict[str, str]:
    return {"Authorization": bearer(accounts=accounts, scopes=(SCOPE_OPERATIONS, SCOPE_READ), subject="ops-desk")}


def _json(response: Any) -> Any:
    return jsonutil.loads(response.get_data())


def _forbidden(response: Any) -> str:
    assert response.status_code == 403, response.get_data(as_text=True)
    body = _json(response)
    assert set(body) == {"message", "code"} and body["code"] == "FORBIDDEN"
    message: str = body["message"]
    return message


@pytest.fixture()
def mine(engine: Engine) -> str:
    return new_account(engine)


@pytest.fixture()
def theirs(engine: Engine) -> str:
    return new_account(engine)


def test_an_operator_cannot_halt_another_account(client: FlaskClient, mine: str, theirs: str) -> None:
    response = client.post("/risk/halts", json={"accountId": theirs, "reason": "not mine"}, headers=_ops(mine))
    assert theirs in _forbidden(response)
    assert theirs not in {h["accountId"] for h in _json(client.get("/risk/halts", headers=EVERY_ACCOUNT))["halts"]}

    assert client.post("/risk/halts", json={"accountId": mine, "reason": "mine"}, headers=_ops(mine)).status_code == 201
    assert client.delete(f"/risk/halts?accountId={mine}", headers=_ops(theirs)).status_code == 403
    assert client.delete(f"/risk/halts?accountId={mine}", headers=_ops(mine)).status_code == 204


def test_an_operator_cannot_read_or_change_another_accounts_limits(client: FlaskClient, mine: str, theirs: str) -> None:
    _forbidden(client.get(f"/risk/limits/{theirs}", headers=_ops(mine)))
    change = {"limits": {"maxOrderQuantity": 1}, "reason": "not mine"}
    _forbidden(client.put(f"/risk/limits/{theirs}", json=change, headers=_ops(mine)))
    assert _json(client.get(f"/risk/limits/{theirs}", headers=EVERY_ACCOUNT))["limits"]["maxOrderQuantity"] is None

    assert client.get(f"/risk/limits/{mine}", headers=_ops(mine)).status_code == 200
    assert client.put(f"/risk/limits/{mine}", json=change, headers=_ops(mine, theirs)).status_code == 200


def test_an_account_not_granted_is_403_even_when_it_does_not_exist(client: FlaskClient, mine: str) -> None:
    _forbidden(client.get("/risk/limits/NO-SUCH-ACCOUNT", headers=_ops(mine)))
    assert client.get("/risk/limits/NO-SUCH-ACCOUNT", headers=EVERY_ACCOUNT).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/risk/limits", None),
        ("put", "/risk/limits", {"limits": {"maxOpenOrders": 1}}),
        ("post", "/risk/halts", {"reason": "everyone"}),
        ("delete", "/risk/halts", None),
        ("post", "/risk/restricted-symbols", {"symbol": "AAPL", "reason": "everyone"}),
        ("delete", "/risk/restricted-symbols?symbol=AAPL", None),
    ],
)
def test_global_settings_need_every_account(
    client: FlaskClient, mine: str, theirs: str, method: str, path: str, body: dict[str, Any] | None
) -> None:
    kwargs: dict[str, Any] = {"json": body} if body is not None else {}
    message = _forbidden(getattr(client, method)(path, headers=_ops(mine, theirs), **kwargs))
    assert '"*"' in message


def test_restrictions_of_another_account_are_forbidden(client: FlaskClient, mine: str, theirs: str) -> None:
    body = {"symbol": "MSFT", "accountId": theirs, "reason": "not mine"}
    _forbidden(client.post("/risk/restricted-symbols", json=body, headers=_ops(mine)))
    assert client.post("/risk/restricted-symbols", json=body, headers=EVERY_ACCOUNT).status_code == 201
    _forbidden(client.delete(f"/risk/restricted-symbols?symbol=MSFT&accountId={theirs}", headers=_ops(mine)))
    assert (
        client.delete(f"/risk/restricted-symbols?symbol=MSFT&accountId={theirs}", headers=EVERY_ACCOUNT).status_code
        == 204
    )


def test_lists_show_only_the_tokens_accounts(client: FlaskClient, mine: str, theirs: str) -> None:
    for account in (mine, theirs):
        assert client.post("/risk/halts", json={"accountId": account, "reason": "drill"}, headers=EVERY_ACCOUNT)
        restriction = {"symbol": "AAPL", "accountId": account, "reason": "drill"}
        assert client.post("/risk/restricted-symbols", json=restriction, headers=EVERY_ACCOUNT).status_code == 201
    try:
        halts = _json(client.get("/risk/halts", headers=_ops(mine)))["halts"]
        restricted = _json(client.get("/risk/restricted-symbols", headers=_ops(mine)))["restrictedSymbols"]
        assert {h["accountId"] for h in halts} == {mine}
        assert {r["accountId"] for r in restricted} == {mine}
        every = _json(client.get("/risk/halts", headers=EVERY_ACCOUNT))["halts"]
        assert {mine, theirs} <= {h["accountId"] for h in every}
    finally:
        for account in (mine, theirs):
            client.delete(f"/risk/halts?accountId={account}", headers=EVERY_ACCOUNT)
            client.delete(f"/risk/restricted-symbols?symbol=AAPL&accountId={account}", headers=EVERY_ACCOUNT)


def test_a_token_for_every_account_may_change_the_global_settings(client: FlaskClient) -> None:
    assert client.get("/risk/limits", headers=EVERY_ACCOUNT).status_code == 200
    restriction = {"symbol": "VOD", "reason": "drill"}
    assert client.post("/risk/restricted-symbols", json=restriction, headers=EVERY_ACCOUNT).status_code in (200, 201)
    assert client.delete("/risk/restricted-symbols?symbol=VOD", headers=EVERY_ACCOUNT).status_code == 204
