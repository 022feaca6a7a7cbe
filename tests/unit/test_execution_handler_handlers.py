"""The execution handler on the in-memory store: reports applied once, out of order, busted; requests answered;
contradictions recorded as anomalies; reports that name nothing dead-lettered.

The Postgres side of the same paths: tests/integration/test_execution_handler_stage.py.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import REGISTRY

from common.contracts import FillBookedSchema
from common.domain import Order, OrderState, OrderStatus, OrderType, TimeInForce
from common.messages.catalogue import EXECUTION_REPORT, FILL_BOOKED, ORDER_UPDATE
from common.messaging.envelope import Envelope
from common.orders.records import REQUEST_ACCEPTED, REQUEST_DONE, REQUEST_REJECTED, REQUEST_SENT
from common.runtime.stage import DeadLetter
from services.execution_handler.handlers import answered_request_ids
from services.execution_handler.spec import SPEC
from tests.support.fake_stages import envelope, run_batch
from tests.support.fake_store import FakeMessage, FakeStore
from tests.support.observing import log_lines, record_order_reads
from tests.support.orders import create_order, mark_routed

D = Decimal
LOGGER = "services.execution_handler.handlers"


@pytest.fixture()
def store() -> FakeStore:
    return FakeStore.with_demo_data()


def routed_order(
    store: FakeStore, quantity: str = "100", price: str = "10.00", tif: TimeInForce = TimeInForce.DAY
) -> str:
    """An order at the venue (ROUTED), as intake, the risk gate and the router leave it."""
    now = datetime.now(UTC)
    order = create_order(type=OrderType.LIMIT, quantity=D(quantity), price=D(price), time_in_force=tif, now=now)
    with store.unit_of_work() as uow:
        uow.orders.add(mark_routed(order, now), correlation_id=None, message_id=None)
        uow.commit()
    return order.id


def open_request(store: FakeStore, order_id: str, kind: str, **terms: Decimal) -> str:
    """A cancel or replace the front end asked for and the router sent: the order's pending request, its row."""
    request_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    with store.unit_of_work() as uow:
        order = uow.orders.get(order_id, for_update=True)
        assert order is not None
        if kind == "CANCEL":
            order.request_cancel(request_id, "test", now, "tester")
        else:
            order.request_replace(request_id, terms["quantity"], terms["price"], None, now, "tester")
        uow.requests.record(
            request_id=request_id,
            order_id=order_id,
            kind=kind,
            terms=terms,
            status=REQUEST_SENT,
            reason=None,
            created_by="tester",
            now=now,
        )
        uow.orders.save(order, correlation_id=order_id, message_id=None)
        uow.commit()
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
        **fields,
    }
    return body


def fill(
    order_id: str, qty: str, px: str, cum: str, leaves: str, fees: str = "0", avg: str | None = None, last: bool = False
) -> dict[str, Any]:
    """A fill, its average price the fill's own unless given."""
    kind = "FILL" if last else "PARTIAL_FILL"
    extra = {"lastQty": D(qty), "lastPx": D(px), "avgPx": D(avg or px), "fees": D(fees)}
    return report(order_id, kind, cum, leaves, **extra)


def delivery(body: dict[str, Any]) -> Envelope:
    return envelope(EXECUTION_REPORT, body, correlation_id=body["orderId"])


def deliver(store: FakeStore, *bodies: dict[str, Any]) -> list[FakeMessage]:
    """The reports in one batch; what it sends."""
    return run_batch(store, SPEC, *(delivery(body) for body in bodies))


def order_of(store: FakeStore, order_id: str) -> Order:
    return store.order(order_id)


def fills_booked(store: FakeStore, order_id: str) -> list[dict[str, Any]]:
    """The FillBooked messages handed to settlement, as settlement loads them."""
    return [
        FillBookedSchema().load(dict(m.payload))
        for m in store.messages(FILL_BOOKED.routing_key)
        if m.correlation_id == order_id
    ]


