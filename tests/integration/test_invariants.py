"""The invariant checker (``oms check``) on a real database: each check finds what it must, and stops finding
it once the pipeline has done its work. Every violation is made by the test on rows of its own, so the
checks are asserted per row, not as a whole (other modules share the session's database)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, insert, update

from common import jsonutil
from common.contracts import ExecutionReportSchema, FillBookedSchema
from common.domain import OrderType
from common.messages.catalogue import FILL_BOOKED
from common.messaging.envelope import Envelope
from common.runtime.stage import StageSpec, StageWorker
from common.settings import InfraSettings, Settings
from common.settlement_calendar import SettlementCalendar
from common.store import tables
from common.store.invariants import Limits, check_invariants
from services.execution_handler.spec import SPEC as EXECUTION_HANDLER
from services.settlement.handlers import book_fill as settle
from services.settlement.spec import SPEC as SETTLEMENT
from tests.support.api import new_account
from tests.support.db import open_engine
from tests.support.orders import create_order, mark_routed, outbox_of, store
from tools import check

pytestmark = pytest.mark.integration

D = Decimal
NOW_LIMITS = Limits(settle=timedelta(0), outbox=timedelta(0), inbox=timedelta(seconds=30), stuck=timedelta(seconds=30))


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    with open_engine(database_url) as engine:
        yield engine


def _worker(spec: StageSpec, engine: Engine, database_url: str) -> StageWorker:
    return StageWorker(spec, Settings(infra=InfraSettings(database_url=database_url)), engine)


def _envelope(routing_key: str, body: dict[str, Any], schema: Any, message_id: str | None = None) -> Envelope:
    return Envelope(
        message_id=message_id or str(uuid.uuid4()),
        routing_key=routing_key,
        body=schema.load(jsonutil.loads(jsonutil.dumps(body))),
        correlation_id=body["orderId"],
    )


def _violations(engine: Engine, name: str, key: str) -> list[Any]:
    return [row[key] for row in check_invariants(engine, NOW_LIMITS, listing_limit=100_000).violations[name]]


def test_a_fill_not_yet_settled_is_a_violation_until_settlement_books_it(engine: Engine, database_url: str) -> None:
    account = new_account(engine)
    now = datetime.now(UTC)
    order = create_order(account_id=account, type=OrderType.MARKET, quantity=D(50), price=None, now=now)
    order_id = store(engine, mark_routed(order, now))
    report = {
        "executionId": str(uuid.uuid4()),
        "orderId": order_id,
        "execType": "FILL",
        "lastQty": D(50),
        "lastPx": D("10.00"),
        "cumQty": D(50),
        "leavesQty": D(0),
        "avgPx": D("10.00"),
        "timestamp": now,
    }
    handled = _worker(EXECUTION_HANDLER, engine, database_url).process(
        [_envelope("execution.report", report, ExecutionReportSchema())]
    )
    assert not handled.failed and not handled.dead
    assert order_id in _violations(engine, "orders_vs_confirmations", "order_id")

    fill = next(row for row in outbox_of(engine, order_id, "settlement.fill"))
    settlement = StageSpec(
        stage=SETTLEMENT.stage,
        handlers={FILL_BOOKED: lambda uow, env: settle(uow, env, calendar=SettlementCalendar(equity_days=1))},
    )
    booked = _worker(settlement, engine, database_url).process(
        [_envelope("settlement.fill", fill["body"], FillBookedSchema(), fill["message_id"])]
    )
    assert not booked.failed and not booked.dead
    assert order_id not in _violations(engine, "orders_vs_confirmations", "order_id")
    assert account not in _violations(engine, "positions_vs_confirmations", "account_id")

    # A position changed behind settlement's back is caught.
    p = tables.positions.c
    with engine.begin() as connection:
        connection.execute(update(tables.positions).where(p.account_id == account).values(quantity=p.quantity + 1))
    assert account in _violations(engine, "positions_vs_confirmations", "account_id")
    with engine.begin() as connection:
        connection.execute(update(tables.positions).where(p.account_id == account).values(quantity=p.quantity - 1))
    assert account not in _violations(engine, "positions_vs_confirmations", "account_id")


def test_unsent_outbox_rows_untaken_hand_overs_and_stuck_orders_are_found(engine: Engine) -> None:
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    unsent, untaken = str(uuid.uuid4()), str(uuid.uuid4())
    order = create_order(type=OrderType.MARKET, quantity=D(5), price=None, now=long_ago)
    stuck = store(engine, order)  # NEW, waiting for the risk gate since five minutes ago
    with engine.begin() as connection:
        for message_id, sent_at in ((unsent, None), (untaken, long_ago)):
            connection.execute(
                insert(tables.outbox).values(
                    message_id=message_id,
                    exchange="oms",
                    routing_key="risk.check",
                    type="RiskCheck",
                    correlation_id=stuck,
                    headers={},
                    body=jsonutil.dumps({"orderId": stuck, "version": 1}),
                    created_at=long_ago,
                    sent_at=sent_at,
                    claimed=True,
                )
            )
    assert unsent in _violations(engine, "outbox_unsent", "message_id")
    assert untaken in _violations(engine, "inbox_gaps", "message_id")
    assert stuck in _violations(engine, "stuck_orders", "order_id")

    # Once the relay has sent the row and the risk gate has taken both hand-overs, none of it is found.
    o = tables.outbox.c
    with engine.begin() as connection:
        connection.execute(update(tables.outbox).where(o.message_id == unsent).values(sent_at=long_ago))
        for message_id in (unsent, untaken):
            connection.execute(
                insert(tables.inbox).values(stage="risk_gate", message_id=message_id, processed_at=long_ago)
            )
        connection.execute(
            update(tables.orders).where(tables.orders.c.id == stuck).values(state="REJECTED", status="REJECTED")
        )
    assert unsent not in _violations(engine, "outbox_unsent", "message_id")
    assert untaken not in _violations(engine, "inbox_gaps", "message_id")
    assert stuck not in _violations(engine, "stuck_orders", "order_id")


def test_oms_check_prints_one_summary_line_and_fails_on_a_violation(
    engine: Engine, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    order = create_order(type=OrderType.MARKET, quantity=D(5), price=None, now=datetime.now(UTC) - timedelta(hours=1))
    store(engine, order)
    code = check.main(["--url", database_url, "--stuck", "60"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 1
    assert out[-1].startswith("check: orders_vs_confirmations ") and out[-1].endswith("-> VIOLATED")
    assert any(line.startswith("stuck_orders: ") and order.id in line for line in out)
    with engine.begin() as connection:  # leave nothing stuck behind for the modules after this one
        connection.execute(
            update(tables.orders).where(tables.orders.c.id == order.id).values(state="REJECTED", status="REJECTED")
        )
