"""The Risk Analysis Service client against the stub service: one call per batch, the contract, retries of
transient failures only, timeouts, fail-closed answers, and the circuit breaker opening and closing where the
metrics and the log can see it. Then the gate's handler with the service on the in-memory store, and the settings.

The stub is a real HTTP server on a local port (tests/support/risk_service_stub.py); waits poll with a deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client import REGISTRY

from common import jsonutil
from common.domain import OrderState
from common.messages.catalogue import ROUTE_REPLACE
from common.orders.records import REQUEST_REJECTED
from common.runtime.stage import StageSpec
from common.settings import ConfigurationError, RiskSettings, Settings
from services.risk_gate.assessments import RiskServiceGate, reviewed
from services.risk_gate.risk_service import (
    CIRCUIT_OPEN,
    AssessmentItem,
    RiskServiceClient,
    RiskServiceConfig,
    Verdict,
)
from services.risk_gate.rules import RiskCode, RiskDecision
from services.risk_gate.spec import SPEC, stage_spec
from tests.support.fake_risk import FakeRiskTables, provide_risk_store
from tests.support.fake_stages import run_batch, sent
from tests.support.fake_store import FakeStore
from tests.support.polling import wait_until
from tests.support.risk_service_stub import RiskServiceStub, free_port, running_stub
from tests.unit.test_risk_gate_handlers import book, open_order, request_replace

D = Decimal


def item(order_id: str = "O-1", symbol: str = "AAPL", request_id: str | None = None) -> AssessmentItem:
    return AssessmentItem(
        order_id=order_id,
        request_id=request_id,
        account_id="ACC-001",
        symbol=symbol,
        side="BUY",
        type="LIMIT",
        quantity=D("100"),
        price=D("190.50"),
        notional=D("19050.00"),
    )


def config(url: str, **changes: object) -> RiskServiceConfig:
    values: dict[str, object] = {
        "url": url,
        "timeout_seconds": 1.0,
        "retries": 2,
        "breaker_failures": 2,
        "breaker_reset_seconds": 0.3,
    }
    values.update(changes)
    return RiskServiceConfig(**values)  # type: ignore[arg-type]


class Sleeps:
    """The retries' back-off, recorded instead of slept (the tests need not wait it out)."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.seen.append(seconds)


@pytest.fixture
def stub() -> Iterator[RiskServiceStub]:
    with running_stub(token="s3cret") as running:
        yield running


def client_for(stub: RiskServiceStub, sleeps: Sleeps | None = None, **changes: Any) -> RiskServiceClient:
    return RiskServiceClient(config(stub.url, token=stub.token, **changes), sleep=sleeps or Sleeps())


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def transitions(before: str, after: str) -> float:
    return metric("oms_risk_service_breaker_transitions_total", from_state=before, to_state=after)


# --------------------------------------------------------------------------- one call, the contract


def test_a_batch_is_one_call_with_the_contract_s_body_and_the_token(stub: RiskServiceStub) -> None:
    client = client_for(stub)
    answers = client.assess([item("O-1"), item("O-2", request_id="R-2"), item("O-3")])

    assert stub.calls() == 1
    assert stub.auth_headers == ["Bearer s3cret"]
    [batch] = stub.batches
    assert batch["batchId"]
    assert batch["orders"][1] == {
        "orderId": "O-2",
        "requestId": "R-2",
        "accountId": "ACC-001",
        "symbol": "AAPL",
        "side": "BUY",
        "type": "LIMIT",
        "quantity": "100",
        "price": "190.5",
        "notional": "19050",
    }
    assert answers.unavailable is None
    assert answers.verdict(("O-2", "R-2")) == Verdict(True, "")
    assert answers.verdict(("O-2", None)) is None  # a result is matched by order and request


def test_the_symbols_the_service_rejects_carry_its_reason(stub: RiskServiceStub) -> None:
    stub.answer(reject={"MSFT"})
    answers = client_for(stub).assess([item("O-1"), item("O-2", symbol="MSFT")])
    assert answers.verdict(("O-1", None)) == Verdict(True, "")
    assert answers.verdict(("O-2", None)) == Verdict(False, "MSFT is on the stub's reject list")


def test_an_empty_batch_asks_nothing(stub: RiskServiceStub) -> None:
    assert client_for(stub).assess([]).unavailable is None
    assert stub.calls() == 0


