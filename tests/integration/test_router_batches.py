"""The router on batches: what a batch costs in statements, and that batching changes nothing of what it sends."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import Engine

from common.contracts import CancelRequestSchema, RouteCancelSchema
from common.domain import ExecType
from common.messaging.envelope import Envelope
from common.orders.commands import cancel_order
from common.runtime.stage import StageWorker
from common.settings import InfraSettings, Settings
from common.store.uow import UnitOfWork
from services.router.spec import SPEC
from tests.support.db import statements
from tests.support.orders import (
    apply_report,
    create_order,
    envelope_of,
    order_row,
    outbox_of,
    requests_of,
    store,
)

pytestmark = pytest.mark.integration

D = Decimal


@pytest.fixture
def worker(engine: Engine, database_url: str) -> StageWorker:
    return StageWorker(SPEC, Settings(infra=InfraSettings(database_url=database_url)), engine)


def touching(sent: list[str], table: str) -> list[str]:
    return [s for s in sent if f" {table} " in s]


def approved(engine: Engine) -> str:
    now = datetime.now(UTC)
    order = create_order(now=now)
    order.approve(["test"], now)
    return store(engine, order)


def route_new(order_id: str) -> Envelope:
    return Envelope(
        message_id=str(uuid.uuid4()),
        routing_key="router.new",
        body={"order_id": order_id},
        correlation_id=order_id,
        type="RouteNew",
    )


def process(worker: StageWorker, envelopes: list[Envelope]) -> None:
    outcome = worker.process(envelopes)
    assert not outcome.failed and not outcome.dead, (outcome.failed, outcome.dead)


def route_batch(engine: Engine, worker: StageWorker, size: int) -> tuple[list[str], list[str]]:
    """Route ``size`` approved orders in one batch: the order ids and what the batch sent."""
    orders = [approved(engine) for _ in range(size)]
    with statements(engine) as sent:
        process(worker, [route_new(o) for o in orders])
    for order_id in orders:
        [request] = requests_of(engine, order_id)
        assert (request["kind"], request["status"]) == ("NEW", "SENT")
        [sent_new] = outbox_of(engine, order_id, "orders.new")
        assert sent_new["body"]["requestId"] == request["request_id"]
        assert order_row(engine, order_id)["state"] == "ROUTED"
    return orders, sent


def cancel_batch(engine: Engine, worker: StageWorker, orders: list[str]) -> list[str]:
    """Cancel the (routed) orders and route the cancels in one batch: what the batch sent."""
    for order_id in orders:
        apply_report(engine, order_id, ExecType.NEW, cum_qty=D(0), leaves_qty=D(100), broker_order_id="B-1")
        with UnitOfWork(engine) as uow:
            cancel_order(uow, order_id, reason="risk off", user_id="trader-3")
            uow.commit()
    routes = [outbox_of(engine, o, "router.cancel")[0] for o in orders]
    with statements(engine) as sent:
        process(worker, [envelope_of(r, RouteCancelSchema().load(r["body"])) for r in routes])
    for order_id in orders:
        cancel = requests_of(engine, order_id)[-1]
        assert (cancel["kind"], cancel["status"], cancel["reason"]) == ("CANCEL", "SENT", "risk off")
        [sent_cancel] = outbox_of(engine, order_id, "orders.cancel")
        assert CancelRequestSchema().load(sent_cancel["body"])["request_id"] == cancel["request_id"]
    return sent


def test_statements_per_batch_do_not_grow_with_the_batch(engine: Engine, worker: StageWorker) -> None:
    small_orders, small = route_batch(engine, worker, 2)
    large_orders, large = route_batch(engine, worker, 25)
    assert len(large) == len(small)
    assert len(touching(large, "order_requests")) == 1, large  # the batch's request rows: one INSERT

    small_cancels = cancel_batch(engine, worker, small_orders)
    large_cancels = cancel_batch(engine, worker, large_orders)
    assert len(large_cancels) == len(small_cancels)
    assert len(touching(large_cancels, "order_requests")) == 2, large_cancels  # locked together, moved together


def test_a_batch_with_the_same_cancel_twice_sends_it_once(engine: Engine, worker: StageWorker) -> None:
    [order_id], _ = route_batch(engine, worker, 1)
    apply_report(engine, order_id, ExecType.NEW, cum_qty=D(0), leaves_qty=D(100), broker_order_id="B-1")
    with UnitOfWork(engine) as uow:
        cancel_order(uow, order_id, reason=None, user_id=None)
        uow.commit()
    [route] = outbox_of(engine, order_id, "router.cancel")
    body = RouteCancelSchema().load(route["body"])
    again = {**route, "message_id": str(uuid.uuid4())}  # the same request, another message: already SENT
    process(worker, [envelope_of(route, body), envelope_of(again, body)])
    assert len(outbox_of(engine, order_id, "orders.cancel")) == 1
    assert requests_of(engine, order_id)[-1]["status"] == "SENT"


def test_a_failed_batch_retried_one_by_one_routes_each_order_once(engine: Engine, worker: StageWorker) -> None:
    orders = [approved(engine) for _ in range(3)]
    missing = str(uuid.uuid4())
    unknown = route_new(missing)
    outcome = worker.process([route_new(orders[0]), unknown, *(route_new(o) for o in orders[1:])])
    assert outcome.dead == {unknown.message_id: f"DeadLetter: unknown order {missing}"}
    for order_id in orders:
        assert len(requests_of(engine, order_id)) == 1
        assert len(outbox_of(engine, order_id, "orders.new")) == 1


def test_no_info_line_per_routed_order(engine: Engine, worker: StageWorker, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="services.router"):
        route_batch(engine, worker, 3)
    ours = [r for r in caplog.records if r.name.startswith("services.router")]
    assert [r.getMessage() for r in ours if r.levelno >= logging.INFO] == []
    assert [r.getMessage() for r in ours] == ["order routed"] * 3
