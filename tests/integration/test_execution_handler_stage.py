"""The execution handler on a real database, through the stage runtime's transaction (inbox, lock, outbox)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from common import jsonutil
from common.contracts import ExecutionReportSchema, FillBookedSchema
from common.domain import Order, OrderState, OrderStatus, OrderType, Side, TimeInForce
from common.messaging.envelope import Envelope
from common.runtime.stage import StageWorker
from common.settings import InfraSettings, Settings
from common.store import tables
from common.store.uow import UnitOfWork
from services.execution_handler.spec import SPEC
from tests.support.orders import changing_order, create_order, mark_routed, outbox_bodies, request_row, store

pytestmark = pytest.mark.integration

D = Decimal


@pytest.fixture
def worker(engine: Engine, database_url: str) -> StageWorker:
    return StageWorker(SPEC, Settings(infra=InfraSettings(database_url=database_url)), engine)


def routed_order(
    engine: Engine,
    quantity: str = "100",
    price: str | None = "10.00",
    tif: TimeInForce = TimeInForce.DAY,
    side: Side = Side.BUY,
) -> str:
    """Book an order and drive it to ROUTED, as intake, risk gate and router would."""
    now = datetime.now(UTC)
    order = create_order(
        side=side,
        type=OrderType.LIMIT if price else OrderType.MARKET,
        quantity=D(quantity),
        price=D(price) if price else None,
        time_in_force=tif,
        now=now,
    )
    return store(engine, mark_routed(order, now))


def open_request(engine: Engine, order_id: str, kind: str, **terms: Decimal) -> str:
    """Ask for a cancel or replace as the front end does: the order's pending request plus its row."""
    request_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    with changing_order(engine, order_id) as (uow, order):
        if kind == "CANCEL":
            order.request_cancel(request_id, "test", now, "tester")
        else:
            order.request_replace(request_id, terms["quantity"], terms["price"], None, now, "tester")
        uow.connection.execute(
            insert(tables.order_requests).values(
                request_id=request_id,
                order_id=order_id,
                kind=kind,
                terms=jsonutil.loads(jsonutil.dumps(terms)),
                status="SENT",
                created_by="tester",
                created_at=now,
                updated_at=now,
            )
        )
    return request_id


def report(order_id: str, exec_type: str, cum: str, leaves: str, **fields: Any) -> dict[str, Any]:
    """An ExecutionReport body (camelCase, as the venue sends it)."""
    body: dict[str, Any] = {
        "executionId": str(uuid.uuid4()),
        "orderId": order_id,
        "brokerOrderId": "BRK-" + order_id[:8],
        "execType": exec_type,
        "cumQty": D(cum),
        "leavesQty": D(leaves),
        "venue": "SIM",
        "timestamp": datetime.now(UTC).isoformat(),
    }
    body.update(fields)
    return body


def fill(
    order_id: str, qty: str, px: str, cum: str, leaves: str, avg: str, fees: str, last: bool = False
) -> dict[str, Any]:
    return report(
        order_id,
        "FILL" if last else "PARTIAL_FILL",
        cum,
        leaves,
        lastQty=D(qty),
        lastPx=D(px),
        avgPx=D(avg),
        fees=D(fees),
    )


def deliver(worker: StageWorker, body: dict[str, Any], message_id: str | None = None) -> Any:
    """Hand one report to the stage as the runtime would after decoding it; returns the batch outcome."""
    wire = jsonutil.loads(jsonutil.dumps(body))
    env = Envelope(
        message_id=message_id or str(uuid.uuid4()),
        routing_key="execution.report",
        body=ExecutionReportSchema().load(wire),
        correlation_id=body["orderId"],
        type="ExecutionReport",
    )
    outcome = worker.process([env])
    assert not outcome.failed, outcome.failed
    return outcome


def load(engine: Engine, order_id: str) -> Order:
    with UnitOfWork(engine) as uow:
        order = uow.orders.get(order_id)
    assert order is not None
    return order