# --------------------------------------------------------------------------- failures: retried or not, closed


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_transient_errors_are_retried_with_back_off_then_fail_closed(stub: RiskServiceStub, status: int) -> None:
    stub.answer(status=status)
    sleeps = Sleeps()
    answers = client_for(stub, sleeps, retries=2, breaker_failures=5).assess([item()])

    assert stub.calls() == 3
    assert len(sleeps.seen) == 2 and all(s > 0 for s in sleeps.seen)
    assert answers.unavailable == f"risk analysis service unavailable: HTTP {status} (3 attempts)"
    assert answers.verdict(("O-1", None)) == Verdict(False, answers.unavailable, unavailable=True)
    assert answers.verdict(("O-unknown", None)) is not None  # nothing is approved, whatever is asked


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_a_client_error_is_not_retried(stub: RiskServiceStub, status: int) -> None:
    stub.answer(status=status)
    answers = client_for(stub, breaker_failures=5).assess([item()])
    assert stub.calls() == 1
    assert answers.unavailable == f"risk analysis service unavailable: HTTP {status}"


def test_a_wrong_token_is_refused_and_not_retried(stub: RiskServiceStub) -> None:
    client = RiskServiceClient(config(stub.url, token="wrong"), sleep=Sleeps())
    assert client.assess([item()]).unavailable == "risk analysis service unavailable: HTTP 401"
    assert stub.calls() == 1 and stub.auth_headers == ["Bearer wrong"]


def test_a_service_that_hangs_is_given_up_on_at_the_timeout(stub: RiskServiceStub) -> None:
    stub.answer(hang=True)
    started = time.monotonic()
    answers = client_for(stub, timeout_seconds=0.2, retries=1, breaker_failures=5).assess([item()])
    elapsed = time.monotonic() - started
    stub.answer()  # let the hung handlers go

    assert answers.unavailable == "risk analysis service unavailable: no answer within 0.2s (2 attempts)"
    assert 0.4 <= elapsed < 2.0, elapsed


def test_an_unreachable_service_fails_closed_at_once() -> None:
    client = RiskServiceClient(config(f"http://127.0.0.1:{free_port()}", retries=1), sleep=Sleeps())
    answers = client.assess([item()])
    assert answers.unavailable == "risk analysis service unavailable: cannot connect (2 attempts)"


def test_an_answer_without_every_order_breaks_the_contract_and_approves_none(stub: RiskServiceStub) -> None:
    stub.answer(omit={"O-2"})
    answers = client_for(stub, breaker_failures=5).assess([item("O-1"), item("O-2")])
    assert stub.calls() == 1  # not retried: the same question gets the same answer
    assert (
        answers.unavailable
        == "risk analysis service unavailable: invalid answer: no result for 1 of the orders (first O-2)"
    )
    assert answers.verdict(("O-1", None)) == Verdict(False, answers.unavailable, unavailable=True)


class Answering(requests.Session):
    """A session whose every POST gets the same 200 answer (answers the stub would never give)."""

    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body
        self.posts = 0

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        self.posts += 1
        response = requests.Response()
        response.status_code = 200
        response._content = self.body
        return response


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>proxy error</html>", "not JSON"),
        (b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b', "results": []}', "not JSON"),  # too deep to parse
        (b'{"verdicts": []}', "Object missing required field `results`"),
        (b'{"results": [{"orderId": "O-1", "decision": "MAYBE"}]}', "Invalid enum value 'MAYBE'"),
        (b'{"results": [{"orderId": 7, "decision": "APPROVE"}]}', "Expected `str`, got `int`"),
    ],
)
def test_an_answer_that_breaks_the_contract_approves_nothing_and_is_not_retried(body: bytes, why: str) -> None:
    session = Answering(body)
    client = RiskServiceClient(config("http://risk.test"), session=session, sleep=Sleeps())
    answers = client.assess([item("O-1")])
    assert session.posts == 1
    assert answers.unavailable is not None
    assert answers.unavailable.startswith(f"risk analysis service unavailable: invalid answer: {why}")
    assert answers.verdict(("O-1", None)) == Verdict(False, answers.unavailable, unavailable=True)


def test_a_reason_is_kept_printable_and_short() -> None:
    reason = "desk\u0000 limit " + "x" * 1000
    body = jsonutil.dumps_bytes({"results": [{"orderId": "O-1", "decision": "REJECT", "reason": reason}]})
    verdict = (
        RiskServiceClient(config("http://risk.test"), session=Answering(body)).assess([item()]).verdict(("O-1", None))
    )
    assert verdict is not None and not verdict.approved
    assert verdict.reason.startswith("desk limit xxx") and len(verdict.reason) == 300


# --------------------------------------------------------------------------- the breaker


