"""``oms bench --floor``: what the design's building blocks cost when an order flows alone, on this machine.

An order crosses seven processes, and at each the same three things happen: a delivery from a quorum queue
(published with a confirm, acked), a transaction with its inbox, its writes and its outbox, and the publish of what
comes next. In a burst they are shared by the hundreds of orders of a batch; an order flowing alone pays them
whole. This mode measures each building block alone, with the architecture's own libraries used as plainly as they
can be (aio-pika on a quorum queue with the stage queues' arguments, psycopg with prepared statements and no
SQLAlchemy), paced at ``--rate`` so that every operation wakes the processes as an order at a steady rate does:

- ``amqp_hop``: a persistent message published with a confirm to a quorum queue and delivered to a consumer that
  acks it (a hand-over between two stages);
- ``public_publish``: a persistent message published with a confirm to an exchange that routes it nowhere (an
  order update or position update nobody subscribed to);
- ``stage_transaction``: a stage's smallest transaction: its inbox row, the order locked and updated, an event and
  an outbox row, the commit (five statements; the OMS's stages send eight to ten).

From them: the floor of an order flowing alone (``ORDER_HOPS`` hand-overs each with a transaction, and
``ORDER_PUBLIC_MESSAGES`` public messages), and the rate at which orders flowing alone would keep every core of
this machine busy. Above that rate orders must share batches, and on a machine with nothing to spare a batch only
forms by orders waiting for the one before (docs/design.md, Session 14).

CPU as in the other modes (/proc, the Postgres cluster and the RabbitMQ node whole), less the servers' idle cost
over the same time, and this process's own less the cost of pacing alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aio_pika
import psycopg

from common.messaging.connection import connect_once
from common.runtime import loop
from tools import infra
from tools.bench_cpu import CpuSampler, cpu_deltas, own_ticks, server_groups, summarize
from tools.infra import InfraUrls
from tools.infra.postgres import libpq_url

# An order's path when it flows alone: decision to intake, intake to risk gate, risk gate to router, router to the
# venue, the venue's two reports to the execution handler, the fill to settlement: seven deliveries, and each
# process that takes one runs a transaction (the venue's journal too).
ORDER_HOPS = 7
# Three order updates (NEW, PARTIALLY_FILLED or FILLED, ...) and one position update per fill.
ORDER_PUBLIC_MESSAGES = 4
STEPS = ("amqp_hop", "public_publish", "stage_transaction")
GROUPS = ("client", "postgres", "rabbitmq")
_BODY = b'{"order_id": "%s", "note": "' + b"x" * 300 + b'"}'
_TABLES = (
    "CREATE TABLE floor_inbox (message_id text PRIMARY KEY, processed_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE floor_orders (id uuid PRIMARY KEY, status text NOT NULL, quantity numeric NOT NULL, "
    "filled_quantity numeric NOT NULL, updated_at timestamptz)",
    "CREATE TABLE floor_events (id bigserial PRIMARY KEY, order_id uuid NOT NULL, type text NOT NULL, "
    "payload jsonb NOT NULL, at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE floor_outbox (id bigserial PRIMARY KEY, message_id text NOT NULL UNIQUE, body jsonb NOT NULL, "
    "sent_at timestamptz)",
)


def per_operation(
    cpu_seconds: Mapping[str, float], idle_per_second: Mapping[str, float], seconds: float, operations: int
) -> dict[str, float]:
    """ms of CPU per operation by group: the window's CPU less the idle cost (per second, for the servers; the
    client's is the cost of pacing, per operation) over its length. Never below zero: a group whose CPU the
    step did not raise above its idle cost (Postgres while messages flow) costs the step nothing."""
    out: dict[str, float] = {}
    for group in GROUPS:
        if group not in cpu_seconds:
            continue
        idle = idle_per_second.get(group, 0.0) * (operations if group == "client" else seconds)
        out[group] = max(0.0, 1000 * (cpu_seconds[group] - idle) / operations)
    return out


def order_floor(steps: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The CPU an order flowing alone costs at least, by group and in all (ms)."""
    out: dict[str, float] = {}
    for group in GROUPS:
        hop = steps["amqp_hop"].get(group, 0.0) + steps["stage_transaction"].get(group, 0.0)
        out[group] = ORDER_HOPS * hop + ORDER_PUBLIC_MESSAGES * steps["public_publish"].get(group, 0.0)
    out["total"] = sum(out[group] for group in GROUPS)
    out["servers"] = out["postgres"] + out["rabbitmq"]
    return out


def saturating_rate(floor_ms: float, cores: int) -> float:
    """Orders/s at which orders flowing alone, each at ``floor_ms`` of CPU, keep ``cores`` cores busy."""
    return cores * 1000 / floor_ms if floor_ms > 0 else float("inf")