def execution_rows(engine: Engine, order_id: str) -> list[Any]:
    e = tables.execution_reports.c
    with engine.connect() as connection:
        return list(
            connection.execute(
                select(tables.execution_reports).where(e.order_id == order_id).order_by(e.received_at, e.id)
            ).mappings()
        )


def fills_booked(engine: Engine, order_id: str) -> list[dict[str, Any]]:
    """The FillBooked messages handed to settlement, validated against the contract."""
    return [FillBookedSchema().load(b) for b in outbox_bodies(engine, order_id, "settlement.fill")]


def order_updates(engine: Engine, order_id: str) -> list[dict[str, Any]]:
    o = tables.outbox.c
    with engine.connect() as connection:
        rows = connection.execute(
            select(o.body).where(o.correlation_id == order_id, o.exchange == "oms.order_updates").order_by(o.id)
        ).scalars()
        return [jsonutil.loads(body) for body in rows]


def anomalies_of(engine: Engine, order_id: str) -> list[list[str]]:
    """The anomalies recorded on the order's audit trail, one list per EXECUTION_ANOMALY event, in sequence."""
    ev = tables.order_events.c
    with engine.connect() as connection:
        payloads = connection.execute(
            select(ev.payload).where(ev.order_id == order_id, ev.type == "EXECUTION_ANOMALY").order_by(ev.sequence)
        ).scalars()
        return [list(p["anomalies"]) for p in payloads]


def booked_total(engine: Engine, order_id: str) -> Decimal:
    """What settlement was handed for the order: executions less reversals."""
    return sum((-f["quantity"] if f["reversal"] else f["quantity"] for f in fills_booked(engine, order_id)), D(0))


def test_new_opens_the_order_with_its_broker_order_id(engine: Engine, worker: StageWorker) -> None:
    order_id = routed_order(engine)
    ack = report(order_id, "NEW", "0", "100")
    deliver(worker, ack)

    order = load(engine, order_id)
    assert order.state is OrderState.OPEN
    assert order.status is OrderStatus.OPEN
    assert order.broker_order_id == "BRK-" + order_id[:8]
    (row,) = execution_rows(engine, order_id)
    assert row["execution_id"] == ack["executionId"]
    assert (row["exec_type"], row["quantity"], row["price"], row["busted"]) == ("NEW", D(0), D(0), False)
    assert row["leaves_qty"] == D(100) and row["broker_order_id"] == order.broker_order_id
    assert order_updates(engine, order_id)[-1]["status"] == "OPEN"
    assert "latestExecution" not in order_updates(engine, order_id)[-1]
    assert fills_booked(engine, order_id) == []


def test_partial_fills_then_fill(engine: Engine, worker: StageWorker) -> None:
    order_id = routed_order(engine)
    deliver(worker, report(order_id, "NEW", "0", "100"))
    first = fill(order_id, "30", "10.00", "30", "70", "10.00", "0.15")
    second = fill(order_id, "50", "10.10", "80", "20", "10.0625", "0.25")
    last = fill(order_id, "20", "10.20", "100", "0", "10.09", "0.10", last=True)
    deliver(worker, first)
    assert load(engine, order_id).state is OrderState.PARTIALLY_FILLED
    deliver(worker, second)
    deliver(worker, last)

    order = load(engine, order_id)
    assert order.state is OrderState.FILLED
    assert order.filled_quantity == D(100)
    assert order.average_execution_price == D("10.09")
    assert order.fees == D("0.50")
    rows = [r for r in execution_rows(engine, order_id) if r["exec_type"] != "NEW"]
    assert [(r["execution_id"], r["quantity"], r["price"], r["fees"]) for r in rows] == [
        (first["executionId"], D(30), D("10.00"), D("0.15")),
        (second["executionId"], D(50), D("10.10"), D("0.25")),
        (last["executionId"], D(20), D("10.20"), D("0.10")),
    ]
    assert [(r["cum_qty"], r["avg_px"]) for r in rows][-1] == (D(100), D("10.09"))

    booked = fills_booked(engine, order_id)
    assert [(b["execution_id"], b["quantity"], b["price"], b["fees"], b["reversal"]) for b in booked] == [
        (first["executionId"], D(30), D("10.00"), D("0.15"), False),
        (second["executionId"], D(50), D("10.10"), D("0.25"), False),
        (last["executionId"], D(20), D("10.20"), D("0.10"), False),
    ]
    assert {(b["account_id"], b["symbol"], b["side"], b["venue"]) for b in booked} == {
        ("ACC-001", "AAPL", "BUY", "SIM")
    }

    update = order_updates(engine, order_id)[-1]
    assert update["status"] == "FILLED" and update["filledQuantity"] == D(100)
    latest = update["latestExecution"]
    assert latest["executionId"] == last["executionId"]
    assert (latest["quantity"], latest["price"], latest["fees"], latest["venue"]) == (
        D(20),
        D("10.20"),
        D("0.10"),
        "SIM",
    )
    assert latest["id"] == rows[-1]["id"]