def test_the_breaker_opens_after_failed_batches_short_circuits_and_closes_when_the_service_returns(
    stub: RiskServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.risk_gate.risk_service")
    client = client_for(stub, retries=1, breaker_failures=2, breaker_reset_seconds=0.3)
    opened, half_opened, closed = (
        transitions("closed", "open"),
        transitions("open", "half-open"),
        transitions("half-open", "closed"),
    )
    short_circuited = metric("oms_risk_service_calls_total", outcome="short_circuited")
    assert client.assess([item()]).unavailable is None
    assert (client.state, metric("oms_risk_service_breaker_state")) == ("closed", 0)

    stub.stop()
    first = client.assess([item()])
    assert first.unavailable == "risk analysis service unavailable: cannot connect (2 attempts)"
    assert client.state == "closed"  # one failed batch: under the threshold
    second = client.assess([item()])
    assert second.unavailable == "risk analysis service unavailable: cannot connect (2 attempts)"
    assert (client.state, metric("oms_risk_service_breaker_state")) == ("open", 2)
    assert transitions("closed", "open") == opened + 1

    # Open: rejected at once, without a call.
    started = time.monotonic()
    assert client.assess([item()]).unavailable == CIRCUIT_OPEN == "risk analysis service unavailable: circuit open"
    assert time.monotonic() - started < 0.05
    assert metric("oms_risk_service_calls_total", outcome="short_circuited") == short_circuited + 1

    stub.start()  # same port
    calls = stub.calls()
    # The first batch after the reset timeout is the trial call; until then batches are short-circuited.
    wait_until(lambda: client.assess([item()]).unavailable is None, timeout=5, message="the breaker closed")
    assert stub.calls() == calls + 1
    assert (client.state, metric("oms_risk_service_breaker_state")) == ("closed", 0)
    assert transitions("open", "half-open") == half_opened + 1
    assert transitions("half-open", "closed") == closed + 1

    lines = [
        (r.getMessage(), r.__dict__["from_state"], r.__dict__["to_state"])
        for r in caplog.records
        if hasattr(r, "to_state")
    ]
    assert lines == [
        ("risk analysis service circuit breaker open", "closed", "open"),
        ("risk analysis service circuit breaker half-open", "open", "half-open"),
        ("risk analysis service circuit breaker closed", "half-open", "closed"),
    ]
    opened_line = next(r for r in caplog.records if getattr(r, "to_state", None) == "open")
    assert (opened_line.levelname, opened_line.breaker, opened_line.url) == (  # type: ignore[attr-defined]
        "WARNING",
        "risk_service",
        f"{stub.url}/v1/assessments",
    )


def test_a_failed_trial_call_opens_the_breaker_again(stub: RiskServiceStub) -> None:
    client = client_for(stub, retries=0, breaker_failures=1, breaker_reset_seconds=0.2)
    stub.answer(status=503)
    client.assess([item()])
    assert client.state == "open"
    reopened = transitions("half-open", "open")
    calls = stub.calls()

    def trial_made() -> bool:
        client.assess([item()])  # short-circuited until the reset timeout has passed
        return stub.calls() > calls

    wait_until(trial_made, timeout=5, message="a trial call")
    assert client.state == "open"
    assert transitions("half-open", "open") == reopened + 1


# --------------------------------------------------------------------------- the gate's handler with the service


@pytest.fixture
def store() -> FakeStore:
    return FakeStore.with_demo_data()


@pytest.fixture
def risk(store: FakeStore) -> FakeRiskTables:
    return provide_risk_store(store)


def gate_spec(stub: RiskServiceStub, **changes: Any) -> StageSpec:
    return stage_spec(Settings(risk=RiskSettings()), risk_service=RiskServiceGate(client_for(stub, **changes)))


def test_an_order_the_rules_and_the_service_approve_is_approved(
    store: FakeStore, risk: FakeRiskTables, stub: RiskServiceStub
) -> None:
    spec = gate_spec(stub)
    order_id, check = book(store)
    run_batch(store, spec, check)

    order = store.order(order_id)
    assert order.state is OrderState.APPROVED
    assert store.events_of(order_id)[-1].payload["checks"][-1] == "risk_service"
    assert stub.order_ids() == [order_id]


def test_an_order_the_service_rejects_is_rejected_with_its_reason(
    store: FakeStore, risk: FakeRiskTables, stub: RiskServiceStub
) -> None:
    stub.answer(reject={"AAPL"})
    spec = gate_spec(stub)
    order_id, check = book(store)
    run_batch(store, spec, check)

    order = store.order(order_id)
    assert (order.state, order.rejection_code) == (OrderState.REJECTED, RiskCode.RISK_SERVICE_REJECTED)
    assert order.rejection_reason == "rejected by the risk analysis service: AAPL is on the stub's reject list"


def test_while_the_service_is_down_no_order_is_approved(
    store: FakeStore, risk: FakeRiskTables, stub: RiskServiceStub
) -> None:
    stub.stop()
    spec = gate_spec(stub, retries=0, breaker_failures=1)
    first, check_first = book(store)
    second, check_second = book(store, quantity=D("7"))
    run_batch(store, spec, check_first)
    run_batch(store, spec, check_second)

    assert [(store.order(o).state, store.order(o).rejection_code) for o in (first, second)] == [
        (OrderState.REJECTED, RiskCode.RISK_SERVICE_UNAVAILABLE)
    ] * 2
    assert store.order(first).rejection_reason == "risk analysis service unavailable: cannot connect"
    assert store.order(second).rejection_reason == "risk analysis service unavailable: circuit open"


def test_a_rule_s_rejection_stands_and_the_service_is_not_asked_alone(
    store: FakeStore, risk: FakeRiskTables, stub: RiskServiceStub
) -> None:
    spec = gate_spec(stub)
    order_id, check = book(store, quantity=D("1000001"), price=D("0.01"))
    run_batch(store, spec, check)
    assert store.order(order_id).rejection_code == "MAX_ORDER_QUANTITY_EXCEEDED"
    assert stub.calls() == 0


def test_a_replace_the_service_refuses_never_reaches_the_venue_and_one_it_approves_does(
    store: FakeStore, risk: FakeRiskTables, stub: RiskServiceStub
) -> None:
    spec = gate_spec(stub)
    stub.answer(reject={"AAPL"})
    order_id = open_order(store)
    check = request_replace(store, order_id, D("150"))
    assert sent(run_batch(store, spec, check), ROUTE_REPLACE) == []
    [refused] = store.requests_of(order_id)
    assert (refused.status, refused.reason) == (
        REQUEST_REJECTED,
        "RISK_SERVICE_REJECTED: rejected by the risk analysis service: AAPL is on the stub's reject list",
    )
    assert (store.order(order_id).state, store.order(order_id).pending_request) == (OrderState.OPEN, None)
    [batch] = stub.batches
    assert (batch["orders"][0]["requestId"], batch["orders"][0]["quantity"]) == (refused.request_id, "150")

    stub.answer()
    again = request_replace(store, order_id, D("120"))
    assert len(sent(run_batch(store, spec, again), ROUTE_REPLACE)) == 1


def test_reviewed_keeps_the_rules_checks_and_adds_the_service_s() -> None:
    approved = RiskDecision(["account_active"], None)
    assert reviewed(approved, Verdict(True, "")).checks == ["account_active", "risk_service"]
    refused = reviewed(approved, Verdict(False, "limit breached at the desk"))
    assert refused.violation is not None
    assert (refused.violation.rule, refused.violation.code, refused.violation.message) == (
        "risk_service",
        "RISK_SERVICE_REJECTED",
        "rejected by the risk analysis service: limit breached at the desk",
    )
    down = reviewed(approved, Verdict(False, CIRCUIT_OPEN, unavailable=True))
    assert down.violation is not None and (down.violation.code, down.violation.message) == (
        "RISK_SERVICE_UNAVAILABLE",
        CIRCUIT_OPEN,
    )


# --------------------------------------------------------------------------- settings and wiring


def test_the_service_is_off_by_default_and_the_stage_has_no_hook() -> None:
    risk = RiskSettings()
    assert risk.service_enabled is False
    assert stage_spec(Settings(risk=risk)).before_transaction is None
    assert SPEC.before_transaction is None


def test_enabled_the_stage_asks_before_its_transaction_with_the_token_from_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tok-123\n")
    monkeypatch.setenv("OMS_RISK_SERVICE_ENABLED", "true")
    monkeypatch.setenv("OMS_RISK_SERVICE_URL", "http://risk.internal:9000/")
    monkeypatch.setenv("OMS_RISK_SERVICE_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("OMS_RISK_SERVICE_BREAKER_FAILURES", "4")
    settings = Settings()
    spec = stage_spec(settings)
    assert spec.before_transaction is not None
    gate = spec.before_transaction.__self__  # type: ignore[attr-defined]
    assert isinstance(gate, RiskServiceGate)
    assert gate.client.config.assessments_url == "http://risk.internal:9000/v1/assessments"
    assert gate.client.config.token == "tok-123"
    assert gate.client.breaker.fail_max == 4


def test_a_missing_or_empty_token_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="OMS_RISK_SERVICE_TOKEN_FILE: cannot read"):
        RiskServiceConfig.of(RiskSettings(service_enabled=True, service_token_file=tmp_path / "none"))
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(ConfigurationError, match="is empty"):
        RiskServiceConfig.of(RiskSettings(service_enabled=True, service_token_file=tmp_path / "empty"))


def test_a_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="must start with http"):
        RiskSettings(service_url="ftp://risk")


def test_an_https_service_is_checked_against_the_configured_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("a CA certificate")
    client = RiskServiceClient(RiskServiceConfig(url="https://risk.internal:8443", ca_file=ca))
    assert client.session.verify == str(ca)
    # Without one, the system's trust store (requests' default), never the environment's REQUESTS_CA_BUNDLE.
    plain = RiskServiceClient(RiskServiceConfig(url="https://risk.internal:8443"))
    assert plain.session.verify is True and plain.session.trust_env is False