def anomalies_of(store: FakeStore, order_id: str) -> list[list[str]]:
    return [list(e.payload["anomalies"]) for e in store.events_of(order_id) if e.type == "EXECUTION_ANOMALY"]


def test_fills_book_what_they_add_and_announce_it(store: FakeStore) -> None:
    order_id = routed_order(store)
    deliver(store, report(order_id, "NEW", "0", "100"))
    assert order_of(store, order_id).state is OrderState.OPEN
    first = fill(order_id, "40", "10.00", "40", "60", "0.20")
    messages = deliver(store, first, fill(order_id, "60", "10.50", "100", "0", "0.30", avg="10.30", last=True))

    order = order_of(store, order_id)
    assert (order.state, order.filled_quantity, order.average_execution_price, order.fees) == (
        OrderState.FILLED,
        D(100),
        D("10.30"),
        D("0.50"),
    )
    booked = fills_booked(store, order_id)
    assert [(f["execution_id"], f["quantity"], f["reversal"]) for f in booked][0] == (
        first["executionId"],
        D(40),
        False,
    )
    assert [f["quantity"] for f in booked] == [D(40), D(60)]
    updates = [m for m in messages if m.type == ORDER_UPDATE.type]
    assert [u.payload["status"] for u in updates] == ["PARTIALLY_FILLED", "FILLED"]
    assert updates[-1].payload["latestExecution"]["quantity"] == D(60)


def test_a_duplicate_report_is_applied_once(store: FakeStore) -> None:
    order_id = routed_order(store)
    partial = fill(order_id, "30", "10.00", "30", "70", "0.15")
    deliver(store, partial)
    assert deliver(store, partial) == []  # resent under a new message id: deduplicated by executionId
    assert deliver(store, partial, partial) == []

    order = order_of(store, order_id)
    assert (order.filled_quantity, order.fees) == (D(30), D("0.15"))
    assert len(fills_booked(store, order_id)) == 1
    assert len([e for e in store.executions.values() if e.report.order_id == order_id]) == 1


def test_out_of_order_reports_converge(store: FakeStore) -> None:
    in_order, reversed_ = routed_order(store), routed_order(store)
    for order_id, sequence in ((in_order, (0, 1, 2)), (reversed_, (2, 1, 0))):
        reports = [
            report(order_id, "NEW", "0", "100"),
            fill(order_id, "40", "10.00", "40", "60", "0.20"),
            fill(order_id, "60", "10.50", "100", "0", "0.30", avg="10.30", last=True),
        ]
        for index in sequence:
            deliver(store, reports[index])

    for order_id in (in_order, reversed_):
        order = order_of(store, order_id)
        assert (order.state, order.filled_quantity, order.average_execution_price) == (
            OrderState.FILLED,
            D(100),
            D("10.30"),
        )
        assert order.broker_order_id is not None and order.unreported_quantity == 0
    assert sorted(f["quantity"] for f in fills_booked(store, in_order)) == [D(40), D(60)]
    assert [f["quantity"] for f in fills_booked(store, reversed_)] == [D(100)]
    assert anomalies_of(store, in_order) == []
    assert anomalies_of(store, reversed_) == [["last_qty_mismatch"], ["fees_not_booked"]]


def test_a_bust_reverses_the_fill_and_books_a_reversal(store: FakeStore) -> None:
    order_id = routed_order(store)
    first = fill(order_id, "60", "10.00", "60", "40", "0.30")
    second = fill(order_id, "40", "10.50", "100", "0", "0.20", avg="10.20", last=True)
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
    messages = deliver(store, first, second, bust)  # the bust in the same batch as what it busts

    order = order_of(store, order_id)
    assert (order.state, order.filled_quantity, order.average_execution_price, order.fees) == (
        OrderState.PARTIALLY_FILLED,
        D(60),
        D("10.00"),
        D("0.30"),
    )
    assert store.executions[second["executionId"]].busted and not store.executions[first["executionId"]].busted
    assert store.executions[bust["executionId"]].quantity == D(-40)
    reversal = fills_booked(store, order_id)[-1]
    assert (reversal["reversal"], reversal["execution_id"], reversal["quantity"], reversal["fees"]) == (
        True,
        second["executionId"],
        D(40),
        D("0.20"),
    )
    assert [m for m in messages if m.type == ORDER_UPDATE.type][-1].payload["latestExecution"]["quantity"] == D(-40)

    deliver(store, {**bust, "executionId": str(uuid.uuid4())})  # the same execution busted again
    assert order_of(store, order_id).filled_quantity == D(60)
    assert anomalies_of(store, order_id)[-1] == ["bust_repeated"]