def test_a_duplicate_report_is_applied_once(engine: Engine, worker: StageWorker) -> None:
    order_id = routed_order(engine)
    partial = fill(order_id, "30", "10.00", "30", "70", "10.00", "0.15")
    message_id = str(uuid.uuid4())
    deliver(worker, partial, message_id)
    deliver(worker, partial, message_id)  # redelivered: the inbox skips it
    deliver(worker, partial)  # resent under a new message id: deduplicated by executionId

    order = load(engine, order_id)
    assert order.filled_quantity == D(30)
    assert order.fees == D("0.15")
    assert len(execution_rows(engine, order_id)) == 1
    assert len(fills_booked(engine, order_id)) == 1


def test_out_of_order_reports_converge(engine: Engine, worker: StageWorker) -> None:
    in_order, reversed_ = routed_order(engine), routed_order(engine)
    for order_id, sequence in ((in_order, (0, 1, 2)), (reversed_, (2, 1, 0))):
        reports = [
            report(order_id, "NEW", "0", "100"),
            fill(order_id, "40", "10.00", "40", "60", "10.00", "0.20"),
            fill(order_id, "60", "10.50", "100", "0", "10.30", "0.30", last=True),
        ]
        for index in sequence:
            deliver(worker, reports[index])

    a, b = load(engine, in_order), load(engine, reversed_)
    for order in (a, b):
        assert order.state is OrderState.FILLED
        assert order.filled_quantity == D(100)
        assert order.average_execution_price == D("10.30")
        assert order.broker_order_id is not None
        assert order.unreported_quantity == 0
    # Booked: the rise of the cumulative quantity. Reversed, the last fill raised it from 0 to 100 at once and
    # booked all of it, with its fees; the overtaken fill books nothing, and its fees are an anomaly to see.
    assert a.fees == D("0.50") and b.fees == D("0.30")
    assert sorted(f["quantity"] for f in fills_booked(engine, in_order)) == [D(40), D(60)]
    assert [f["quantity"] for f in fills_booked(engine, reversed_)] == [D(100)]
    assert anomalies_of(engine, in_order) == []
    assert anomalies_of(engine, reversed_) == [["last_qty_mismatch"], ["fees_not_booked"]]


