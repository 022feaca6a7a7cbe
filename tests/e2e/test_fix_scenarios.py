"""FIX 4.2 Appendix D through the real pipeline: every worker its own process, the test playing the broker.

The scenario data (tests/fix_scenarios.py) is the same the domain's unit tests replay: here each OMS request
goes in as the front end sends it (an order command committed with its outbox row), travels through the relay
and the router to the ``broker`` exchange, and each venue report comes back on ``execution.report``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy import select

from common.domain import InvalidTransition, RequestKind
from common.orders.commands import cancel_order, modify_order
from common.store import tables
from common.store.orders_repo import order_from_row
from common.store.uow import UnitOfWork
from tests.e2e.conftest import RunningSystem
from tests.e2e.support import BrokerPlayer, send_decision, wait_for_order, wait_for_state
from tests.fix_scenarios import SCENARIOS, Expect, Report, Request, Scenario
from tests.support.orders import trade_decision
from tests.support.polling import async_wait_until

pytestmark = pytest.mark.e2e
PIPELINE = "pipeline_without_venue"


def _issue(running: RunningSystem, order_id: str, request: Request) -> None:
    with UnitOfWork(running.engine) as uow:
        if request.kind is RequestKind.CANCEL:
            cancel_order(uow, order_id, reason="scenario", user_id="fix-test")
        else:
            modify_order(
                uow,
                order_id,
                quantity=request.quantity,
                price=request.price,
                stop_price=None,
                notes=None,
                user_id="fix-test",
            )
        uow.commit()


def _report_fields(report: Report, request_ids: dict[str, str]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "orderQty": report.order_qty,
        "cumQty": report.cum_qty,
        "leavesQty": report.leaves_qty,
        "lastQty": report.last_qty,
        "lastPx": report.last_px,
        "avgPx": report.avg_px,
        "price": report.price,
    }
    if report.answers is not None:
        fields["requestId"] = request_ids[report.answers]
    return {k: v for k, v in fields.items() if v is not None}


def _applied(running: RunningSystem, execution_id: str) -> bool:
    with running.engine.connect() as connection:
        found = connection.execute(
            select(tables.execution_reports.c.id).where(tables.execution_reports.c.execution_id == execution_id)
        ).first()
    return found is not None


def _check(running: RunningSystem, order_id: str, expect: Expect, where: str) -> None:
    with running.engine.connect() as connection:
        row = connection.execute(select(tables.orders).where(tables.orders.c.id == order_id)).mappings().one()
    order = order_from_row(row)
    seen = (order.state, order.status, order.quantity, order.filled_quantity, order.leaves_quantity)
    wanted = (expect.state, expect.status, expect.quantity, expect.cum_qty, expect.leaves_qty)
    assert seen == wanted, f"{where}: (state, status, qty, cum, leaves) {seen} != {wanted}"
    assert order.average_execution_price == expect.avg_px, f"{where}: avg {order.average_execution_price}"
    assert order.price == expect.price, f"{where}: price {order.price} != {expect.price}"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.ref for s in SCENARIOS])
async def test_fix_appendix_d_scenario(
    pipeline_without_venue: RunningSystem, amqp: AbstractRobustConnection, scenario: Scenario
) -> None:
    running = pipeline_without_venue
    player = await BrokerPlayer.start(amqp)
    body = trade_decision(
        side=scenario.side.value,
        type=scenario.type.value,
        quantity=scenario.quantity,
        price=scenario.price,
        timeInForce=scenario.time_in_force.value,
    )
    await send_decision(amqp, body)
    order_id = (await wait_for_order(running.engine, "ACC-001", body["decisionId"])).id
    new = await player.next_request(order_id, "new")
    assert (new["quantity"], new["price"]) == (scenario.quantity, scenario.price)
    await wait_for_state(running.engine, order_id, "ROUTED")

    request_ids: dict[str, str] = {}
    for number, step in enumerate(scenario.steps, start=1):
        where = f"{scenario.ref} step {number} ({step.note or type(step.action).__name__})"
        action = step.action
        if isinstance(action, Request):
            if action.refused:
                with pytest.raises(InvalidTransition):
                    _issue(running, order_id, action)
            else:
                _issue(running, order_id, action)
                sent = await player.next_request(order_id, "cancel" if action.kind is RequestKind.CANCEL else "replace")
                request_ids[action.request] = sent["requestId"]
                if action.kind is RequestKind.REPLACE:
                    assert (sent["quantity"], sent["price"]) == (action.quantity, action.price), where
        else:
            execution_id = await player.report(order_id, action.exec_type.value, **_report_fields(action, request_ids))
            await async_wait_until(partial(_applied, running, execution_id), timeout=30, message=where)
        _check(running, order_id, step.expect, where)
