"""What a batch of risk checks costs the database: the same statements for one order as for many.

Counted through SQLAlchemy's ``before_cursor_execute`` while the stage runtime handles a batch (inbox, order
locks, the gate's preparation, the checks, the writes at commit). The gate's own share is fixed: two statements
to lock the accounts and load everything (three with a strategy throttle on), none per order.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, text

from common.contracts import RiskCheckSchema
from common.messaging.envelope import Envelope
from common.orders.commands import modify_order
from common.risk import admin
from common.runtime.stage import StageWorker
from common.settings import InfraSettings, Settings
from common.store import tables
from common.store.db import PLAN_CACHE_MODE_STATEMENT
from common.store.uow import UnitOfWork
from services.risk_gate.prices import FeedPrice, store_prices
from services.risk_gate.spec import SPEC
from tests.support.api import new_account, store_order
from tests.support.db import open_engine
from tests.support.orders import (
    envelope_of,
    events_of,
    order_row,
    outbox_of,
    request_row,
    risk_check,
    submit_new,
)

pytestmark = pytest.mark.integration

D = Decimal


@dataclass
class Counter:
    """Statements sent, by phase of the batch."""

    phase: str = "runtime"
    counts: dict[str, int] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement == PLAN_CACHE_MODE_STATEMENT:
            return  # a session's setting, not the batch's (tests.support.db.statements)
        self.counts[self.phase] = self.counts.get(self.phase, 0) + 1
        self.texts.append(f"{self.phase}: {' '.join(statement.split())[:80]}")

    def total(self) -> int:
        return sum(self.counts.values())


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    with open_engine(database_url) as engine:
        yield engine


@pytest.fixture
def counter(engine: Engine) -> Iterator[Counter]:
    counting = Counter()
    event.listen(engine, "before_cursor_execute", counting)
    yield counting
    event.remove(engine, "before_cursor_execute", counting)


def in_phase(counting: Counter, name: str, step: Callable[..., None]) -> Callable[..., None]:
    def wrapped(*args: Any) -> None:
        counting.phase = name
        try:
            step(*args)
        finally:
            counting.phase = "runtime"

    return wrapped


def new_instrument(engine: Engine) -> str:
    symbol = f"RS{uuid.uuid4().hex[:8].upper()}"
    with engine.begin() as connection:
        connection.execute(
            insert(tables.instruments).values(
                symbol=symbol,
                name=f"statements {symbol}",
                asset_class="EQUITY",
                currency="USD",
                tick_size=D("0.01"),
                lot_size=D("1"),
                tradable=True,
                settlement_days=0,
                reference_price=D("100"),
                created_at=datetime.now(UTC),
            )
        )
    store_prices(engine, {symbol: FeedPrice(symbol, D("100"), datetime.now(UTC))}, datetime.now(UTC))
    return symbol


def orders(engine: Engine, count: int, strategy: str | None) -> list[tuple[str, int]]:
    """``count`` orders over a few accounts (one of them a cash account) and symbols, every rule on."""
    accounts = [new_account(engine, prefix="RS-"), new_account(engine, prefix="RS-", account_type="CASH")]
    symbols = [new_instrument(engine) for _ in range(3)]
    limits = {
        "max_order_quantity": "1000000",
        "max_order_notional": "1000000000",
        "price_collar_percent": "50",
        "max_position_quantity": "100000000",
        "max_gross_exposure": "100000000000",
        "max_open_orders": "1000000",
        "max_orders_per_second": "1000000",
        "duplicate_window_seconds": "1",
    }
    if strategy is not None:
        limits["max_strategy_orders_per_second"] = "1000000"
    with engine.begin() as connection:
        for account_id in accounts:
            admin.set_limits(connection, account_id, limits, by="tester")
    made = []
    for i in range(count):
        fields: dict[str, Any] = {
            "account_id": accounts[i % 2],
            "symbol": symbols[i % 3],
            "type": "LIMIT" if i % 4 else "MARKET",
            "price": D("100") if i % 4 else None,
            "quantity": D(i + 1),  # distinct: no duplicates
            "strategy_id": strategy,
        }
        made.append(submit_new(engine, **fields))
    return made


def run_batch(
    engine: Engine, counting: Counter, settings: Settings, batch: list[tuple[str, int]] | list[Envelope]
) -> dict[str, int]:
    spec = replace(
        SPEC,
        prepare=in_phase(counting, "prepare", SPEC.prepare) if SPEC.prepare else None,
        handlers={kind: in_phase(counting, "handler", handler) for kind, handler in SPEC.handlers.items()},
    )
    worker = StageWorker(spec, settings, engine)
    counting.counts.clear()
    counting.texts.clear()
    outcome = worker.process([item if isinstance(item, Envelope) else risk_check(*item) for item in batch])
    assert not outcome.failed and not outcome.dead, outcome
    return dict(counting.counts)


@pytest.mark.parametrize("strategy", [None, "rs-strategy"], ids=["no-throttle", "strategy-throttle"])
def test_a_batch_costs_the_same_statements_whatever_its_size(
    engine: Engine, counter: Counter, database_url: str, amqp_url: str, strategy: str | None
) -> None:
    settings = Settings(infra=InfraSettings(database_url=database_url, amqp_url=amqp_url))
    made = orders(engine, 41, None if strategy is None else f"{strategy}-{uuid.uuid4().hex[:6]}")
    one = run_batch(engine, counter, settings, made[:1])
    few = run_batch(engine, counter, settings, made[1:6])
    many = run_batch(engine, counter, settings, made[6:])
    assert one == few == many, counter.texts
    assert one["prepare"] == (2 if strategy is None else 3)
    assert "handler" not in one  # no statement of its own per order
    assert {order_row(engine, order_id)["state"] for order_id, _ in made} == {"APPROVED"}


def test_the_generic_plans_the_gate_asks_for_end_with_its_transaction(engine: Engine) -> None:
    account_id = new_account(engine, prefix="RS-")
    order_id, version = submit_new(engine, account_id=account_id, symbol="AAPL", type="MARKET", price=None)
    with UnitOfWork(engine, claim_outbox=True) as uow:
        SPEC.handle(uow, risk_check(order_id, version))
        assert uow.connection.execute(text("SHOW plan_cache_mode")).scalar() == "force_generic_plan"
        uow.commit()
        assert uow.connection.execute(text("SHOW plan_cache_mode")).scalar() != "force_generic_plan"


def replace_checks(engine: Engine, count: int, quantity: Decimal) -> list[Envelope]:
    """``count`` orders at the venue, each modified (a REPLACE request): the RiskChecks of their new terms."""
    account_id = new_account(engine, prefix="RS-")
    checks = []
    for _ in range(count):
        order_id = store_order(engine, account_id, status="OPEN", quantity=D("100"))
        with UnitOfWork(engine) as uow:
            modify_order(uow, order_id, quantity=quantity, price=None, stop_price=None, notes=None, user_id="tester")
            uow.commit()
        row = outbox_of(engine, order_id, "risk.check")[-1]
        checks.append(envelope_of(row, RiskCheckSchema().load(row["body"])))
    return checks


def test_replace_checks_cost_the_same_statements_whatever_the_batch(
    engine: Engine, counter: Counter, database_url: str, amqp_url: str
) -> None:
    settings = Settings(infra=InfraSettings(database_url=database_url, amqp_url=amqp_url))
    checks = replace_checks(engine, 12, D("120"))
    one = run_batch(engine, counter, settings, checks[:1])
    many = run_batch(engine, counter, settings, checks[1:])
    assert one == many, counter.texts
    assert one["prepare"] == 3  # the requests locked, the accounts locked with the limits, the rest
    assert "handler" not in one
    assert {request_row(engine, c.body["request_id"])["status"] for c in checks} == {"PENDING"}  # for the router
    assert all(outbox_of(engine, c.body["order_id"], "router.replace") for c in checks)


def test_refused_replaces_are_recorded_and_a_second_check_of_one_sees_it(
    engine: Engine, database_url: str, amqp_url: str
) -> None:
    settings = Settings(infra=InfraSettings(database_url=database_url, amqp_url=amqp_url))
    checks = replace_checks(engine, 3, D("2000000"))  # above the global maximum order quantity
    again = replace(checks[0], message_id=str(uuid.uuid4()))  # the same check twice in one batch
    outcome = StageWorker(SPEC, settings, engine).process([*checks, again])
    assert not outcome.failed and not outcome.dead
    for check in checks:
        request = request_row(engine, check.body["request_id"])
        assert (request["status"], request["reason"].split(":")[0]) == ("REJECTED", "MAX_ORDER_QUANTITY_EXCEEDED")
        assert outbox_of(engine, check.body["order_id"], "router.replace") == []
    events = [e["type"] for e in events_of(engine, checks[0].body["order_id"])]
    assert events.count("REPLACE_REJECTED") == 1