def test_a_fill_after_a_cancel_request_and_after_the_cancel(engine: Engine, worker: StageWorker) -> None:
    order_id = routed_order(engine)
    deliver(worker, report(order_id, "NEW", "0", "100"))
    request_id = open_request(engine, order_id, "CANCEL")
    deliver(worker, report(order_id, "PENDING_CANCEL", "0", "100", requestId=request_id))
    assert load(engine, order_id).state is OrderState.PENDING_CANCEL
    assert request_row(engine, request_id)["status"] == "ACCEPTED"

    deliver(worker, fill(order_id, "40", "10.00", "40", "60", "10.00", "0.20"))
    order = load(engine, order_id)
    assert order.state is OrderState.PENDING_CANCEL  # pending cancel outranks partially filled
    assert order.status is OrderStatus.PARTIALLY_FILLED
    assert order.filled_quantity == D(40)

    deliver(worker, report(order_id, "CANCELED", "40", "0", requestId=request_id))
    assert load(engine, order_id).state is OrderState.CANCELED
    assert request_row(engine, request_id)["status"] == "DONE"

    late = fill(order_id, "10", "10.00", "50", "0", "10.00", "0.05")
    deliver(worker, late)
    order = load(engine, order_id)
    assert order.state is OrderState.CANCELED
    assert order.filled_quantity == D(50)
    assert [f["quantity"] for f in fills_booked(engine, order_id)] == [D(40), D(10)]


def test_an_unknown_order_is_dead_lettered(engine: Engine, worker: StageWorker) -> None:
    missing = str(uuid.uuid4())
    body = report(missing, "NEW", "0", "100")
    message_id = str(uuid.uuid4())
    outcome = deliver(worker, body, message_id)
    assert outcome.dead == {message_id: f"DeadLetter: unknown order {missing}"}
    e = tables.execution_reports.c
    with engine.connect() as connection:
        assert connection.execute(select(e.id).where(e.execution_id == body["executionId"])).first() is None
        inbox = tables.inbox.c
        assert connection.execute(select(inbox.message_id).where(inbox.message_id == message_id)).first() is None


def test_a_bust_reverses_the_fill_and_books_a_reversal(engine: Engine, worker: StageWorker) -> None:
    order_id = routed_order(engine)
    first = fill(order_id, "60", "10.00", "60", "40", "10.00", "0.30")
    second = fill(order_id, "40", "10.50", "100", "0", "10.20", "0.20", last=True)
    deliver(worker, first)
    deliver(worker, second)
    assert load(engine, order_id).state is OrderState.FILLED

    bust = report(
        order_id,
        "TRADE_CANCEL",
        "60",
        "40",
        execRefId=second["executionId"],
        lastQty=D(40),
        lastPx=D("10.50"),
        avgPx=D("10.00"),
        fees=D("-0.20"),
    )
    deliver(worker, bust)
    order = load(engine, order_id)
    assert order.state is OrderState.PARTIALLY_FILLED
    assert order.filled_quantity == D(60)
    assert order.average_execution_price == D("10.00")
    assert order.fees == D("0.30")

    rows = {r["execution_id"]: r for r in execution_rows(engine, order_id)}
    assert rows[second["executionId"]]["busted"] is True
    assert rows[first["executionId"]]["busted"] is False
    bust_row = rows[bust["executionId"]]
    assert (bust_row["quantity"], bust_row["fees"], bust_row["exec_ref_id"]) == (
        D(-40),
        D("-0.20"),
        second["executionId"],
    )
    # The bust row is negative, so an order's rows sum to what still stands.
    assert sum(r["quantity"] for r in rows.values()) == D(60)

    reversal = fills_booked(engine, order_id)[-1]
    assert reversal["reversal"] is True
    assert reversal["execution_id"] == second["executionId"]
    assert (reversal["quantity"], reversal["price"], reversal["fees"]) == (D(40), D("10.50"), D("0.20"))
    assert order_updates(engine, order_id)[-1]["latestExecution"]["quantity"] == D(-40)

    # The same execution busted again under another report id: recorded as an anomaly, not applied again.
    deliver(worker, {**bust, "executionId": str(uuid.uuid4())})
    assert load(engine, order_id).filled_quantity == D(60)
    assert len(fills_booked(engine, order_id)) == 3
    assert anomalies_of(engine, order_id)[-1] == ["bust_repeated"]
    assert booked_total(engine, order_id) == D(60)


