"""The whole lifecycle with the simulated venue: every order type and time in force, partial fills to settlement,
cancels and replaces, and an audit trail that tells each order's story.
"""

from __future__ import annotations

import signal
from decimal import Decimal
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy import select

from common.orders.commands import cancel_order, modify_order, submit_order
from common.orders.order_request import OrderRequest
from common.store import tables
from common.store.uow import UnitOfWork
from tests.e2e.conftest import RunningSystem
from tests.e2e.support import count, send_decision, wait_for_order, wait_for_state
from tests.support.orders import event_records, order_record, trade_decision
from tests.support.polling import async_wait_until

pytestmark = pytest.mark.e2e
PIPELINE = "pipeline_with_venue"
D = Decimal

# AAPL starts near 190 in the simulated venue: these prices are far enough away that the random walk
# cannot cross them while a test runs.
MARKETABLE_BUY, RESTING_BUY = D("250.00"), D("100.00")
STOP_TRIGGERED, STOP_NOT_TRIGGERED = D("100.00"), D("300.00")

# (type, price, stop price) -> expected final state and filled quantity (of 10) per time in force. The venue
# fills in two slices, one per matching opportunity: an IOC order gets one chance, so it fills one slice and its
# remainder is canceled; FOK fills whole or not at all. STOP and STOP_LIMIT orders rest until triggered, so the
# intake accepts only DAY and GTC for them.
FILLED, OPEN, NONE = ("FILLED", D(10)), ("OPEN", D(0)), ("CANCELED", D(0))
IOC_REMAINDER, REJECTED = ("CANCELED", D(5)), ("REJECTED", D(0))
CASES: list[tuple[str, Decimal | None, Decimal | None, dict[str, tuple[str, Decimal]]]] = [
    ("MARKET", None, None, {"DAY": FILLED, "GTC": FILLED, "IOC": IOC_REMAINDER, "FOK": FILLED}),
    ("LIMIT", MARKETABLE_BUY, None, {"DAY": FILLED, "GTC": FILLED, "IOC": IOC_REMAINDER, "FOK": FILLED}),
    ("LIMIT", RESTING_BUY, None, {"DAY": OPEN, "GTC": OPEN, "IOC": NONE, "FOK": NONE}),
    ("STOP", None, STOP_TRIGGERED, {"DAY": FILLED, "GTC": FILLED, "IOC": REJECTED, "FOK": REJECTED}),
    ("STOP", None, STOP_NOT_TRIGGERED, {"DAY": OPEN, "GTC": OPEN}),
    ("STOP_LIMIT", MARKETABLE_BUY, STOP_TRIGGERED, {"DAY": FILLED, "GTC": FILLED, "IOC": REJECTED}),
    ("STOP_LIMIT", RESTING_BUY, STOP_TRIGGERED, {"DAY": OPEN, "GTC": OPEN, "FOK": REJECTED}),
]
MATRIX = [
    pytest.param(kind, price, stop, tif, state, filled, id=f"{kind}-{price}-{stop}-{tif}")
    for kind, price, stop, outcomes in CASES
    for tif, (state, filled) in outcomes.items()
]


@pytest.mark.parametrize(("kind", "price", "stop", "tif", "final", "filled"), MATRIX)
async def test_order_type_and_time_in_force_reach_their_state(
    pipeline_with_venue: RunningSystem,
    amqp: AbstractRobustConnection,
    kind: str,
    price: Decimal | None,
    stop: Decimal | None,
    tif: str,
    final: str,
    filled: Decimal,
) -> None:
    engine = pipeline_with_venue.engine
    body = trade_decision(type=kind, price=price, stopPrice=stop, timeInForce=tif, quantity=D("10"))
    await send_decision(amqp, body)
    order = await wait_for_order(engine, "ACC-001", body["decisionId"])
    row = await wait_for_state(engine, order.id, final)
    assert row.filled_quantity == filled
    if filled:
        assert row.average_execution_price is not None
        if price is not None:
            assert row.average_execution_price <= price  # a buy limit fills at its price or better
    if final == "REJECTED":
        assert row.rejection_code and row.rejection_reason


async def test_partial_fills_then_fill_settle_and_move_the_position(
    pipeline_with_venue: RunningSystem, amqp: AbstractRobustConnection
) -> None:
    engine = pipeline_with_venue.engine
    position_before = count(
        engine, "SELECT coalesce(sum(quantity), 0) FROM positions WHERE account_id = 'ACC-002' AND symbol = 'MSFT'"
    )
    body = trade_decision(accountId="ACC-002", symbol="MSFT", quantity=D("40"))
    await send_decision(amqp, body)
    order = await wait_for_order(engine, "ACC-002", body["decisionId"])
    row = await wait_for_state(engine, order.id, "FILLED")

    with engine.connect() as connection:
        fills = connection.execute(
            select(tables.execution_reports).where(
                tables.execution_reports.c.order_id == order.id,
                tables.execution_reports.c.exec_type.in_(["PARTIAL_FILL", "FILL"]),
            )
        ).all()
    assert [f.exec_type for f in sorted(fills, key=lambda f: f.cum_qty)] == ["PARTIAL_FILL", "FILL"]
    assert sum(f.quantity for f in fills) == D("40")
    notional = sum(f.quantity * f.price for f in fills)
    assert row.average_execution_price == (notional / D("40")).quantize(D("0.00000001"))
    assert row.fees == sum(f.fees for f in fills) and row.fees > 0

    def settled() -> bool:
        return count(engine, "SELECT count(*) FROM settlement_instructions WHERE order_id = :o", o=order.id) == 2

    await async_wait_until(settled, timeout=30, message="two settlement instructions")
    with engine.connect() as connection:
        confirmations = connection.execute(
            select(tables.trade_confirmations).where(tables.trade_confirmations.c.order_id == order.id)
        ).all()
    assert {c.execution_id for c in confirmations} == {f.execution_id for f in fills}
    for confirmation in confirmations:
        assert confirmation.gross_amount == confirmation.quantity * confirmation.price
        assert confirmation.net_amount == confirmation.gross_amount + confirmation.fees  # a buy pays the fees
    position_after = count(
        engine, "SELECT coalesce(sum(quantity), 0) FROM positions WHERE account_id = 'ACC-002' AND symbol = 'MSFT'"
    )
    assert position_after - position_before == 40