def floor_table(result: Mapping[str, Any]) -> str:
    """The human-readable report of ``--floor``."""
    lines = [
        f"paced at {result['rate']:g}/s for {result['seconds']:g}s each; CPU per operation, ms "
        f"(servers net of their idle cost, this client net of pacing)",
        "",
        f"{'step':<22}" + "".join(f"{g:>11}" for g in GROUPS) + f"{'total':>11}{'p50 ms':>9}{'p99 ms':>9}",
    ]
    for step in STEPS:
        figures = result["steps"][step]
        latency = result["latency_ms"].get(step, {})
        lines.append(
            f"{step:<22}"
            + "".join(f"{figures.get(g, 0.0):>11.3f}" for g in GROUPS)
            + f"{sum(figures.values()):>11.3f}{latency.get('p50', 0.0):>9.2f}{latency.get('p99', 0.0):>9.2f}"
        )
    floor = result["order_floor_ms"]
    lines += [
        "",
        f"an order flowing alone ({ORDER_HOPS} hand-overs with a transaction each, {ORDER_PUBLIC_MESSAGES} public "
        f"messages): at least {floor['total']:.1f} ms of CPU (client {floor['client']:.1f}, Postgres "
        f"{floor['postgres']:.1f}, RabbitMQ {floor['rabbitmq']:.1f})",
        f"{result['cores']} cores are all busy with orders flowing alone at {result['saturating_rate']:.0f} orders/s "
        f"(the servers' share alone: at {result['servers_saturating_rate']:.0f} orders/s); above that, orders "
        f"share batches, which form by waiting",
    ]
    return "\n".join(lines)


class _Meter:
    """CPU of the servers (when they run here) and of this process, around a window."""

    def __init__(self) -> None:
        self.sampler = CpuSampler(server_groups())

    def snapshot(self) -> dict[str, int]:
        ticks = self.sampler.snapshot()
        ticks["client"] = own_ticks()
        return ticks

    async def measure(self, work: Callable[[], Awaitable[None]]) -> tuple[dict[str, float], float]:
        """CPU seconds by group, and the wall time, of ``work``."""
        before = self.snapshot()
        started = time.perf_counter()
        await work()
        seconds = time.perf_counter() - started
        return cpu_deltas(before, self.snapshot()), seconds


async def _paced(rate: float, count: int, operation: Callable[[int], Awaitable[None]]) -> None:
    start = time.monotonic()
    for index in range(count):
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing: the point of the mode is that the processes go idle between
        await operation(index)


