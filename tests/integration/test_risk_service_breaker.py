"""The risk gate with the Risk Analysis Service on the real broker and database: the stage worker as the process
builds it (``stage_spec`` from settings with the service enabled), consuming its queue on a vhost of its own,
the stub service of tests/support/risk_service_stub.py in a thread.

What it shows: a batch is one call, made before the transaction; the service's refusals reject with its reason;
with the service down the breaker opens and every order is REJECTED saying why (fail closed, nothing reaches the
router); when the service is back the breaker closes and orders are approved again. Every wait polls with a
deadline.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from aio_pika.abc import AbstractRobustConnection
from prometheus_client import REGISTRY
from sqlalchemy import Engine, text

from common.contracts import RiskCheckSchema
from common.messages.exchanges import OMS_EXCHANGE
from common.messaging.connection import connect
from common.messaging.publisher import Publisher
from common.orders.commands import modify_order
from common.runtime.stage import StageWorker
from common.settings import InfraSettings, RiskSettings, Settings, StageSettings
from common.store.outbox import OutboxMessage
from common.store.uow import UnitOfWork
from services.risk_gate.assessments import RiskServiceGate
from services.risk_gate.risk_service import RiskServiceClient, RiskServiceConfig
from services.risk_gate.spec import stage_spec
from tests.support import outages
from tests.support.api import new_account, private_vhost, store_order
from tests.support.orders import envelope_of, order_row, outbox_of, request_row, risk_check, submit_new
from tests.support.polling import async_wait_until
from tests.support.risk_service_stub import RiskServiceStub
from tools.sandbox import consumers_ready

if TYPE_CHECKING:
    from tools.infra import InfraUrls

pytestmark = pytest.mark.integration

FINAL = ("APPROVED", "REJECTED")
UNAVAILABLE = "RISK_SERVICE_UNAVAILABLE"
CIRCUIT_OPEN = "risk analysis service unavailable: circuit open"
CANNOT_CONNECT = "risk analysis service unavailable: cannot connect (2 attempts)"


@pytest.fixture(scope="module")
def vhost_url(infra_urls: InfraUrls, amqp_url: str) -> Iterator[str]:
    if not infra_urls.management_url:
        pytest.skip("needs the RabbitMQ management API")
    with private_vhost(infra_urls, amqp_url) as url:
        yield url


@dataclass
class Gate:
    """The running risk gate, its service stub, and what the test sends checks with."""

    engine: Engine
    stub: RiskServiceStub
    service: RiskServiceGate
    publisher: Publisher
    account: str

    @property
    def breaker(self) -> str:
        return self.service.client.state

    async def check(self, count: int = 1, **order: Any) -> list[str]:
        """Book ``count`` orders and publish their RiskChecks together; their ids."""
        booked = [submit_new(self.engine, account_id=self.account, **order) for _ in range(count)]
        messages = [
            OutboxMessage.json(OMS_EXCHANGE, "risk.check", "RiskCheck", {"orderId": oid, "version": v}, oid)
            for oid, v in booked
        ]
        confirmed = await self.publisher.publish(messages)
        assert len(confirmed) == count
        return [oid for oid, _ in booked]

    async def decided(self, order_ids: list[str]) -> list[dict[str, Any]]:
        """The orders once the gate has decided each (a deadline, not a sleep)."""

        def rows() -> list[dict[str, Any]] | None:
            found = [order_row(self.engine, oid) for oid in order_ids]
            return found if all(r["state"] in FINAL for r in found) else None

        result: list[dict[str, Any]] = await async_wait_until(rows, timeout=30, message="the gate decided")
        return result


@pytest.fixture
async def gate(engine: Engine, database_url: str, vhost_url: str, infra_urls: InfraUrls) -> AsyncIterator[Gate]:
    stub = RiskServiceStub().start()
    settings = Settings(
        infra=InfraSettings(database_url=database_url, amqp_url=vhost_url),
        # A linger, so checks published together are handled as one batch.
        stage=StageSettings(batch_linger_ms=300),
        risk=RiskSettings(
            service_enabled=True,
            service_url=stub.url,
            service_timeout_seconds=0.3,
            service_retries=1,
            service_breaker_failures=2,
            service_breaker_reset_seconds=1.0,
        ),
    )
    spec = replace(stage_spec(settings), companions=())  # the price feed plays no part here
    assert spec.before_transaction is not None
    service = spec.before_transaction.__self__  # type: ignore[attr-defined]
    assert isinstance(service, RiskServiceGate)
    worker = StageWorker(spec, settings, engine)
    task = asyncio.create_task(worker.run())
    connection: AbstractRobustConnection = await connect(vhost_url, f"oms.test-risk-{uuid.uuid4().hex[:6]}")
    try:
        missing = await asyncio.to_thread(
            consumers_ready, infra_urls.management_url, outages.vhost_of(vhost_url), ["oms.risk_gate"], 30
        )
        assert not missing, "the risk gate did not start consuming"
        yield Gate(engine, stub, service, Publisher(connection), new_account(engine))
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
        await connection.close()
        service.client.close()
        stub.stop()


def breaker_metric() -> float | None:
    return REGISTRY.get_sample_value("oms_risk_service_breaker_state")


def transitions(before: str, after: str) -> float:
    labels = {"from_state": before, "to_state": after}
    return REGISTRY.get_sample_value("oms_risk_service_breaker_transitions_total", labels) or 0.0


async def test_a_batch_is_one_call_and_the_service_s_refusal_rejects_with_its_reason(gate: Gate) -> None:
    approved = await gate.check(3)
    rows = await gate.decided(approved)
    assert [r["state"] for r in rows] == ["APPROVED"] * 3
    # The three checks were one batch, put to the service in one call before the transaction.
    assert [sorted(item["orderId"] for item in b["orders"]) for b in gate.stub.batches] == [sorted(approved)]
    assert all(outbox_of(gate.engine, oid, "router.new") for oid in approved)

    gate.stub.answer(reject={"MSFT"})
    [refused] = await gate.check(symbol="MSFT", price=Decimal("400"))
    [row] = await gate.decided([refused])
    assert (row["state"], row["rejection_code"]) == ("REJECTED", "RISK_SERVICE_REJECTED")
    assert row["rejection_reason"] == "rejected by the risk analysis service: MSFT is on the stub's reject list"
    assert outbox_of(gate.engine, refused, "router.new") == []


async def test_with_the_service_down_the_breaker_opens_and_orders_are_rejected_until_it_returns(
    gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.risk_gate.risk_service")
    opened, closed = transitions("closed", "open"), transitions("half-open", "closed")
    [before] = await gate.check()
    assert [r["state"] for r in await gate.decided([before])] == ["APPROVED"]
    assert (gate.breaker, breaker_metric()) == ("closed", 0)

    gate.stub.stop()
    down: list[str] = []
    # Two failed batches (threshold 2), each after its retry: rejected with the error itself.
    for _ in range(2):
        ids = await gate.check()
        down += ids
        [row] = await gate.decided(ids)
        assert (row["state"], row["rejection_code"], row["rejection_reason"]) == (
            "REJECTED",
            UNAVAILABLE,
            CANNOT_CONNECT,
        )
    assert (gate.breaker, breaker_metric()) == ("open", 2)
    assert transitions("closed", "open") == opened + 1
    # Open: a whole batch is rejected at once, without a call, saying the circuit is open.
    ids = await gate.check(3)
    down += ids
    rows = await gate.decided(ids)
    assert {(r["state"], r["rejection_code"], r["rejection_reason"]) for r in rows} == {
        ("REJECTED", UNAVAILABLE, CIRCUIT_OPEN)
    }
    assert gate.stub.calls() == 1  # the call before the outage: none since reached it

    gate.stub.start()  # back, on the same port
    tried: list[str] = []

    async def approved_again() -> bool:
        # Each try is an order: rejected (circuit open) until the reset timeout has passed, and then the trial
        # call of the half-open breaker approves it and closes the breaker.
        ids = await gate.check()
        tried.extend(ids)
        [row] = await gate.decided(ids)
        return bool(row["state"] == "APPROVED")

    await async_wait_until(approved_again, timeout=20, interval=0.2, message="an order approved again")
    assert (gate.breaker, breaker_metric()) == ("closed", 0)
    assert transitions("half-open", "closed") == closed + 1
    refused_meanwhile = [order_row(gate.engine, oid) for oid in tried[:-1]]
    assert all(r["rejection_reason"] == CIRCUIT_OPEN for r in refused_meanwhile)

    # Fail closed: nothing sent while the service was away reached the router.
    assert [oid for oid in down + tried[:-1] if outbox_of(gate.engine, oid, "router.new")] == []
    [after] = await gate.check()
    assert [r["state"] for r in await gate.decided([after])] == ["APPROVED"]

    changes = [(r.levelname, r.getMessage()) for r in caplog.records if hasattr(r, "to_state")]
    assert changes == [
        ("WARNING", "risk analysis service circuit breaker open"),
        ("INFO", "risk analysis service circuit breaker half-open"),
        ("INFO", "risk analysis service circuit breaker closed"),
    ]
    print(
        f"risk service breaker: {len(down)} orders rejected while down "
        f"(2 '{CANNOT_CONNECT}', 3 '{CIRCUIT_OPEN}'), {len(tried) - 1} more while open after its return, "
        f"then approved; transitions {[c[1].rsplit(' ', 1)[1] for c in changes]}"
    )


def test_the_read_before_the_transaction_sends_a_replace_s_new_terms_and_leaves_stale_checks_out(
    engine: Engine, database_url: str
) -> None:
    """``before_transaction``'s one statement on Postgres: a new MARKET order valued at the reference price, a
    replace with its request id and new quantity, and a check of an order no longer NEW not asked about."""
    account = new_account(engine)
    market_id, market_version = submit_new(engine, account_id=account, type="MARKET", price=None)
    at_venue = store_order(engine, account, status="OPEN")
    with UnitOfWork(engine) as uow:
        modify_order(uow, at_venue, quantity=Decimal("120"), price=None, stop_price=None, notes=None, user_id="t")
        uow.commit()
    replace_row = outbox_of(engine, at_venue, "risk.check")[-1]
    replace_check = envelope_of(replace_row, RiskCheckSchema().load(replace_row["body"]))
    stale_id = store_order(engine, account, status="OPEN")  # not NEW: a check of it is stale

    stub = RiskServiceStub().start()
    try:
        service = RiskServiceGate(RiskServiceClient(RiskServiceConfig(url=stub.url)))
        settings = Settings(infra=InfraSettings(database_url=database_url))
        spec = stage_spec(settings, risk_service=service)
        outcome = StageWorker(spec, settings, engine).process(
            [risk_check(market_id, market_version), replace_check, risk_check(stale_id, 2)]
        )
        assert not outcome.failed and not outcome.dead, outcome
        [batch] = stub.batches
    finally:
        stub.stop()
    sent = {item["orderId"]: item for item in batch["orders"]}
    assert set(sent) == {market_id, at_venue}
    with engine.connect() as connection:  # the latest feed price, else the instrument's (190 for AAPL)
        reference = connection.execute(
            text(
                "SELECT COALESCE((SELECT price FROM reference_prices WHERE symbol = 'AAPL'),"
                " (SELECT reference_price FROM instruments WHERE symbol = 'AAPL'))"
            )
        ).scalar_one()
    assert (sent[market_id]["type"], sent[market_id]["price"]) == ("MARKET", None)
    assert Decimal(sent[market_id]["notional"]) == 100 * reference
    replace_sent = sent[at_venue]
    assert (replace_sent["requestId"], replace_sent["quantity"], replace_sent["price"], replace_sent["notional"]) == (
        replace_check.body["request_id"],
        "120",  # the new quantity, at the limit price the request keeps
        "190",
        "22800",
    )
    assert order_row(engine, market_id)["state"] == "APPROVED"
    assert request_row(engine, replace_check.body["request_id"])["status"] == "PENDING"  # approved: on to the router
    assert outbox_of(engine, at_venue, "router.replace")