def test_answers_move_the_requests_they_name(store: FakeStore) -> None:
    order_id = routed_order(store)
    deliver(store, report(order_id, "NEW", "0", "100"))
    refused = open_request(store, order_id, "CANCEL")
    deliver(store, report(order_id, "CANCEL_REJECTED", "0", "100", requestId=refused, reason="too late to cancel"))
    [row] = [r for r in store.requests_of(order_id) if r.request_id == refused]
    assert (row.status, row.reason) == (REQUEST_REJECTED, "too late to cancel")

    request_id = open_request(store, order_id, "REPLACE", quantity=D(150), price=D("10.50"))
    deliver(store, report(order_id, "PENDING_REPLACE", "0", "100", requestId=request_id))
    assert store.requests_of(order_id)[-1].status == REQUEST_ACCEPTED
    deliver(store, report(order_id, "REPLACED", "0", "150", requestId=request_id, orderQty=D(150), price=D("10.50")))
    order = order_of(store, order_id)
    assert (order.state, order.status, order.quantity, order.price) == (
        OrderState.OPEN,
        OrderStatus.OPEN,
        D(150),
        D("10.50"),
    )
    assert store.requests_of(order_id)[-1].status == REQUEST_DONE
    # An answer overtaken by the final one moves neither the order nor the finished request.
    deliver(store, report(order_id, "PENDING_REPLACE", "0", "150", requestId=request_id))
    assert store.requests_of(order_id)[-1].status == REQUEST_DONE