def test_cancel_pending_then_canceled_and_a_rejected_cancel(engine: Engine, worker: StageWorker) -> None:
    order_id = routed_order(engine)
    deliver(worker, report(order_id, "NEW", "0", "100"))
    rejected = open_request(engine, order_id, "CANCEL")
    deliver(
        worker,
        report(order_id, "CANCEL_REJECTED", "0", "100", requestId=rejected, reason="too late to cancel"),
    )
    row = request_row(engine, rejected)
    assert (row["status"], row["reason"]) == ("REJECTED", "too late to cancel")
    assert load(engine, order_id).state is OrderState.OPEN

    request_id = open_request(engine, order_id, "CANCEL")
    deliver(worker, report(order_id, "PENDING_CANCEL", "0", "100", requestId=request_id))
    order = load(engine, order_id)
    assert (order.state, order.status) == (OrderState.PENDING_CANCEL, OrderStatus.OPEN)
    deliver(worker, report(order_id, "CANCELED", "0", "0", requestId=request_id))
    order = load(engine, order_id)
    assert (order.state, order.status, order.pending_request) == (
        OrderState.CANCELED,
        OrderStatus.CANCELED,
        None,
    )
    assert request_row(engine, request_id)["status"] == "DONE"
    assert order_updates(engine, order_id)[-1]["status"] == "CANCELED"
    # A PENDING_CANCEL overtaken by its CANCELED changes neither the order nor the finished request.
    deliver(worker, report(order_id, "PENDING_CANCEL", "0", "0", requestId=request_id))
    assert load(engine, order_id).state is OrderState.CANCELED
    assert request_row(engine, request_id)["status"] == "DONE"


def test_replaced_changes_quantity_and_price(engine: Engine, worker: StageWorker) -> None:
    order_id = routed_order(engine)
    deliver(worker, report(order_id, "NEW", "0", "100"))
    refused = open_request(engine, order_id, "REPLACE", quantity=D(120), price=D("10.20"))
    deliver(worker, report(order_id, "REPLACE_REJECTED", "0", "100", requestId=refused, reason="price band"))
    assert (request_row(engine, refused)["status"], request_row(engine, refused)["reason"]) == (
        "REJECTED",
        "price band",
    )
    assert load(engine, order_id).quantity == D(100)

    request_id = open_request(engine, order_id, "REPLACE", quantity=D(150), price=D("10.50"))
    deliver(worker, report(order_id, "PENDING_REPLACE", "0", "100", requestId=request_id))
    assert load(engine, order_id).state is OrderState.PENDING_REPLACE
    assert request_row(engine, request_id)["status"] == "ACCEPTED"
    deliver(
        worker,
        report(order_id, "REPLACED", "0", "150", requestId=request_id, orderQty=D(150), price=D("10.50")),
    )
    order = load(engine, order_id)
    assert (order.state, order.quantity, order.price) == (OrderState.OPEN, D(150), D("10.50"))
    assert request_row(engine, request_id)["status"] == "DONE"


def test_anomalies_are_recorded_and_logged_with_the_order_id(
    engine: Engine, worker: StageWorker, caplog: pytest.LogCaptureFixture
) -> None:
    fok = routed_order(engine, tif=TimeInForce.FOK)
    overfilled = routed_order(engine)
    with caplog.at_level("WARNING", logger="services.execution_handler.handlers"):
        deliver(worker, fill(fok, "40", "10.00", "40", "0", "10.00", "0.20"))
        deliver(worker, fill(overfilled, "120", "10.00", "120", "0", "10.00", "0.60", last=True))

    assert load(engine, fok).state is OrderState.CANCELED  # FOK remainder canceled, the partial kept
    assert load(engine, fok).filled_quantity == D(40)
    over = load(engine, overfilled)
    assert (over.state, over.filled_quantity, over.overfilled) == (OrderState.FILLED, D(120), True)
    warned = {(r.__dict__.get("order_id"), a) for r in caplog.records for a in r.__dict__.get("anomalies", [])}
    assert (fok, "fok_partial_fill") in warned
    assert (overfilled, "overfill") in warned
    assert [f["quantity"] for f in fills_booked(engine, overfilled)] == [D(120)]


