"""The execution handler on batches of reports: what a batch costs in statements, and that batching changes nothing
of what the reports do (answers to requests, duplicates, a failed batch retried message by message)."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine

from common import jsonutil
from common.contracts import ExecutionReportSchema
from common.messaging.envelope import Envelope
from common.orders.records import REQUEST_NEW, REQUEST_SENT
from common.runtime.stage import StageWorker
from common.settings import InfraSettings, Settings
from common.store.requests_repo import record_request
from services.execution_handler.spec import SPEC
from tests.support.db import statements
from tests.support.orders import create_order, mark_routed, order_row, outbox_bodies, request_row, store

pytestmark = pytest.mark.integration

D = Decimal


@pytest.fixture
def worker(engine: Engine, database_url: str) -> StageWorker:
    return StageWorker(SPEC, Settings(infra=InfraSettings(database_url=database_url)), engine)


def touching(sent: list[str], table: str) -> list[str]:
    return [s for s in sent if f" {table} " in s or f" {table}\n" in s]


def routed_with_request(engine: Engine, kind: str = REQUEST_NEW) -> tuple[str, str]:
    """A ROUTED order with a request row SENT, as the router leaves it: (order id, request id)."""
    now = datetime.now(UTC)
    order_id = store(engine, mark_routed(create_order(quantity=D(100), price=D("10.00"), now=now), now))
    request_id = str(uuid.uuid4())
    with engine.begin() as connection:
        record_request(
            connection,
            request_id=request_id,
            order_id=order_id,
            kind=kind,
            terms={"quantity": D(100), "price": D("10.00")},
            status=REQUEST_SENT,
            reason=None,
            created_by=None,
            now=now,
        )
    return order_id, request_id


def envelope(body: dict[str, Any]) -> Envelope:
    wire = jsonutil.loads(jsonutil.dumps(body))
    return Envelope(
        message_id=str(uuid.uuid4()),
        routing_key="execution.report",
        body=ExecutionReportSchema().load(wire),
        correlation_id=body["orderId"],
        type="ExecutionReport",
    )


def report(order_id: str, exec_type: str, request_id: str | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "executionId": str(uuid.uuid4()),
        "orderId": order_id,
        "brokerOrderId": "BRK-" + order_id[:8],
        "execType": exec_type,
        "cumQty": D(0),
        "leavesQty": D(100),
        "venue": "SIM",
        "timestamp": datetime.now(UTC).isoformat(),
    }
    if request_id is not None:
        body["requestId"] = request_id
    body.update(fields)
    return body


def fill(order_id: str, request_id: str) -> dict[str, Any]:
    return report(
        order_id,
        "FILL",
        request_id,
        lastQty=D(100),
        lastPx=D("10.00"),
        cumQty=D(100),
        leavesQty=D(0),
        avgPx=D("10.00"),
        fees=D("0.10"),
    )


def run(worker: StageWorker, bodies: list[dict[str, Any]]) -> Any:
    outcome = worker.process([envelope(b) for b in bodies])
    assert not outcome.failed, outcome.failed
    return outcome


def acks_then_fills(engine: Engine, worker: StageWorker, size: int) -> tuple[list[str], list[str]]:
    """A batch of ``size`` NEW reports answering the orders' requests, then one of their FILLs: what each sent."""
    orders = [routed_with_request(engine) for _ in range(size)]
    with statements(engine) as acks:
        assert not run(worker, [report(o, "NEW", r) for o, r in orders]).dead
    for order_id, request_id in orders:
        assert request_row(engine, request_id)["status"] == "ACCEPTED"
        assert order_row(engine, order_id)["state"] == "OPEN"
    with statements(engine) as fills:
        assert not run(worker, [fill(o, r) for o, r in orders]).dead
    for order_id, _ in orders:
        assert order_row(engine, order_id)["state"] == "FILLED"
        [booked] = outbox_bodies(engine, order_id, "settlement.fill")
        assert (booked["quantity"], booked["executionId"] is not None) == (D(100), True)
    return acks, fills


