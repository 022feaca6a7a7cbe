"""Helpers for the front-end tests: tokens, fresh accounts, and orders written straight into the store.

Orders are written with the store's own repository (so the row is exactly what the pipeline writes) and
then moved to the state a test needs with the domain's commands and execution reports.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from sqlalchemy import Engine, insert, update

from common.domain import ExecType, ExecutionReportData, Order, OrderType, Side
from common.settings import InfraSettings, Settings
from common.store import tables
from common.store.uow import UnitOfWork
from services.api.app import create_app
from services.api.auth import SCOPE_OPERATIONS, SCOPE_READ, SCOPE_WRITE, TokenService
from tests.support.orders import create_order, mark_routed

if TYPE_CHECKING:
    from flask import Flask

    from tools.infra import InfraUrls

TEST_SECRET = "front-end-tests-secret-0123456789abcdef"
ALL_SCOPES = (SCOPE_READ, SCOPE_WRITE, SCOPE_OPERATIONS)


def token_service() -> TokenService:
    """The token service the tests' servers trust."""
    return TokenService(TEST_SECRET, "oms")


def rest_app(engine: Engine, database_url: str, amqp_url: str) -> Flask:
    """The REST app on the test session's database and vhost, trusting the tests' tokens."""
    return create_app(
        Settings(infra=InfraSettings(database_url=database_url, amqp_url=amqp_url)), engine, tokens=token_service()
    )


def bearer(
    accounts: Iterable[str] = ("*",),
    scopes: Iterable[str] = (SCOPE_READ, SCOPE_WRITE),
    subject: str = "tester",
    ttl: timedelta = timedelta(hours=12),
) -> str:
    """An ``Authorization`` header value. Modules mint theirs at import, when pytest collects the whole suite:
    the token must outlive the suite's run on a loaded machine (expiry has tests of its own)."""
    return "Bearer " + token_service().issue(subject, accounts, scopes, ttl=ttl)


def new_account(
    engine: Engine,
    active: bool = True,
    *,
    prefix: str = "T-",
    account_type: str = "MARGIN",
    cash: Decimal = Decimal("1000000"),
) -> str:
    """A fresh account of its own, so a test's counts are not disturbed by other tests' orders."""
    account_id = f"{prefix}{uuid.uuid4().hex[:12]}"
    with engine.begin() as connection:
        connection.execute(
            insert(tables.accounts).values(
                id=account_id,
                name=f"Test account {account_id}",
                account_type=account_type,
                base_currency="USD",
                cash_balance=cash,
                active=active,
                created_at=datetime.now(UTC),
            )
        )
    return account_id


def _report(order: Order, exec_type: ExecType, **values: object) -> ExecutionReportData:
    defaults: dict[str, object] = {
        "execution_id": str(uuid.uuid4()),
        "order_id": order.id,
        "broker_order_id": f"B-{order.id[:8]}",
        "exec_type": exec_type,
        "cum_qty": order.filled_quantity,
        "leaves_qty": order.quantity - order.filled_quantity,
        "order_qty": order.quantity,
        "price": order.price,
        "venue": "SIM",
        "timestamp": datetime.now(UTC),
    }
    defaults.update(values)
    return ExecutionReportData(**defaults)  # type: ignore[arg-type]


def store_order(
    engine: Engine,
    account_id: str,
    symbol: str = "AAPL",
    *,
    quantity: Decimal = Decimal("100"),
    price: Decimal | None = Decimal("190.00"),
    order_type: OrderType = OrderType.LIMIT,
    side: Side = Side.BUY,
    status: str = "PENDING",
    created_at: datetime | None = None,
    fill_price: Decimal = Decimal("190.00"),
) -> str:
    """Book an order and walk it to ``status`` (PENDING, OPEN, PARTIALLY_FILLED, FILLED, CANCELED, REJECTED)."""
    now = datetime.now(UTC)
    order = create_order(
        account_id=account_id,
        symbol=symbol,
        side=side,
        type=order_type,
        quantity=quantity,
        price=price,
        strategy_id="test-strategy",
        user_id="tests",
        now=now,
    )
    reports: list[ExecutionReportData] = []
    if status == "REJECTED":
        order.reject("TEST_RULE", "rejected by the test", now)
    elif status == "CANCELED":
        order.cancel_unrouted("canceled by the test", now, "tests")
    elif status != "PENDING":
        mark_routed(order, now)
        reports.append(_report(order, ExecType.NEW))
        if status in ("PARTIALLY_FILLED", "FILLED"):
            half = quantity / 2 if status == "PARTIALLY_FILLED" else quantity
            reports.append(
                _report(
                    order,
                    ExecType.FILL if status == "FILLED" else ExecType.PARTIAL_FILL,
                    last_qty=half,
                    last_px=fill_price,
                    cum_qty=half,
                    leaves_qty=quantity - half,
                    avg_px=fill_price,
                    fees=Decimal("1.25"),
                )
            )
    with UnitOfWork(engine) as uow:
        uow.orders.add(order, correlation_id=order.id, message_id=None)
        executions = uow.executions
        for report in reports:
            outcome = order.apply_report(report, now)
            executions.record(report, booked=outcome.fill, unreported_delta=outcome.unreported_delta, received_at=now)
        uow.orders.save(order, correlation_id=order.id, message_id=None)
        if created_at is not None:
            uow.connection.execute(
                update(tables.orders).where(tables.orders.c.id == order.id).values(created_at=created_at)
            )
        uow.commit()
    assert order.status.value == status, (order.status, status)
    return order.id


@contextlib.contextmanager
def private_vhost(infra_urls: InfraUrls, fallback_url: str) -> Iterator[str]:
    """A vhost of the caller's own (so stage queues it declares meet no other test's workers)."""
    from tools import infra

    if not infra_urls.management_url:
        yield fallback_url
        return
    name = f"oms_api_{uuid.uuid4().hex[:10]}"
    infra.create_vhost(name, infra_urls.management_url)
    try:
        yield infra.amqp_url_for_vhost(infra_urls.amqp_url, name)
    finally:
        infra.delete_vhost(name, infra_urls.management_url)


def grpc_metadata(authorization: str | None = None, **extra: str) -> tuple[tuple[str, str], ...]:
    """gRPC call metadata with a bearer token (every scope, every account, unless given)."""
    pairs = [("authorization", authorization or bearer(scopes=ALL_SCOPES))]
    pairs += [(key.replace("_", "-"), value) for key, value in extra.items()]
    return tuple(pairs)