class _Floor:
    """The three steps, on a database and vhost of their own."""

    def __init__(self, amqp_url: str, database_url: str, rate: float, count: int) -> None:
        self.amqp_url = amqp_url
        self.database_url = database_url
        self.rate = rate
        self.count = count
        self.meter = _Meter()
        self.latency: dict[str, list[float]] = {step: [] for step in STEPS}
        self.done: dict[str, int] = {step: 0 for step in STEPS}
        self.database: psycopg.Connection[Any] | None = None

    def close(self) -> None:
        """Close the transaction step's database connection."""
        if self.database is not None:
            self.database.close()

    async def run(self, idle_seconds: float) -> dict[str, Any]:
        async def nothing(index: int) -> None:
            return None

        pacing_cpu, _ = await self.meter.measure(lambda: _paced(self.rate, self.count, nothing))
        pacing = pacing_cpu.get("client", 0.0) / self.count
        steps: dict[str, dict[str, float]] = {}
        idle: dict[str, dict[str, float]] = {}
        connection = await connect_once(self.amqp_url, "oms.bench.floor")
        try:
            for step, prepare in (("amqp_hop", self._hop), ("public_publish", self._public)):
                channel = await connection.channel(publisher_confirms=True)
                operation = await prepare(connection, channel)
                steps[step], idle[step] = await self._step(idle_seconds, pacing, operation)
                await channel.close()
        finally:
            await connection.close()
        operation = await self._transaction()
        steps["stage_transaction"], idle["stage_transaction"] = await self._step(idle_seconds, pacing, operation)
        floor = order_floor(steps)
        cores = os.cpu_count() or 1
        return {
            "rate": self.rate,
            "seconds": self.count / self.rate,
            "operations": dict(self.done),
            "idle_cpu_ms_per_s": idle,
            "pacing_cpu_ms_per_operation": 1000 * pacing,
            "steps": steps,
            "latency_ms": {step: summarize(values) for step, values in self.latency.items()},
            "order_floor_ms": floor,
            "cores": cores,
            "saturating_rate": saturating_rate(floor["total"], cores),
            "servers_saturating_rate": saturating_rate(floor["servers"], cores),
        }

    async def _step(
        self, idle_seconds: float, pacing: float, operation: Callable[[int], Awaitable[None]]
    ) -> tuple[dict[str, float], dict[str, float]]:
        """A step's CPU per operation, and the servers' idle cost (ms/s) measured just before it, everything
        it needs already declared: the servers' idle cost drifts (the broker's statistics, a queue's timers)."""
        idle_cpu, idle_wall = await self.meter.measure(lambda: asyncio.sleep(idle_seconds))
        idle = {group: seconds / idle_wall for group, seconds in idle_cpu.items() if group != "client"}
        cpu, seconds = await self.meter.measure(lambda: _paced(self.rate, self.count, operation))
        return per_operation(cpu, {**idle, "client": pacing}, seconds, self.count), {
            group: 1000 * value for group, value in idle.items()
        }

    async def _hop(
        self, connection: aio_pika.abc.AbstractConnection, publisher: aio_pika.abc.AbstractChannel
    ) -> Callable[[int], Awaitable[None]]:
        queue = await publisher.declare_queue(
            "bench.floor",
            durable=True,
            arguments={"x-queue-type": "quorum", "x-delivery-limit": 5, "x-overflow": "reject-publish"},
        )
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=100)
        delivered: asyncio.Queue[float] = asyncio.Queue()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            delivered.put_nowait(time.perf_counter())

        await (await consumer.get_queue(queue.name)).consume(on_message)

        async def hop(index: int) -> None:
            sent = time.perf_counter()
            await publisher.default_exchange.publish(
                aio_pika.Message(_BODY % str(index).encode(), message_id=str(uuid.uuid4()), delivery_mode=2),
                routing_key=queue.name,
            )
            arrived = await asyncio.wait_for(delivered.get(), 30)
            self.latency["amqp_hop"].append((arrived - sent) * 1000)
            self.done["amqp_hop"] += 1

        return hop

    async def _public(
        self, connection: aio_pika.abc.AbstractConnection, channel: aio_pika.abc.AbstractChannel
    ) -> Callable[[int], Awaitable[None]]:
        exchange = await channel.declare_exchange("bench.floor.updates", aio_pika.ExchangeType.TOPIC, durable=True)

        async def publish(index: int) -> None:
            sent = time.perf_counter()
            await exchange.publish(
                aio_pika.Message(_BODY % str(index).encode(), message_id=str(uuid.uuid4()), delivery_mode=2),
                routing_key="orders.update",
            )
            self.latency["public_publish"].append((time.perf_counter() - sent) * 1000)
            self.done["public_publish"] += 1

        return publish

    async def _transaction(self) -> Callable[[int], Awaitable[None]]:
        with psycopg.connect(self.database_url, autocommit=True) as setup:
            for statement in _TABLES:
                setup.execute(statement)
        self.database = connection = psycopg.connect(self.database_url)
        connection.prepare_threshold = 0  # prepared from the first call, as a stage's hot statements are
        orders = [uuid.uuid4() for _ in range(self.count)]
        with connection.transaction(), connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO floor_orders (id, status, quantity, filled_quantity) VALUES (%s, 'NEW', 100, 0)",
                [(order,) for order in orders],
            )

        def transaction(index: int) -> None:
            order = orders[index]
            with connection.transaction(), connection.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO floor_inbox (message_id) VALUES (%s) ON CONFLICT DO NOTHING RETURNING message_id",
                    (str(uuid.uuid4()),),
                )
                cursor.fetchall()
                cursor.execute(
                    "SELECT id, status, quantity, filled_quantity FROM floor_orders WHERE id = %s FOR NO KEY UPDATE",
                    (order,),
                )
                cursor.fetchall()
                cursor.execute(
                    "UPDATE floor_orders SET status = 'FILLED', filled_quantity = quantity, updated_at = now() "
                    "WHERE id = %s",
                    (order,),
                )
                cursor.execute(
                    "INSERT INTO floor_events (order_id, type, payload) VALUES (%s, 'ORDER_FILLED', %s)",
                    (order, '{"quantity": "100"}'),
                )
                cursor.execute(
                    "INSERT INTO floor_outbox (message_id, body) VALUES (%s, %s)",
                    (str(uuid.uuid4()), '{"status": "FILLED"}'),
                )

        async def run_one(index: int) -> None:
            started = time.perf_counter()
            # In a worker thread, as a stage runs its transaction.
            await asyncio.to_thread(transaction, index)
            self.latency["stage_transaction"].append((time.perf_counter() - started) * 1000)
            self.done["stage_transaction"] += 1

        return run_one


def run_floor(infra_urls: InfraUrls, rate: float, seconds: float, idle_seconds: float) -> dict[str, Any]:
    """Measure the three steps on a database and vhost of their own (dropped afterwards)."""
    name = f"oms_floor_{uuid.uuid4().hex[:10]}"  # not oms_bench_*: a bench's teardown test counts those
    database_url = infra.create_database(name, infra_urls.database_url)
    try:
        infra.create_vhost(name, infra_urls.management_url)
        floor = _Floor(
            infra.amqp_url_for_vhost(infra_urls.amqp_url, name),
            libpq_url(database_url),
            rate,
            max(1, round(rate * seconds)),
        )
        try:
            return loop.run(floor.run(idle_seconds))  # uvloop, as the stages run
        finally:
            floor.close()
    finally:
        infra.delete_vhost(name, infra_urls.management_url)
        infra.drop_database(name, infra_urls.database_url)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--floor`` (it takes ``--rate``, ``--seconds`` and ``--idle`` from the bench's own)."""
    parser.add_argument(
        "--floor",
        action="store_true",
        help="the floor of an order flowing alone: each building block paced at --rate (default 50/s) for "
        "--seconds (default 10) each",
    )