def test_statements_per_batch_do_not_grow_with_the_batch(engine: Engine, worker: StageWorker) -> None:
    small_acks, small_fills = acks_then_fills(engine, worker, 2)
    large_acks, large_fills = acks_then_fills(engine, worker, 25)
    assert (len(large_acks), len(large_fills)) == (len(small_acks), len(small_fills))
    # The requests the acks answer: one look-up and one update for the whole batch; the reports: one look-up and
    # one insert.
    assert len(touching(large_acks, "order_requests")) == 2, large_acks
    assert len(touching(large_acks, "execution_reports")) == 2, large_acks
    assert len(touching(large_fills, "order_requests")) == 0, large_fills  # a fill answers no request
    assert len(touching(large_fills, "execution_reports")) == 2, large_fills


def test_no_info_line_per_report(engine: Engine, worker: StageWorker, caplog: pytest.LogCaptureFixture) -> None:
    orders = [routed_with_request(engine) for _ in range(3)]
    duplicate = report(orders[0][0], "NEW", orders[0][1])
    with caplog.at_level(logging.DEBUG, logger="services.execution_handler"):
        run(worker, [duplicate, *(report(o, "NEW", r) for o, r in orders[1:])])
        run(worker, [duplicate])  # a resend under another message id
        run(worker, [report(orders[0][0], "NEW", str(uuid.uuid4()))])  # answers no request it knows
        run(worker, [fill(o, r) for o, r in orders])
    ours = [r for r in caplog.records if r.name.startswith("services.execution_handler")]
    assert [r.getMessage() for r in ours if r.levelno >= logging.INFO] == []
    assert {r.getMessage() for r in ours} == {
        "execution report applied",
        "duplicate execution report skipped",
        "no open order request to answer",
    }


def test_answers_to_one_request_in_one_batch(engine: Engine, worker: StageWorker) -> None:
    """PENDING_CANCEL then CANCELED in one batch ends DONE; so does CANCELED overtaking PENDING_CANCEL."""
    in_order = [routed_with_request(engine, "CANCEL") for _ in range(2)]
    overtaken = [routed_with_request(engine, "CANCEL") for _ in range(2)]
    acks = [report(o, "NEW") for o, _ in in_order + overtaken]
    run(worker, acks)
    batch: list[dict[str, Any]] = []
    for order_id, request_id in in_order:
        batch += [
            report(order_id, "PENDING_CANCEL", request_id),
            report(order_id, "CANCELED", request_id, leavesQty=D(0)),
        ]
    for order_id, request_id in overtaken:
        batch += [
            report(order_id, "CANCELED", request_id, leavesQty=D(0)),
            report(order_id, "PENDING_CANCEL", request_id, leavesQty=D(0)),
        ]
    run(worker, batch)
    for order_id, request_id in in_order + overtaken:
        assert request_row(engine, request_id)["status"] == "DONE"
        assert order_row(engine, order_id)["state"] == "CANCELED"


def test_a_failed_batch_retried_one_by_one_answers_each_request_once(engine: Engine, worker: StageWorker) -> None:
    orders = [routed_with_request(engine) for _ in range(3)]
    missing = str(uuid.uuid4())
    unknown = envelope(report(missing, "NEW"))
    envelopes = [envelope(report(o, "NEW", r)) for o, r in orders]
    outcome = worker.process([envelopes[0], unknown, *envelopes[1:]])
    assert outcome.dead == {unknown.message_id: f"DeadLetter: unknown order {missing}"}
    assert not outcome.failed
    for order_id, request_id in orders:
        assert request_row(engine, request_id)["status"] == "ACCEPTED"
        assert order_row(engine, order_id)["state"] == "OPEN"


def test_a_bust_in_a_batch_with_its_fill(engine: Engine, worker: StageWorker) -> None:
    """The rare path (a bust reads the busted execution) still sees the fill buffered earlier in the batch."""
    order_id, request_id = routed_with_request(engine)
    filled = fill(order_id, request_id)
    bust = report(
        order_id,
        "TRADE_CANCEL",
        cumQty=D(0),
        leavesQty=D(100),
        execRefId=filled["executionId"],
        lastQty=D(100),
        lastPx=D("10.00"),
        fees=D("-0.10"),
    )
    run(worker, [report(order_id, "NEW", request_id), filled, bust])
    row = order_row(engine, order_id)
    assert (row["filled_quantity"], row["state"]) == (D(0), "OPEN")
    assert [b["reversal"] for b in outbox_bodies(engine, order_id, "settlement.fill")] == [False, True]
    assert request_row(engine, request_id)["status"] == "ACCEPTED"
