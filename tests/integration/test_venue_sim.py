"""The simulated venue on a real broker: requests in on ``broker``, execution reports out on ``oms``."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import pytest
import pytest_asyncio
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from sqlalchemy import create_engine, text

from common import jsonutil
from common.contracts import ExecutionReportSchema, NewOrderRequestSchema
from common.messages.exchanges import BROKER_EXCHANGE, MARKETDATA_EXCHANGE, OMS_EXCHANGE
from common.messaging.connection import connect
from common.messaging.publisher import Publisher
from common.messaging.topology import VENUE_QUEUE, declare_exchanges
from common.settings import REPO_ROOT, VenueSettings
from common.store.outbox import OutboxMessage
from services.venue_sim.book import Book, BookRules, BrokerRequest
from services.venue_sim.config import VenueConfig
from services.venue_sim.journal import Entry, Journal, order_from_snapshot, request_key, snapshot
from services.venue_sim.prices import InstrumentSpec, Market
from services.venue_sim.venue import (
    DUPLICATE_REQUESTS,
    VenueSim,
    declare_venue_topology,
    load_instruments,
    report_message,
)
from tests.support import outages
from tests.support.polling import async_wait_until
from tools.seed import seed_demo

INSTRUMENTS = (InstrumentSpec("AAPL", Decimal("190.00"), Decimal("0.01"), Decimal("1")),)
VENUE_TABLES = ("venue_sim_requests", "venue_sim_orders", "venue_sim_outbox", "venue_sim_state")


@dataclass
class Broker:
    """The test's side of the broker: a publisher, and every execution report the venue sent, by order."""

    connection: AbstractRobustConnection
    channel: AbstractChannel
    publisher: Publisher
    reports: dict[str, list[AbstractIncomingMessage]] = field(default_factory=lambda: defaultdict(list))

    def bodies(self, order_id: str) -> list[dict[str, Any]]:
        return [jsonutil.loads(m.body) for m in self.reports[order_id]]

    def exec_types(self, order_id: str) -> list[str]:
        return [b["execType"] for b in self.bodies(order_id)]

    async def send(self, routing_key: str, body: dict[str, Any]) -> None:
        type_ = {"orders.new": "NewOrderRequest", "orders.cancel": "CancelRequest"}[routing_key]
        await self.publisher.publish_json(BROKER_EXCHANGE, routing_key, type_, body, correlation_id=body["orderId"])


@pytest_asyncio.fixture(scope="module")
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    connection = await connect(amqp_url, "test.venue_sim")
    channel = await connection.channel()
    exchanges = await declare_exchanges(channel)
    capture = await channel.declare_queue(exclusive=True)
    await capture.bind(exchanges[OMS_EXCHANGE], routing_key="execution.report")
    broker = Broker(connection, channel, Publisher(connection))

    async def on_report(message: AbstractIncomingMessage) -> None:
        broker.reports[str(message.correlation_id)].append(message)
        await message.ack()

    await capture.consume(on_report)
    try:
        yield broker
    finally:
        await connection.close()


@pytest_asyncio.fixture(scope="module")
async def venue(amqp_url: str, broker: Broker) -> AsyncIterator[VenueSim]:
    config = VenueConfig(
        amqp_url=amqp_url,
        database_url="postgresql+psycopg://unused/unused",  # instruments are given: no database
        instruments=INSTRUMENTS,
        venue=VenueSettings(tick_ms=50),
        declare_pipeline=False,  # leave the shared vhost's stage queues to the stage tests
    )
    venue = VenueSim(config)
    task = asyncio.create_task(venue.run())
    await async_wait_until(lambda: venue.ready.is_set() or task.done(), timeout=30, message="venue ready")
    if task.done():
        task.result()  # raises why it did not start
    try:
        yield venue
    finally:
        venue.stop()
        await asyncio.wait_for(task, 30)


def _new_order(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "orderId": str(uuid.uuid4()),
        "requestId": str(uuid.uuid4()),
        "accountId": "ACC-001",
        "symbol": "AAPL",
        "side": "BUY",
        "type": "MARKET",
        "quantity": Decimal("10"),
        "price": None,
        "stopPrice": None,
        "timeInForce": "DAY",
    }
    body.update(fields)
    return body