def test_contradictions_are_anomalies_announced_after_commit(
    store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    fok = routed_order(store, tif=TimeInForce.FOK)
    reused = routed_order(store)
    first = fill(reused, "30", "10.00", "30", "70")
    deliver(store, first)
    with caplog.at_level(logging.WARNING, logger="services.execution_handler.handlers"):
        with pytest.raises(DeadLetter):  # the batch rolls back: what it decided is never announced
            deliver(store, fill(fok, "40", "10.00", "40", "0"), report(str(uuid.uuid4()), "NEW", "0", "1"))
        assert caplog.records == []
        deliver(store, fill(fok, "40", "10.00", "40", "0"))
        deliver(store, {**first, "lastQty": D(40), "cumQty": D(40), "leavesQty": D(60)})
    assert order_of(store, fok).state is OrderState.CANCELED  # the FOK remainder canceled, the partial kept
    warned = {(r.__dict__.get("order_id"), a) for r in caplog.records for a in r.__dict__.get("anomalies", [])}
    assert warned == {(fok, "fok_partial_fill"), (reused, "execution_id_reused")}
    assert order_of(store, reused).filled_quantity == D(30)


def test_reports_that_name_nothing_are_dead_lettered(store: FakeStore) -> None:
    with pytest.raises(DeadLetter, match="unknown order"):
        deliver(store, report(str(uuid.uuid4()), "NEW", "0", "100"))
    order_id = routed_order(store, quantity="7")
    deliver(store, fill(order_id, "7", "10.00", "7", "0", last=True))
    never = report(order_id, "TRADE_CANCEL", "0", "7", execRefId="never-sent", lastQty=D(7), lastPx=D("10.00"))
    with pytest.raises(DeadLetter, match="never-sent"):
        deliver(store, never)
    # The schema refuses a bust naming no execution; the handler does not rely on it.
    valid = delivery(report(order_id, "TRADE_CANCEL", "0", "7", execRefId="x", lastQty=D(7), lastPx=D("10.00")))
    no_ref = replace(valid, body={k: v for k, v in valid.body.items() if k != "exec_ref_id"})
    with pytest.raises(DeadLetter, match="without execRefId"):
        run_batch(store, SPEC, no_ref)
    order = order_of(store, order_id)
    assert (order.state, order.filled_quantity) == (OrderState.FILLED, D(7))
    assert [f["quantity"] for f in fills_booked(store, order_id)] == [D(7)]


def anomaly_count(anomaly: str) -> float:
    return REGISTRY.get_sample_value("oms_execution_anomalies_total", {"anomaly": anomaly}) or 0.0


def test_a_reused_execution_id_is_recorded_with_its_differences_and_announced(
    store: FakeStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = routed_order(store)
    first = fill(order_id, "30", "10.00", "30", "70")
    deliver(store, first)
    counted = anomaly_count("execution_id_reused")
    reads = record_order_reads(monkeypatch)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    other = delivery({**first, "lastPx": D("10.10")})
    run_batch(store, SPEC, replace(other, correlation_id="corr-9", message_id="msg-9"))

    [event] = [e for e in store.events_of(order_id) if e.type == "EXECUTION_ANOMALY"]
    assert (event.payload["execution_id"], event.payload["anomalies"], event.payload["applied"]) == (
        first["executionId"],
        ["execution_id_reused"],
        False,
    )
    assert event.payload["differences"] == ["lastPx"]
    assert (event.correlation_id, event.message_id) == ("corr-9", "msg-9")
    assert reads == [(order_id, True)]
    assert anomaly_count("execution_id_reused") == counted + 1
    assert log_lines(caplog, LOGGER) == [
        (
            "WARNING",
            "execution report anomaly",
            {
                "order_id": order_id,
                "execution_id": first["executionId"],
                "exec_type": "PARTIAL_FILL",
                "anomalies": ["execution_id_reused"],
                "state": "PARTIALLY_FILLED",
                "differences": ["lastPx"],
            },
        )
    ]


def test_an_applied_report_is_recorded_saved_under_its_delivery_and_logged(
    store: FakeStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    order_id = routed_order(store)
    body = fill(order_id, "30", "10.00", "30", "70", "0.15")
    reads = record_order_reads(monkeypatch)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    env = replace(delivery(body), correlation_id=None, message_id="msg-1", headers={"x-oms-user": "venue-bot"})
    messages = run_batch(store, SPEC, env)

    assert reads == [(order_id, True)]
    row = store.executions[body["executionId"]]
    assert row.unreported_delta == D(0) and row.received_at.tzinfo is not None
    [event] = [e for e in store.events_of(order_id) if e.type != "ORDER_CREATED" and e.type != "ORDER_ROUTED"][-1:]
    assert (event.correlation_id, event.message_id, event.user_id) == (order_id, "msg-1", "venue-bot")
    assert event.timestamp.tzinfo is not None
    assert (event.payload["last_px"], event.payload["venue"]) == (D("10.00"), "SIM")
    [update] = [m for m in messages if m.type == ORDER_UPDATE.type]
    assert update.payload["latestExecution"]["id"] == row.id
    assert update.payload["latestExecution"]["venue"] == "SIM"
    assert log_lines(caplog, LOGGER) == [
        (
            "DEBUG",
            "execution report applied",
            {
                "execution_id": body["executionId"],
                "exec_type": "PARTIAL_FILL",
                "state": "PARTIALLY_FILLED",
                "filled_quantity": "30",
                "booked_quantity": "30",
            },
        )
    ]


def test_a_report_that_books_nothing_logs_no_booked_quantity(
    store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    order_id = routed_order(store)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    deliver(store, report(order_id, "NEW", "0", "100"))
    [(_, message, extra)] = log_lines(caplog, LOGGER)
    assert (message, extra["booked_quantity"], extra["state"]) == ("execution report applied", None, "OPEN")


def test_an_anomaly_names_what_was_booked(store: FakeStore, caplog: pytest.LogCaptureFixture) -> None:
    fok = routed_order(store, tif=TimeInForce.FOK)
    reversed_ = routed_order(store)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    deliver(store, fill(fok, "40", "10.00", "40", "0"))
    deliver(store, fill(reversed_, "60", "10.50", "100", "0", "0.30", avg="10.30", last=True))
    booked = {
        extra["order_id"]: (extra["anomalies"], extra["booked_quantity"]) for _, _, extra in log_lines(caplog, LOGGER)
    }
    assert booked[fok] == (["fok_partial_fill"], "40")
    assert booked[reversed_][1] == "100"


def test_a_venue_replace_takes_the_terms_it_reports(store: FakeStore) -> None:
    order_id = routed_order(store)
    deliver(store, report(order_id, "NEW", "0", "100"))
    deliver(
        store,
        report(order_id, "REPLACED", "0", "80", orderQty=D(80), price=D("9.50"), stopPrice=D("9.00"), reason="venue"),
    )
    order = order_of(store, order_id)
    assert (order.quantity, order.price, order.stop_price) == (D(80), D("9.50"), D("9.00"))
    assert store.events_of(order_id)[-1].payload["order_qty"] == D(80)


def test_answers_keep_a_reason_only_for_a_refusal_and_stamp_the_request(
    store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    order_id = routed_order(store)
    deliver(store, report(order_id, "NEW", "0", "100"))
    request_id = open_request(store, order_id, "CANCEL")
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    deliver(store, report(order_id, "CANCELED", "0", "0", requestId=request_id, reason="canceled by user"))
    row = store.requests[request_id]
    assert (row.request.status, row.request.reason) == (REQUEST_DONE, None)
    assert row.updated_at.tzinfo is not None and row.updated_at >= row.created_at
    assert [message for _, message, _ in log_lines(caplog, LOGGER)] == ["execution report applied"]
    caplog.clear()
    # Answering a request already final moves nothing, and says so.
    deliver(store, report(order_id, "CANCELED", "0", "0", requestId=request_id))
    assert log_lines(caplog, LOGGER)[-1] == (
        "DEBUG",
        "no open order request to answer",
        {"request_id": request_id, "exec_type": "CANCELED"},
    )


def test_the_requests_a_batch_answers_are_named_for_one_look_up() -> None:
    bodies: list[dict[str, Any]] = [
        {"request_id": "R-1", "exec_type": "CANCELED"},
        {"request_id": "R-2", "exec_type": "PARTIAL_FILL"},  # a fill answers no request
        {"request_id": None, "exec_type": "REPLACED"},
        {"exec_type": "NEW"},
        {"request_id": "R-3", "exec_type": "REPLACE_REJECTED"},
    ]
    assert answered_request_ids(bodies) == ["R-1", "R-3"]


def test_a_bust_without_a_reference_says_so(store: FakeStore) -> None:
    order_id = routed_order(store, quantity="7")
    valid = delivery(report(order_id, "TRADE_CANCEL", "0", "7", execRefId="x", lastQty=D(7), lastPx=D("10.00")))
    no_ref = replace(valid, body={k: v for k, v in valid.body.items() if k != "exec_ref_id"})
    with pytest.raises(DeadLetter, match=r"^TRADE_CANCEL without execRefId: it names no execution to reverse$"):
        run_batch(store, SPEC, no_ref)


def test_a_resent_report_is_skipped_with_a_line_and_an_applied_one_keeps_its_correlation(
    store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    order_id = routed_order(store)
    partial = fill(order_id, "30", "10.00", "30", "70")
    run_batch(store, SPEC, replace(delivery(partial), correlation_id="corr-5"))
    assert store.events_of(order_id)[-1].correlation_id == "corr-5"
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    deliver(store, partial)
    assert log_lines(caplog, LOGGER) == [
        ("DEBUG", "duplicate execution report skipped", {"execution_id": partial["executionId"]})
    ]
