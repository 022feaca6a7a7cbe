"""REST: GET /orders filters and paging over the read model, on accounts of the tests' own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine

from common import jsonutil
from tests.support.api import bearer, new_account, store_order

AUTH = {"Authorization": bearer()}
T0 = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def book(engine: Engine) -> dict[str, Any]:
    """Two accounts with orders of every status, one hour apart, newest last."""
    first, second = new_account(engine), new_account(engine)
    plan = [
        (first, "AAPL", "PENDING"),
        (first, "AAPL", "OPEN"),
        (first, "MSFT", "PARTIALLY_FILLED"),
        (first, "MSFT", "FILLED"),
        (first, "SPY", "CANCELED"),
        (first, "AAPL", "REJECTED"),
        (second, "AAPL", "FILLED"),
        (second, "SPY", "OPEN"),
    ]
    ids = [
        store_order(engine, account, symbol, status=status, created_at=T0 + timedelta(hours=i))
        for i, (account, symbol, status) in enumerate(plan)
    ]
    return {"first": first, "second": second, "plan": plan, "ids": ids}


def _list(client: FlaskClient, **params: Any) -> Any:
    response = client.get("/orders?" + urlencode(params), headers=AUTH)
    assert response.status_code == 200, response.get_data(as_text=True)
    return jsonutil.loads(response.get_data())


def test_lists_an_account_newest_first(client: FlaskClient, book: dict[str, Any]) -> None:
    page = _list(client, accountId=book["first"])
    assert [o["id"] for o in page["content"]] == list(reversed(book["ids"][:6]))
    assert (page["page"], page["size"], page["totalElements"], page["totalPages"]) == (0, 20, 6, 1)
    assert all("executionReports" in o for o in page["content"])


@pytest.mark.parametrize("status", ["PENDING", "OPEN", "PARTIALLY_FILLED", "FILLED", "CANCELED", "REJECTED"])
def test_filter_by_status(client: FlaskClient, book: dict[str, Any], status: str) -> None:
    page = _list(client, accountId=book["first"], status=status)
    expected = [book["ids"][i] for i, (a, _, s) in enumerate(book["plan"]) if a == book["first"] and s == status]
    assert [o["id"] for o in page["content"]] == expected
    assert all(o["status"] == status for o in page["content"])


def test_filter_by_symbol(client: FlaskClient, book: dict[str, Any]) -> None:
    page = _list(client, accountId=book["first"], symbol="MSFT")
    assert [o["id"] for o in page["content"]] == [book["ids"][3], book["ids"][2]]
    assert _list(client, accountId=book["first"], symbol="BTCUSD")["totalElements"] == 0


def test_filter_by_dates_from_inclusive_to_exclusive(client: FlaskClient, book: dict[str, Any]) -> None:
    page = _list(
        client,
        accountId=book["first"],
        fromDate=(T0 + timedelta(hours=1)).isoformat(),
        toDate=(T0 + timedelta(hours=3)).isoformat(),
    )
    assert [o["id"] for o in page["content"]] == [book["ids"][2], book["ids"][1]]


def test_dates_with_other_offsets_and_without_one(client: FlaskClient, book: dict[str, Any]) -> None:
    # 16:00+02:00 is 14:00Z (the first order); a date-time without an offset is read as UTC.
    page = _list(client, accountId=book["first"], fromDate="2026-03-02T16:00:00+02:00", toDate="2026-03-02T15:00:00")
    assert [o["id"] for o in page["content"]] == [book["ids"][0]]


def test_filters_combine(client: FlaskClient, book: dict[str, Any]) -> None:
    page = _list(client, symbol="AAPL", status="FILLED", accountId=book["second"])
    assert [o["id"] for o in page["content"]] == [book["ids"][6]]


def test_paging_walks_every_order_once(client: FlaskClient, book: dict[str, Any]) -> None:
    seen: list[str] = []
    for number in range(3):
        page = _list(client, accountId=book["first"], page=number, size=4)
        assert (page["page"], page["size"], page["totalElements"], page["totalPages"]) == (number, 4, 6, 2)
        seen += [o["id"] for o in page["content"]]
        if number == 1:
            assert len(page["content"]) == 2  # the last page holds the remainder
        if number == 2:
            assert page["content"] == []  # past the end: empty, totals still right
    assert seen == list(reversed(book["ids"][:6]))


def test_exact_multiple_has_no_extra_page(client: FlaskClient, book: dict[str, Any]) -> None:
    page = _list(client, accountId=book["first"], size=3, page=1)
    assert page["totalPages"] == 2 and len(page["content"]) == 3


def test_size_limits(client: FlaskClient, book: dict[str, Any]) -> None:
    assert len(_list(client, accountId=book["first"], size=1)["content"]) == 1
    assert _list(client, accountId=book["first"], size=100)["size"] == 100
    for bad in ({"size": 0}, {"size": 101}, {"size": -1}, {"page": -1}, {"size": "ten"}, {"page": 10**7}):
        response = client.get("/orders?" + urlencode(bad), headers=AUTH)
        assert response.status_code == 400, bad
        body = jsonutil.loads(response.get_data())
        assert body["errors"][0]["field"] == next(iter(bad)), body


def test_no_match_is_an_empty_page(client: FlaskClient, engine: Engine) -> None:
    empty = new_account(engine)
    page = _list(client, accountId=empty)
    assert page == {"content": [], "page": 0, "size": 20, "totalElements": 0, "totalPages": 0}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "DONE"}, "status"),
        ({"fromDate": "yesterday"}, "fromDate"),
        ({"fromDate": "2026-03-03T00:00:00Z", "toDate": "2026-03-02T00:00:00Z"}, "fromDate"),
        ({"accountId": "bad\u0000id"}, "accountId"),
        ({"symbol": "S" * 21}, "symbol"),
        ({"accountId": " ACC-001"}, "accountId"),
    ],
)
def test_invalid_filters_are_400(client: FlaskClient, params: dict[str, str], field: str) -> None:
    response = client.get("/orders?" + urlencode(params), headers=AUTH)
    assert response.status_code == 400
    body = jsonutil.loads(response.get_data())
    assert set(body) == {"message", "code", "errors"} and body["errors"][0]["field"] == field


def test_restricted_token_lists_only_its_accounts(client: FlaskClient, book: dict[str, Any]) -> None:
    headers = {"Authorization": bearer(accounts=[book["second"]])}
    page = jsonutil.loads(client.get("/orders?size=100", headers=headers).get_data())
    assert {o["accountId"] for o in page["content"]} == {book["second"]}
    assert page["totalElements"] == 2
    other = client.get("/orders?" + urlencode({"accountId": book["first"]}), headers=headers)
    assert other.status_code == 403 and set(jsonutil.loads(other.get_data())) == {"message", "code"}