async def test_market_order_gets_new_then_fill(venue: VenueSim, broker: Broker) -> None:
    order = _new_order()
    await broker.send("orders.new", order)
    oid = order["orderId"]
    await async_wait_until(lambda: len(broker.reports[oid]) >= 2, message=lambda: f"reports {broker.exec_types(oid)}")

    assert broker.exec_types(oid) == ["NEW", "FILL"]
    messages = broker.reports[oid]
    assert {m.type for m in messages} == {"ExecutionReport"}
    assert {m.correlation_id for m in messages} == {oid}
    assert len({m.message_id for m in messages}) == 2
    ack, fill = (ExecutionReportSchema().load(b) for b in broker.bodies(oid))
    assert ack["execution_id"] != fill["execution_id"]
    assert ack["request_id"] == fill["request_id"] == order["requestId"]
    assert ack["broker_order_id"] == fill["broker_order_id"] is not None
    assert (fill["cum_qty"], fill["leaves_qty"], fill["last_qty"]) == (Decimal("10"), Decimal("0"), Decimal("10"))
    assert fill["last_px"] > 0 and fill["last_px"] % Decimal("0.01") == 0
    assert fill["avg_px"] == fill["last_px"]
    assert fill["fees"] == (Decimal("10") * fill["last_px"] * Decimal("0.0005")).quantize(Decimal("0.01"))
    assert fill["venue"] == "SIM"


async def test_resting_limit_is_only_acknowledged_until_canceled(venue: VenueSim, broker: Broker) -> None:
    order = _new_order(type="LIMIT", price=Decimal("1.00"))  # far below AAPL: never marketable
    oid = order["orderId"]
    await broker.send("orders.new", order)
    await async_wait_until(lambda: broker.exec_types(oid) == ["NEW"], message=lambda: f"{broker.exec_types(oid)}")
    cancel = {**order, "requestId": str(uuid.uuid4())}
    await broker.send("orders.cancel", cancel)
    await async_wait_until(lambda: len(broker.reports[oid]) >= 3, message=lambda: f"{broker.exec_types(oid)}")

    # Reports leave in order, so nothing traded between the acknowledgement and the cancel.
    assert broker.exec_types(oid) == ["NEW", "PENDING_CANCEL", "CANCELED"]
    canceled = broker.bodies(oid)[-1]
    assert canceled["requestId"] == cancel["requestId"]
    assert (canceled["cumQty"], canceled["leavesQty"]) == (0, 0)


async def test_cancel_of_an_unknown_order_is_rejected(venue: VenueSim, broker: Broker) -> None:
    cancel = _new_order()
    await broker.send("orders.cancel", cancel)
    oid = cancel["orderId"]
    await async_wait_until(lambda: broker.reports[oid], message="cancel answer")
    assert broker.exec_types(oid) == ["CANCEL_REJECTED"]
    assert broker.bodies(oid)[0]["reason"] == "unknown order"


async def test_malformed_request_is_dead_lettered_with_the_reason(venue: VenueSim, broker: Broker) -> None:
    message_id = str(uuid.uuid4())
    raw = '{"orderId": "only-an-id", "quantity": "lots"}'
    bad = OutboxMessage(
        message_id=message_id,
        exchange=BROKER_EXCHANGE,
        routing_key="orders.new",
        type="NewOrderRequest",
        correlation_id=None,
        body=raw,
    )
    assert await broker.publisher.publish([bad]) == [message_id]

    channel = await broker.connection.channel()
    dead: list[AbstractIncomingMessage] = []

    async def on_dead(message: AbstractIncomingMessage) -> None:
        if message.message_id == message_id:
            dead.append(message)
            await message.ack()
        # others stay unacked and go back to the queue when this channel closes

    dlq = await channel.get_queue(VENUE_QUEUE.dead_letter_name)
    await dlq.consume(on_dead)
    try:
        await async_wait_until(lambda: dead, message="the bad request in venue_sim.orders.dlq")
    finally:
        await channel.close()
    headers = dead[0].headers
    assert headers["x-oms-stage"] == "venue_sim"
    assert headers["x-oms-original-routing-key"] == "orders.new"
    reason = str(headers["x-oms-error"])
    assert reason.startswith("invalid body:")
    assert "requestId" in reason and "quantity" in reason
    assert dead[0].body == raw.encode()  # unchanged
    # And the venue keeps working.
    await test_market_order_gets_new_then_fill(venue, broker)


