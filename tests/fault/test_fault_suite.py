"""The fault suite: the whole system as a user runs it (``./oms up --detach``), a steady stream of orders with
partial fills, and every fault production brings, one after another:

- SIGKILL of each process in turn (the supervisor restarts it);
- a broker outage of 10 s and a database outage of 10 s (the servers stopped and started again);
- a crash between a stage's commit and the marking of its outbox rows (the router, by its test hook);
- poison messages mid-stream (nested too deep, NUL characters, not JSON, an impossible report);
- duplicate, resent-late and contradictory execution reports.

Afterwards every order has reached its final state, nothing was booked twice, ``oms check`` is clean, and the
anomalies on record are exactly the contradictions injected. One line sums it up:
``fault suite: orders N, faults F, lost 0, doubled 0, stuck 0, anomalies A``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from sqlalchemy import Engine

from common import jsonutil
from common.messages.exchanges import OMS_EXCHANGE
from common.messaging.connection import connect
from tests.fault.harness import Instance, decision, kill_and_await_restart, order_trail, outage, progress, rows, scalar
from tests.support.invariants import assert_invariants_hold
from tests.support.polling import async_wait_until
from tools.processes import system

pytestmark = [pytest.mark.fault, pytest.mark.timeout(1500)]

D = Decimal
RATE = 20.0  # decisions a second, well under what the system carries on 2 cores
OUTAGE_SECONDS = 10.0
BOOKS = [("ACC-001", "AAPL"), ("ACC-002", "SPY"), ("ACC-001", "MSFT"), ("ACC-002", "AAPL")]
PROCESSES = tuple(spec.name for spec in system(with_venue=True, with_api=True, with_jobs=True))
FINAL = ("FILLED", "CANCELED", "REJECTED", "EXPIRED")


@dataclass
class Stream:
    """The strategy service: decisions at a steady rate, each published until the broker confirms it."""

    connection: AbstractRobustConnection
    strategy: str
    sent: list[str] = field(default_factory=list)
    running: bool = True

    async def run(self) -> None:
        channel = await self.connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(OMS_EXCHANGE)
        for index in itertools.count():
            if not self.running:
                return
            account, symbol = BOOKS[index % len(BOOKS)]
            body, message = decision(index, account, symbol, self.strategy)
            started = time.monotonic()
            delay = 0.2
            while True:  # as a strategy service must: the same decision again until the broker has it
                try:
                    if channel.is_closed:
                        channel = await self.connection.channel(publisher_confirms=True)
                        exchange = await channel.get_exchange(OMS_EXCHANGE)
                    await exchange.publish(message, routing_key="intake.decision", mandatory=True, timeout=5)
                    break
                except Exception:
                    await asyncio.sleep(delay)  # back-off while the broker is away
                    delay = min(delay * 2, 2.0)
            self.sent.append(str(body["decisionId"]))
            await asyncio.sleep(max(0.0, 1 / RATE - (time.monotonic() - started)))


@dataclass
class Faults:
    """What was injected, and which anomalies that must produce, per order."""

    injected: list[str] = field(default_factory=list)
    expected_anomalies: Counter[str] = field(default_factory=Counter)

    def add(self, name: str) -> None:
        self.injected.append(name)
        print(f"fault suite: injected {name}", flush=True)


@pytest.fixture(scope="module")
def instance() -> Iterator[Instance]:
    """The system, brought up as a user does, on servers of its own; taken down afterwards."""
    inst = Instance.create(
        {
            "OMS_VENUE_PARTIAL_FILLS": "2",
            "OMS_OUTBOX_GRACE_SECONDS": "2",
            "OMS_OUTBOX_POLL_SECONDS": "0.5",
            "OMS_LOG_LEVEL": "INFO",
        }
    )
    try:
        inst.up()
        yield inst
    except BaseException:
        for name in PROCESSES:
            print(f"--- {name}\n{inst.logs_tail(name)}")
        print("\n".join(inst.log))
        raise
    finally:
        left = inst.down()
    assert not left, f"processes outlived ./oms down: {left}"


@pytest.fixture
async def amqp(instance: Instance) -> AsyncIterator[AbstractRobustConnection]:
    connection = await connect(instance.urls.amqp_url, "oms.fault-suite")
    yield connection
    await connection.close()


async def _progress(engine: Engine, strategy: str, more: int, timeout: float = 120) -> None:
    await progress(engine, strategy, more, timeout)


async def _poison(connection: AbstractRobustConnection, faults: Faults) -> dict[str, str]:
    """Poison messages mid-stream; returns message id -> the queue whose dead letters must hold it."""
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(OMS_EXCHANGE)
    deep = b'{"decisionId":"deep","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    nul = jsonutil.dumps(
        {
            "decisionId": str(uuid.uuid4()),
            "accountId": "ACC-001",
            "symbol": "AAPL\u0000",
            "side": "BUY",
            "type": "MARKET",
            "quantity": D(1),
        }
    ).encode()
    report = jsonutil.dumps(
        {
            "executionId": str(uuid.uuid4()),
            "orderId": str(uuid.uuid4()),
            "execType": "FILL",
            "lastQty": D(1),
            "lastPx": D("123456789012345678901234567890"),
            "cumQty": D(1),
            "leavesQty": D(0),
            "timestamp": datetime.now(UTC),
        }
    ).encode()
    poison = {
        "intake.decision": [deep, nul, b"\xff\xfe not json at all", b"[1, 2, 3]"],
        "execution.report": [report],
    }
    where: dict[str, str] = {}
    for routing_key, bodies in poison.items():
        for body in bodies:
            message_id = str(uuid.uuid4())
            await exchange.publish(
                aio_pika.Message(body, message_id=message_id, content_type="application/json"), routing_key=routing_key
            )
            stage = "intake" if routing_key == "intake.decision" else "execution_handler"
            where[message_id] = f"oms.{stage}.dlq"
            faults.add(f"poison message to {stage}")
    await channel.close()
    return where


async def _dead_letters(connection: AbstractRobustConnection, queue_name: str) -> dict[str, dict[str, Any]]:
    """Every message in a dead-letter queue (looked at and put back), by message id, with its headers."""
    channel = await connection.channel()
    queue = await channel.declare_queue(queue_name, passive=True)
    found: dict[str, dict[str, Any]] = {}
    taken = []
    while (message := await queue.get(no_ack=False, fail=False)) is not None:
        found[str(message.message_id)] = dict(message.headers or {})
        taken.append(message)
    for message in taken:
        await message.nack(requeue=True)
    await channel.close()
    return found


async def _kill_each(instance: Instance, engine: Engine, strategy: str, faults: Faults) -> None:
    for name in PROCESSES:
        await kill_and_await_restart(instance, name, timeout=60)
        faults.add(f"SIGKILL {name}")
        await _progress(engine, strategy, 10)


async def _crash_after_commit(instance: Instance, engine: Engine, strategy: str, faults: Faults) -> None:
    before = await asyncio.to_thread(instance.pid, "router")
    instance.crash_trigger.touch()  # the router's test hook: exit after its next commit, before marking sent
    await async_wait_until(
        lambda: not instance.crash_trigger.exists() and instance.pid("router") not in (None, before),
        timeout=60,
        interval=0.2,
        message="router crashed after a commit and was restarted",
    )
    faults.add("crash between commit and outbox marking (router)")
    await _progress(engine, strategy, 10)


async def _reports(connection: AbstractRobustConnection, engine: Engine, strategy: str, faults: Faults) -> str:
    """Duplicate, resent-late and contradictory reports for orders the venue filled."""
    filled = rows(
        engine,
        "SELECT id, filled_quantity FROM orders WHERE strategy_id = :s AND state = 'FILLED' "
        "ORDER BY updated_at LIMIT 8",
        s=strategy,
    )
    assert len(filled) == 8
    reports = {
        r["id"]: rows(
            engine,
            "SELECT * FROM execution_reports WHERE order_id = :o AND exec_type IN ('PARTIAL_FILL', 'FILL') "
            "ORDER BY cum_qty",
            o=r["id"],
        )
        for r in filled
    }
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.get_exchange(OMS_EXCHANGE)

    async def send(body: dict[str, Any]) -> str:
        message = aio_pika.Message(
            jsonutil.dumps(body).encode(),
            content_type="application/json",
            message_id=str(uuid.uuid4()),
            type="ExecutionReport",
            correlation_id=body["orderId"],
        )
        await exchange.publish(message, routing_key="execution.report", mandatory=True)
        return str(message.message_id)

    def wire(row: Any, **changes: Any) -> dict[str, Any]:
        body = {
            "executionId": row["execution_id"],
            "orderId": row["order_id"],
            "brokerOrderId": row["broker_order_id"],
            "execType": row["exec_type"],
            "lastQty": row["last_qty"],
            "lastPx": row["last_px"],
            "cumQty": row["cum_qty"],
            "leavesQty": row["leaves_qty"],
            "avgPx": row["avg_px"],
            "fees": row["fees"],
            "venue": row["venue"],
            "timestamp": row["timestamp"],
        }
        body.update(changes)
        return {k: v for k, v in body.items() if v is not None}

    orders = [r["id"] for r in filled]
    # Harmless: the same report again, and an early partial fill resent after the order completed.
    await send(wire(reports[orders[0]][-1]))
    faults.add("duplicate report")
    await send(wire(reports[orders[1]][0]))
    faults.add("stale report resent after the fill")
    # Contradictions, each an anomaly on its order.
    last = reports[orders[2]][-1]
    await send(wire(last, executionId=str(uuid.uuid4()), fees=D(0)))
    faults.add("new executionId with no cum change")
    faults.expected_anomalies[f"{orders[2]}:no_cum_change"] += 1
    first = reports[orders[3]][0]
    await send(wire(first, lastQty=first["last_qty"] + 1, cumQty=first["cum_qty"] + 1))
    faults.add("same executionId with other terms")
    faults.expected_anomalies[f"{orders[3]}:execution_id_reused"] += 1
    top = reports[orders[4]][-1]
    await send(wire(top, executionId=str(uuid.uuid4()), execType="PARTIAL_FILL", lastQty=D(1), cumQty=D(1), fees=D(0)))
    faults.add("cum going backwards")
    faults.expected_anomalies[f"{orders[4]}:cum_backwards"] += 1
    # A bust of an execution the order never had: dead-lettered at once, nothing booked.
    bust = await send(
        wire(
            top,
            executionId=str(uuid.uuid4()),
            execType="TRADE_CANCEL",
            execRefId=str(uuid.uuid4()),
            fees=D(0),
            cumQty=D(0),
        )
    )
    faults.add("bust of an execution never booked")
    await channel.close()
    return bust


def _explain_stuck(engine: Engine, strategy: str) -> None:
    """What the orders that never ended went through, for the failure report."""
    for order in rows(
        engine,
        "SELECT id, state, filled_quantity, quantity, updated_at FROM orders "
        "WHERE strategy_id = :s AND NOT (state = ANY(:final))",
        s=strategy,
        final=list(FINAL),
    ):
        print(f"fault suite: stuck {dict(order)}\n{order_trail(engine, order['id'])}")


def _settled(engine: Engine, timeout: float = 180.0) -> bool:
    try:
        assert_invariants_hold(engine, timeout=timeout)
    except AssertionError as exc:
        print(f"fault suite: invariants still violated after {timeout:g} s: {exc}", flush=True)
        return False
    return True


async def test_the_promise_holds_under_every_fault(
    instance: Instance, engine: Engine, amqp: AbstractRobustConnection
) -> None:
    strategy = f"fault-{uuid.uuid4().hex[:8]}"
    faults = Faults()
    stream = Stream(amqp, strategy)
    streaming = asyncio.create_task(stream.run())
    try:
        await _progress(engine, strategy, 40)
        poison = await _poison(amqp, faults)
        await _progress(engine, strategy, 20)
        await _kill_each(instance, engine, strategy, faults)
        await _crash_after_commit(instance, engine, strategy, faults)

        restarts = {name: p["restarts"] for name, p in (await asyncio.to_thread(instance.processes)).items()}
        length = await asyncio.to_thread(outage, instance.stop_broker, instance.start_broker, OUTAGE_SECONDS)
        faults.add(f"broker outage of {length:.0f} s")
        await _progress(engine, strategy, 20, timeout=180)
        length = await asyncio.to_thread(outage, instance.stop_database, instance.start_database, OUTAGE_SECONDS)
        faults.add(f"database outage of {length:.0f} s")
        await _progress(engine, strategy, 20, timeout=180)

        # Outages are weather: no process exited because of them (the supervisor restarted nothing).
        after = {name: p["restarts"] for name, p in (await asyncio.to_thread(instance.processes)).items()}
        assert after == restarts, f"restarted during the outages: {after} (before {restarts})"
        bust = await _reports(amqp, engine, strategy, faults)
        await _progress(engine, strategy, 20)
    finally:
        stream.running = False
        await streaming

    sent = set(stream.sent)

    def final_count() -> int:
        return int(
            scalar(
                engine,
                "SELECT count(*) FROM orders WHERE strategy_id = :s AND state = ANY(:final)",
                s=strategy,
                final=list(FINAL),
            )
        )

    try:
        await async_wait_until(
            lambda: final_count() >= len(sent),
            timeout=300,
            interval=0.5,
            message=lambda: f"{final_count()}/{len(sent)} orders final",
        )
    except AssertionError:
        _explain_stuck(engine, strategy)
        raise

    # Final is not settled: wait until what settlement books has caught up (or report what never does).
    settled = await asyncio.to_thread(_settled, engine)

    orders = rows(
        engine,
        "SELECT o.id, o.client_order_id, o.state, o.quantity, o.filled_quantity, "
        "coalesce((SELECT sum(CASE WHEN c.reversal THEN -c.quantity ELSE c.quantity END) "
        "          FROM trade_confirmations c WHERE c.order_id = o.id), 0) AS confirmed, "
        "(SELECT count(*) FROM trade_confirmations c WHERE c.order_id = o.id) AS confirmations "
        "FROM orders o WHERE o.strategy_id = :s",
        s=strategy,
    )
    booked = {o["client_order_id"] for o in orders}
    lost = len(sent - booked) + sum(1 for o in orders if o["state"] not in ("FILLED", "REJECTED"))
    doubled = (
        len(orders)
        - len(booked)
        + sum(1 for o in orders if o["confirmed"] != o["filled_quantity"] or o["filled_quantity"] > o["quantity"])
    )
    stuck = sum(1 for o in orders if o["state"] not in FINAL)
    anomalies = Counter(
        f"{r['order_id']}:{code}"
        for r in rows(
            engine,
            "SELECT e.order_id, e.payload FROM order_events e JOIN orders o ON o.id = e.order_id "
            "WHERE o.strategy_id = :s AND e.type = 'EXECUTION_ANOMALY'",
            s=strategy,
        )
        for code in r["payload"]["anomalies"]
    )
    check = instance.oms("check", "--settle", "0", "--outbox", "0", "--inbox", "10", "--stuck", "0", check=False)

    dead = {}
    for queue in ("oms.intake.dlq", "oms.execution_handler.dlq"):
        dead.update({mid: {**h, "queue": queue} for mid, h in (await _dead_letters(amqp, queue)).items()})
    others = {q: await _dead_letters(amqp, q) for q in ("oms.risk_gate.dlq", "oms.router.dlq", "oms.settlement.dlq")}

    print(
        f"fault suite: orders {len(orders)}, faults {len(faults.injected)}, lost {lost}, doubled {doubled}, "
        f"stuck {stuck}, anomalies {sum(anomalies.values())} (injected {sum(faults.expected_anomalies.values())})",
        flush=True,
    )
    print(check.stdout.strip().splitlines()[-1] if check.stdout.strip() else check.stderr, flush=True)

    if doubled:
        for o in orders:
            if o["confirmed"] != o["filled_quantity"] or o["filled_quantity"] > o["quantity"]:
                print(f"fault suite: doubled? {dict(o)}", flush=True)
    assert settled
    assert (lost, doubled, stuck) == (0, 0, 0)
    assert anomalies == faults.expected_anomalies
    assert check.returncode == 0, check.stdout + check.stderr
    # Dead letters: the poison and the bust, each with its reason, none by the delivery limit; nothing else.
    assert set(dead) == {*poison, bust}, set(dead) ^ {*poison, bust}
    for message_id, queue in poison.items():
        assert message_id in dead, f"poison {message_id} not in {queue}"
        headers = dead[message_id]
        assert headers["queue"] == queue and headers.get("x-oms-error"), headers
        assert "x-death" not in headers, f"{message_id} reached the DLQ by delivery limit: {headers}"
    assert not any(others.values()), others