# ------------------------------------------------------------------ one rule for what a fill books (issue 9)


def test_a_new_execution_id_with_no_cum_change_books_nothing(engine: Engine, worker: StageWorker) -> None:
    """Found: a FILLED order of 150 sent a FILL with a new executionId and the same cumQty booked 300."""
    order_id = routed_order(engine, quantity="150")
    deliver(worker, fill(order_id, "150", "10.00", "150", "0", "10.00", "0.15", last=True))
    deliver(worker, fill(order_id, "150", "10.00", "150", "0", "10.00", "0.15", last=True))

    order = load(engine, order_id)
    assert (order.state, order.filled_quantity, order.fees) == (OrderState.FILLED, D(150), D("0.15"))
    assert [f["quantity"] for f in fills_booked(engine, order_id)] == [D(150)]
    assert anomalies_of(engine, order_id) == [["no_cum_change", "fees_not_booked"]]


def test_last_qty_short_of_the_cum_rise_books_the_rise(engine: Engine, worker: StageWorker) -> None:
    """Found: a PARTIAL_FILL with lastQty 10 and cumQty 60 left the order at 60 with 10 confirmed."""
    order_id = routed_order(engine)
    deliver(worker, fill(order_id, "10", "10.00", "60", "40", "10.00", "0.05"))

    order = load(engine, order_id)
    assert order.filled_quantity == D(60)
    assert booked_total(engine, order_id) == D(60)
    assert anomalies_of(engine, order_id) == [["last_qty_mismatch"]]


def test_reports_going_backwards_book_nothing_more(engine: Engine, worker: StageWorker) -> None:
    """Found: cum 50, then lastQty 10 with cumQty 40, left the order at 50 and settlement at 60."""
    order_id = routed_order(engine)
    deliver(worker, fill(order_id, "50", "10.00", "50", "50", "10.00", "0"))
    deliver(worker, fill(order_id, "10", "10.00", "40", "60", "10.00", "0"))

    assert load(engine, order_id).filled_quantity == D(50)
    assert booked_total(engine, order_id) == D(50)
    assert anomalies_of(engine, order_id) == [["cum_backwards"]]


def test_the_same_execution_id_with_other_terms_is_an_anomaly(engine: Engine, worker: StageWorker) -> None:
    """Found: a second report with the same executionId and a different lastQty was dropped with an INFO line."""
    order_id = routed_order(engine)
    first = fill(order_id, "30", "10.00", "30", "70", "10.00", "0")
    deliver(worker, first)
    deliver(worker, {**first, "lastQty": D(40), "cumQty": D(40), "leavesQty": D(60)})

    assert load(engine, order_id).filled_quantity == D(30)
    assert booked_total(engine, order_id) == D(30)
    assert anomalies_of(engine, order_id) == [["execution_id_reused"]]
    assert len(execution_rows(engine, order_id)) == 1


def test_a_bust_of_an_execution_never_booked_is_dead_lettered(engine: Engine, worker: StageWorker) -> None:
    """Found: a TRADE_CANCEL naming an execRefId that never existed reopened a FILLED order and moved the position."""
    order_id = routed_order(engine, quantity="7")
    deliver(worker, fill(order_id, "7", "10.00", "7", "0", "10.00", "0", last=True))
    bust = report(order_id, "TRADE_CANCEL", "0", "7", execRefId="never-sent", lastQty=D(7), lastPx=D("10.00"))
    message_id = str(uuid.uuid4())
    outcome = deliver(worker, bust, message_id)

    assert message_id in outcome.dead and "never-sent" in outcome.dead[message_id]
    order = load(engine, order_id)
    assert (order.state, order.filled_quantity) == (OrderState.FILLED, D(7))
    assert booked_total(engine, order_id) == D(7)