async def test_venue_reject(pipeline_with_venue: RunningSystem, amqp: AbstractRobustConnection) -> None:
    engine = pipeline_with_venue.engine
    body = trade_decision(symbol="ESZ6", quantity=D("1"))
    await send_decision(amqp, body)
    order = await wait_for_order(engine, "ACC-001", body["decisionId"])
    row = await wait_for_state(engine, order.id, "REJECTED")
    assert row.rejection_reason


def _submit(running: RunningSystem, **fields: Any) -> str:
    terms: dict[str, Any] = {
        "account_id": "ACC-001",
        "symbol": "AAPL",
        "side": "BUY",
        "type": "LIMIT",
        "quantity": D("10"),
        "price": RESTING_BUY,
    }
    terms.update(fields)
    with UnitOfWork(running.engine) as uow:
        order, created = submit_order(uow, OrderRequest(**terms), user_id="e2e", correlation_id=None, message_id=None)
        uow.commit()
    assert created
    return order.id


async def test_cancel_of_a_pending_order_is_immediate_and_sticks(pipeline_with_venue: RunningSystem) -> None:
    running = pipeline_with_venue
    # Hold the risk gate so the order is certainly still PENDING when the cancel arrives.
    running.supervisor.kill("risk_gate", signal.SIGTERM)
    try:
        order_id = _submit(running)
        with UnitOfWork(running.engine) as uow:
            canceled = cancel_order(uow, order_id, reason="changed my mind", user_id="e2e")
            uow.commit()
        assert canceled.state.value == "CANCELED"
    finally:
        running.restart("risk_gate")
    # The risk check that was waiting is skipped: the order stays canceled and never reaches the venue.
    await async_wait_until(
        lambda: (
            count(
                running.engine,
                "SELECT count(*) FROM inbox i JOIN outbox o ON o.message_id = i.message_id "
                "WHERE i.stage = 'risk_gate' AND o.correlation_id = :o",
                o=order_id,
            )
            == 1
        ),
        timeout=30,
        message="the risk gate took the stale check",
    )
    assert order_record(running.engine, order_id).state == "CANCELED"
    assert count(running.engine, "SELECT count(*) FROM order_requests WHERE order_id = :o", o=order_id) == 0


async def test_cancel_of_an_open_order_goes_to_the_venue(pipeline_with_venue: RunningSystem) -> None:
    running = pipeline_with_venue
    order_id = _submit(running)
    await wait_for_state(running.engine, order_id, "OPEN")
    with UnitOfWork(running.engine) as uow:
        order = cancel_order(uow, order_id, reason="no longer wanted", user_id="e2e")
        uow.commit()
    assert order.state.value == "OPEN"  # only a request until the venue answers
    await wait_for_state(running.engine, order_id, "CANCELED")
    types = [e.type for e in event_records(running.engine, order_id)]
    assert types.index("CANCEL_REQUESTED") < types.index("ORDER_CANCELED")


async def test_replace_of_an_open_order_changes_terms_when_the_venue_confirms(
    pipeline_with_venue: RunningSystem,
) -> None:
    running = pipeline_with_venue
    order_id = _submit(running)
    await wait_for_state(running.engine, order_id, "OPEN")
    with UnitOfWork(running.engine) as uow:
        order = modify_order(
            uow, order_id, quantity=D("20"), price=D("101.00"), stop_price=None, notes=None, user_id="e2e"
        )
        uow.commit()
    assert order.quantity == D("10")  # not in force until the venue confirms

    def replaced() -> Any:
        row = order_record(running.engine, order_id)
        return row if row.quantity == D("20") and row.state == "OPEN" else None

    row = await async_wait_until(replaced, timeout=30, message="replace confirmed")
    assert row.price == D("101.00")
    assert "ORDER_REPLACED" in [e.type for e in event_records(running.engine, order_id)]


async def test_every_order_history_tells_its_story_in_order(
    pipeline_with_venue: RunningSystem, amqp: AbstractRobustConnection
) -> None:
    engine = pipeline_with_venue.engine
    body = trade_decision(quantity=D("30"))
    await send_decision(amqp, body)
    order = await wait_for_order(engine, "ACC-001", body["decisionId"])
    await wait_for_state(engine, order.id, "FILLED")
    events = event_records(engine, order.id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    types = [e.type for e in events]
    assert types[:4] == ["ORDER_CREATED", "RISK_APPROVED", "ORDER_ROUTED", "ORDER_ACKNOWLEDGED"]
    assert types[-1] == "ORDER_FILLED" and "ORDER_PARTIALLY_FILLED" in types
    # The strategy's correlation id (its decision id) on the booking, the order id on everything after it.
    assert events[0].correlation_id == body["decisionId"]
    assert all(e.correlation_id == order.id for e in events[1:])
    timestamps = [e.timestamp for e in events]
    assert timestamps == sorted(timestamps)
