"""The risk gate's handler on the in-memory store: approvals on to the router, rejections with their rule, stale
and unknown checks, a batch's orders seeing each other, and the checks of replaces of orders at the venue.

The gate's reads come from the fake risk store (tests/support/fake_risk.py), which builds the facts its two
statements read on Postgres; the rules themselves are the production ones. The Postgres side of the same paths
is tests/integration/test_risk_gate_stage.py.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
from prometheus_client import REGISTRY

from common.domain import ExecType, OrderState, OrderType
from common.messages.catalogue import RISK_CHECK, ROUTE_NEW, ROUTE_REPLACE
from common.messaging.envelope import Envelope
from common.orders.commands import cancel_order, modify_order, submit_order
from common.orders.records import REQUEST_PENDING, REQUEST_REJECTED, REQUEST_SKIPPED
from common.risk.controls import Halt
from common.runtime.stage import DeadLetter, StageSpec
from services.risk_gate.assessments import RiskServiceGate, reviewed
from services.risk_gate.handlers import check_replace_terms, handle_risk_check, prepare_checks, stale_replace_reason
from services.risk_gate.prices import FeedPrice, NoPriceBehaviour, PriceSettings
from services.risk_gate.risk_service import Verdict
from services.risk_gate.rules import OrderTerms, RiskDecision
from services.risk_gate.spec import SPEC
from services.risk_gate.store import OrderMeta
from tests.support.fake_risk import FakeRiskStore, FakeRiskTables, provide_risk_store
from tests.support.fake_stages import delivered, envelope, run_batch, sent
from tests.support.fake_store import FakeStore
from tests.support.observing import log_lines, record_order_reads
from tests.support.orders import create_order, execution_report, mark_routed, order_request

D = Decimal


@pytest.fixture()
def store() -> FakeStore:
    return FakeStore.with_demo_data()


@pytest.fixture()
def risk(store: FakeStore) -> FakeRiskTables:
    return provide_risk_store(store)


def book(store: FakeStore, **fields: Any) -> tuple[str, Envelope]:
    """An order through the intake command: its id and the RiskCheck it sent, as the gate receives it."""
    with store.unit_of_work() as uow:
        order, _ = submit_order(uow, order_request(**fields), user_id="trader-1", correlation_id=None, message_id=None)
        [check] = sent(uow.commit(), RISK_CHECK)
    assert order.state is OrderState.NEW, order.rejection_reason
    return order.id, delivered(SPEC, check)


def open_order(store: FakeStore, quantity: Decimal = D("100")) -> str:
    """An order the venue has acknowledged (OPEN), with its history."""
    now = datetime.now(UTC)
    order = mark_routed(create_order(quantity=quantity), now)
    order.apply_report(
        execution_report(order.id, ExecType.NEW, broker_order_id="B-1", cum_qty=D(0), leaves_qty=quantity), now
    )
    with store.unit_of_work() as uow:
        uow.orders.add(order, correlation_id=None, message_id=None)
        uow.commit()
    return order.id


def request_replace(store: FakeStore, order_id: str, quantity: Decimal) -> Envelope:
    """Modify an order at the venue: the RiskCheck of its replace, as the gate receives it."""
    with store.unit_of_work() as uow:
        modify_order(uow, order_id, quantity=quantity, price=None, stop_price=None, notes=None, user_id="trader-1")
        [check] = sent(uow.commit(), RISK_CHECK)
    return delivered(SPEC, check)


def test_an_order_within_limits_is_approved_and_handed_to_the_router(store: FakeStore, risk: FakeRiskTables) -> None:
    order_id, check = book(store)
    messages = run_batch(store, SPEC, check)

    order = store.order(order_id)
    assert (order.state, order.version) == (OrderState.APPROVED, 2)
    approved = store.events_of(order_id)[-1]
    assert approved.type == "RISK_APPROVED"
    assert approved.payload["checks"] == [
        "account_active",
        "kill_switch",
        "instrument_tradable",
        "restricted_symbol",
        "max_order_quantity",
        "max_order_notional",
    ]
    [route] = sent(messages, ROUTE_NEW)
    assert (route.exchange, route.payload) == ("oms", {"orderId": order_id})
    assert dict(route.headers) == {"x-oms-user": "trader-1"}  # who asked, carried on
    assert run_batch(store, SPEC, replace(check, message_id=str(uuid.uuid4()))) == []  # seen again: not NEW
    assert store.event_types(order_id) == ["ORDER_CREATED", "RISK_APPROVED"]


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"quantity": D("1000001"), "price": D("0.01")}, "MAX_ORDER_QUANTITY_EXCEEDED"),
        ({"quantity": D("263158"), "price": D("190.00")}, "MAX_NOTIONAL_EXCEEDED"),
        ({"type": "MARKET", "price": None, "quantity": D("263158")}, "MAX_NOTIONAL_EXCEEDED"),  # at reference price
    ],
)
def test_the_default_limits_reject_above_them(
    store: FakeStore, risk: FakeRiskTables, changes: dict[str, Any], code: str
) -> None:
    order_id, check = book(store, **changes)
    messages = run_batch(store, SPEC, check)
    order = store.order(order_id)
    assert (order.state, order.rejection_code) == (OrderState.REJECTED, code)
    assert store.events_of(order_id)[-1].type == "ORDER_REJECTED"
    assert sent(messages, ROUTE_NEW) == []


def test_limits_halts_and_closed_accounts_apply(store: FakeStore, risk: FakeRiskTables) -> None:
    risk.set_limits("ACC-002", max_order_quantity=D("50"))
    limited, check_limited = book(store, account_id="ACC-002", quantity=D("51"))
    closing, check_closing = book(store, account_id="ACC-003", quantity=D("1"))
    store.add_account("ACC-003", account_type="CASH", active=False)  # closed after intake
    risk.halts.append(Halt("ACC-001", "runaway algo", "ops", datetime.now(UTC)))
    halted, check_halted = book(store)

    run_batch(store, SPEC, check_limited, check_closing, check_halted)
    assert store.order(limited).rejection_code == "MAX_ORDER_QUANTITY_EXCEEDED"
    assert store.order(closing).rejection_reason == "account ACC-003 is not active"
    assert store.order(halted).rejection_code == "TRADING_HALTED"


def test_the_orders_of_a_batch_count_each_other(store: FakeStore, risk: FakeRiskTables) -> None:
    risk.set_limits("ACC-002", max_open_orders=1)
    first, check_first = book(store, account_id="ACC-002")
    second, check_second = book(store, account_id="ACC-002")
    messages = run_batch(store, SPEC, check_first, check_second)
    assert store.order(first).state is OrderState.APPROVED
    assert store.order(second).rejection_code == "MAX_OPEN_ORDERS_EXCEEDED"
    assert [m.payload["orderId"] for m in sent(messages, ROUTE_NEW)] == [first]


def test_checks_of_an_older_version_or_a_canceled_order_are_skipped(store: FakeStore, risk: FakeRiskTables) -> None:
    modified_id, stale = book(store)
    with store.unit_of_work() as uow:
        modify_order(uow, modified_id, quantity=D("200"), price=None, stop_price=None, notes=None, user_id=None)
        [fresh] = sent(uow.commit(), RISK_CHECK)
    canceled_id, of_canceled = book(store)
    with store.unit_of_work() as uow:
        cancel_order(uow, canceled_id, reason="changed my mind", user_id=None)
        uow.commit()

    assert run_batch(store, SPEC, stale, of_canceled) == []
    assert store.order(modified_id).state is OrderState.NEW
    assert store.order(canceled_id).state is OrderState.CANCELED
    run_batch(store, SPEC, delivered(SPEC, fresh))
    assert store.order(modified_id).state is OrderState.APPROVED


def test_an_unknown_order_is_dead_lettered(store: FakeStore, risk: FakeRiskTables) -> None:
    with pytest.raises(DeadLetter, match="unknown order"):
        run_batch(store, SPEC, envelope(RISK_CHECK, {"orderId": str(uuid.uuid4()), "version": 1}))


# --------------------------------------------------------------------------- replaces of orders at the venue


def test_an_approved_replace_goes_to_the_router_and_a_superseded_one_is_skipped(
    store: FakeStore, risk: FakeRiskTables
) -> None:
    order_id = open_order(store)
    first = request_replace(store, order_id, D("120"))
    second = request_replace(store, order_id, D("130"))

    assert run_batch(store, SPEC, first) == []
    [skipped] = [r for r in store.requests_of(order_id) if r.request_id == first.body["request_id"]]
    assert (skipped.status, skipped.reason) == (REQUEST_SKIPPED, f"superseded by replace {second.body['request_id']}")
    assert store.event_types(order_id)[-1] == "REPLACE_REQUESTED"  # nothing recorded on the order

    [route] = sent(run_batch(store, SPEC, second), ROUTE_REPLACE)
    assert route.payload == {"orderId": order_id, "requestId": second.body["request_id"]}
    assert dict(route.headers) == {"x-oms-user": "trader-1"}
    approval = store.events_of(order_id)[-1]
    assert (approval.type, approval.payload["request_id"]) == ("RISK_APPROVED", second.body["request_id"])
    assert store.requests_of(order_id)[-1].status == REQUEST_PENDING  # the router sends it
    assert store.order(order_id).quantity == D("100")  # in force only once the venue confirms


def test_a_refused_replace_never_reaches_the_venue(store: FakeStore, risk: FakeRiskTables) -> None:
    risk.set_limits("ACC-001", max_order_quantity=D("110"))
    order_id = open_order(store)
    check = request_replace(store, order_id, D("150"))
    assert sent(run_batch(store, SPEC, check), ROUTE_REPLACE) == []
    [refused] = store.requests_of(order_id)
    assert refused.status == REQUEST_REJECTED and refused.reason is not None
    assert refused.reason.startswith("MAX_ORDER_QUANTITY_EXCEEDED")
    order = store.order(order_id)
    assert (order.state, order.pending_request) == (OrderState.OPEN, None)


def test_a_replace_superseded_by_a_cancel_is_skipped(store: FakeStore, risk: FakeRiskTables) -> None:
    order_id = open_order(store)
    check = request_replace(store, order_id, D("120"))
    with store.unit_of_work() as uow:
        cancel_order(uow, order_id, reason=None, user_id=None)
        uow.commit()
    pending = store.order(order_id).pending_request
    assert pending is not None

    run_batch(store, SPEC, check)
    replace_request = next(r for r in store.requests_of(order_id) if r.request_id == check.body["request_id"])
    assert (replace_request.status, replace_request.reason) == (
        REQUEST_SKIPPED,
        f"superseded by cancel {pending.request_id}",
    )


def test_a_replace_check_naming_no_replace_request_is_dead_lettered(store: FakeStore, risk: FakeRiskTables) -> None:
    order_id = open_order(store)
    body = {"orderId": order_id, "version": 3, "requestId": str(uuid.uuid4())}
    with pytest.raises(DeadLetter, match="no REPLACE request"):
        run_batch(store, SPEC, envelope(RISK_CHECK, body))


# --------------------------------------------------------------------------- what the gate records, logs and reads

LOGGER = "services.risk_gate.handlers"
REJECT_WITHOUT_PRICE = PriceSettings(no_price=NoPriceBehaviour.REJECT)
AT_INSTRUMENT_REFERENCE = {
    "price": D("190.00"),
    "source": "instrument",
    "note": "no feed price for AAPL; used the instrument's reference price",
}


class RecordingGate(RiskServiceGate):
    """A Risk Analysis Service that remembers what it was asked and answers ``approved`` to all of it."""

    def __init__(self, approved: bool = True) -> None:
        self.approved = approved
        self.asked: list[tuple[RiskDecision, OrderTerms, int | str]] = []

    def review_order(self, decision: RiskDecision, terms: OrderTerms, version: int) -> RiskDecision:
        self.asked.append((decision, terms, version))
        return reviewed(decision, Verdict(self.approved, "the service says so"))

    def review_replace(self, decision: RiskDecision, proposed: OrderTerms, request_id: str) -> RiskDecision:
        self.asked.append((decision, proposed, request_id))
        return reviewed(decision, Verdict(self.approved, "the service says so"))


def with_settings(price_settings: PriceSettings | None, gate: RiskServiceGate | None = None) -> StageSpec:
    """The stage as ``stage_spec`` binds it."""
    handler = partial(handle_risk_check, price_settings=price_settings, risk_service=gate)
    return replace(SPEC, handlers={RISK_CHECK: handler}, prepare=partial(prepare_checks, price_settings=price_settings))


def rejections(rule: str) -> float:
    return REGISTRY.get_sample_value("oms_risk_rejections_total", {"rule": rule}) or 0.0


def test_a_rejection_records_the_rule_its_figures_and_the_price_and_is_counted(
    store: FakeStore, risk: FakeRiskTables, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    risk.set_limits("ACC-001", max_order_quantity=D("110"))
    order_id, check = book(store, quantity=D("111"))
    counted = rejections("max_order_quantity")
    reads = record_order_reads(monkeypatch)
    caplog.set_level(logging.INFO, logger=LOGGER)
    run_batch(store, SPEC, replace(check, correlation_id="corr-1", message_id="msg-1"))

    rejected = store.events_of(order_id)[-1]
    reason = "quantity 111 exceeds the maximum order quantity 110"
    assert dict(rejected.payload) == {
        "rule": "max_order_quantity",
        "field": "quantity",
        "figures": {"limit": 110, "value": 111},
        "checks": ["account_active", "kill_switch", "instrument_tradable", "restricted_symbol", "max_order_quantity"],
        "reference_price": AT_INSTRUMENT_REFERENCE,
        "code": "MAX_ORDER_QUANTITY_EXCEEDED",
        "reason": reason,
        "state": "REJECTED",
    }
    assert (rejected.correlation_id, rejected.message_id, rejected.timestamp.tzinfo is not None) == (
        "corr-1",
        "msg-1",
        True,
    )
    assert rejections("max_order_quantity") == counted + 1
    assert all(for_update for _, for_update in reads) and (order_id, True) in reads
    assert log_lines(caplog, LOGGER) == [
        (
            "INFO",
            "order rejected by risk",
            {"code": "MAX_ORDER_QUANTITY_EXCEEDED", "rule": "max_order_quantity", "reason": reason},
        )
    ]


def test_an_approval_records_the_price_and_limits_under_the_delivery(store: FakeStore, risk: FakeRiskTables) -> None:
    risk.set_limits("ACC-001", max_order_quantity=D("110"))
    order_id, check = book(store, quantity=D("11"))
    run_batch(store, SPEC, replace(check, correlation_id=None, message_id="msg-2"))
    approved = store.events_of(order_id)[-1]
    assert dict(approved.payload) == {
        "reference_price": AT_INSTRUMENT_REFERENCE,
        "limits": {"max_order_quantity": 110, "max_order_notional": 50000000},
        "checks": [
            "account_active",
            "kill_switch",
            "instrument_tradable",
            "restricted_symbol",
            "max_order_quantity",
            "max_order_notional",
        ],
        "state": "APPROVED",
    }
    assert (approved.correlation_id, approved.message_id) == (order_id, "msg-2")
    assert approved.timestamp.tzinfo is not None


def test_the_configured_price_settings_apply_in_a_batch_and_alone(store: FakeStore, risk: FakeRiskTables) -> None:
    batched, check_batched = book(store, type="MARKET", price=None, quantity=D("11"))
    alone, check_alone = book(store, type="MARKET", price=None, quantity=D("11"))
    run_batch(store, with_settings(REJECT_WITHOUT_PRICE), check_batched)
    with store.unit_of_work() as uow:  # a handler called on its own prepares for its order
        uow.orders.lock([alone])
        handle_risk_check(uow, check_alone, price_settings=REJECT_WITHOUT_PRICE)
        uow.commit()
    for order_id in (batched, alone):
        order = store.order(order_id)
        assert (order.state, order.rejection_code) == (OrderState.REJECTED, "NO_REFERENCE_PRICE")
        assert store.events_of(order_id)[-1].payload["reference_price"] is None


def test_a_batch_is_loaded_once_and_a_handler_alone_loads_its_order(
    store: FakeStore, risk: FakeRiskTables, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, check_first = book(store, quantity=D("1"))
    second, check_second = book(store, strategy_id="momentum-1", quantity=D("2"))
    loads: list[tuple[dict[str, OrderMeta], datetime, PriceSettings]] = []
    original = FakeRiskStore.load

    def load(self: FakeRiskStore, metas: Any, now: datetime, price_settings: PriceSettings) -> Any:
        loads.append((dict(metas), now, price_settings))
        return original(self, metas, now, price_settings)

    monkeypatch.setattr(FakeRiskStore, "load", load)
    reads = record_order_reads(monkeypatch)
    run_batch(store, with_settings(REJECT_WITHOUT_PRICE), check_first, check_second)
    [(metas, now, settings)] = loads
    orders = {order_id: store.order(order_id) for order_id in (first, second)}
    assert metas == {
        order_id: OrderMeta(order.account_id, order.strategy_id, order.symbol, order.created_at)
        for order_id, order in orders.items()
    }
    assert metas[second].strategy_id == "momentum-1"
    assert (now.tzinfo is not None, settings) == (True, REJECT_WITHOUT_PRICE)
    assert reads and all(for_update for _, for_update in reads)

    loads.clear()
    third, check_third = book(store, quantity=D("3"))
    with store.unit_of_work() as uow:
        uow.orders.lock([third])
        handle_risk_check(uow, check_third)
        uow.commit()
    [(metas, _, settings)] = loads
    assert (list(metas), settings) == ([third], PriceSettings())
    assert store.order(third).state is OrderState.APPROVED


def test_the_risk_service_is_asked_about_what_the_rules_approve_and_has_the_last_word(
    store: FakeStore, risk: FakeRiskTables
) -> None:
    order_id, check = book(store, quantity=D("5"))
    gate = RecordingGate(approved=False)
    run_batch(store, with_settings(None, gate), check)
    [(decision, terms, version)] = gate.asked
    assert (decision.violation, terms, version) == (None, OrderTerms.of(store.order(order_id)), 1)
    assert decision.checks[-1] == "max_order_notional"
    order = store.order(order_id)
    assert (order.state, order.rejection_reason) == (
        OrderState.REJECTED,
        "rejected by the risk analysis service: the service says so",
    )


def test_a_stale_check_is_logged_with_both_versions(
    store: FakeStore, risk: FakeRiskTables, caplog: pytest.LogCaptureFixture
) -> None:
    order_id, stale = book(store)
    with store.unit_of_work() as uow:
        modify_order(uow, order_id, quantity=D("200"), price=None, stop_price=None, notes=None, user_id=None)
        uow.commit()
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert run_batch(store, SPEC, stale) == []
    assert log_lines(caplog, LOGGER) == [
        ("INFO", "stale risk check skipped", {"version": 1, "order_version": 2, "state": "NEW"})
    ]


def test_a_replace_is_checked_at_its_new_terms_and_recorded(
    store: FakeStore, risk: FakeRiskTables, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 100 at 300 is over the notional limit; at the reference price (190) or at the order's price it is not.
    risk.set_limits("ACC-001", max_order_notional=D("25000"))
    order_id = open_order(store)
    with store.unit_of_work() as uow:
        modify_order(uow, order_id, quantity=D("100"), price=D("300"), stop_price=None, notes=None, user_id="t-1")
        [check] = sent(uow.commit(), RISK_CHECK)
    counted = rejections("max_order_notional")
    reads = record_order_reads(monkeypatch)
    caplog.set_level(logging.INFO, logger=LOGGER)
    request_id = check.payload["requestId"]
    run_batch(store, SPEC, replace(delivered(SPEC, check), correlation_id="corr-3", message_id="msg-3"))

    row = store.requests[request_id]
    assert row.request.status == REQUEST_REJECTED and row.updated_at.tzinfo is not None
    assert row.request.reason == "MAX_NOTIONAL_EXCEEDED: " + str(store.events_of(order_id)[-1].payload["reason"])
    refused = store.events_of(order_id)[-1]
    assert (refused.payload["code"], refused.payload["rule"], refused.payload["request_id"]) == (
        "MAX_NOTIONAL_EXCEEDED",
        "max_order_notional",
        request_id,
    )
    assert refused.payload["reference_price"] == AT_INSTRUMENT_REFERENCE
    assert refused.payload["figures"]["value"] == D("30000")
    assert (refused.correlation_id, refused.message_id, refused.timestamp.tzinfo is not None) == (
        "corr-3",
        "msg-3",
        True,
    )
    assert rejections("max_order_notional") == counted + 1
    assert reads and set(reads) == {(order_id, True)}
    assert log_lines(caplog, LOGGER) == [
        (
            "INFO",
            "replace rejected by risk",
            {"request_id": request_id, "code": "MAX_NOTIONAL_EXCEEDED", "rule": "max_order_notional"},
        )
    ]
    caplog.clear()
    assert run_batch(store, SPEC, delivered(SPEC, check)) == []
    assert log_lines(caplog, LOGGER) == [
        ("INFO", "replace already handled", {"request_id": request_id, "status": REQUEST_REJECTED})
    ]


def test_an_approved_replace_records_price_and_limits_and_asks_the_risk_service(
    store: FakeStore, risk: FakeRiskTables, caplog: pytest.LogCaptureFixture
) -> None:
    risk.set_limits("ACC-001", max_order_quantity=D("500"))
    order_id = open_order(store)
    with store.unit_of_work() as uow:
        modify_order(uow, order_id, quantity=D("120"), price=D("191"), stop_price=None, notes=None, user_id="t-1")
        [check] = sent(uow.commit(), RISK_CHECK)
    request_id = check.payload["requestId"]
    gate = RecordingGate()
    caplog.set_level(logging.INFO, logger=LOGGER)
    run_batch(store, with_settings(None, gate), replace(delivered(SPEC, check), correlation_id=None))

    order = store.order(order_id)
    [(decision, proposed, asked_about)] = gate.asked
    assert (decision.violation, asked_about) == (None, request_id)
    assert proposed == replace(OrderTerms.of(order), quantity=D("120"), price=D("191"), stop_price=None)
    approval = store.events_of(order_id)[-1]
    assert dict(approval.payload) == {
        "reference_price": AT_INSTRUMENT_REFERENCE,
        "limits": {"max_order_quantity": 500, "max_order_notional": 50000000},
        "request_id": request_id,
        "checks": [*decision.checks, "risk_service"],
        "state": "OPEN",
    }
    assert approval.correlation_id == order_id
    assert log_lines(caplog, LOGGER) == [("INFO", "replace approved by risk", {"request_id": request_id})]


def test_a_refusal_of_the_risk_service_rejects_the_replace(store: FakeStore, risk: FakeRiskTables) -> None:
    order_id = open_order(store)
    check = request_replace(store, order_id, D("120"))
    run_batch(store, with_settings(None, RecordingGate(approved=False)), check)
    assert store.requests_of(order_id)[-1].status == REQUEST_REJECTED


def test_a_stale_replace_check_is_skipped_stamped_and_logged(
    store: FakeStore, risk: FakeRiskTables, caplog: pytest.LogCaptureFixture
) -> None:
    order_id = open_order(store)
    first = request_replace(store, order_id, D("120"))
    second = request_replace(store, order_id, D("130"))
    caplog.set_level(logging.INFO, logger=LOGGER)
    run_batch(store, SPEC, first)
    row = store.requests[first.body["request_id"]]
    assert row.updated_at.tzinfo is not None
    reason = f"superseded by replace {second.body['request_id']}"
    assert log_lines(caplog, LOGGER) == [
        ("INFO", "stale replace check skipped", {"request_id": first.body["request_id"], "reason": reason})
    ]


def test_replace_checks_that_cannot_be_checked_are_dead_lettered(store: FakeStore, risk: FakeRiskTables) -> None:
    unknown = str(uuid.uuid4())
    body = {"orderId": unknown, "version": 3, "requestId": str(uuid.uuid4())}
    with pytest.raises(DeadLetter, match=rf"^unknown order {unknown}$"):
        run_batch(store, SPEC, envelope(RISK_CHECK, body))

    mine, other = open_order(store), open_order(store)
    check = request_replace(store, mine, D("120"))
    request_id = check.body["request_id"]
    of_other = envelope(RISK_CHECK, {"orderId": other, "version": 3, "requestId": request_id})
    with pytest.raises(DeadLetter, match=rf"^no REPLACE request {request_id} for order {other}$"):
        run_batch(store, SPEC, of_other)

    row = store.requests[request_id]
    store.requests[request_id] = replace(row, request=replace(row.request, terms={}))
    with pytest.raises(DeadLetter, match=rf"^replace request {request_id} has no quantity$"):
        run_batch(store, SPEC, check)


def test_the_batch_locks_the_requests_of_its_replace_checks(store: FakeStore, risk: FakeRiskTables) -> None:
    order_id = open_order(store)
    check = request_replace(store, order_id, D("120"))
    _, new_check = book(store)
    locked: list[list[str]] = []
    with store.unit_of_work() as uow:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(uow.requests, "lock", lambda ids: locked.append(list(ids)))
            prepare_checks(uow, [new_check, check])
            prepare_checks(uow, [new_check])
        uow.rollback()
    assert locked == [[check.body["request_id"]]]


def test_new_terms_of_a_replace_are_checked_with_the_settings_given(store: FakeStore, risk: FakeRiskTables) -> None:
    risk.set_limits("ACC-001", max_order_quantity=D("150"), max_order_notional=D("25000"))
    order_id = open_order(store)
    with store.unit_of_work() as uow:
        order = uow.orders.get(order_id, for_update=True)
        assert order is not None
        within = check_replace_terms(uow, order, D("120"), D("200"), None)
        too_many = check_replace_terms(uow, order, D("151"), None, None)
        too_dear = check_replace_terms(uow, order, D("100"), D("300"), None)
        market = replace(order, type=OrderType.MARKET, price=None)
        no_price = check_replace_terms(uow, market, D("100"), None, None, REJECT_WITHOUT_PRICE)
        uow.rollback()
    assert within.violation is None and within.quote is not None
    assert too_many.violation is not None and too_many.violation.figures == {"limit": 150, "value": 151}
    assert too_dear.violation is not None and too_dear.violation.rule == "max_order_notional"
    assert no_price.violation is not None and no_price.violation.code == "NO_REFERENCE_PRICE"


def test_a_replace_check_of_an_order_waiting_on_nothing_is_stale(store: FakeStore, risk: FakeRiskTables) -> None:
    assert stale_replace_reason(store.order(open_order(store)), "R-1") == "no longer pending"


def test_orders_and_replaces_are_valued_at_a_fresh_feed_price(store: FakeStore, risk: FakeRiskTables) -> None:
    risk.feed["AAPL"] = FeedPrice("AAPL", D("200.00"), datetime.now(UTC))
    order_id, check = book(store, type="MARKET", price=None, quantity=D("10"))
    run_batch(store, SPEC, check)
    assert store.events_of(order_id)[-1].payload["reference_price"]["price"] == D("200.00")
    open_id = open_order(store)
    with store.unit_of_work() as uow:
        order = uow.orders.get(open_id, for_update=True)
        assert order is not None
        decision = check_replace_terms(uow, order, D("120"), D("190.00"), None)
        uow.rollback()
    assert decision.violation is None and decision.quote is not None and decision.quote.price == D("200.00")


def open_stop_order(store: FakeStore, stop_price: Decimal) -> str:
    """A STOP buy of 100 AAPL at the venue (OPEN): valued at its stop price, having no limit price."""
    order_id, check = book(store, type="STOP", price=None, stop_price=stop_price)
    return to_the_venue(store, order_id, check)


def to_the_venue(store: FakeStore, order_id: str, check: Envelope) -> str:
    """Approve a booked order of 100, route it and have the venue acknowledge it (OPEN)."""
    run_batch(store, SPEC, check)
    now = datetime.now(UTC)
    with store.unit_of_work() as uow:
        order = uow.orders.get(order_id, for_update=True)
        assert order is not None
        order.mark_routed(str(uuid.uuid4()), now)
        ack = execution_report(order_id, ExecType.NEW, broker_order_id="B-1", cum_qty=D(0), leaves_qty=D(100))
        order.apply_report(ack, now)
        uow.orders.save(order, correlation_id=None, message_id=None)
        uow.commit()
    return order_id


def modify_stop(store: FakeStore, order_id: str, stop_price: Decimal) -> Envelope:
    with store.unit_of_work() as uow:
        modify_order(uow, order_id, quantity=D("100"), price=None, stop_price=stop_price, notes=None, user_id=None)
        [check] = sent(uow.commit(), RISK_CHECK)
    return delivered(SPEC, check)


def test_a_replace_of_a_stop_order_is_valued_at_its_new_stop_price(store: FakeStore, risk: FakeRiskTables) -> None:
    # 100 at a stop of 300 is over the notional limit; at the old stop (150) or the reference (190) it is not.
    risk.set_limits("ACC-001", max_order_notional=D("25000"))
    refused, approved = open_stop_order(store, D("150")), open_stop_order(store, D("150"))
    run_batch(store, SPEC, modify_stop(store, refused, D("300")))
    assert store.requests_of(refused)[-1].reason == (
        "MAX_NOTIONAL_EXCEEDED: notional 30000 (100 at 300) exceeds the maximum order notional 25000"
    )
    gate = RecordingGate()
    run_batch(store, with_settings(None, gate), modify_stop(store, approved, D("200")))
    [(_, proposed, _)] = gate.asked
    assert (proposed.price, proposed.stop_price) == (None, D("200"))
    with store.unit_of_work() as uow:
        order = uow.orders.get(approved, for_update=True)
        assert order is not None
        too_dear = check_replace_terms(uow, order, D("100"), None, D("300"))
        uow.rollback()
    assert too_dear.violation is not None and too_dear.violation.figures["price"] == D("300")


def test_a_replace_counts_the_order_at_its_new_terms_instead_of_the_old(store: FakeStore, risk: FakeRiskTables) -> None:
    # The open order's 100 at 190 (19000) leaves 6000 of 25000 unless the replace takes its place: 120 at 190 fits.
    store.add_account("ACC-CASH", account_type="CASH", cash_balance=D("25000"))
    order_id = to_the_venue(store, *book(store, account_id="ACC-CASH"))
    run_batch(store, SPEC, request_replace(store, order_id, D("120")))
    assert store.requests_of(order_id)[-1].status == REQUEST_PENDING  # approved: the router sends it


def test_a_market_buy_approved_in_a_batch_counts_at_its_price_for_the_next(
    store: FakeStore, risk: FakeRiskTables
) -> None:
    # Two MARKET buys of 100 at the reference price (190): 19000 each, and the cash account can spend 25000.
    store.add_account("ACC-CASH", account_type="CASH", cash_balance=D("25000"))
    first, check_first = book(store, account_id="ACC-CASH", type="MARKET", price=None)
    second, check_second = book(store, account_id="ACC-CASH", type="MARKET", price=None)
    run_batch(store, SPEC, check_first, check_second)
    assert store.order(first).state is OrderState.APPROVED
    assert store.order(second).rejection_code == "INSUFFICIENT_BUYING_POWER"