async def test_prices_are_published_on_every_tick(venue: VenueSim, broker: Broker) -> None:
    channel = await broker.connection.channel()
    exchange = await channel.get_exchange(MARKETDATA_EXCHANGE)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, routing_key="prices.AAPL")
    prices: list[dict[str, Any]] = []

    async def on_price(message: AbstractIncomingMessage) -> None:
        prices.append(jsonutil.loads(message.body))
        await message.ack()

    await queue.consume(on_price)
    try:
        await async_wait_until(lambda: len(prices) >= 3, message="three price ticks")
    finally:
        await channel.close()
    assert {p["symbol"] for p in prices} == {"AAPL"}
    assert all(p["price"] > 0 and p["price"] % Decimal("0.01") == 0 for p in prices)


def test_instruments_are_read_from_the_database(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.begin() as connection:
        seed_demo(connection)
    engine.dispose()
    specs = {spec.symbol: spec for spec in load_instruments(database_url)}
    vod = specs["VOD"]
    assert (vod.reference_price, vod.tick_size, vod.lot_size) == (Decimal("70"), Decimal("0.02"), Decimal("100"))
    assert specs["BTCUSD"].lot_size == Decimal("0.0001")


# ------------------------------------------------------------------------------------------------ duplicates


def _duplicates(routing_key: str) -> float:
    value: float = DUPLICATE_REQUESTS.labels(routing_key)._value.get()
    return value


async def test_a_new_order_request_seen_before_is_refused_without_a_report(
    venue: VenueSim, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="services.venue_sim.venue")
    before = _duplicates("orders.new")
    order = _new_order()
    oid = order["orderId"]
    await broker.send("orders.new", order)
    await async_wait_until(lambda: len(broker.reports[oid]) >= 2, message=lambda: f"{broker.exec_types(oid)}")
    await broker.send("orders.new", order)  # the same request again (a relay re-publishing it, say)
    await broker.send("orders.new", {**order, "orderId": str(uuid.uuid4())})  # same requestId, other order
    marker = _new_order()
    await broker.send("orders.new", marker)
    await async_wait_until(lambda: len(broker.reports[marker["orderId"]]) >= 2, message="the marker answered")
    assert broker.exec_types(oid) == ["NEW", "FILL"]  # no second fill, and no REJECTED either
    assert _duplicates("orders.new") == before + 2
    refused = [r for r in caplog.records if r.getMessage() == "duplicate request refused"]
    assert [getattr(r, "request_id", None) for r in refused] == [order["requestId"]] * 2


async def test_a_cancel_request_seen_before_is_ignored(venue: VenueSim, broker: Broker) -> None:
    order = _new_order(type="LIMIT", price=Decimal("1.00"))
    oid = order["orderId"]
    await broker.send("orders.new", order)
    await async_wait_until(lambda: broker.exec_types(oid) == ["NEW"], message=lambda: f"{broker.exec_types(oid)}")
    cancel = {**order, "requestId": str(uuid.uuid4())}
    await broker.send("orders.cancel", cancel)
    await async_wait_until(lambda: len(broker.reports[oid]) >= 3, message=lambda: f"{broker.exec_types(oid)}")
    before = _duplicates("orders.cancel")
    await broker.send("orders.cancel", cancel)
    marker = _new_order()
    await broker.send("orders.new", marker)
    await async_wait_until(lambda: len(broker.reports[marker["orderId"]]) >= 2, message="the marker answered")
    assert broker.exec_types(oid) == ["NEW", "PENDING_CANCEL", "CANCELED"]  # no CANCEL_REJECTED "too late"
    assert _duplicates("orders.cancel") == before + 1


@dataclass
class OwnVenue:
    """A venue on a vhost of its own, remembering requests in the session database; restartable."""

    config: VenueConfig
    broker: Broker
    vhost: str
    management_url: str
    venue: VenueSim | None = None
    task: asyncio.Task[None] | None = None

    async def start(self) -> VenueSim:
        self.venue = VenueSim(self.config)
        self.task = asyncio.create_task(self.venue.run())
        venue, task = self.venue, self.task
        await async_wait_until(lambda: venue.ready.is_set() or task.done(), timeout=30, message="venue ready")
        if task.done():
            task.result()
        return venue

    async def stop(self) -> None:
        if self.venue is not None and self.task is not None:
            self.venue.stop()
            await asyncio.wait_for(self.task, 30)
        self.venue = self.task = None


@pytest_asyncio.fixture
async def own_venue(infra_urls: Any, database_url: str) -> AsyncIterator[OwnVenue]:
    from tools import infra

    if not infra_urls.management_url:
        pytest.skip("needs the RabbitMQ management API for a vhost of its own")
    vhost = f"oms_test_venue_{uuid.uuid4().hex[:8]}"
    infra.create_vhost(vhost, infra_urls.management_url)
    amqp_url = infra.amqp_url_for_vhost(infra_urls.amqp_url, vhost)
    connection = await connect(amqp_url, "test.venue_sim")
    channel = await connection.channel()
    exchanges = await declare_exchanges(channel)
    capture = await channel.declare_queue(exclusive=True)
    await capture.bind(exchanges[OMS_EXCHANGE], routing_key="execution.report")
    broker = Broker(connection, channel, Publisher(connection))

    async def on_report(message: AbstractIncomingMessage) -> None:
        broker.reports[str(message.correlation_id)].append(message)
        await message.ack()

    await capture.consume(on_report)
    config = VenueConfig(
        amqp_url=amqp_url,
        database_url=database_url,
        instruments=INSTRUMENTS,
        venue=VenueSettings(tick_ms=50),
        declare_pipeline=False,
        durable=True,
    )
    # The venue's journal is in the session database: start each test from an empty one, so that no order
    # another test left working is restored here.
    engine = create_engine(database_url)
    try:
        with engine.begin() as db:
            db.execute(text("DROP TABLE IF EXISTS " + ", ".join(VENUE_TABLES)))
    finally:
        engine.dispose()
    own = OwnVenue(config, broker, vhost, infra_urls.management_url)
    try:
        yield own
    finally:
        await own.stop()
        await connection.close()
        infra.delete_vhost(vhost, infra_urls.management_url)


async def test_a_restarted_venue_still_refuses_a_request_it_answered(own_venue: OwnVenue, database_url: str) -> None:
    broker = own_venue.broker
    await own_venue.start()
    order = _new_order()
    oid = order["orderId"]
    await broker.send("orders.new", order)
    await async_wait_until(lambda: len(broker.reports[oid]) >= 2, message=lambda: f"{broker.exec_types(oid)}")
    await own_venue.stop()

    before = _duplicates("orders.new")
    await own_venue.start()  # a new process's worth of memory: what it knows comes from the database
    await broker.send("orders.new", order)
    marker = _new_order()
    await broker.send("orders.new", marker)
    await async_wait_until(lambda: len(broker.reports[marker["orderId"]]) >= 2, message="the marker answered")
    assert broker.exec_types(oid) == ["NEW", "FILL"]
    assert _duplicates("orders.new") == before + 1
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            saved = connection.execute(
                text("SELECT count(*) FROM venue_sim_requests WHERE request_key = :k"),
                {"k": f"orders.new/{order['requestId']}"},
            ).scalar()
    finally:
        engine.dispose()
    assert saved == 1


async def test_the_venue_outlives_broker_and_database_outages(
    own_venue: OwnVenue, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="services.venue_sim.journal")
    broker = own_venue.broker
    venue = await own_venue.start()
    closed: list[str] = await async_wait_until(
        lambda: asyncio.to_thread(outages.kill_connections, own_venue.management_url, own_venue.vhost, "oms.venue_sim"),
        timeout=30,
        message="the venue's connection closed by the broker",
    )
    assert closed
    order = _new_order()
    await broker.send("orders.new", order)
    await async_wait_until(
        lambda: len(broker.reports[order["orderId"]]) >= 2, timeout=40, message="answered after the broker outage"
    )
    with outages.database_down(database_url):
        during = _new_order()
        await broker.send("orders.new", during)
        await async_wait_until(
            lambda: any(
                r.name == "services.venue_sim.journal" and str(r.msg).startswith("journal not written")
                for r in caplog.records
            ),
            timeout=30,
            message="the venue failing to journal the order",
        )
        # A venue that cannot persist must not report: the answer waits for the database.
        assert broker.reports[during["orderId"]] == []
    await async_wait_until(
        lambda: len(broker.reports[during["orderId"]]) >= 2, timeout=30, message="answered once the database is back"
    )
    assert broker.exec_types(during["orderId"]) == ["NEW", "FILL"]
    after = _new_order()
    await broker.send("orders.new", after)
    await async_wait_until(lambda: len(broker.reports[after["orderId"]]) >= 2, timeout=30, message="answered after")
    assert own_venue.task is not None and not own_venue.task.done()
    assert venue.ready.is_set()

    def saved() -> bool:
        engine = create_engine(database_url)
        try:
            with engine.connect() as connection:
                keys = set(connection.execute(text("SELECT request_key FROM venue_sim_requests")).scalars())
        finally:
            engine.dispose()
        return f"orders.new/{during['requestId']}" in keys  # journaled before it was answered

    assert await asyncio.to_thread(saved)


# ------------------------------------------------------------------------------------------------ durability


def _request(body: dict[str, Any]) -> BrokerRequest:
    """A request body as the venue reads it off the wire."""
    return BrokerRequest.from_body(NewOrderRequestSchema().load(jsonutil.loads(jsonutil.dumps(body))))


def _one_copy_each(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reports with copies published again dropped, as the OMS drops them; a copy must equal its first."""
    first: dict[str, dict[str, Any]] = {}
    for body in bodies:
        seen = first.setdefault(body["executionId"], body)
        assert seen == body, f"execution {body['executionId']} reported with other terms"
    return list(first.values())


def _assert_sliced_fill(bodies: list[dict[str, Any]], quantity: Decimal) -> None:
    """One NEW, then fills whose cumQty only rises and whose lastQty add up to the order's quantity."""
    reports = _one_copy_each(bodies)
    assert [r["execType"] for r in reports] == ["NEW", "PARTIAL_FILL", "FILL"]
    assert len({r["brokerOrderId"] for r in reports}) == 1
    cums = [r["cumQty"] for r in reports]
    assert cums == sorted(cums) and cums[-1] == quantity
    assert sum(r["lastQty"] for r in reports) == quantity
    fill = reports[-1]
    assert (fill["lastQty"], fill["leavesQty"]) == (quantity - reports[1]["cumQty"], 0)


async def _outbox_rows(database_url: str) -> int:
    def count() -> int:
        engine = create_engine(database_url)
        try:
            with engine.connect() as connection:
                return int(connection.execute(text("SELECT count(*) FROM venue_sim_outbox")).scalar() or 0)
        finally:
            engine.dispose()

    return await asyncio.to_thread(count)


def _venue_process(own: OwnVenue, database_url: str, log_file: IO[bytes], tick_ms: int) -> subprocess.Popen[bytes]:
    """``python -m services.venue_sim`` on the test's vhost and the session database, as the supervisor runs it."""
    env = {
        **os.environ,
        "OMS_DATABASE_URL": database_url,
        "OMS_AMQP_URL": own.config.amqp_url,
        "OMS_VENUE_PARTIAL_FILLS": "2",
        "OMS_VENUE_TICK_MS": str(tick_ms),
        "OMS_METRICS_PORT": "0",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "services.venue_sim"],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )


async def test_a_venue_killed_mid_order_finishes_it_when_restarted(
    own_venue: OwnVenue, database_url: str, tmp_path: Path
) -> None:
    broker = own_venue.broker
    # The venue's queue before the venue: the order waits in it until the process consumes.
    await declare_venue_topology(broker.channel, own_venue.config)
    log_path = tmp_path / "venue.log"
    quantity = Decimal("16")
    order = _new_order(quantity=quantity)
    oid = order["orderId"]
    with log_path.open("wb") as log_file:

        def log_tail() -> str:
            return log_path.read_text(errors="replace")[-3000:]

        # No tick for a minute: the first slice trades on arrival, the second would on the next tick.
        first = _venue_process(own_venue, database_url, log_file, tick_ms=60_000)
        second: subprocess.Popen[bytes] | None = None
        try:
            await broker.send("orders.new", order)
            await async_wait_until(
                lambda: "PARTIAL_FILL" in broker.exec_types(oid),
                timeout=60,
                interval=0.01,
                message=lambda: f"the first slice reported: {broker.exec_types(oid)}\n{log_tail()}",
            )
            first.send_signal(signal.SIGKILL)  # no graceful stop: whatever was in memory is gone
            await asyncio.to_thread(first.wait, 10)
            assert broker.exec_types(oid) == ["NEW", "PARTIAL_FILL"]

            second = _venue_process(own_venue, database_url, log_file, tick_ms=100)
            await async_wait_until(
                lambda: "FILL" in broker.exec_types(oid),
                timeout=60,
                message=lambda: f"the second slice reported: {broker.exec_types(oid)}\n{log_tail()}",
            )
            _assert_sliced_fill(broker.bodies(oid), quantity)
            # Once the sender has journaled again, the published reports are off the outbox.
            emptied: bool = await async_wait_until(
                lambda: _no_outbox_rows(database_url), timeout=20, message="the outbox emptied"
            )
            assert emptied
        finally:
            for process in (first, second):
                if process is not None and process.poll() is None:
                    process.kill()
                    await asyncio.to_thread(process.wait, 10)


async def test_reports_journaled_but_never_published_are_published_at_restart(
    own_venue: OwnVenue, database_url: str
) -> None:
    broker = own_venue.broker
    own_venue.config = dataclasses.replace(
        own_venue.config, venue=own_venue.config.venue.model_copy(update={"partial_fills": 2})
    )
    quantity = Decimal("16")
    order = _new_order(quantity=quantity)
    oid = order["orderId"]
    # What the venue journals for a batch, written as it writes it; then the process "died" before publishing.
    book = Book(Market(INSTRUMENTS, seed=7), BookRules(partial_fills=2))
    reports = book.new_order(_request(order), datetime.now(UTC))
    assert [r.exec_type.value for r in reports] == ["NEW", "PARTIAL_FILL"]
    journal = Journal(database_url)
    stopping = asyncio.Event()
    await journal.load(stopping)  # creates the tables
    entry = Entry(
        request_keys=[request_key("orders.new", order["requestId"])],
        orders={o.order_id: snapshot(o) for o in book.take_changed()},
        sequence=book.sequence,
        reports=[report_message(r) for r in reports],
    )
    assert await journal.write(entry, stopping)
    journal.close()
    before = _duplicates("orders.new")

    await own_venue.start()
    await async_wait_until(
        lambda: "FILL" in broker.exec_types(oid), timeout=30, message=lambda: f"reports {broker.exec_types(oid)}"
    )
    bodies = broker.bodies(oid)
    assert [b["executionId"] for b in bodies[:2]] == [r.execution_id for r in reports]  # the journaled ones
    _assert_sliced_fill(bodies, quantity)
    # The OMS re-sending the request it never saw answered: refused, the venue has it.
    await broker.send("orders.new", order)
    marker = _new_order()
    await broker.send("orders.new", marker)
    await async_wait_until(lambda: len(broker.reports[marker["orderId"]]) >= 2, message="the marker answered")
    assert _duplicates("orders.new") == before + 1
    assert len(broker.bodies(oid)) == 3
    # Broker order ids go on from the journaled sequence.
    assert broker.bodies(marker["orderId"])[0]["brokerOrderId"] != bodies[0]["brokerOrderId"]
    emptied: bool = await async_wait_until(
        lambda: _no_outbox_rows(database_url), timeout=20, message="the outbox emptied"
    )
    assert emptied


async def _no_outbox_rows(database_url: str) -> bool:
    return await _outbox_rows(database_url) == 0


def test_a_snapshot_restores_the_order_as_it_was() -> None:
    book = Book(Market(INSTRUMENTS, seed=7), BookRules(partial_fills=2))
    now = datetime.now(UTC)
    book.new_order(_request(_new_order(type="STOP_LIMIT", price=Decimal("1.00"), stopPrice=Decimal("500.50"))), now)
    (order,) = book.take_changed()
    assert book.take_changed() == []
    restored = order_from_snapshot(snapshot(order))
    assert dataclasses.asdict(restored) == {**dataclasses.asdict(order), "epoch": 0}
    again = Book(Market(INSTRUMENTS, seed=7), BookRules(partial_fills=2))
    again.restore([restored], sequence=5)
    assert again.working == {order.order_id: restored}
    assert again.sequence == 5
